"""The β-VAE suite: the workloads and the contenders it races, its options;
``python -m perf.bench [--quick] [options]``.

Races ``betavae_triton`` (Triton kernels on a GPU, the eager path, the eager path under
``torch.compile``) against nidl's ``BetaVAELoss`` and ``torch.compile`` of the reference's
plain maths, on named workloads (sprites, faces, mri, mri-bf16, mri64) and a sweep of
sizes, forward alone and forward + backward. Writes a table to the terminal and, under
``--out`` (default ``perf/out/``), a JSON file of every figure, the table as text, and a
PNG of effective bandwidth against size on the sweep. Also runs as ``python perf/bench.py``.

On a GPU the timer is ``triton.testing.do_bench``; on a CPU ``torch.utils.benchmark``, and
the Triton contender is left out there (it would run under the Triton interpreter, whose
timings mean nothing). nidl's code is read at run time from the installed package or from
``--nidl PATH`` (a wheel, its ``beta_vae.py``, or a folder holding the package), never
copied into this repository.

Effective bandwidth is the fewest bytes the step must move divided by its median time:
forward reads p and x; forward + backward also writes p's gradient. The latent tensors are
left out of that count.

torch.distributions argument validation is off for every contender while timing (it scans
the tensors and syncs with the device; ``--validate-args`` keeps it on).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python perf/bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from perf import cli, vae_contenders
from perf.contenders import Contender, names
from perf.nidl import NIDL_VERSION
from perf.report import DEFAULT_OUT
from perf.vae_run import VaeSuite, run
from perf.workloads import MODES, Sweep, Workload, Workloads

__all__ = ["CONTENDERS", "DEFAULT_OUT", "OPTIONS", "SUITE", "WORKLOADS", "main", "parse_args"]

#: Every contender, in table order.
CONTENDERS = (
    Contender("triton", vae_contenders.ours("triton"), needs="triton"),
    Contender("eager", vae_contenders.ours("eager")),
    Contender("eager+compile", vae_contenders.ours_compiled, compiled=True),
    Contender("nidl", vae_contenders.nidl, needs="nidl"),
    Contender("compiled-ref", vae_contenders.compiled_reference, compiled=True),
)
#: The named workloads (the README's "Benchmark"), and issue 2's ``mri64``; ``--quick``
#: takes sprites and faces at an eighth of their batch, and the sweep up to 2^20.
WORKLOADS = Workloads(
    named=(
        Workload("sprites", (256, 1, 64, 64), "bernoulli", 10),
        Workload("faces", (128, 3, 64, 64), "normal", 32),
        Workload("mri", (8, 1, 128, 128, 128), "normal", 128),
        Workload("mri-bf16", (8, 1, 128, 128, 128), "normal", 128, torch.bfloat16),
        Workload("mri64", (8, 1, 64, 64, 64), "normal", 128),
    ),
    quick=(
        Workload("sprites", (32, 1, 64, 64), "bernoulli", 10),
        Workload("faces", (16, 3, 64, 64), "normal", 32),
    ),
    sweep=Sweep(batch=8, latent=128, log2_min=16, log2_max=28),
    quick_sweep_max=20,
)
SUITE = VaeSuite(
    contenders=CONTENDERS,
    workloads=WORKLOADS,
    # Relative error against the float64 oracle above which a row is flagged.
    tolerance={torch.float32: 1e-3, torch.float64: 1e-9, torch.bfloat16: 3e-2, torch.float16: 5e-3},
    nidl_cache=DEFAULT_OUT / "nidl-cache",
)
_NAMES = names(CONTENDERS)
OPTIONS = (
    cli.option(
        "--quick",
        action="store_true",
        help="small subset, short budgets: sprites and faces at 1/8 batch, 3-point sweep",
    ),
    cli.option(
        "--workloads",
        nargs="+",
        metavar="NAME",
        help="sprites faces mri mri-bf16 mri64 sweep sweep-2^K (default: all)",
    ),
    cli.option(
        "--contenders",
        nargs="+",
        metavar="NAME",
        choices=_NAMES,
        help=f"{' '.join(_NAMES)} (default: every one that can run here)",
    ),
    cli.option("--modes", nargs="+", choices=MODES, default=list(MODES), help="default: both"),
    cli.DEVICE,
    cli.option(
        "--nidl",
        metavar="PATH",
        help=f"a nidl-{NIDL_VERSION} wheel (.whl), nidl's losses/beta_vae.py, or a folder "
        "holding the nidl package; `none` leaves nidl out; `download` runs `pip download "
        f"nidl=={NIDL_VERSION} --no-deps` into perf/out/nidl-cache/ "
        "(default: the installed nidl package, else a wheel already in that cache)",
    ),
    cli.OUT,
    cli.option(
        "--sweep-max",
        type=int,
        metavar="K",
        help=f"largest sweep size 2^K (default: {WORKLOADS.sweep.log2_max})",
    ),
    cli.option(
        "--validate-args",
        action="store_true",
        help="keep torch.distributions argument validation on while timing",
    ),
    cli.option(
        "--rounds",
        type=int,
        metavar="R",
        help="interleaved timing rounds per contender, fastest median kept "
        "(default: 3 on a GPU, 2 on a CPU, 1 with --quick)",
    ),
    cli.option(
        "--quiet-budget",
        type=float,
        metavar="S",
        help="CPU: seconds the run may spend in all waiting for other processes to leave "
        "the CPUs before a measurement (default: 600, 0 with --quick)",
    ),
    cli.option("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's)"),
    cli.option("--no-progress", action="store_true", help="no progress bar"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (:data:`OPTIONS`; None reads ``sys.argv``)."""
    return cli.parse("python -m perf.bench", __doc__.split("\n\n")[1], OPTIONS, argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m perf.bench``: 0 on success, 2 on a bad option value."""
    run_suite = functools.partial(run, SUITE)
    return cli.exit_status(run_suite, parse_args(argv), (ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
