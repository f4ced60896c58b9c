"""The KL term: one pass over (μ, σ) for the divergence and its gradients."""

import triton
import triton.language as tl

from .elementwise import normal_kl, normal_kl_logvar


@triton.jit
def _normal_kl_fwd_bwd(
    mu_ptr,
    sigma_ptr,
    partial_ptr,
    grad_mu_ptr,
    grad_sigma_ptr,
    n_elements,
    batch,
    WRITE_GRAD: tl.constexpr,
    LOGVAR: tl.constexpr,
    ACC_FP64: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per-program partial Σ KL(N(μ, σ²) ‖ N(0, 1)) and, optionally, μ / B and (σ − 1/σ) / B.

    With ``LOGVAR`` the second input is v = log σ² instead of σ (the exponential is taken
    here, never in memory) and its gradient is ½(e^v − 1) / B.
    μ and σ are contiguous, already broadcast to one shape. Fixed-order tiles as in
    ``_reconstruction_fwd_bwd``.

    Memory traffic: reads μ and σ once (2·M·s bytes); writes both gradients (2·M·s) when
    ``WRITE_GRAD``; G partials.
    """
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    inv_batch = 1.0 / tl.full([], batch, acc_ty)
    lanes = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=acc_ty)
    n_tiles = tl.cdiv(n_elements, BLOCK)
    for tile in range(pid, n_tiles, n_programs):
        if INT64:
            offs = tl.cast(tile, tl.int64) * BLOCK + lanes
        else:
            offs = tile * BLOCK + lanes
        mask = offs < n_elements
        mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if LOGVAR:
            logvar = tl.load(sigma_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            kl, d_mu, d_sigma = normal_kl_logvar(mu, logvar)
        else:
            sigma = tl.load(sigma_ptr + offs, mask=mask, other=1.0).to(acc_ty)
            kl, d_mu, d_sigma = normal_kl(mu, sigma)
        acc += tl.where(mask, kl, 0.0)
        if WRITE_GRAD:
            g_mu = d_mu * inv_batch
            g_sigma = d_sigma * inv_batch
            tl.store(grad_mu_ptr + offs, g_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)
            tl.store(grad_sigma_ptr + offs, g_sigma.to(grad_sigma_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))
