"""GPU code quality without a GPU: compile every kernel specialization the API launches.

The codegen suite: the cases whose launches are compiled (:func:`cases`) and the options;
``python -m perf.codegen [--arch 90 80] [--quick] [--out perf/out]`` (any machine with
triton; no GPU). What it does (:mod:`perf.codegen_checks`, :mod:`perf.specializations`,
:mod:`perf.codegen_report`):

1. **Discovery.** :mod:`betavae_triton.tools` runs the launchers on ``meta`` tensors with
   grids sized for an H100 (132 SMs), recording instead of launching: every kernel launch
   of a forward + backward (the backward with a factor other than 1, so that the
   rescaling launches too) with its grid, arguments and constexprs, for
   every case of :func:`cases` (each dist, logits, log-variance, per-sample, per-dimension
   KL, decoder scale shared and per element, float32/float16/bfloat16/float64 and mixed,
   gradients on and off) and for the named workloads of ``perf/bench.py`` (the README's
   "Benchmark") plus an MNI volume (8×1×91×109×91); and the β-TCVAE minibatch kernels of
   a forward + backward for batches 256 … 16384 and 10 … 256 latents.
2. **Compilation.** Each distinct specialization (kernel, argument types, 16-byte
   alignment and divisibility as Triton's JIT would specialize them, constexprs,
   ``num_warps``) is compiled ahead of time with ``triton.compile`` for ``sm_90a`` (and
   ``sm_80``); registers, spills and shared memory come from the cubin
   (``cuobjdump --dump-resource-usage``), the 128-bit global loads and stores from the PTX,
   and, in the innermost loop, the width of each global load and the exponentials.
3. **Report.** Per specialization: registers, spill bytes, 128-bit loads/stores (and
   whether the layout allows them), resident blocks per SM and occupancy on an H100, and
   whether the persistent grid fits in one wave; for β-TCVAE's pairwise kernels, the
   loads of their walk over the other index (the posteriors μ, 1/σ, c in the forward and
   dL/dz; the samples in dL/dμ) and whether the posteriors' are as wide as the layout
   allows (:func:`perf.codegen_checks.posterior_load_bits`), and the exponentials an
   iteration. Per workload: the launches of one forward + backward, the bytes they must
   move and the time that takes at the H100's 3.35 TB/s. A text table and JSON go to
   ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python perf/codegen.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from perf import cli
from perf.codegen_checks import Case, analyse, failures
from perf.codegen_report import write_report
from perf.report import DEFAULT_OUT
from perf.specializations import DTYPES

__all__ = ["DEFAULT_OUT", "OPTIONS", "cases", "main", "parse_args"]

_MNI = (8, 1, 91, 109, 91)
_SMALL = (4, 3, 5, 7)
#: The named workloads of ``perf/bench.py`` and an MNI volume (also summed up per workload).
WORKLOADS = (
    Case("sprites", (256, 1, 64, 64), (256, 10), "bernoulli", workload=True),
    Case("faces", (128, 3, 64, 64), (128, 32), "normal", workload=True),
    Case("mri", (8, 1, 128, 128, 128), (8, 128), "normal", workload=True),
    Case("mri-bf16", (8, 1, 128, 128, 128), (8, 128), "normal", torch.bfloat16, workload=True),
    Case("mni-91x109x91", _MNI, (8, 128), "normal", workload=True),
    Case("mni-bf16-amp", _MNI, (8, 128), "normal", torch.bfloat16, torch.float32,
         torch.float32, workload=True),
)  # fmt: skip
#: One case per dist and dtype (``--quick`` too); then both gradients of p and x from an
#: odd size: the second starts 16-byte aligned too.
PER_DTYPE = (
    *(
        Case(f"{dist}-{DTYPES[dtype]}", _SMALL, (4, 6), dist, dtype)
        for dist in ("normal", "laplace", "bernoulli")
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    ),
    Case("grad-x-odd", (3, 1, 5, 7), (3, 5), grad_x=True),
)
#: One case per option (not with ``--quick``).
PER_OPTION = (
    Case("logits", _SMALL, (4, 6), "bernoulli", logits=True),
    Case("logvar", _SMALL, (4, 6), logvar=True),
    Case("per-sample", _SMALL, (4, 6), per_sample=True),
    Case("per-sample-aligned", (4, 2, 16), (4, 6), per_sample=True),
    Case("kl-per-dim", _SMALL, (4, 6), kl_per_dim=True),
    Case("scale-shared", _SMALL, (4, 6), p_scale="shared"),
    Case("scale-per-element", _SMALL, (4, 6), p_scale="per_element"),
    Case("laplace-scale-f16", _SMALL, (4, 6), "laplace", torch.float16, p_scale="shared"),
    Case("grad-x", _SMALL, (4, 6), grad_x=True),
    Case("no-grad", _SMALL, (4, 6), grad=False),
    Case("mixed-f16-f32", _SMALL, (4, 6), "bernoulli", torch.float16, torch.float32,
         torch.float32),
    Case("fp64-bernoulli-per-sample", _SMALL, (4, 6), "bernoulli", torch.float64,
         per_sample=True),
)  # fmt: skip
#: β-TCVAE's (B, D): the grid whose grids the report shows, then past it 256 latents (16
#: warps) and 24 (rows aligned to 4 values, not 16); ``--quick`` takes a few of them.
TC_SIZES = (
    *((b, d) for b in (256, 1024, 4096, 16384) for d in (10, 32, 128)),
    (4096, 256),
    (1024, 24),
)
TC_QUICK_SIZES = ((256, 10), (256, 32), (1024, 32), (16384, 10), (4096, 128), (4096, 256),
                  (1024, 24))  # fmt: skip
OPTIONS = (
    cli.option(
        "--arch",
        type=int,
        nargs="+",
        default=[90, 80],
        metavar="SM",
        help="compute capabilities to compile for: 90 is sm_90a (H100), 80 sm_80 (A100) "
        "(default: 90 80)",
    ),
    cli.option("--quick", action="store_true", help="one case per dist and dtype"),
    cli.option(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for codegen.txt and codegen.json (default: the repository's perf/out/)",
    ),
)


def cases(quick: bool = False) -> list[Case]:
    """The calls whose specializations are compiled: :data:`WORKLOADS`, :data:`PER_DTYPE`,
    :data:`PER_OPTION` (not with ``quick``), then β-TCVAE at :data:`TC_SIZES` (``quick``:
    :data:`TC_QUICK_SIZES`) and once in float64."""
    sizes = TC_QUICK_SIZES if quick else TC_SIZES
    tcvae = [Case(f"btcvae-{b}x{d}", (b, d), (b, d), tcvae=True) for b, d in sizes]
    tcvae.append(Case("btcvae-fp64", (256, 10), (256, 10), dtype=torch.float64, tcvae=True))
    return [*WORKLOADS, *PER_DTYPE, *(() if quick else PER_OPTION), *tcvae]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (:data:`OPTIONS`; None reads ``sys.argv``)."""
    return cli.parse("python -m perf.codegen", __doc__.splitlines()[0], OPTIONS, argv, raw=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m perf.codegen``: 0 when every check passes, else 1."""
    args = parse_args(argv)
    archs = tuple(args.arch)
    rows, workloads, tc_grids = analyse(cases(args.quick), archs)
    write_report(args.out, archs, rows, workloads, tc_grids)
    return 1 if failures(rows, archs, tc_grids) else 0


if __name__ == "__main__":
    sys.exit(main())
