"""Datasets held as tensors on the training device, and a sampler that never collates in Python.

* Fashion-MNIST from its four IDX ``.gz`` files (default folder ``/usr/share/datasets/fashion-mnist``, the Debian
  package ``dataset-fashion-mnist``); CIFAR-10 from the standard python-pickle batches (``data_batch_1`` …
  ``data_batch_5``, ``test_batch``) in a folder the user names; synthetic data of either shape. Nothing is ever
  downloaded: a missing or corrupt file raises ``DataError`` saying where it looked and how to get the data.
* ``BatchSampler`` draws index tensors on the device: without replacement within an epoch (a fresh permutation
  each epoch; the incomplete end of an epoch is dropped), with a batch size that may change every step, and with
  its state saved in checkpoints so that a resumed run continues the same sequence.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

__all__ = ["DataError", "ImageData", "load_dataset", "load_fashion_mnist", "load_cifar10", "synthetic",
           "write_idx", "BatchSampler", "DATASETS", "DATASET_FACTS", "FASHION_MNIST_ROOT", "cifar10_folder",
           "fashion_mnist_folder", "dataset_root", "verify_dataset", "cpu_rng_state"]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
DATASETS = ("fashion-mnist", "cifar10", "synthetic-mnist", "synthetic-cifar")
#: Each dataset's input shape and its training and test set sizes (``None``: the synthetic size chosen per run).
DATASET_FACTS = {"fashion-mnist": ((1, 28, 28), 60000, 10000), "cifar10": ((3, 32, 32), 50000, 10000),
                 "synthetic-mnist": ((1, 28, 28), None, 512), "synthetic-cifar": ((3, 32, 32), None, 512)}
_FASHION_HOW = ("install it with `apt-get install dataset-fashion-mnist` (Debian) or pass --data-root with a "
                "folder holding the four IDX .gz files")
_CIFAR_HOW = ("download 'CIFAR-10 python version' (cifar-10-python.tar.gz) from "
              "https://www.cs.toronto.edu/~kriz/cifar.html, unpack it, and pass --data-root with the folder "
              "holding data_batch_1 ... data_batch_5 and test_batch")


class DataError(ValueError):
    """A dataset file is missing or not in the expected format."""


@dataclass(frozen=True)
class ImageData:
    """Images as float tensors ``(n, C, H, W)`` (normalised per channel with training-set statistics) and int64
    labels, for a training and a test split, all on one device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def train_size(self) -> int:
        """N, the number of training examples."""
        return int(self.x_train.shape[0])

    def to(self, device) -> "ImageData":
        """A copy with every tensor on ``device``."""
        return replace(self, **{k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")})

    def subset(self, n: int, seed: int = 0) -> "ImageData":
        """The first ``n`` training examples of a seeded permutation (the test split is kept whole)."""
        if not 1 <= n <= self.train_size:
            raise ValueError(f"train_size must lie in [1, {self.train_size}] for {self.name}, got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.train_size, generator=g)[:n].to(self.x_train.device)
        return replace(self, x_train=self.x_train[idx], y_train=self.y_train[idx])

    def measurement_set(self, n: int, seed: int = 1, split: str = "train"):
        """A fixed, ordered subset of ``n`` examples (the same for every measurement with this seed)."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        if not 1 <= n <= x.shape[0]:
            raise ValueError(f"measurement size must lie in [1, {x.shape[0]}], got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(x.shape[0], generator=g)[:n].sort().values.to(x.device)
        return x[idx], y[idx]

    def padded(self, size: int) -> "ImageData":
        """Zero-pad the images symmetrically to ``size`` × ``size`` (e.g. 28 → 32 for the convolutional models)."""
        h, w = self.input_shape[1:]
        if size < max(h, w):
            raise ValueError(f"pad size {size} is smaller than the images ({h}x{w})")
        top, left = (size - h) // 2, (size - w) // 2
        pad = (left, size - w - left, top, size - h - top)
        f = torch.nn.functional.pad
        return replace(self, x_train=f(self.x_train, pad), x_test=f(self.x_test, pad))


# --------------------------------------------------------------------------------------------------- IDX files
def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"Fashion-MNIST file not found: {path}; {_FASHION_HOW}")
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} as gzip ({exc}); the file is corrupt: {_FASHION_HOW}") from None
    if len(raw) < 4 + 4 * expect_dims:
        raise DataError(f"{path} is too short for an IDX header; the file is corrupt: {_FASHION_HOW}")
    zero, dtype_code, ndim = raw[0] | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08 or ndim != expect_dims:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {expect_dims} dimensions "
                        f"(magic {raw[:4].hex()}); the file is corrupt: {_FASHION_HOW}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    if len(body) != math.prod(dims):
        raise DataError(f"{path}: header says {dims} = {math.prod(dims)} bytes, found {len(body)}; "
                        f"the file is truncated or corrupt: {_FASHION_HOW}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (for tests and small custom datasets)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + a.tobytes())


def fashion_mnist_folder(root=None) -> Path:
    """The folder holding Fashion-MNIST's four IDX files (``root``, else the Debian folder), after checking that
    every file is there (not that it is readable: ``load_fashion_mnist`` does that).

    Raises:
        DataError: naming the folder, what is missing and how to get it.
    """
    folder = Path(root or FASHION_MNIST_ROOT)
    missing = [f for files in FASHION_FILES.values() for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST file(s) not found in {folder}: {', '.join(missing)}; {_FASHION_HOW}")
    return folder


def load_fashion_mnist(root=None) -> ImageData:
    """Fashion-MNIST (60 000 + 10 000 images of 1×28×28, 10 classes) from the four IDX ``.gz`` files in ``root``.

    Decoded and normalised once per process for each folder whose files are unchanged (their sizes and times): a
    sweep loads the same data for every run and stage, about 1 s each time otherwise. The tensors of the result
    are then shared between callers, which must not change them in place (nothing in the toolkit does)."""
    root = Path(root or FASHION_MNIST_ROOT)
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST folder not found: {root}; {_FASHION_HOW}")
    stamp = []
    for img, lab in FASHION_FILES.values():
        for name in (img, lab):
            try:
                st = (root / name).stat()
                stamp.append((name, st.st_size, st.st_mtime_ns))
            except OSError:
                stamp.append((name, None, None))  # _read_idx says what is missing
    return _fashion_mnist_cached(str(root.resolve()), tuple(stamp))


@functools.lru_cache(maxsize=2)
def _fashion_mnist_cached(root: str, stamp: tuple) -> ImageData:
    root = Path(root)
    split = {}
    for name, (img, lab) in FASHION_FILES.items():
        x = _read_idx(root / img, 3)
        y = _read_idx(root / lab, 1)
        if x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
            raise DataError(f"{root}: {img} holds {x.shape} images but {lab} {y.shape[0]} labels (expected "
                            f"n x 28 x 28 and n); {_FASHION_HOW}")
        if y.max(initial=0) > 9:
            raise DataError(f"{root / lab}: labels must lie in 0..9, found {int(y.max())}")
        split[name] = (x[:, None], y)
    return _to_image_data("fashion-mnist", split, 10)


def cifar10_folder(root) -> Path:
    """The folder holding CIFAR-10's python batches (``root`` or ``root/cifar-10-batches-py``), after checking that
    every file is there (not that it is readable: ``load_cifar10`` does that).

    Raises:
        DataError: naming what is missing and how to get it.
    """
    if root is None:
        raise DataError(f"CIFAR-10 needs --data-root: {_CIFAR_HOW}")
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    missing = [f for files in CIFAR_FILES.values() for f in files if not (root / f).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 file(s) not found in {root}: {', '.join(missing)}; {_CIFAR_HOW}")
    return root


def dataset_root(dataset: str, root=None) -> str | None:
    """The ``data_root`` to read ``dataset`` from, checked before any work (that the files are there, not that
    they are readable: ``verify_dataset`` does that): ``root`` when it holds the dataset's files; ``None`` for
    synthetic data, and for Fashion-MNIST without ``root`` (the loader's default, the Debian folder).

    A ``root`` that is given must exist. One ``--data-root`` can serve a sweep that mixes datasets: CIFAR-10 must
    be in ``root``, and Fashion-MNIST is read from ``root`` when its files are there, or from the Debian folder
    when ``root`` holds CIFAR-10 instead; a ``root`` that holds neither is refused rather than replaced by the
    Debian folder.

    Raises:
        DataError: the folder or the dataset's files are not there (naming ``--data-root``, the folder and the
            files).
    """
    if dataset not in DATASETS:
        raise DataError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset.startswith("synthetic"):
        return None
    if root is not None and not Path(root).is_dir():
        raise DataError(f"--data-root {root} is not a folder (it does not exist or is a file): give the folder "
                        "holding the dataset's files")
    if dataset == "cifar10":
        cifar10_folder(root)
        return None if root is None else str(root)
    if root is None:
        fashion_mnist_folder(None)
        return None
    if all((Path(root) / f).is_file() for fs in FASHION_FILES.values() for f in fs):
        return str(root)
    try:
        cifar10_folder(root)
    except DataError:
        missing = [f for fs in FASHION_FILES.values() for f in fs if not (Path(root) / f).is_file()]
        raise DataError(f"--data-root {root} holds no Fashion-MNIST (missing {', '.join(missing)}); give the folder "
                        f"that holds its four IDX .gz files, or leave --data-root out to read {FASHION_MNIST_ROOT}")
    fashion_mnist_folder(None)  # root serves CIFAR-10 in a mixed sweep; Fashion-MNIST from the Debian folder
    return None


def verify_dataset(dataset: str, root=None) -> tuple[int, int]:
    """Read ``dataset`` from ``root`` whole, as a run would, so that a missing, truncated or corrupt file is found
    before any work (a few seconds for the real datasets); returns its training and test set sizes.

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    if dataset == "fashion-mnist":
        data = load_fashion_mnist(root)
    elif dataset == "cifar10":
        data = load_cifar10(root)
    else:
        raise DataError(f"dataset must be fashion-mnist or cifar10 (files to verify), got {dataset!r}")
    return data.train_size, int(data.x_test.shape[0])


def load_cifar10(root) -> ImageData:
    """CIFAR-10 (50 000 + 10 000 images of 3×32×32, 10 classes) from the python-pickle batches in ``root`` (or in
    ``root/cifar-10-batches-py``)."""
    root = cifar10_folder(root)
    split = {}
    for name, files in CIFAR_FILES.items():
        xs, ys = [], []
        for f in files:
            path = root / f
            if not path.is_file():
                raise DataError(f"CIFAR-10 file not found: {path}; {_CIFAR_HOW}")
            try:
                with open(path, "rb") as fh:
                    batch = pickle.load(fh, encoding="bytes")
                raw = np.asarray(batch[b"data"])
                labels = np.asarray(batch[b"labels"], dtype=np.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise DataError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                                f"{_CIFAR_HOW}") from None
            # Pixels are bytes: a float or out-of-range array would be cast to uint8 silently and train on garbage.
            if raw.dtype.kind not in "ui" or (raw.size and (raw.min() < 0 or raw.max() > 255)):
                raise DataError(f"{path}: data must be pixels in 0..255 (unsigned bytes), got {raw.dtype} values"
                                + (f" in [{raw.min()}, {raw.max()}]" if raw.size and raw.dtype.kind in "uif" else "")
                                + f"; {_CIFAR_HOW}")
            data = raw.astype(np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
                raise DataError(f"{path}: expected data of shape (n, 3072) and n labels, got {data.shape} and "
                                f"{labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() > 9):
                raise DataError(f"{path}: labels must lie in 0..9")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        split[name] = (np.concatenate(xs), np.concatenate(ys))
    return _to_image_data("cifar10", split, 10)


def _to_image_data(name, split, classes) -> ImageData:
    x_tr = torch.from_numpy(split["train"][0].astype(np.float32) / 255.0)
    x_te = torch.from_numpy(split["test"][0].astype(np.float32) / 255.0)
    # Per-channel statistics of the training split, accumulated in float64.
    mean = x_tr.double().mean(dim=(0, 2, 3), keepdim=True).float()
    std = x_tr.double().std(dim=(0, 2, 3), keepdim=True).float().clamp_min(1e-6)
    return ImageData(name, (x_tr - mean) / std, torch.from_numpy(split["train"][1].astype(np.int64)),
                     (x_te - mean) / std, torch.from_numpy(split["test"][1].astype(np.int64)), classes)


def synthetic(shape=(1, 28, 28), *, train_size=2048, test_size=512, num_classes=10, noise=1.0,
              seed=0) -> ImageData:
    """A learnable synthetic image task: class prototypes (smooth random images) plus Gaussian pixel noise."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    # Smooth prototypes: low-resolution noise upsampled, so that convolutions have structure to find.
    low = torch.randn(num_classes, c, max(2, h // 4), max(2, w // 4), generator=g)
    protos = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = protos[y] + noise * torch.randn(n, c, h, w, generator=g)
        return x, y

    x_tr, y_tr = draw(train_size)
    x_te, y_te = draw(test_size)
    mean, std = x_tr.mean(dim=(0, 2, 3), keepdim=True), x_tr.std(dim=(0, 2, 3), keepdim=True)
    return ImageData(f"synthetic-{'mnist' if c == 1 else 'cifar'}", (x_tr - mean) / std, y_tr,
                     (x_te - mean) / std, y_te, num_classes)


def load_dataset(name: str, *, root=None, train_size: int | None = None, seed: int = 0, pad_to: int | None = None,
                 device="cpu", synthetic_size: int = 2048) -> ImageData:
    """Load ``name`` (one of ``DATASETS``), optionally take a training subset of ``train_size`` and zero-pad the
    images to ``pad_to``, and move everything to ``device``."""
    if name == "fashion-mnist":
        data = load_fashion_mnist(root)
    elif name == "cifar10":
        data = load_cifar10(root if root is not None else os.environ.get("CIFAR10_ROOT"))
    elif name == "synthetic-mnist":
        data = synthetic((1, 28, 28), train_size=synthetic_size, seed=seed)
    elif name == "synthetic-cifar":
        data = synthetic((3, 32, 32), train_size=synthetic_size, seed=seed)
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if train_size is not None:
        data = data.subset(train_size, seed)
    if pad_to is not None:
        data = data.padded(pad_to)
    return data.to(device)


def cpu_rng_state(state, *, what: str = "RNG state") -> torch.Tensor:
    """``state`` as the CPU ``ByteTensor`` that ``torch.set_rng_state`` and ``Generator.set_state`` take (they raise
    ``TypeError`` on anything else, e.g. a state that a checkpoint load mapped onto a GPU); a ``ValueError`` naming
    ``what`` when it is not a byte tensor or cannot be brought to the CPU (a ``meta`` tensor has no data).

    >>> cpu_rng_state(torch.Generator().get_state()).device
    device(type='cpu')
    """
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        kind = f"a {state.dtype} tensor" if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"{what} is {kind}, not an RNG state (a byte tensor)")
    if state.device.type != "cpu":
        try:
            state = state.detach().to("cpu")
        except (RuntimeError, NotImplementedError) as exc:
            raise ValueError(f"{what} is on device {state.device} and cannot be brought to the CPU "
                             f"({str(exc).splitlines()[0][:80]})") from None
    return state.contiguous()


class BatchSampler:
    """Index batches drawn on ``device`` without replacement within an epoch; the batch size may change every
    call. When fewer examples than the batch size remain in the epoch, a new epoch (a new permutation) starts and
    the remainder is dropped.

    Example:
        >>> s = BatchSampler(10, seed=0)
        >>> [len(s.next(4)) for _ in range(3)], s.epoch, s.examples_seen
        ([4, 4, 4], 1, 12)
    """

    def __init__(self, n: int, *, seed: int = 0, device="cpu"):
        if n < 1:
            raise ValueError(f"dataset size must be >= 1, got {n}")
        self.n = int(n)
        self.device = torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.epoch = 0
        self.examples_seen = 0
        self._perm = self._new_perm()
        self._pos = 0

    def _new_perm(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator).to(self.device)

    def next(self, batch_size: int) -> torch.Tensor:
        """The indices of the next batch of ``batch_size`` examples."""
        b = int(batch_size)
        if not 1 <= b <= self.n:
            raise ValueError(f"batch_size must lie in [1, {self.n}] (the training-set size), got {batch_size}")
        if self._pos + b > self.n:
            self._perm = self._new_perm()
            self._pos = 0
            self.epoch += 1
        idx = self._perm[self._pos:self._pos + b]
        self._pos += b
        self.examples_seen += b
        return idx

    @property
    def position(self) -> int:
        """Examples drawn from the current pass (its permutation) so far."""
        return self._pos

    def state_dict(self) -> dict:
        """The sampler's position and random state, for a checkpoint (``load_state_dict`` restores it)."""
        return {"n": self.n, "epoch": self.epoch, "examples_seen": self.examples_seen, "pos": self._pos,
                "perm": self._perm.cpu(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict`` of a sampler over the same number of examples."""
        if state["n"] != self.n:
            raise ValueError(f"sampler state is for a dataset of {state['n']} examples, not {self.n}")
        self.epoch, self.examples_seen, self._pos = state["epoch"], state["examples_seen"], state["pos"]
        self._perm = state["perm"].to(self.device)
        self.generator.set_state(cpu_rng_state(state["generator"], what="the sampler's generator state"))
