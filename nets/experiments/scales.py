"""The three scales of every network experiment and the training set-up of each: ``smoke`` (synthetic data and a
narrow MLP: the pipeline in seconds), ``small`` (real Fashion-MNIST, minutes per run on a 2-core CPU) and ``full``
(the paper's settings, for a GPU)."""

from __future__ import annotations

from dataclasses import replace

from nets.data import dataset_root
from nets.train import TrainConfig

__all__ = ["SCALES", "PAPER_DATASET", "base_config", "measure_options", "seed_words", "seeds_for", "with_"]

SCALES = ("smoke", "small", "full")


#: The dataset the paper trains each model on (its full scale): the MLP on Fashion-MNIST, the convolutional
#: networks on CIFAR-10.
PAPER_DATASET = {"mlp": "fashion-mnist", "vgg11": "cifar10", "resnet56": "cifar10"}


def base_config(scale: str, args, *, model: str = "mlp", conv_width: float = 0.25) -> TrainConfig:
    """The training set-up of one panel at a scale.

    smoke: synthetic 28x28 data and a narrow MLP whatever the panel's model (the pipeline in seconds); small: real
    Fashion-MNIST (the MLP; the convolutional models at ``conv_width`` on images zero-padded to 32x32), minutes on
    a 2-core CPU; full: the paper's model and dataset (``PAPER_DATASET``), 200 epochs, for a GPU. At full scale
    CIFAR-10 must be in ``--data-root``; another dataset is used only when ``--dataset`` asks for it.

    Raises:
        ValueError: (``nets.data.DataError``) CIFAR-10 is needed and ``--data-root`` does not hold it.
    """
    device = args.device
    asked = getattr(args, "dataset", None)
    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {SCALES}, got {scale!r}")
    default = {"smoke": "synthetic-mnist", "small": "fashion-mnist", "full": PAPER_DATASET[model]}[scale]
    dataset = asked or default
    root = dataset_root(dataset, args.data_root)  # before any run: the files must be there
    if scale == "smoke":
        return TrainConfig(dataset=dataset, synthetic_size=512, test_size=256, eval_train_size=512, model="mlp",
                           width=0.125, epochs=2, device=device, eval_batch_size=512, data_root=root)
    if scale == "small":
        if model == "mlp":
            return TrainConfig(dataset=dataset, model="mlp", width=1.0, epochs=5, train_size=20000,
                               test_size=5000, eval_train_size=5000, data_root=root, device=device)
        return TrainConfig(dataset=dataset, model=model, width=conv_width, epochs=6, train_size=10000,
                           test_size=2000, eval_train_size=2000, data_root=root, device=device,
                           eval_batch_size=500)
    return TrainConfig(dataset=dataset, model=model, width=1.0, epochs=200, data_root=root, device=device,
                       eval_train_size=10000)


def measure_options(scale: str) -> dict:
    """Keyword arguments of ``nets.measure.measure_run`` for a scale."""
    # No power-iteration cross-check of Lanczos in the sweeps: it spent a third of the measurement's Hessian-vector
    # products on a number Lanczos (converged, which every result records) already has.
    if scale == "smoke":
        return dict(measure_size=128, probes=4, device="cpu", cross_check=False)
    if scale == "small":
        return dict(measure_size=1000, probes=16, device="auto", cross_check=False)
    return dict(measure_size=5000, probes=32, device="auto", cross_check=False)


def with_(cfg: TrainConfig, **kw) -> TrainConfig:
    """A copy of ``cfg`` with the fields ``kw`` changed."""
    return replace(cfg, **kw)


def seed_words(scale: str, args, default_small: int = 1, default_full: int | None = None) -> str:
    """The number of seeds a sweep runs (``seeds_for``) in words, for a report's choices: "1 seed", "3 seeds"."""
    n = len(seeds_for(scale, args, default_small, default_full))
    return f"{n} seed{'s' if n != 1 else ''}"


def seeds_for(scale: str, args, default_small: int = 1, default_full: int | None = None) -> list[int]:
    """The seeds of a scale: ``--seeds N`` gives 0..N-1; otherwise 1 at smoke scale, ``default_small`` at small
    scale and ``default_full`` (default ``default_small``) at full scale."""
    default = {"smoke": 1, "small": default_small, "full": default_full or default_small}[scale]
    n = getattr(args, "seeds", None) or default  # args None: the defaults (a listing of the choices)
    return list(range(n))
