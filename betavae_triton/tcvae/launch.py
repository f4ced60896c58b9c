"""Launchers of β-TCVAE's minibatch kernels (``kernels/total_correlation.py``).

Forward: one kernel over (row blocks × splits of the posteriors), then one that merges the
splits' log-sum-exps. Backward: dL/dz over (row blocks × splits of the posteriors) and
dL/dμ, dL/d log σ over (column blocks × splits of the samples), each split's share summed
over the splits in order. Every sum runs in a fixed order (no atomics): deterministic for a
given split plan. Extra memory O(splits·B·D).

The split plan (:func:`plan_splits`) fills one wave of the GPU: as many programs as its SMs
hold at once (:func:`~betavae_triton._device.resident_blocks` of the compiled kernel once it
has run there, :data:`PLANNED_BLOCKS_PER_SM` before). ``launch`` is
``torch.library.wrap_triton`` inside the operators on a GPU (so inductor sees the kernels)
and the kernel itself under Triton's interpreter on the CPU, where two splits keep the
merge exercised. Inputs are contiguous (B_l, D) / (B, D) tensors of one float dtype
(float32 or float64: the accumulation dtype).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from .._constants import ESTIMATOR_CODES
from .._device import GPU, gpu_of, measured_resident, note_compiled
from ..kernels.total_correlation import (
    _merge_split_log_sum_exps,
    _minibatch_grad_posterior,
    _minibatch_grad_z,
    _minibatch_log_densities_fwd,
)

Tensor = torch.Tensor
BLOCK_ROWS = 16
MAX_LATENT = 256
# The merge: a tile of MERGE_SPLITS splits × MERGE_BLOCK outputs a step.
MERGE_SPLITS, MERGE_BLOCK = 32, 64
#: Blocks per SM of the three pairwise kernels before one has run on the GPU, by the
#: largest BLOCK_D they serve: what their registers allow on an H100 (sm_90a, compiled
#: ahead of time by ``perf/codegen.py``, which checks that these plans fill a wave).
PLANNED_BLOCKS_PER_SM = {16: 12, 32: 12, 64: 8, 128: 4, 256: 2}
#: Set by tests: a fixed split plan, ``span`` values per split and (optionally) more
#: splits than the extent needs (empty ones).
SPAN: int | None = None
SPLITS: int | None = None


class SplitPlan(NamedTuple):
    """One index (posteriors j, or samples i) cut into ``splits`` ranges of ``span``."""

    span: int
    splits: int


def plan_splits(blocks: int, extent: int, block_d: int, gpu: GPU | None, key: tuple) -> SplitPlan:
    """The splits of ``extent`` for a grid of ``blocks`` × splits programs: on a GPU, enough
    that the grid fills one wave (every SM holding as many programs as it can); under the
    interpreter two (one when the extent is 1); :data:`SPAN` / :data:`SPLITS` if set."""
    if SPAN is not None:
        return SplitPlan(SPAN, SPLITS or triton.cdiv(extent, SPAN))
    if gpu is None:
        span = triton.cdiv(extent, 2)
    else:
        per_sm = measured_resident(gpu, key) or PLANNED_BLOCKS_PER_SM[block_d]
        wanted = triton.cdiv(gpu.sm_count * per_sm, blocks)
        span = max(1, extent // wanted)
    return SplitPlan(span, triton.cdiv(extent, span))


class KernelConfig(NamedTuple):
    """The sizes and constexprs the three pairwise kernels share (their keyword
    arguments)."""

    n_rows: int
    row_offset: int
    batch: int
    latent: int
    dataset_size: int
    ESTIMATOR: int
    ACC_FP64: bool
    BLOCK_D: int
    num_warps: int


def _config(
    z: Tensor, mu: Tensor, row_offset: int, dataset_size: int, estimator: str
) -> KernelConfig:
    """The :class:`KernelConfig` of a call."""
    n_rows, latent = z.shape
    if latent > MAX_LATENT:
        raise ValueError(
            f"the Triton β-TCVAE kernels take at most {MAX_LATENT} latents, got {latent}; "
            "use backend='eager'"
        )
    return KernelConfig(
        n_rows=n_rows,
        row_offset=row_offset,
        batch=mu.shape[0],
        latent=latent,
        dataset_size=dataset_size,
        ESTIMATOR=ESTIMATOR_CODES[estimator],
        ACC_FP64=z.dtype == torch.float64,
        BLOCK_D=triton.next_power_of_2(latent),
        # 16 rows × up to 256 latents a program: 8 warps from 33 latents on keep the
        # registers near 120 a thread for float32 (sm_90a, compiled ahead of time).
        num_warps=8 if latent > 32 else 4,
    )


def _key(name: str, config: KernelConfig) -> tuple:
    """A kernel's key in the measured occupancy (:func:`~betavae_triton._device.note_compiled`)."""
    return (name, config.BLOCK_D, config.ACC_FP64, config.num_warps)


def launch_log_densities_fwd(
    launch,
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
    gpu: GPU | None = None,
) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log q(z_id))``, shapes (B_l,) and (B_l, D): the split forward, then
    the merge. Grids sized for ``gpu`` (default: the tensors' GPU; none under the
    interpreter)."""
    config = _config(z, mu, row_offset, dataset_size, estimator)
    gpu = gpu if gpu is not None else gpu_of(z.device)
    n_rows, latent = z.shape
    blocks = triton.cdiv(n_rows, BLOCK_ROWS)
    key = _key("fwd", config)
    plan = plan_splits(blocks, config.batch, config.BLOCK_D, gpu, key)
    part_max = z.new_empty((plan.splits, n_rows, latent + 1))
    part_sum = torch.empty_like(part_max)
    compiled = launch(_minibatch_log_densities_fwd)[(blocks, plan.splits)](
        z_ptr=z,
        mu_ptr=mu,
        log_sigma_ptr=log_sigma,
        part_max_ptr=part_max,
        part_sum_ptr=part_sum,
        span=plan.span,
        BLOCK_I=BLOCK_ROWS,
        **config._asdict(),
    )
    note_compiled(compiled, gpu, key)
    log_qz = z.new_empty((n_rows,))
    log_prod = torch.empty_like(z)
    launch(_merge_split_log_sum_exps)[(triton.cdiv(n_rows * (latent + 1), MERGE_BLOCK),)](
        part_max_ptr=part_max,
        part_sum_ptr=part_sum,
        log_qz_ptr=log_qz,
        log_prod_ptr=log_prod,
        n_rows=n_rows,
        latent=latent,
        splits=plan.splits,
        BLOCK_S=MERGE_SPLITS,
        BLOCK_N=MERGE_BLOCK,
        num_warps=4,
    )
    return log_qz, log_prod


def _sum_splits(partials: Tensor) -> Tensor:
    """The splits' shares (the first axis) added: one reduction, in the same order at
    every call (torch's sum uses no atomics), so deterministic."""
    return partials.sum(0)


def launch_log_densities_bwd(
    launch,
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    log_qz: Tensor,
    log_prod: Tensor,
    g_qz: Tensor,
    g_prod: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
    gpu: GPU | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dz, dL/dμ, dL/d log σ)`` from the incoming gradients of the two outputs:
    each kernel's split shares, summed."""
    config = _config(z, mu, row_offset, dataset_size, estimator)
    gpu = gpu if gpu is not None else gpu_of(z.device)
    n_rows, latent = z.shape
    batch = mu.shape[0]
    saved = dict(
        z_ptr=z,
        mu_ptr=mu,
        log_sigma_ptr=log_sigma,
        log_qz_ptr=log_qz,
        log_prod_ptr=log_prod,
        g_qz_ptr=g_qz,
        g_prod_ptr=g_prod,
    )
    row_blocks = triton.cdiv(n_rows, BLOCK_ROWS)
    key_z = _key("grad_z", config)
    plan_z = plan_splits(row_blocks, batch, config.BLOCK_D, gpu, key_z)
    part_z = z.new_empty((plan_z.splits, n_rows, latent))
    compiled = launch(_minibatch_grad_z)[(row_blocks, plan_z.splits)](
        **saved,
        part_grad_z_ptr=part_z,
        span=plan_z.span,
        BLOCK_I=BLOCK_ROWS,
        **config._asdict(),
    )
    note_compiled(compiled, gpu, key_z)
    col_blocks = triton.cdiv(batch, BLOCK_ROWS)
    key_post = _key("grad_posterior", config)
    plan_post = plan_splits(col_blocks, n_rows, config.BLOCK_D, gpu, key_post)
    part_post = mu.new_empty((2, plan_post.splits, batch, latent))
    compiled = launch(_minibatch_grad_posterior)[(col_blocks, plan_post.splits)](
        **saved,
        part_grad_mu_ptr=part_post[0],
        part_grad_log_sigma_ptr=part_post[1],
        span=plan_post.span,
        BLOCK_J=BLOCK_ROWS,
        **config._asdict(),
    )
    note_compiled(compiled, gpu, key_post)
    return _sum_splits(part_z), _sum_splits(part_post[0]), _sum_splits(part_post[1])
