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
from collections.abc import Sequence
from pathlib import Path

from ._extras import demo_extras

with demo_extras("python -m betavae_triton.demo", entry_point=__name__ == "__main__"):
    from .config import (
        DISTS,
        ESTIMATORS,
        LOSS_DEFAULTS,
        LOSSES,
        DemoConfig,
        default_device,
        distributed_info,
    )
    from .options import add_shared, non_negative_float, non_negative_int, positive_int
    from .train import run

__all__ = ["build_parser", "main", "parse_config"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m betavae_triton.demo``.

    Returns
    -------
    parser : argparse.ArgumentParser
        Its defaults are those of :class:`betavae_triton.demo.DemoConfig`, except
        ``--device``, which defaults to ``cuda`` when available; :func:`parse_config`
        replaces some of them with ``--loss btcvae`` (see the epilog,
        :data:`betavae_triton.demo.config.LOSS_DEFAULTS`). The options it shares with
        the study are :mod:`.options`' (:data:`~.options.SHARED`).
    """
    parser = argparse.ArgumentParser(
        prog="python -m betavae_triton.demo",
        description=(
            "Train a small convolutional beta-VAE on procedural 64x64 sprites (shape, "
            "scale, rotation, x, y) with betavae_triton.BetaVAELoss (or BetaTCVAELoss) in "
            "a torch.compile'd step; write figures and run.json, print the MIG "
            "disentanglement score. "
            "Under torchrun it trains with DistributedDataParallel."
        ),
        epilog=_epilog(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_run_options(parser, DemoConfig())
    _add_advanced_options(parser.add_argument_group("advanced"), DemoConfig())
    return parser


def _epilog() -> str | None:
    """Which defaults another loss changes (:data:`LOSS_DEFAULTS`), or None if none."""
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
    if not per_loss:
        return None
    return (
        "The defaults shown are the beta-VAE's; these options default otherwise with "
        f"another loss (an option given wins): {per_loss}."
    )


def _add_run_options(parser: argparse.ArgumentParser, d: DemoConfig) -> None:
    """The options of the run itself: device, steps, loss, model, output, optimiser."""
    add_shared(parser, "--device", "demo", default_device())
    parser.add_argument("--steps", type=positive_int, default=d.steps, help="training steps")
    parser.add_argument(
        "--loss",
        choices=LOSSES,
        default=d.loss,
        help="betavae: BetaVAELoss, rec + beta * KL; btcvae: BetaTCVAELoss, rec + mi + "
        "beta * tc + dw_kl (the KL split into index-code mutual information, total "
        "correlation and dimension-wise KL; dataset_size the training sprites of all "
        "ranks; under torchrun the posteriors of the global batch)",
    )
    _add_tcvae_options(parser, d)
    parser.add_argument(
        "--beta",
        type=non_negative_float,
        default=d.beta,
        help="KL weight (--loss btcvae: the total correlation's weight)",
    )
    parser.add_argument(
        "--dist", choices=DISTS, default=d.dist, help="decoder distribution (reconstruction loss)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=d.batch_size, help="images per step and rank"
    )
    add_shared(parser, "--latent-dim", "demo", d.latent_dim)
    add_shared(parser, "--out", "demo", d.out)
    parser.add_argument("--seed", type=non_negative_int, default=d.seed, help="random seed")
    add_shared(parser, "--compile", "demo", d.compile)
    add_shared(parser, "--lr", "demo", d.lr)
    parser.add_argument(
        "--kl-warmup",
        type=non_negative_int,
        default=d.kl_warmup,
        metavar="STEPS",
        help="grow the KL's weight linearly from 0 to beta over the first STEPS steps "
        "(0: the plain beta-VAE loss throughout)",
    )


def _add_tcvae_options(parser: argparse.ArgumentParser, d: DemoConfig) -> None:
    """The β-TCVAE's options: its estimator, its bank and the bank's refresh."""
    parser.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default=d.estimator,
        help="--loss btcvae: the minibatch estimator of q(z), mss (stratified sampling) or "
        "mws (weighted sampling)",
    )
    parser.add_argument(
        "--bank",
        type=non_negative_int,
        default=d.bank,
        metavar="K",
        help="--loss btcvae, --estimator mss: score each sample against the posteriors of "
        "the last K training images too, kept in a bank (0: the batch alone; not given, "
        "the loss's default bank is dropped with --estimator mws or when bank and batch "
        "exceed --n-train)",
    )
    parser.add_argument(
        "--bank-refresh",
        type=non_negative_int,
        default=d.bank_refresh,
        metavar="R",
        help="--bank K, one process: after every update, re-encode the R posteriors of the "
        "bank computed longest ago with the current model (a fresher bank, for an encoder "
        "pass of R images per step; 0: none; not given, the loss's default refresh goes "
        "with its default bank only)",
    )


def _add_advanced_options(group: argparse._ArgumentGroup, d: DemoConfig) -> None:
    """The options few runs change: data sizes, model width, logging, the DDP check."""
    add_shared(group, "--n-train", "demo", d.n_train)
    add_shared(group, "--n-eval", "demo", d.n_eval)
    add_shared(group, "--channels", "demo", d.channels)
    group.add_argument(
        "--log-every",
        type=positive_int,
        default=d.log_every,
        help="steps between progress-bar updates (each reads the losses back)",
    )
    group.add_argument(
        "--tc-track",
        type=non_negative_int,
        default=d.tc_track,
        metavar="STEPS",
        help="--loss btcvae, one process: every STEPS steps, measure the bias of the "
        "minibatch TC estimate (with and without the bank) against the estimate over "
        "every held-out sprite, into run.json's tc_track (0: never)",
    )
    group.add_argument(
        "--check-params",
        type=Path,
        default=None,
        metavar="PATH",
        help="each rank saves its final parameters and data checksum to PATH.rank<r>.pt",
    )


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
    _drop_default_bank(parser, args, argv)
    if args.batch_size > args.n_train:
        parser.error(
            f"--batch-size {args.batch_size} exceeds --n-train {args.n_train} sprites per rank"
        )
    if args.loss == "btcvae" and args.batch_size < 2:
        parser.error("--loss btcvae needs --batch-size 2 or more (q(z) is a batch estimate)")
    _check_bank(parser, args)
    if args.latent_dim < 2:
        parser.error("--latent-dim must be at least 2 (the MIG compares the top two latents)")
    return DemoConfig(**vars(args))


def _drop_default_bank(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None
) -> None:
    """A default bank yields to the estimator and data set asked for; a default refresh
    goes with the default bank only (not with a bank given, nor under torchrun's several
    processes, which it does not serve). A bank or refresh given on the command line stays,
    and is checked."""
    given = parser.parse_args(argv, argparse.Namespace(bank=None, bank_refresh=None))
    if given.bank is None and (
        args.estimator != "mss" or args.bank + args.batch_size > args.n_train
    ):
        args.bank = 0
    default_bank = given.bank is None and args.bank
    if given.bank_refresh is None and not (default_bank and not distributed_info().distributed):
        args.bank_refresh = 0


def _check_bank(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse errors for the bank's options that cannot go together."""
    if args.loss != "btcvae" and (args.bank or args.tc_track):
        parser.error("--bank and --tc-track need --loss btcvae")
    if args.bank and args.estimator != "mss":
        parser.error("--bank needs --estimator mss (the weights of a bank are mss's)")
    if args.bank + args.batch_size > args.n_train:
        parser.error(
            f"--bank {args.bank} and --batch-size {args.batch_size} exceed --n-train "
            f"{args.n_train}: the batch and the bank hold at most the data set"
        )
    if args.bank_refresh > args.bank:
        parser.error(
            f"--bank-refresh {args.bank_refresh} needs a --bank of at least as many posteriors"
            f" (--bank {args.bank})"
        )


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
