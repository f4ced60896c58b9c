"""The β-TCVAE suite: the (B, D) it races its contenders at, the contenders, its targets and
options; ``python -m perf.btcvae``.

Times forward + backward of loss = α·mi + β·tc + γ·dw_kl (α = 1, β = 6, γ = 1; float32;
estimator "mss"; N = 60000) at (B, D) = (32, 6), (64, 10), (128, 16), then for B in 256,
1024, 4096 and D in 10, 32, 128, and measures
each step's peak extra memory: the bytes it allocates beyond its inputs. Contenders:

==================== =========================================================================
``ours-triton``      ``betavae_triton.kl_decomposition(..., backend="triton")`` (GPU only)
``ours-eager``       the same with ``backend="eager"``: on a CPU the C kernels
                     (``tcvae/minibatch.c``), backward by recomputation
``ours-compiled``    ``torch.compile`` of a function that calls ours (the default backend:
                     the kernels of the device), what a user's compiled training step runs
``formula``          the B×B×D formula as public implementations write it (Chen et al.'s
                     ``_log_density`` pairwise tensor, ``logsumexp`` over dim 1), float32
``formula-compiled`` ``torch.compile`` (inductor) of ``formula``
==================== =========================================================================

"ours" is ``ours-triton`` on a GPU and ``ours-eager`` on a CPU: the targets are held to it
(and to ``ours-compiled`` against ``formula-compiled``). Without ``--quick``, a global
batch (``--global-batch``, default 16384 × 32) is also timed in one process and as
``gather=True`` over two gloo ranks, where no B×B×D formula fits in memory.
The formula contenders are skipped, with their predicted peak, where it exceeds
``--memory-cap``. Then ours with a bank of K earlier posteriors (``--bank``, default K = 0
… 65536 at B = 64, D = 10; :mod:`perf.bank`). Writes a table to the terminal and
``btcvae_<device>.json`` / ``.txt`` under ``--out`` (default ``perf/out/``). Also runs as
``python perf/btcvae.py``.

Peak extra memory is counted by :mod:`perf.memory` (the CUDA allocator's statistics on a
GPU, torch's allocation events under the profiler on a CPU), which also checks its own
counter; the suite runs as :mod:`perf.tcvae_run` says.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python perf/btcvae.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import cli, tcvae_contenders
from perf.contenders import Contender, names
from perf.report import DEFAULT_OUT
from perf.tcvae_run import TcvaeSuite, run

__all__ = ["CONTENDERS", "DEFAULT_OUT", "OPTIONS", "SUITE", "main", "parse_args"]

#: Every contender, in table order.
CONTENDERS = (
    Contender("ours-triton", tcvae_contenders.ours("triton"), needs="triton"),
    Contender("ours-eager", tcvae_contenders.ours("eager")),
    Contender("ours-compiled", tcvae_contenders.ours_compiled, compiled=True),
    Contender("formula", tcvae_contenders.formula),
    Contender("formula-compiled", tcvae_contenders.formula_compiled, compiled=True),
)
SUITE = TcvaeSuite(
    contenders=CONTENDERS,
    ours_on_gpu="ours-triton",
    ours_on_cpu="ours-eager",
    # Where most β-TCVAE training happens: timed before the grid, with --quick too.
    small_cases=((32, 6), (64, 10), (128, 16)),
    batches=(256, 1024, 4096),
    latents=(10, 32, 128),
    quick_batches=(256, 1024),
    quick_latents=(10, 32),
    global_batch=(16384, 32),
    gather_ranks=2,
    memory_target=(4096, 128, 64 * 2**20),
    # A bank of K earlier posteriors at B = 64, D = 10 (what the study trains with).
    bank_case=(64, 10),
    bank_sizes=(0, 1024, 4096, 16384, 65536),
    bank_target_bytes=64 * 2**20,
    cpu_memory_cap_gib=8.0,
    gpu_memory_cap_share=0.6,
)
_NAMES = names(CONTENDERS)
OPTIONS = (
    cli.option(
        "--quick", action="store_true", help="B in 256 1024, D in 10 32, short budgets, one round"
    ),
    cli.DEVICE,
    cli.option("--batch", type=int, nargs="+", metavar="B", help="batch sizes"),
    cli.option("--latent", type=int, nargs="+", metavar="D", help="latent sizes"),
    cli.option(
        "--contenders",
        nargs="+",
        choices=_NAMES,
        metavar="NAME",
        help=f"{' '.join(_NAMES)} (default: every one that runs here)",
    ),
    cli.option(
        "--memory-cap",
        type=float,
        metavar="GIB",
        help=f"skip a contender whose predicted peak exceeds this (default: "
        f"{SUITE.cpu_memory_cap_gib:.0f} on a CPU, {100 * SUITE.gpu_memory_cap_share:.0f}%% of "
        "a GPU's memory)",
    ),
    cli.option(
        "--rounds",
        type=int,
        metavar="R",
        help="interleaved timing rounds (default: 2, 1 with --quick)",
    ),
    cli.option(
        "--quiet-budget",
        type=float,
        metavar="S",
        help="CPU: seconds the run may spend in all waiting for other processes to leave "
        "the CPUs (default: 600, 0 with --quick)",
    ),
    cli.option("--threads", type=int, metavar="N", help="CPU threads for torch"),
    cli.OUT,
    cli.option(
        "--global-batch",
        type=int,
        nargs=2,
        metavar=("B", "D"),
        help=f"the global batch timed in one process and with gather=True (default: "
        f"{SUITE.global_batch[0]} {SUITE.global_batch[1]}, not with --quick; 0 0: none)",
    ),
    cli.option("--no-progress", action="store_true", help="no progress lines"),
    cli.option(
        "--bank",
        type=int,
        nargs="*",
        metavar="K",
        help=f"bank sizes timed at B, D = {SUITE.bank_case[0]}, {SUITE.bank_case[1]} "
        f"(default: {' '.join(map(str, SUITE.bank_sizes))}, none with --quick; no K: none)",
    ),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (:data:`OPTIONS`; None reads ``sys.argv``)."""
    description = __doc__.split("\n\n")[1].removesuffix(" Contenders:")
    description += f" Contenders: {', '.join(_NAMES)} (see the module's docstring)."
    return cli.parse("python -m perf.btcvae", description, OPTIONS, argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m perf.btcvae``; 0 on success."""
    return cli.exit_status(functools.partial(run, SUITE), parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
