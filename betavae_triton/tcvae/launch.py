"""Launchers of β-TCVAE's minibatch kernels (``kernels/total_correlation.py``).

Forward: one kernel over (row blocks × splits of the posteriors), then one that merges the
splits' log-sum-exps. Backward: dL/dz over (row blocks × splits of the posteriors) and
dL/dμ, dL/d log σ over (column blocks × splits of the samples), each split's share summed
over the splits in order. Every sum runs in a fixed order (no atomics): deterministic for a
given split plan. Extra memory O(splits·B·D).

Each pass first computes the posteriors' 1/σ and c = −½ log 2π − log σ once (one small
kernel over B·D elements), which the pairwise kernels read instead of log σ.

The split plan (:func:`plan_splits`) fills one wave of the GPU: as many programs as its SMs
hold at once (:func:`~betavae_triton._device.resident_blocks` of the compiled kernel once it
has run there, :data:`PLANNED_BLOCKS_PER_SM` before). A caller may pass its own
:class:`SplitPlan` instead (the tests do: uneven, empty and one-element splits). ``launch``
is ``torch.library.wrap_triton`` inside the operators on a GPU (so inductor sees the
kernels) and the kernel itself under Triton's interpreter on the CPU, where two splits keep
the merge exercised. Inputs are contiguous (B_l, D) / (B, D) tensors of one float dtype
(float32 or float64: the accumulation dtype).
"""

from __future__ import annotations

import math
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
    _posterior_constants,
)

Tensor = torch.Tensor
BLOCK_ROWS = 16
MAX_LATENT = 256
# The merge: a tile of MERGE_SPLITS splits × MERGE_BLOCK outputs a step.
MERGE_SPLITS, MERGE_BLOCK = 32, 64
# The posterior constants: elements a program.
CONSTANTS_BLOCK = 1024
#: Blocks per SM of the three pairwise kernels before one has run on the GPU, by the
#: largest BLOCK_D they serve: the most an H100's SM holds of any of them, by their
#: registers (float32, sm_90a, compiled ahead of time by ``perf/codegen.py``, which checks
#: that these plans fill a wave).
PLANNED_BLOCKS_PER_SM = {16: 16, 32: 12, 64: 6, 128: 4, 256: 2}


class SplitPlan(NamedTuple):
    """One index (posteriors j, or samples i) cut into ``splits`` ranges of ``span``: split
    s takes [s·span, (s + 1)·span) ∩ [0, extent). Splits past the extent are empty."""

    span: int
    splits: int

    def check(self, extent: int) -> SplitPlan:
        """This plan, if it covers ``extent`` values; raises ValueError otherwise."""
        if self.span < 1 or self.splits < 1 or self.span * self.splits < extent:
            raise ValueError(f"{self} does not cover {extent} values")
        return self


def plan_splits(blocks: int, extent: int, block_d: int, gpu: GPU | None, key: tuple) -> SplitPlan:
    """The splits of ``extent`` for a grid of ``blocks`` × splits programs: on a GPU, enough
    that the grid fills one wave (every SM holding as many programs as it can); under the
    interpreter two (one when the extent is 1)."""
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
    ROW_ALIGN: int
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
    block_d = triton.next_power_of_2(latent)
    return KernelConfig(
        n_rows=n_rows,
        row_offset=row_offset,
        batch=mu.shape[0],
        latent=latent,
        dataset_size=dataset_size,
        ESTIMATOR=ESTIMATOR_CODES[estimator],
        ACC_FP64=z.dtype == torch.float64,
        # D's largest power-of-two divisor, up to one 128-bit access: every row of D
        # values starts at a multiple of it (the kernels tell the compiler so).
        ROW_ALIGN=math.gcd(latent, 16 // z.element_size()),
        BLOCK_D=block_d,
        num_warps=_num_warps(block_d),
    )


def _num_warps(block_d: int) -> int:
    """Warps of a pairwise program (16 rows × ``block_d`` latents): 4 up to 32 latents,
    8 up to 128, 16 at 256. Each step of the walk loads rows of ``block_d`` values (a
    posterior's μ, 1/σ and c; a sample's, for dL/dμ), which must be fewer than the
    program's threads: Triton then loads them in the tile's own layout, as wide as their
    alignment allows (128 bits); with as many values as threads it loads one value a
    thread and moves them through shared memory (sm_90a, 256 latents, float32: with 8
    warps scalar loads, a dozen shared-memory loads a step and 121 registers; with 16,
    128-bit loads and 64)."""
    return 4 if block_d <= 32 else 8 if block_d <= 128 else 16


def _key(name: str, config: KernelConfig) -> tuple:
    """A kernel's key in the measured occupancy (:func:`~betavae_triton._device.note_compiled`)."""
    return (name, config.BLOCK_D, config.ACC_FP64, config.num_warps)


def launch_posterior_constants(launch, log_sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``(1/σ, c)`` of every posterior, c = −½ log 2π − log σ, each shaped and typed as
    ``log_sigma`` (contiguous): one launch of ``_posterior_constants``. Moves B·D values
    in, 2·B·D out."""
    inv_sigma = torch.empty_like(log_sigma)
    c = torch.empty_like(log_sigma)
    n = log_sigma.numel()
    launch(_posterior_constants)[(triton.cdiv(n, CONSTANTS_BLOCK),)](
        log_sigma_ptr=log_sigma,
        inv_sigma_ptr=inv_sigma,
        c_ptr=c,
        n_elements=n,
        BLOCK=CONSTANTS_BLOCK,
        num_warps=4,
    )
    return inv_sigma, c


def launch_log_densities_fwd(
    launch,
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
    gpu: GPU | None = None,
    *,
    plan: SplitPlan | None = None,
) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log q(z_id))``, shapes (B_l,) and (B_l, D): the posterior constants,
    the split forward, then the merge.

    Parameters
    ----------
    launch : callable
        Turns a ``@triton.jit`` kernel into something to index with a grid
        (``torch.library.wrap_triton``, or the interpreter's launch).
    z, mu, log_sigma : torch.Tensor
        This rank's samples (B_l, D), and every posterior's μ and log σ (B, D):
        contiguous, one dtype (float32 or float64).
    row_offset, dataset_size, estimator
        As for ``betavae_triton::tc_log_densities``.
    gpu : GPU, optional
        The GPU the grid is sized for (default: the tensors' GPU; none under the
        interpreter).
    plan : SplitPlan, optional
        How the posteriors are split (default: :func:`plan_splits`); it must cover B.

    Returns
    -------
    log_qz, log_prod : torch.Tensor
        In z's dtype.
    """
    config = _config(z, mu, row_offset, dataset_size, estimator)
    gpu = gpu if gpu is not None else gpu_of(z.device)
    n_rows, latent = z.shape
    blocks = triton.cdiv(n_rows, BLOCK_ROWS)
    key = _key("fwd", config)
    if plan is None:
        plan = plan_splits(blocks, config.batch, config.BLOCK_D, gpu, key)
    plan = plan.check(config.batch)
    inv_sigma, c = launch_posterior_constants(launch, log_sigma)
    part_max = z.new_empty((plan.splits, n_rows, latent + 1))
    part_sum = torch.empty_like(part_max)
    compiled = launch(_minibatch_log_densities_fwd)[(blocks, plan.splits)](
        z_ptr=z,
        mu_ptr=mu,
        inv_sigma_ptr=inv_sigma,
        c_ptr=c,
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
    *,
    plan_z: SplitPlan | None = None,
    plan_posterior: SplitPlan | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dz, dL/dμ, dL/d log σ)`` from the incoming gradients of the two outputs:
    the posterior constants, then each kernel's split shares, summed.

    Parameters
    ----------
    launch, z, mu, log_sigma, row_offset, dataset_size, estimator, gpu
        As for :func:`launch_log_densities_fwd`.
    log_qz, log_prod : torch.Tensor
        The forward's outputs, (B_l,) and (B_l, D).
    g_qz, g_prod : torch.Tensor
        Their incoming gradients, same shapes, contiguous.
    plan_z : SplitPlan, optional
        How dL/dz's walk splits the posteriors (default: :func:`plan_splits`; it must
        cover B).
    plan_posterior : SplitPlan, optional
        How dL/dμ's and dL/d log σ's walk splits the samples (default:
        :func:`plan_splits`; it must cover B_l).

    Returns
    -------
    grad_z, grad_mu, grad_log_sigma : torch.Tensor
        Shaped and typed as z, μ and log σ.
    """
    config = _config(z, mu, row_offset, dataset_size, estimator)
    gpu = gpu if gpu is not None else gpu_of(z.device)
    n_rows, latent = z.shape
    batch = mu.shape[0]
    inv_sigma, c = launch_posterior_constants(launch, log_sigma)
    saved = dict(
        z_ptr=z,
        mu_ptr=mu,
        inv_sigma_ptr=inv_sigma,
        c_ptr=c,
        log_qz_ptr=log_qz,
        log_prod_ptr=log_prod,
        g_qz_ptr=g_qz,
        g_prod_ptr=g_prod,
    )
    row_blocks = triton.cdiv(n_rows, BLOCK_ROWS)
    key_z = _key("grad_z", config)
    if plan_z is None:
        plan_z = plan_splits(row_blocks, batch, config.BLOCK_D, gpu, key_z)
    plan_z = plan_z.check(batch)
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
    if plan_posterior is None:
        plan_posterior = plan_splits(col_blocks, n_rows, config.BLOCK_D, gpu, key_post)
    plan_posterior = plan_posterior.check(n_rows)
    part_post = mu.new_empty((2, plan_posterior.splits, batch, latent))
    compiled = launch(_minibatch_grad_posterior)[(col_blocks, plan_posterior.splits)](
        **saved,
        part_grad_mu_ptr=part_post[0],
        part_grad_log_sigma_ptr=part_post[1],
        span=plan_posterior.span,
        BLOCK_J=BLOCK_ROWS,
        **config._asdict(),
    )
    note_compiled(compiled, gpu, key_post)
    return _sum_splits(part_z), _sum_splits(part_post[0]), _sum_splits(part_post[1])
