"""Command line of the demo: ``python -m betavae_triton.demo [options]``.

Trains a small convolutional beta-VAE on 64x64 sprites generated in-process, with
:class:`betavae_triton.BetaVAELoss` (or, with ``--loss btcvae``,
:class:`betavae_triton.BetaTCVAELoss`) inside a ``torch.compile``d step, then writes
``reconstructions.png``, ``traversals.png``, ``kl_per_dim.png``, ``loss_curves.png`` and
``run.json`` to ``--out`` and prints the MIG disentanglement score. Under
``torchrun --nproc-per-node N -m betavae_triton.demo`` it trains with
DistributedDataParallel, one data shard per rank.

Without the ``demo`` extra (numpy, matplotlib, tqdm) the command exits with status 1 and
a message naming it (``pip install "betavae-triton[demo]"``), ``--help`` included.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ._extras import demo_extras

with demo_extras("python -m betavae_triton.demo", entry_point=__name__ == "__main__"):
    from .train import (
        ESTIMATORS,
        LOSS_DEFAULTS,
        LOSSES,
        DemoConfig,
        default_device,
        distributed_info,
        run,
    )

DISTS = ("bernoulli", "normal", "laplace")


def _int(text: str, *, allow_zero: bool) -> int:
    kind = "non-negative" if allow_zero else "positive"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"must be a {kind} integer, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int(text, allow_zero=False)


def _non_negative_int(text: str) -> int:
    return _int(text, allow_zero=True)


def _float(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value == value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    if value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise argparse.ArgumentTypeError(f"must be {kind}, got {value:g}")
    return value


def _non_negative_float(text: str) -> float:
    return _float(text, allow_zero=True)


def _positive_float(text: str) -> float:
    return _float(text, allow_zero=False)


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r} asked for, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); use --device cpu"
            )
        index = torch.device(text).index
        if index is not None and index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m betavae_triton.demo``.

    Returns
    -------
    parser : argparse.ArgumentParser
        Its defaults are those of :class:`betavae_triton.demo.DemoConfig`, except
        ``--device``, which defaults to ``cuda`` when available; :func:`parse_config`
        replaces some of them with ``--loss btcvae`` (see the epilog,
        :data:`betavae_triton.demo.train.LOSS_DEFAULTS`).
    """
    d = DemoConfig()
    changed = {  # per loss, the defaults that differ from the beta-VAE's
        loss: {k: v for k, v in over.items() if getattr(d, k) != v}
        for loss, over in LOSS_DEFAULTS.items()
    }
    per_loss = "; ".join(
        f"--loss {loss}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in over.items())
        for loss, over in changed.items()
        if over
    )
    parser = argparse.ArgumentParser(
        prog="python -m betavae_triton.demo",
        description=(
            "Train a small convolutional beta-VAE on procedural 64x64 sprites (shape, "
            "scale, rotation, x, y) with betavae_triton.BetaVAELoss (or BetaTCVAELoss) in "
            "a torch.compile'd step; write figures and run.json, print the MIG "
            "disentanglement score. "
            "Under torchrun it trains with DistributedDataParallel."
        ),
        epilog=(
            "The defaults shown are the beta-VAE's; these options default otherwise with "
            f"another loss (an option given wins): {per_loss}."
        )
        if per_loss
        else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--device",
        type=_device,
        default=default_device(),
        help="cpu, cuda or cuda:N; the default is cuda when present, else cpu. On CUDA the "
        "loss runs its Triton kernels, on cpu its eager path, fused by torch.compile",
    )
    parser.add_argument("--steps", type=_positive_int, default=d.steps, help="training steps")
    parser.add_argument(
        "--loss",
        choices=LOSSES,
        default=d.loss,
        help="betavae: BetaVAELoss, rec + beta * KL; btcvae: BetaTCVAELoss, rec + mi + "
        "beta * tc + dw_kl (the KL split into index-code mutual information, total "
        "correlation and dimension-wise KL; dataset_size the training sprites of all "
        "ranks; under torchrun the posteriors of the global batch)",
    )
    parser.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default=d.estimator,
        help="--loss btcvae: the minibatch estimator of q(z), mss (stratified sampling) or "
        "mws (weighted sampling)",
    )
    parser.add_argument(
        "--beta",
        type=_non_negative_float,
        default=d.beta,
        help="KL weight (--loss btcvae: the total correlation's weight)",
    )
    parser.add_argument(
        "--dist", choices=DISTS, default=d.dist, help="decoder distribution (reconstruction loss)"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=d.batch_size, help="images per step and rank"
    )
    parser.add_argument(
        "--latent-dim", type=_positive_int, default=d.latent_dim, help="latent dimensions"
    )
    parser.add_argument("--out", type=Path, default=d.out, help="output folder")
    parser.add_argument("--seed", type=_non_negative_int, default=d.seed, help="random seed")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=d.compile,
        help="run the loss step under torch.compile; --no-compile runs it eagerly",
    )
    parser.add_argument("--lr", type=_positive_float, default=d.lr, help="Adam learning rate")
    parser.add_argument(
        "--kl-warmup",
        type=_non_negative_int,
        default=d.kl_warmup,
        metavar="STEPS",
        help="grow the KL's weight linearly from 0 to beta over the first STEPS steps "
        "(0: the plain beta-VAE loss throughout)",
    )
    adv = parser.add_argument_group("advanced")
    adv.add_argument(
        "--n-train", type=_positive_int, default=d.n_train, help="training sprites per rank"
    )
    adv.add_argument(
        "--n-eval", type=_positive_int, default=d.n_eval, help="held-out sprites for MIG and KL"
    )
    adv.add_argument(
        "--channels", type=_positive_int, default=d.channels, help="convolution channels"
    )
    adv.add_argument(
        "--log-every",
        type=_positive_int,
        default=d.log_every,
        help="steps between progress-bar updates (each reads the losses back)",
    )
    adv.add_argument(
        "--check-params",
        type=Path,
        default=None,
        metavar="PATH",
        help="each rank saves its final parameters and data checksum to PATH.rank<r>.pt",
    )
    return parser


def parse_config(argv: Sequence[str] | None = None) -> DemoConfig:
    """Parse the command line into a :class:`~betavae_triton.demo.DemoConfig`.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments; ``sys.argv[1:]`` by default.

    Returns
    -------
    config : DemoConfig
        The settings.

    Raises
    ------
    SystemExit
        With status 2 and a message, on a bad argument (argparse's convention).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if LOSS_DEFAULTS[args.loss]:  # the loss's own defaults; what the command line gave wins
        parser.set_defaults(**LOSS_DEFAULTS[args.loss])
        args = parser.parse_args(argv)
    if args.batch_size > args.n_train:
        parser.error(
            f"--batch-size {args.batch_size} exceeds --n-train {args.n_train} sprites per rank"
        )
    if args.loss == "btcvae" and args.batch_size < 2:
        parser.error("--loss btcvae needs --batch-size 2 or more (q(z) is a batch estimate)")
    if args.latent_dim < 2:
        parser.error("--latent-dim must be at least 2 (the MIG compares the top two latents)")
    return DemoConfig(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments; ``sys.argv[1:]`` by default.

    Returns
    -------
    status : int
        0 on success.
    """
    config = parse_config(argv)
    run(config, distributed_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
