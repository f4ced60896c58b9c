"""The study's command line: ``python -m betavae_triton.demo.study --help``.

:func:`build_parser` lays out the options (those the demo also takes from
:data:`.options.SHARED`, the study's own here); :func:`parse_study` turns the command line
into a :class:`.study_grid.Study` and checks what argparse alone cannot (disjoint seeds,
warm-up fractions, batch sizes within the data, a shard only within one phase).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .config import ESTIMATORS, LOSSES
from .options import add_shared, non_negative_int, seeds, shard
from .study_grid import DEFAULT_OUT, PRESETS, QUICK, Budget, Study, make_grid
from .study_report import README_BEGIN, README_END

__all__ = ["build_parser", "parse_study"]


def build_parser() -> argparse.ArgumentParser:
    """The study's command line (``python -m betavae_triton.demo.study --help``).

    Returns
    -------
    parser : argparse.ArgumentParser
        The grid axes default to ``None`` (the ``--grid`` preset's then); the budget's
        defaults are :class:`Budget`'s.
    """
    parser = argparse.ArgumentParser(
        prog="python -m betavae_triton.demo.study",
        description=(
            "Train the demo's model with the beta-VAE and the beta-TCVAE over a grid of batch "
            "sizes (at equal images seen), betas, KL warm-ups and estimators; choose each "
            "loss's best median MIG on the selection seeds and report it on the held-out "
            "seeds. Each finished run is a JSON record under OUT/runs, which a rerun skips; "
            "the report is OUT/study.json, OUT/study.md, OUT/mig_vs_batch.png and "
            "OUT/tc_bias.png."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_study_options(parser)
    _add_grid_options(parser)
    _add_budget_options(parser.add_argument_group("budget (shared by every run)"), Budget())
    return parser


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    """Where the study writes, which phase runs, and its seeds."""
    add_shared(parser, "--out", "study", DEFAULT_OUT)
    parser.add_argument(
        "--phase",
        choices=("select", "heldout", "all"),
        default="all",
        help="select: the grid on the selection seeds; heldout: each loss's chosen point "
        "on the held-out seeds (needs a finished selection); all: both, in turn",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: rebuild the report"
    )
    parser.add_argument(
        "--readme",
        type=Path,
        metavar="FILE",
        help="also write study.md into FILE, between its lines "
        f"{README_BEGIN!r} and {README_END!r} (for an --out folder not named 'study', "
        "its name before study.md in both)",
    )
    parser.add_argument(
        "--shard",
        type=shard,
        default=(0, 1),
        metavar="K/N",
        help="run every N-th run of the phase, from the K-th (0-based): N processes "
        "with K = 0..N-1 and one --out share a phase; needs --phase select or heldout",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="four tiny eager runs for the tests (overrides the grid, seeds and budget)",
    )
    parser.add_argument(
        "--seeds-select",
        type=seeds,
        default="0-4",
        metavar="SEEDS",
        help="the selection's seeds, e.g. 0-4 or 0,2,5",
    )
    parser.add_argument(
        "--seeds-heldout",
        type=seeds,
        default="5-14",
        metavar="SEEDS",
        help="the held-out seeds (none shared with the selection's)",
    )


def _add_grid_options(parser: argparse.ArgumentParser) -> None:
    """The grid: a preset, the losses, and the axes that replace the preset's."""
    parser.add_argument(
        "--grid",
        choices=tuple(PRESETS),
        default="paper",
        help="the grid's axes: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k} {' '.join(map(str, v))}" for k, v in p.items())
            for name, p in PRESETS.items()
        ),
    )
    parser.add_argument(
        "--losses", nargs="+", choices=LOSSES, default=list(LOSSES), help="the losses compared"
    )
    grid = parser.add_argument_group(
        "grid axes (each, when given, replaces the --grid preset's)",
    )
    grid.argument_default = argparse.SUPPRESS
    grid.add_argument("--batch-sizes", nargs="+", type=int, metavar="B", help="batch sizes")
    grid.add_argument(
        "--betas", nargs="+", type=float, metavar="BETA", help="KL (beta-TCVAE: TC) weights"
    )
    grid.add_argument(
        "--warmups",
        nargs="+",
        type=float,
        metavar="FRAC",
        help="KL warm-up lengths, fractions of the run's steps in [0, 1)",
    )
    grid.add_argument(
        "--estimators",
        nargs="+",
        choices=ESTIMATORS,
        help="the beta-TCVAE's estimators of q(z) (the beta-VAE has none)",
    )
    grid.add_argument(
        "--bank",
        dest="banks",
        nargs="+",
        type=non_negative_int,
        metavar="K",
        help="the beta-TCVAE's banks of posteriors with mss (0: none); a run with a bank "
        "also measures its TC estimate's bias during training",
    )
    grid.add_argument(
        "--bank-refresh",
        dest="bank_refreshes",
        nargs="+",
        type=non_negative_int,
        metavar="R",
        help="with a bank: posteriors of the bank re-encoded after every update (0: none; "
        "an R larger than the bank is skipped)",
    )


def _add_budget_options(budget: argparse._ArgumentGroup, d: Budget) -> None:
    """What every run shares: images seen, the optimiser, data and model sizes, device."""
    budget.add_argument(
        "--steps-images",
        type=int,
        default=d.images,
        metavar="N",
        help="training images seen per run (steps = N // batch size)",
    )
    add_shared(budget, "--lr", "study", d.lr)
    add_shared(budget, "--n-train", "study", d.n_train)
    add_shared(budget, "--n-eval", "study", d.n_eval)
    add_shared(budget, "--latent-dim", "study", d.latent_dim)
    add_shared(budget, "--channels", "study", d.channels)
    add_shared(budget, "--compile", "study", d.compile)
    add_shared(budget, "--device", "study", d.device)


def _budget(args: argparse.Namespace) -> Budget:
    """The budget that the command line gives (``--quick``: :data:`QUICK`'s)."""
    if args.quick:
        return Budget(**QUICK["budget"])
    return Budget(
        images=args.steps_images,
        lr=args.lr,
        n_train=args.n_train,
        n_eval=args.n_eval,
        latent_dim=args.latent_dim,
        channels=args.channels,
        compile=args.compile,
        device=args.device,
    )


def parse_study(argv: Sequence[str] | None = None) -> tuple[Study, argparse.Namespace]:
    """Parse the command line into a :class:`Study` (and the namespace, for the phase).

    Raises
    ------
    SystemExit
        With status 2 and a message, on a bad argument.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        axes, seeds_select, seeds_heldout = (
            QUICK["grid"],
            QUICK["seeds_select"],
            QUICK["seeds_heldout"],
        )
    else:
        preset = PRESETS[args.grid]
        axes = {k: getattr(args, k, None) or preset[k] for k in preset}
        seeds_select, seeds_heldout = args.seeds_select, args.seeds_heldout
    budget = _budget(args)
    if args.shard[1] > 1 and args.phase == "all" and not args.report_only:
        parser.error(
            "--shard needs --phase select or heldout (the shards of the selection "
            "must all finish before the held-out runs start)"
        )
    if set(seeds_select) & set(seeds_heldout):
        parser.error("--seeds-select and --seeds-heldout must not share a seed")
    if any(not 0 <= w < 1 for w in axes["warmups"]):
        parser.error("--warmups are fractions of the run, in [0, 1)")
    if any(b < 2 or b > budget.n_train for b in axes["batch_sizes"]):
        parser.error(f"--batch-sizes must lie in [2, --n-train {budget.n_train}]")
    if max(axes["banks"]) + max(axes["batch_sizes"]) > budget.n_train:
        parser.error(f"a --bank and a batch size together exceed --n-train {budget.n_train}")
    if budget.latent_dim < 2:
        parser.error("--latent-dim must be at least 2 (the MIG compares the top two latents)")
    grid = make_grid(args.losses, **axes)
    study = Study(grid, tuple(seeds_select), tuple(seeds_heldout), budget, args.out)
    return study, args
