"""The three scales of every network experiment and the training set-up of each: ``smoke`` (synthetic data and a
narrow MLP: the pipeline in seconds), ``small`` (real Fashion-MNIST, minutes per run on a 2-core CPU) and ``full``
(the paper's settings, for a GPU)."""

from __future__ import annotations

from dataclasses import replace

from nets.train import TrainConfig

__all__ = ["SCALES", "base_config", "measure_options", "seeds_for", "with_"]

SCALES = ("smoke", "small", "full")


def base_config(scale: str, args, *, model: str = "mlp", conv_width: float = 0.25) -> TrainConfig:
    """The training set-up of a scale. smoke: synthetic 28x28 data and a narrow MLP, seconds per run; small: real
    Fashion-MNIST (the MLP; the convolutional models at ``conv_width`` on images padded to 32x32), minutes on a
    2-core CPU; full: the paper's scale, CIFAR-10 when ``--data-root`` names it (else Fashion-MNIST), on a GPU."""
    device = args.device
    if scale == "smoke":
        return TrainConfig(dataset="synthetic-mnist", synthetic_size=512, test_size=256, eval_train_size=512,
                           model="mlp", width=0.125, epochs=2, device=device, eval_batch_size=512)
    if scale == "small":
        if model == "mlp":
            return TrainConfig(dataset="fashion-mnist", model="mlp", width=1.0, epochs=5, train_size=20000,
                               test_size=5000, eval_train_size=5000, data_root=args.data_root, device=device)
        return TrainConfig(dataset="fashion-mnist", model=model, width=conv_width, epochs=6, train_size=10000,
                           test_size=2000, eval_train_size=2000, data_root=args.data_root, device=device,
                           eval_batch_size=500)
    if scale == "full":
        cifar = args.data_root is not None and model != "mlp"
        return TrainConfig(dataset="cifar10" if cifar else "fashion-mnist", model=model, width=1.0, epochs=200,
                           data_root=args.data_root, device=device, eval_train_size=10000)
    raise ValueError(f"--scale must be one of {SCALES}, got {scale!r}")


def measure_options(scale: str) -> dict:
    """Keyword arguments of ``nets.measure.measure_run`` for a scale."""
    if scale == "smoke":
        return dict(measure_size=128, probes=4, device="cpu")
    if scale == "small":
        return dict(measure_size=1000, probes=16, device="auto")
    return dict(measure_size=5000, probes=32, device="auto")


def with_(cfg: TrainConfig, **kw) -> TrainConfig:
    """A copy of ``cfg`` with the fields ``kw`` changed."""
    return replace(cfg, **kw)


def seeds_for(scale: str, args, default_small: int = 1) -> list[int]:
    """The seeds of a scale: ``--seeds N`` gives 0..N-1; otherwise 1 at smoke scale, ``default_small`` above."""
    n = args.seeds or (1 if scale == "smoke" else default_small)
    return list(range(n))
