"""The KL term: one pass over (μ, σ) for the divergence and its gradients."""

import triton
import triton.language as tl

from .elementwise import normal_kl, normal_kl_logvar
from .tiling import row_tile_offsets


@triton.jit
def _normal_kl_fwd_bwd(
    mu_ptr,
    sigma_ptr,
    partial_ptr,
    grad_mu_ptr,
    grad_sigma_ptr,
    kl_out_ptr,
    row_len,
    grad_div,
    WRITE_GRAD: tl.constexpr,
    WRITE_KL: tl.constexpr,
    LOGVAR: tl.constexpr,
    ACC_FP64: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Partial sums of KL(N(μ, σ²) ‖ N(0, 1)) per row and program, and optionally the
    gradients μ / div and (σ − 1/σ) / div.

    With ``LOGVAR`` the second input is v = log σ² instead of σ (the exponential is taken
    here, never in memory) and its gradient is ½(e^v − 1) / div. With ``WRITE_KL`` each
    element's KL is written too (the per-dimension KL is its batch mean). μ and σ are
    contiguous, already broadcast to one shape; rows and programs as in
    ``_reconstruction_fwd_bwd``.

    Memory traffic: reads μ and σ once (2·M·s bytes); writes both gradients (2·M·s) when
    ``WRITE_GRAD`` and the KL elements (M·s) when ``WRITE_KL``; rows·G partials.
    """
    row = tl.program_id(0)
    pid = tl.program_id(1)
    n_programs = tl.num_programs(1)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    inv_div = 1.0 / tl.full([], grad_div, acc_ty)
    acc = tl.zeros([BLOCK], dtype=acc_ty)
    n_tiles = tl.cdiv(row_len, BLOCK)
    for tile in range(pid, n_tiles, n_programs):
        offs, mask = row_tile_offsets(row, tile, row_len, BLOCK, INT64)
        mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if LOGVAR:
            logvar = tl.load(sigma_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            kl, d_mu, d_sigma = normal_kl_logvar(mu, logvar)
        else:
            sigma = tl.load(sigma_ptr + offs, mask=mask, other=1.0).to(acc_ty)
            kl, d_mu, d_sigma = normal_kl(mu, sigma)
        acc += tl.where(mask, kl, 0.0)
        if WRITE_KL:
            tl.store(kl_out_ptr + offs, kl.to(kl_out_ptr.dtype.element_ty), mask=mask)
        if WRITE_GRAD:
            g_mu = d_mu * inv_div
            g_sigma = d_sigma * inv_div
            tl.store(grad_mu_ptr + offs, g_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)
            tl.store(grad_sigma_ptr + offs, g_sigma.to(grad_sigma_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + row * n_programs + pid, tl.sum(acc, axis=0))
