"""From the pairwise log-densities to β-TCVAE's three terms, and back.

With n = B_l samples z_i (rows ``row_offset`` … of the batch), each with its own posterior
(μ_i, σ_i) among the batch's, t_id = (z_id − μ_id)/σ_id, and the pairwise terms
log q(z_i) and log q(z_id) of :mod:`.ops`:

    log q(z_i|x_i) = Σ_d (−½ log 2π − log σ_id − ½ t_id²)
    log p(z_i)     = Σ_d (−½ log 2π − ½ z_id²)
    mi    = mean_i [log q(z_i|x_i) − log q(z_i)]
    tc    = mean_i [log q(z_i) − Σ_d log q(z_id)]
    dw_kl = mean_i [Σ_d log q(z_id) − log p(z_i)]

and, for incoming gradients (g_mi, g_tc, g_dw) of the three terms, the gradients that reach
the pairwise terms, g_q,i = (g_tc − g_mi)/n and g_p,id = (g_dw − g_tc)/n, and the samples'
own parts: dz += (g_mi/n)(−t/σ) + (g_dw/n) z, dμ_i += (g_mi/n) t/σ, d log σ_i +=
(g_mi/n)(t² − 1). The operators compute the terms inside (one call forward, one backward:
no small autograd ops around them); :mod:`.formula` uses :func:`terms` under autograd.
"""

from __future__ import annotations

import torch

from .._constants import HALF_LOG_2PI
from .call import PairwiseCall

Tensor = torch.Tensor


def _own(call: PairwiseCall) -> tuple[Tensor, Tensor]:
    """The samples' own posteriors: rows ``row_offset`` … of μ and log σ."""
    rows = slice(call.row_offset, call.row_offset + call.z.shape[0])
    return call.mu[rows], call.log_sigma[rows]


def term_means(call: PairwiseCall, log_qz: Tensor, log_prod: Tensor) -> tuple[Tensor, ...]:
    """``(mi, tc, dw_kl)``, three scalars in the call's dtype (differentiable torch ops:
    under autograd in :mod:`.formula`, without it inside the operators)."""
    z = call.z
    mu, log_sigma = _own(call)
    scaled = (z - mu) * torch.exp(-log_sigma)
    log_qz_x = (-HALF_LOG_2PI - log_sigma - 0.5 * scaled * scaled).sum(1)
    log_pz = (-HALF_LOG_2PI - 0.5 * z * z).sum(1)
    log_prod_qz = log_prod.sum(1)
    return (
        (log_qz_x - log_qz).mean(),
        (log_qz - log_prod_qz).mean(),
        (log_prod_qz - log_pz).mean(),
    )


def terms(call: PairwiseCall, log_qz: Tensor, log_prod: Tensor) -> Tensor:
    """``[mi, tc, dw_kl]``, shape (3,): :func:`term_means` stacked (the operators'
    third output)."""
    return torch.stack(term_means(call, log_qz, log_prod))


def pairwise_gradients(
    call: PairwiseCall, g_terms: Tensor | None, g_qz: Tensor | None, g_prod: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The gradients of log q(z_i) and log q(z_id): those that reached them directly plus
    those of the terms, (g_tc − g_mi)/n and (g_dw − g_tc)/n (undefined ones: zeros)."""
    z = call.z
    total_qz = torch.zeros(z.shape[:1], dtype=z.dtype, device=z.device)
    total_prod = torch.zeros_like(z)
    if g_terms is not None:
        g_mi, g_tc, g_dw = (g_terms / z.shape[0]).unbind()
        total_qz += g_tc - g_mi
        total_prod += g_dw - g_tc
    if g_qz is not None:
        total_qz += g_qz
    if g_prod is not None:
        total_prod += g_prod
    return total_qz, total_prod


def add_own_gradients(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    g_terms: Tensor,
    grad_z: Tensor,
    grad_mu: Tensor,
    grad_log_sigma: Tensor,
) -> None:
    """Add, in place, the gradients of the samples' own log q(z_i|x_i) and log p(z_i):
    sample i's posterior is row ``row_offset + i`` of μ and log σ (the first four fields
    of a :class:`.call.PairwiseCall`, which its callers pass; a compiled call's autograd
    builds none)."""
    rows = slice(row_offset, row_offset + z.shape[0])
    g_mi, _, g_dw = (g_terms / z.shape[0]).unbind()
    inv_sigma = (-log_sigma[rows]).exp()
    t = (z - mu[rows]) * inv_sigma
    g_t = g_mi * t * inv_sigma
    grad_z.sub_(g_t).add_(g_dw * z)
    grad_mu[rows] += g_t
    grad_log_sigma[rows] += g_mi * (t * t - 1)
