"""GPU code quality without a GPU: compile every kernel specialization the API launches.

``python -m perf.codegen [--arch 90 80] [--quick] [--out perf/out]`` (any machine with
triton; no GPU):

1. **Discovery.** :mod:`betavae_triton.tools` runs the launchers on ``meta`` tensors with
   grids sized for an H100 (132 SMs), recording instead of launching: every kernel launch
   of a forward + backward (the backward with a factor other than 1, so that the
   rescaling launches too) with its grid, arguments and constexprs, for
   every case of :func:`cases` (each dist, logits, log-variance, per-sample, per-dimension
   KL, decoder scale shared and per element, float32/float16/bfloat16/float64 and mixed,
   gradients on and off) and for the named workloads of CONTRACT section 6 plus an MNI
   volume (8×1×91×109×91); and the β-TCVAE minibatch kernels of a forward + backward for
   batches 256 … 4096 and 10 … 256 latents.
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
   allows (:func:`posterior_load_bits`), and the exponentials an iteration. Per workload:
   the launches of one forward + backward, the bytes they must move and the time that
   takes at the H100's 3.35 TB/s. A text table and JSON go to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from betavae_triton import tools
from betavae_triton.tools import KernelLaunch

H100_SMS = tools.H100.sm_count
H100_BANDWIDTH = 3.35e12  # bytes/s, HBM3 (SXM)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
# --out: the repository's perf/out/, from whatever folder it runs (as perf.bench's).
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
DTYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
}


# ---- discovery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One call of the loss: shapes, dtypes and options."""

    name: str
    shape: tuple[int, ...]
    latent: tuple[int, ...]
    dist: str = "normal"
    dtype: torch.dtype = torch.float32
    x_dtype: torch.dtype | None = None
    q_dtype: torch.dtype | None = None
    logits: bool = False
    logvar: bool = False
    per_sample: bool = False
    kl_per_dim: bool = False
    p_scale: str = "none"  # none, shared, per_element
    grad_x: bool = False
    grad: bool = True
    workload: bool = False
    tcvae: bool = False  # β-TCVAE's minibatch terms: shape is z's (B, D)


def record_launches(case: Case) -> list[KernelLaunch]:
    """The kernel launches of one forward + backward of ``case`` on an H100, from
    ``meta`` tensors (nothing runs): :mod:`betavae_triton.tools`."""
    meta = torch.device("meta")
    if case.tcvae:
        z = torch.empty(case.shape, dtype=case.dtype, device=meta)
        return tools.beta_tcvae_launches(z, tools.H100)
    x_dtype, q_dtype = case.x_dtype or case.dtype, case.q_dtype or case.dtype
    x = torch.empty(case.shape, dtype=x_dtype, device=meta).requires_grad_(case.grad_x)
    p = torch.empty(case.shape, dtype=case.dtype, device=meta).requires_grad_(case.grad)
    q_loc = torch.empty(case.latent, dtype=q_dtype, device=meta).requires_grad_(case.grad)
    q_scale = torch.empty(case.latent, dtype=q_dtype, device=meta).requires_grad_(case.grad)
    p_scale = None
    if case.p_scale == "shared":
        p_scale = torch.empty((), dtype=case.dtype, device=meta).requires_grad_(case.grad)
    elif case.p_scale == "per_element":
        p_scale = torch.empty(case.shape, dtype=case.dtype, device=meta).requires_grad_(case.grad)
    return tools.beta_vae_launches(
        x,
        p,
        q_loc,
        q_scale,
        tools.H100,
        p_scale=p_scale,
        dist=case.dist,
        p_is_logits=case.logits,
        q_is_logvar=case.logvar,
        reduction="none" if case.per_sample else "mean",
        kl_per_dim=case.kl_per_dim,
        backward=case.grad,  # a factor other than 1: the rescaling kernel launches
    )


def cases(quick: bool = False) -> list[Case]:
    """The calls whose specializations are compiled: the named workloads of CONTRACT
    section 6 and an MNI volume, then one case per option (``quick``: one per dist and
    dtype instead of every option)."""
    mni = (8, 1, 91, 109, 91)
    named = [
        Case("sprites", (256, 1, 64, 64), (256, 10), "bernoulli", workload=True),
        Case("faces", (128, 3, 64, 64), (128, 32), "normal", workload=True),
        Case("mri", (8, 1, 128, 128, 128), (8, 128), "normal", workload=True),
        Case("mri-bf16", (8, 1, 128, 128, 128), (8, 128), "normal", torch.bfloat16, workload=True),
        Case("mni-91x109x91", mni, (8, 128), "normal", workload=True),
        Case("mni-bf16-amp", mni, (8, 128), "normal", torch.bfloat16, torch.float32,
             torch.float32, workload=True),
    ]  # fmt: skip
    small = (4, 3, 5, 7)
    options = []
    for dist in ("normal", "laplace", "bernoulli"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            options.append(Case(f"{dist}-{DTYPES[dtype]}", small, (4, 6), dist, dtype))
    # Both gradients of p and x from an odd size: the second starts 16-byte aligned too.
    options.append(Case("grad-x-odd", (3, 1, 5, 7), (3, 5), grad_x=True))
    if not quick:
        options += [
            Case("logits", small, (4, 6), "bernoulli", logits=True),
            Case("logvar", small, (4, 6), logvar=True),
            Case("per-sample", small, (4, 6), per_sample=True),
            Case("per-sample-aligned", (4, 2, 16), (4, 6), per_sample=True),
            Case("kl-per-dim", small, (4, 6), kl_per_dim=True),
            Case("scale-shared", small, (4, 6), p_scale="shared"),
            Case("scale-per-element", small, (4, 6), p_scale="per_element"),
            Case("laplace-scale-f16", small, (4, 6), "laplace", torch.float16, p_scale="shared"),
            Case("grad-x", small, (4, 6), grad_x=True),
            Case("no-grad", small, (4, 6), grad=False),
            Case("mixed-f16-f32", small, (4, 6), "bernoulli", torch.float16, torch.float32,
                 torch.float32),
            Case("fp64-bernoulli-per-sample", small, (4, 6), "bernoulli", torch.float64,
                 per_sample=True),
        ]  # fmt: skip
    # Past the grid: 256 latents (16 warps), and 24 (rows aligned to 4 values, not 16).
    sizes = [(b, d) for b in TC_BATCHES for d in TC_LATENTS] + [(4096, 256), (1024, 24)]
    if quick:
        sizes = [(256, 10), (256, 32), (1024, 32), (16384, 10), (4096, 128), (4096, 256)]
        sizes.append((1024, 24))
    tcvae = [Case(f"btcvae-{b}x{d}", (b, d), (b, d), tcvae=True) for b, d in sizes]
    tcvae.append(Case("btcvae-fp64", (256, 10), (256, 10), dtype=torch.float64, tcvae=True))
    return named + options + tcvae


# ---- specialization and compilation -----------------------------------------------------


def _aligned(t: torch.Tensor) -> bool:
    """16-byte alignment of a tensor's data (allocations are; views at an offset may not)."""
    return (t.storage_offset() * t.element_size()) % 16 == 0


@dataclass(frozen=True)
class Spec:
    """A kernel specialization as Triton's JIT would build it from a launch."""

    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...]
    num_warps: int
    one_row: bool = False

    @property
    def label(self) -> str:
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs if k.isupper())
        # Pointer dtypes, ":16" where 16-byte aligned; ints as i32/i64, ":16" where
        # divisible by 16 (the specializations Triton's JIT makes from the values).
        args = ",".join(
            t + (":16" if name in self.divisible else "")
            for name, t in self.signature
            if t != "constexpr"
        )
        rows = " one-row" if self.one_row else ""
        return f"{self.kernel}[{consts}] ({args}) w{self.num_warps}{rows}"


def specialize(launch: KernelLaunch) -> Spec:
    """The :class:`Spec` of a launch: pointer dtypes, 16-byte alignment and divisibility
    by 16 (as the JIT's specialization), integers equal to 1 as constants."""
    fn = launch.kernel
    kwargs = dict(launch.kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    signature, constexprs, divisible = [], {}, []
    for name in fn.arg_names:
        value = kwargs[name]
        param = fn.params[fn.arg_names.index(name)]
        if param.is_constexpr:
            constexprs[name] = int(value) if isinstance(value, bool) else value
            signature.append((name, "constexpr"))
        elif isinstance(value, torch.Tensor):
            signature.append((name, "*" + DTYPES[value.dtype]))
            if _aligned(value):
                divisible.append(name)
        elif isinstance(value, bool):
            signature.append((name, "i1"))
        elif isinstance(value, int):
            if value == 1:
                constexprs[name] = 1
                signature.append((name, "constexpr"))
                continue
            signature.append((name, "i64" if abs(value) >= 2**31 else "i32"))
            if value % 16 == 0:
                divisible.append(name)
        else:
            signature.append((name, "fp32"))
    one_row = len(launch.grid) == 2 and launch.grid[0] == 1  # a reduction over one row
    return Spec(
        fn.__name__,
        tuple(signature),
        tuple(constexprs.items()),
        tuple(divisible),
        num_warps,
        one_row,
    )


@dataclass
class Compiled:
    """What the compiler made of a specialization for one architecture."""

    arch: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    loads_128: int
    loads_narrow: int
    stores_128: int
    stores_narrow: int
    compile_s: float
    loop_load_bits: list[int] = field(default_factory=list)  # innermost loop, in order
    loop_exps: int = 0  # exponentials an iteration of the innermost loop


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[a-z0-9]+)*)")


def _vector_bits(suffix: str) -> int:
    """Bits one PTX global access moves, from its suffix (``.v4.b32`` → 128)."""
    width = re.search(r"\.v(\d)", suffix)
    size = re.search(r"\.[bfsu](\d+)$", suffix)
    return (int(width.group(1)) if width else 1) * (int(size.group(1)) if size else 32)


def count_accesses(ptx: str) -> dict[str, int]:
    """128-bit and narrower global loads and stores in a PTX listing."""
    counts = {"ld128": 0, "ld": 0, "st128": 0, "st": 0}
    for kind, suffix in _ACCESS.findall(ptx):
        counts[kind + ("128" if _vector_bits(suffix) == 128 else "")] += 1
    return counts


_LABEL = re.compile(r"^(\$L__BB\d+_\d+):", re.M)
_LOOP_EXIT = re.compile(r"^\$L__BB\d+_\d+:.*(crit_edge|loopexit)", re.M)


def innermost_loop(ptx: str) -> str:
    """The PTX of the first innermost loop, as LLVM marks it: from its header (the label
    that LLVM's ``Inner Loop Header`` comment follows, with the blocks that the preheader
    jumps over: a rotated loop's latch) to its exit block; "" where there is no loop."""
    marker = ptx.find("Inner Loop Header")
    labels = list(_LABEL.finditer(ptx, 0, max(marker, 0)))
    if marker < 0 or not labels:
        return ""
    header = labels[-1]
    entry = [
        m
        for m in re.finditer(r"bra\.uni\s+" + re.escape(header.group(1)) + ";", ptx)
        if m.end() <= header.start()
    ]
    start = entry[-1].end() if entry else header.start()
    exit_ = _LOOP_EXIT.search(ptx, marker)
    return ptx[start : exit_.start() if exit_ else len(ptx)]


def loop_facts(ptx: str) -> tuple[list[int], int]:
    """``(bits of each global load, exponentials)`` in the innermost loop of a PTX listing:
    ``ex2.approx`` for float32 (``tl.exp``), libdevice's inlined ``__nv_exp`` for float64."""
    body = innermost_loop(ptx)
    bits = [_vector_bits(suffix) for kind, suffix in _ACCESS.findall(body) if kind == "ld"]
    exps = len(re.findall(r"\bex2\.approx", body)) + len(re.findall(r"%__nv_exp\.exit", body))
    return bits, exps


def resources(cubin: bytes) -> tuple[int, int, int]:
    """``(registers, spill (local) bytes, shared bytes)`` of a cubin, by cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(CUOBJDUMP), "--dump-resource-usage", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    regs, _stack, shared, local = (int(v) for v in _RESOURCES.search(text).groups())
    return regs, local, shared


_KERNELS = {
    "_reconstruction_fwd_bwd": "betavae_triton.kernels.reconstruction",
    "_normal_kl_fwd_bwd": "betavae_triton.kernels.kl",
    "_finalize_loss": "betavae_triton.kernels.finalize",
    "_rescale_grad_inplace": "betavae_triton.kernels.rescale",
    "_minibatch_log_densities_fwd": "betavae_triton.kernels.total_correlation",
    "_minibatch_grad_z": "betavae_triton.kernels.total_correlation",
    "_minibatch_grad_posterior": "betavae_triton.kernels.total_correlation",
    "_merge_split_log_sum_exps": "betavae_triton.kernels.total_correlation",
    "_posterior_constants": "betavae_triton.kernels.total_correlation",
}
# β-TCVAE's kernels do O(B²·D) arithmetic on O(B·D) data, which stays in the cache: their
# registers and spills matter, their grids (row blocks × splits) must fill a wave, and the
# loads of their inner loop (one per pair of a block and a posterior) must not cost more
# instructions than the layout needs (:func:`posterior_load_bits`).
_COMPUTE_BOUND = ("_minibatch_log_densities_fwd", "_minibatch_grad_z", "_minibatch_grad_posterior")
# The pairwise kernels whose inner loop walks the posteriors (μ, 1/σ, c a step).
_POSTERIOR_WALKS = ("_minibatch_log_densities_fwd", "_minibatch_grad_z")
# Grids of row blocks (not persistent): the pairwise kernels and the merge of their splits.
_ROW_BLOCKS = (*_COMPUTE_BOUND, "_merge_split_log_sum_exps")
# Grids sized by the data, not by the SMs.
_NOT_PERSISTENT = (*_ROW_BLOCKS, "_posterior_constants")
#: The β-TCVAE workloads whose grids the report shows (B, D), and the latents at which
#: every pairwise grid must fill one wave (B ≥ 256).
TC_BATCHES = (256, 1024, 4096, 16384)
TC_LATENTS = (10, 32, 128)
TC_FILL_LATENTS = (10, 32)


@functools.cache
def compile_spec(spec: Spec, arch: int) -> Compiled:
    """Compile ``spec`` ahead of time for ``sm_{arch}`` (``sm_90a`` for 90)."""
    module = __import__(_KERNELS[spec.kernel], fromlist=[spec.kernel])
    fn = getattr(module, spec.kernel)
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in spec.divisible}
    source = ASTSource(fn, dict(spec.signature), dict(spec.constexprs), attrs)
    start = time.perf_counter()
    kernel = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec.num_warps}
    )
    elapsed = time.perf_counter() - start
    regs, spill, shared = resources(kernel.asm["cubin"])
    counts = count_accesses(kernel.asm["ptx"])
    loop_bits, loop_exps = loop_facts(kernel.asm["ptx"])
    return Compiled(
        arch, regs, spill, max(shared, kernel.metadata.shared), counts["ld128"], counts["ld"],
        counts["st128"], counts["st"], elapsed, loop_bits, loop_exps,
    )  # fmt: skip


def occupancy(compiled: Compiled, num_warps: int) -> tuple[int, float]:
    """``(resident blocks per SM, occupancy)`` on an H100, by the launcher's own rule
    (:func:`betavae_triton.tools.resident_blocks`, which a GPU run applies to what the
    kernel compiled to there)."""
    limits = tools.H100.limits
    blocks = tools.resident_blocks(compiled.registers, compiled.shared_bytes, num_warps, limits)
    return blocks, blocks * 32 * num_warps / limits.threads


def vectors_allowed(spec: Spec) -> bool:
    """Whether the layout lets a full tile's data accesses be 128-bit: every data pointer
    16-byte aligned, and the rows start aligned (one row, from the launch's grid, or a row
    length divisible by 16). The finalize reads scalars by design."""
    if spec.kernel == "_finalize_loss" or spec.kernel in _ROW_BLOCKS:
        return False
    pointers = [name for name, kind in spec.signature if kind.startswith("*")]
    if not all(name in spec.divisible for name in pointers):
        return False
    if spec.kernel == "_rescale_grad_inplace":
        return True
    if spec.kernel == "_posterior_constants":  # masked by n_elements: whole vectors if aligned
        return "n_elements" in spec.divisible
    return spec.one_row or "row_len" in spec.divisible


def posterior_load_bits(spec: Spec) -> int | None:
    """The width the layout allows for each posterior load (μ, 1/σ, c) in the walk of the
    forward and dL/dz kernels over the posteriors (None for other kernels): the values of a
    tile row that one thread holds (BLOCK_I·BLOCK_D over the program's threads, at most
    BLOCK_D), as many as a row's start is aligned for (``ROW_ALIGN``, with the pointers
    16-byte aligned), at most 128 bits."""
    if spec.kernel not in _POSTERIOR_WALKS:
        return None
    c, types = dict(spec.constexprs), dict(spec.signature)
    bits = {"*fp32": 32, "*fp64": 64}[types["mu_ptr"]]
    per_thread = max(1, min(c["BLOCK_D"], c["BLOCK_I"] * c["BLOCK_D"] // (32 * spec.num_warps)))
    pointers = ("mu_ptr", "inv_sigma_ptr", "c_ptr")
    aligned = c["ROW_ALIGN"] if all(name in spec.divisible for name in pointers) else 1
    return bits * min(per_thread, aligned, 128 // bits)


def data_accesses(spec: Spec) -> tuple[int, int]:
    """``(tensors read, tensors written)`` per element in a full tile (data, not scalars)."""
    c = dict(spec.constexprs)
    if spec.kernel == "_reconstruction_fwd_bwd":
        reads = 2 + (c["P_SCALE"] == 1)
        writes = (
            c["WRITE_GRAD_P"] + c["WRITE_GRAD_X"] + (c["WRITE_GRAD_P_SCALE"] and c["P_SCALE"] == 1)
        )
        return reads, writes
    if spec.kernel == "_normal_kl_fwd_bwd":
        return 2, 2 * c["WRITE_GRAD"] + c["WRITE_KL_ELEMENTS"]
    if spec.kernel == "_rescale_grad_inplace":
        return 1, 1
    return 0, 0


@dataclass
class Row:
    """One line of the report: a specialization, compiled."""

    spec: str
    cases: list[str] = field(default_factory=list)
    arch: dict[int, dict] = field(default_factory=dict)
    vectors_allowed: bool = False
    vectors_ok: bool = True
    posterior_bits: int | None = None  # what the layout allows (β-TCVAE's posterior walks)
    posterior_ok: bool = True
    programs_per_sm: int = 0
    resident_blocks: int = 0
    occupancy: float = 0.0
    persistent: bool = True  # a grid the launcher sizes to the SMs (not a row-block grid)
    one_wave: bool = True


def check(spec: Spec, compiled: Compiled) -> bool:
    """Whether every data load and store of a full tile is 128-bit where the layout allows:
    at least one 128-bit access per tensor read and per tensor written."""
    reads, writes = data_accesses(spec)
    if not vectors_allowed(spec) or (reads, writes) == (0, 0):
        return True
    return compiled.loads_128 >= reads and compiled.stores_128 >= writes


def analyse(case_list: list[Case], archs: tuple[int, ...]) -> tuple[dict, dict, dict]:
    """Compile every specialization the cases launch; ``(rows by spec label, workloads,
    β-TCVAE grids by case)``."""
    rows: dict[str, Row] = {}
    workloads: dict[str, dict] = {}
    tc_grids: dict[str, list[dict]] = {}
    for case in case_list:
        launches = record_launches(case)
        if case.workload:
            workloads[case.name] = workload_summary(case, launches)
        labels = []
        for launch in launches:
            spec = specialize(launch)
            labels.append(spec.label)
            row = rows.setdefault(spec.label, Row(spec.label))
            row.cases.append(case.name)
            if row.arch:
                continue
            for arch in archs:
                compiled = compile_spec(spec, arch)
                row.arch[arch] = asdict(compiled)
                if arch == archs[0]:
                    row.vectors_allowed = vectors_allowed(spec)
                    row.vectors_ok = check(spec, compiled)
                    row.posterior_bits = posterior_load_bits(spec)
                    if row.posterior_bits is not None:
                        loads = compiled.loop_load_bits
                        row.posterior_ok = bool(loads) and min(loads) >= row.posterior_bits
                    blocks, occ = occupancy(compiled, spec.num_warps)
                    row.resident_blocks, row.occupancy = blocks, occ
                    element = _element_size(spec)
                    # The largest grid the launcher makes: programs per SM × SMs.
                    per_sm = tools.persistent_programs_per_sm(element) if element else 1
                    if spec.kernel in _NOT_PERSISTENT:  # blocks of rows (× splits)
                        per_sm = -(-math.prod(launch.grid) // H100_SMS)
                        row.persistent = False
                    row.programs_per_sm = per_sm
                    row.one_wave = blocks >= per_sm
        if case.tcvae:
            tc_grids[case.name] = tc_grid_summary(case, launches, [rows[k] for k in labels])
    return rows, workloads, tc_grids


def tc_grid_summary(case: Case, launches: list[KernelLaunch], rows: list[Row]) -> list[dict]:
    """Per β-TCVAE launch: the grid, its programs per SM on an H100, the blocks an SM
    holds of the compiled kernel, and the fraction of one wave (SMs × those blocks) the
    grid fills."""
    out = []
    for launch, row in zip(launches, rows, strict=True):
        programs = math.prod(launch.grid)
        wave = H100_SMS * max(row.resident_blocks, 1)
        out.append(
            {
                "kernel": launch.kernel.__name__,
                "grid": list(launch.grid),
                "programs": programs,
                "programs_per_sm": programs / H100_SMS,
                "resident_blocks": row.resident_blocks,
                "wave_fill": programs / wave,
                "must_fill": launch.kernel.__name__ in _COMPUTE_BOUND
                and case.shape[0] >= 256
                and case.shape[1] in TC_FILL_LATENTS,
            }
        )
    return out


def _element_size(spec: Spec) -> int | None:
    sizes = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}
    first = next((t for n, t in spec.signature if t.startswith("*")), None)
    if spec.kernel == "_finalize_loss" or spec.kernel in _NOT_PERSISTENT or not first:
        return None
    return sizes.get(first[1:])


def workload_summary(case: Case, launches: list[KernelLaunch]) -> dict:
    """Launches of one forward + backward, and the bytes the loss must move: p and x read
    once, dL/dp written once (the posterior's few kilobytes left out)."""
    n = math.prod(case.shape)
    p_size = torch.empty((), dtype=case.dtype).element_size()
    x_size = torch.empty((), dtype=case.x_dtype or case.dtype).element_size()
    nbytes = n * (2 * p_size + x_size)
    return {
        "shape": list(case.shape),
        "dtype": DTYPES[case.dtype],
        "launches": [f"{launch.kernel.__name__}{list(launch.grid)}" for launch in launches],
        "bytes": nbytes,
        "h100_us": 1e6 * nbytes / H100_BANDWIDTH,
    }


# ---- report -----------------------------------------------------------------------------


def tc_table(tc_grids: dict[str, list[dict]]) -> str:
    """The β-TCVAE grids: per case and kernel, grid, programs per SM, blocks an SM holds,
    and the fraction of one H100 wave filled."""
    lines = [
        "β-TCVAE grids on an H100 (132 SMs): programs per SM, blocks per SM of the compiled "
        "kernel, fraction of one wave filled",
        f"{'case':<18} {'kernel':<30} {'grid':>12} {'prog/SM':>8} {'blk/SM':>6} {'wave':>6}",
    ]
    for name, launches in tc_grids.items():
        for g in launches:
            grid = "x".join(map(str, g["grid"]))
            lines.append(
                f"{name:<18} {g['kernel']:<30} {grid:>12} {g['programs_per_sm']:>8.1f} "
                f"{g['resident_blocks']:>6} {g['wave_fill']:>6.2f}"
            )
    return "\n".join(lines)


def _load_widths(bits: list[int]) -> str:
    """Loads by width: ``3x128``, ``2x32+3x64`` (``-`` for none)."""
    counts = {b: bits.count(b) for b in sorted(set(bits))}
    return "+".join(f"{n}x{b}" for b, n in counts.items()) or "-"


def tc_loop_table(rows: dict[str, Row], arch: int) -> str:
    """β-TCVAE's pairwise kernels: per specialization, registers, blocks per SM, the
    global loads of an iteration of the inner loop by width, the width the layout allows
    for the posteriors' (the forward and dL/dz; ``-`` for dL/dμ, whose loop loads
    samples), and the exponentials an iteration."""
    lines = [
        f"β-TCVAE inner loops (sm_{arch}{'a' if arch == 90 else ''}): loads an iteration by "
        "width (bits), the posterior width the layout allows, exponentials an iteration",
        f"{'specialization':<150} {'regs':>4} {'blk/SM':>6} {'loop loads':>14} {'allowed':>7} "
        f"{'ok':>3} {'exp':>4}",
    ]
    for label, row in sorted(rows.items()):
        if not label.startswith(_COMPUTE_BOUND):
            continue
        a = row.arch[arch]
        allowed = "-" if row.posterior_bits is None else str(row.posterior_bits)
        ok = "-" if row.posterior_bits is None else ("ok" if row.posterior_ok else "NO")
        lines.append(
            f"{label[:150]:<150} {a['registers']:>4} {row.resident_blocks:>6} "
            f"{_load_widths(a['loop_load_bits']):>14} {allowed:>7} {ok:>3} {a['loop_exps']:>4}"
        )
    return "\n".join(lines)


def tc_unfilled(tc_grids: dict[str, list[dict]]) -> list[str]:
    """The pairwise launches at B ≥ 256, D in :data:`TC_FILL_LATENTS` that fill less than
    one wave."""
    return [
        f"{name}:{g['kernel']}"
        for name, launches in tc_grids.items()
        for g in launches
        if g["must_fill"] and g["wave_fill"] < 1.0
    ]


def table(rows: dict[str, Row], workloads: dict[str, dict], archs: tuple[int, ...]) -> str:
    head = f"{'specialization':<150} {'regs':>4} {'spill':>5} {'ld128':>5} {'st128':>5} "
    head += f"{'vec':>4} {'blk/SM':>6} {'occ':>5} {'wave':>4}"
    lines = [f"compiled for sm_{archs[0]}{'a' if archs[0] == 90 else ''} (H100 occupancy)", head]
    for label, row in sorted(rows.items()):
        a = row.arch[archs[0]]
        vec = ("ok" if row.vectors_ok else "NO") if row.vectors_allowed else "n/a"
        wave = ("1" if row.one_wave else ">1") if row.persistent else "-"
        spills = max(row.arch[arch]["spill_bytes"] for arch in archs)
        lines.append(
            f"{label[:150]:<150} {a['registers']:>4} {spills:>5} {a['loads_128']:>5} "
            f"{a['stores_128']:>5} {vec:>4} {row.resident_blocks:>6} {row.occupancy:>5.2f} "
            f"{wave:>4}"
        )
    lines.append("")
    lines.append(f"{'workload':<16} {'shape':<22} {'MB moved':>9} {'µs @3.35TB/s':>13}  launches")
    for name, w in workloads.items():
        lines.append(
            f"{name:<16} {'x'.join(map(str, w['shape'])):<22} {w['bytes'] / 1e6:>9.1f} "
            f"{w['h100_us']:>13.1f}  {', '.join(w['launches'])}"
        )
    return "\n".join(lines)


def summary(rows: dict[str, Row], archs: tuple[int, ...], tc_grids: dict) -> str:
    spilling = sum(any(r.arch[a]["spill_bytes"] for a in archs) for r in rows.values())
    allowed = [r for r in rows.values() if r.vectors_allowed]
    vector_ok = sum(r.vectors_ok for r in allowed)
    persistent = [r for r in rows.values() if r.persistent]
    waves = sum(r.one_wave for r in persistent)
    arch_names = ", ".join(f"sm_{a}{'a' if a == 90 else ''}" for a in archs)
    must = [g for launches in tc_grids.values() for g in launches if g["must_fill"]]
    filled = len(must) - len(tc_unfilled(tc_grids))
    walks = [r for r in rows.values() if r.posterior_bits is not None]
    return (
        f"codegen: {len(rows)} specializations compiled for {arch_names}; {spilling} spill; "
        f"128-bit data access in {vector_ok} of {len(allowed)} where the layout allows; "
        f"{waves} of {len(persistent)} persistent grids in one wave on an H100; "
        f"β-TCVAE: {filled} of {len(must)} pairwise grids at B >= 256, D in "
        f"{'/'.join(map(str, TC_FILL_LATENTS))} fill one wave, posterior loads as wide as "
        f"the layout allows in {sum(r.posterior_ok for r in walks)} of {len(walks)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.codegen", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--arch",
        type=int,
        nargs="+",
        default=[90, 80],
        metavar="SM",
        help="compute capabilities to compile for: 90 is sm_90a (H100), 80 sm_80 (A100) "
        "(default: 90 80)",
    )
    parser.add_argument("--quick", action="store_true", help="one case per dist and dtype")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for codegen.txt and codegen.json (default: the repository's perf/out/)",
    )
    args = parser.parse_args(argv)
    archs = tuple(args.arch)
    rows, workloads, tc_grids = analyse(cases(args.quick), archs)
    text = table(rows, workloads, archs) + "\n\n" + tc_table(tc_grids)
    text += "\n\n" + tc_loop_table(rows, archs[0])
    text += "\n\n" + summary(rows, archs, tc_grids)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "codegen.txt").write_text(text + "\n")
    data = {
        "archs": list(archs),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "specializations": {label: asdict(row) for label, row in rows.items()},
        "workloads": workloads,
        "tc_grids": tc_grids,
    }
    (args.out / "codegen.json").write_text(json.dumps(data, indent=1, default=str))
    failed = [r for r in rows.values() if not r.vectors_ok or (r.persistent and not r.one_wave)]
    failed += [r for r in rows.values() if not r.posterior_ok]
    failed += [r for r in rows.values() if any(r.arch[a]["spill_bytes"] for a in archs)]
    return 1 if failed or tc_unfilled(tc_grids) else 0


if __name__ == "__main__":
    sys.exit(main())
