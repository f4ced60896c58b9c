"""The KL term: one pass over (μ, σ) for the divergence and its gradients."""

import triton
import triton.language as tl

from .elementwise import normal_kl, normal_kl_logvar
from .tiling import in_row, load_tile, row_tile_offsets, store_tile, tail_tile


@triton.jit
def _normal_kl_tile(
    q_loc_ptr,
    q_scale_ptr,
    grad_q_loc_ptr,
    grad_q_scale_ptr,
    kl_elements_ptr,
    offs,
    mask,
    inv_div,
    acc,
    WRITE_GRAD: tl.constexpr,
    WRITE_KL_ELEMENTS: tl.constexpr,
    Q_IS_LOGVAR: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One tile of ``_normal_kl_fwd_bwd``; returns the updated accumulator. Without
    ``MASKED`` no access is masked (a full tile)."""
    acc_ty = acc.dtype
    mu = load_tile(q_loc_ptr, offs, mask, 0.0, MASKED).to(acc_ty)
    if Q_IS_LOGVAR:
        logvar = load_tile(q_scale_ptr, offs, mask, 0.0, MASKED).to(acc_ty)
        kl, d_loc, d_scale = normal_kl_logvar(mu, logvar)
    else:
        sigma = load_tile(q_scale_ptr, offs, mask, 1.0, MASKED).to(acc_ty)
        kl, d_loc, d_scale = normal_kl(mu, sigma)
    acc += in_row(kl, mask, MASKED)
    if WRITE_KL_ELEMENTS:
        store_tile(kl_elements_ptr, offs, kl, mask, MASKED)
    if WRITE_GRAD:
        store_tile(grad_q_loc_ptr, offs, d_loc * inv_div, mask, MASKED)
        store_tile(grad_q_scale_ptr, offs, d_scale * inv_div, mask, MASKED)
    return acc


@triton.jit
def _normal_kl_fwd_bwd(
    # data
    q_loc_ptr,
    q_scale_ptr,
    # outputs
    partial_ptr,
    grad_q_loc_ptr,
    grad_q_scale_ptr,
    kl_elements_ptr,
    # sizes
    row_len,
    grad_div,
    # what to compute
    WRITE_GRAD: tl.constexpr,
    WRITE_KL_ELEMENTS: tl.constexpr,
    Q_IS_LOGVAR: tl.constexpr,
    ACC_FP64: tl.constexpr,
    INT64: tl.constexpr,
    ONE_ROW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Partial sums of KL(N(μ, σ²) ‖ N(0, 1)) per row and program, and optionally the
    gradients μ / div and (σ − 1/σ) / div.

    ``q_loc`` holds μ and ``q_scale`` σ, or with ``Q_IS_LOGVAR`` v = log σ² (the exponential
    is taken here, never in memory; its gradient is ½(e^v − 1) / div). With
    ``WRITE_KL_ELEMENTS`` each element's KL is written too (the per-dimension KL is its
    batch mean). Both are contiguous, already broadcast to one shape; rows, programs and
    tiles (full ones unmasked, the partial one masked) as in ``_reconstruction_fwd_bwd``.

    Memory traffic: reads μ and σ once (2·M·s bytes); writes both gradients (2·M·s) when
    ``WRITE_GRAD`` and the KL elements (M·s) when ``WRITE_KL_ELEMENTS``; rows·G partials.
    """
    row = tl.program_id(0)
    pid = tl.program_id(1)
    n_programs = tl.num_programs(1)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    inv_div = 1.0 / tl.full([], grad_div, acc_ty)
    acc = tl.zeros([BLOCK], dtype=acc_ty)
    n_full, has_tail = tail_tile(row_len, pid, n_programs, BLOCK)
    for tile in range(pid, n_full, n_programs):
        offs, mask = row_tile_offsets(row, tile, row_len, BLOCK, INT64, ONE_ROW)
        acc = _normal_kl_tile(
            q_loc_ptr, q_scale_ptr, grad_q_loc_ptr, grad_q_scale_ptr, kl_elements_ptr,
            offs, mask, inv_div, acc, WRITE_GRAD, WRITE_KL_ELEMENTS, Q_IS_LOGVAR, False,
        )  # fmt: skip
    if has_tail:
        offs, mask = row_tile_offsets(row, n_full, row_len, BLOCK, INT64, ONE_ROW)
        acc = _normal_kl_tile(
            q_loc_ptr, q_scale_ptr, grad_q_loc_ptr, grad_q_scale_ptr, kl_elements_ptr,
            offs, mask, inv_div, acc, WRITE_GRAD, WRITE_KL_ELEMENTS, Q_IS_LOGVAR, True,
        )  # fmt: skip
    tl.store(partial_ptr + row * n_programs + pid, tl.sum(acc, axis=0))
