"""The record of where a result came from: Python, the platform, the CPU's vector extensions, the versions of the
numerical libraries and, when torch is in use, its version, threads and device."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

__all__ = ["environment", "machine_memory", "available_memory"]


def _meminfo(key: str, pages: str) -> int | None:
    """Bytes of ``key`` in Linux's /proc/meminfo, else ``pages`` × the page size from ``os.sysconf``; ``None``
    where neither can be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf(pages)
    except (ValueError, OSError, AttributeError):
        return None


def machine_memory() -> int | None:
    """Bytes of RAM of this machine (MemTotal, else the physical pages); ``None`` if unknown. The one home of this
    figure: the checks' estimates and ``nets.train``'s model-size refusal are held against it."""
    return _meminfo("MemTotal", "SC_PHYS_PAGES")


def available_memory() -> int | None:
    """Bytes available to a new allocation: MemAvailable (free memory plus what the page cache would give back),
    else the free pages; ``None`` if unknown."""
    return _meminfo("MemAvailable", "SC_AVPHYS_PAGES")

_PACKAGES = ("numpy", "scipy", "numba", "sympy", "matplotlib")


def _cpu_vector_flags() -> list[str]:
    """The SIMD extensions named in /proc/cpuinfo (a speed figure holds only for the CPU it was measured on)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "sse4", "fma")))
    except OSError:
        pass
    return []


def environment(device=None) -> dict:
    """Versions and machine of this process, as a JSON-ready dict.

    Args:
        device: the torch device a result was computed on (``torch.device`` or its name), or ``None``. torch is
            described only when it is already imported (so that the theory's checks stay torch-free).

    Returns:
        ``python``, ``platform``, ``cpu_flags``, ``packages`` (name → version, for the numerical libraries that
        are installed) and, with torch: ``torch``, ``threads``, ``cuda``, ``determinism`` (cuDNN's and TF32's flags
        as set now, ``nets.evaluation.DETERMINISM``), ``device`` and ``gpu``; ``ray`` when it is imported.
    """
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_flags": _cpu_vector_flags()}
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    env["packages"] = packages
    torch = sys.modules.get("torch")
    if torch is not None:
        env.update(torch=torch.__version__, threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
        # The numerical policy in effect (nets.evaluation.DETERMINISM sets it; read here from torch itself, as this
        # package does not import nets).
        env["determinism"] = {"cudnn.deterministic": bool(torch.backends.cudnn.deterministic),
                              "cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
                              "cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                              "cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                              "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled())}
        if device is not None:
            dev = torch.device(device)
            env["device"] = str(dev)
            if dev.type == "cuda":
                env["gpu"] = torch.cuda.get_device_name(dev)
        elif torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    ray = sys.modules.get("ray")
    if ray is not None:
        env["ray"] = ray.__version__
    return env
