"""What ``perf/codegen.py`` checks, without a GPU: each case's kernel launches recorded on an
H100 described by :mod:`betavae_triton.tools`, each distinct specialization compiled
(:mod:`perf.specializations`), then per specialization its 128-bit accesses where the
layout allows them, its occupancy and whether the launcher's grid fits one wave; per
β-TCVAE launch the fill of one wave; per workload the bytes it must move.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from betavae_triton import tools
from betavae_triton.tools import KernelLaunch
from perf.specializations import DTYPES, Compiled, Spec, compile_spec, specialize

__all__ = [
    "COMPUTE_BOUND",
    "TC_FILL_LATENTS",
    "Case",
    "Row",
    "analyse",
    "check",
    "data_accesses",
    "failures",
    "occupancy",
    "posterior_load_bits",
    "record_launches",
    "tc_grid_summary",
    "tc_unfilled",
    "vectors_allowed",
    "workload_summary",
]

H100_SMS = tools.H100.sm_count
H100_BANDWIDTH = 3.35e12  # bytes/s, HBM3 (SXM)
# β-TCVAE's kernels do O(B²·D) arithmetic on O(B·D) data, which stays in the cache: their
# registers and spills matter, their grids (row blocks × splits) must fill a wave, and the
# loads of their inner loop (one per pair of a block and a posterior) must not cost more
# instructions than the layout needs (:func:`posterior_load_bits`).
COMPUTE_BOUND = ("_minibatch_log_densities_fwd", "_minibatch_grad_z", "_minibatch_grad_posterior")
# The pairwise kernels whose inner loop walks the posteriors (μ, 1/σ, c a step).
_POSTERIOR_WALKS = ("_minibatch_log_densities_fwd", "_minibatch_grad_z")
# Grids of row blocks (not persistent): the pairwise kernels and the merge of their splits.
_ROW_BLOCKS = (*COMPUTE_BOUND, "_merge_split_log_sum_exps")
# Grids sized by the data, not by the SMs.
_NOT_PERSISTENT = (*_ROW_BLOCKS, "_posterior_constants")
#: The latents at which every pairwise grid must fill one wave (B ≥ 256).
TC_FILL_LATENTS = (10, 32)


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
                "must_fill": launch.kernel.__name__ in COMPUTE_BOUND
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


def tc_unfilled(tc_grids: dict[str, list[dict]]) -> list[str]:
    """The pairwise launches at B ≥ 256, D in :data:`TC_FILL_LATENTS` that fill less than
    one wave."""
    return [
        f"{name}:{g['kernel']}"
        for name, launches in tc_grids.items()
        for g in launches
        if g["must_fill"] and g["wave_fill"] < 1.0
    ]


def failures(rows: dict[str, Row], archs: tuple[int, ...], tc_grids: dict) -> list[str]:
    """Every check that failed: a specialization without 128-bit access where the layout
    allows it, a persistent grid over one wave, posterior loads narrower than the layout
    allows, a spill on any architecture; a β-TCVAE grid that fills less than one wave.

    Parameters
    ----------
    rows : dict of str to Row
        The specializations (:func:`analyse`).
    archs : tuple of int
        The architectures compiled for.
    tc_grids : dict
        β-TCVAE's launches by case.

    Returns
    -------
    failed : list of str
        The specializations' labels, then the unfilled launches (:func:`tc_unfilled`).
    """
    failed = [r for r in rows.values() if not r.vectors_ok or (r.persistent and not r.one_wave)]
    failed += [r for r in rows.values() if not r.posterior_ok]
    failed += [r for r in rows.values() if any(r.arch[a]["spill_bytes"] for a in archs)]
    return [r.spec for r in failed] + tc_unfilled(tc_grids)
