"""The B×B×D formula of β-TCVAE's minibatch terms as public implementations write it (the
``formula`` contenders), and the peak memory it is predicted to take.

Chen et al.'s code (rtqichen/beta-tcvae) builds the (B, B, D) tensor of pairwise
log-densities and reduces it with ``logsumexp`` over the posteriors; its peak memory grows
as B²·D (:data:`PEAK_FACTORS`), where ours stays O(B·D).
"""

from __future__ import annotations

import math

import torch

__all__ = ["PEAK_FACTORS", "bbd_bytes", "formula_terms", "predicted_peak_bytes"]

LOG_2PI = math.log(2 * math.pi)
#: Peak extra memory of one forward + backward, in float32 B×B×D tensors, plus B×B
#: matrices (the log-weights and the joint's log-sum-exp input): measured on a CPU at
#: B = 256 … 1024 (torch 2.13); every run prints the measured peak next to the prediction.
#: ``oracle``: the float64 reference's forward alone, under ``no_grad``.
PEAK_FACTORS = {"formula": (6.1, 6), "formula-compiled": (1.15, 6), "oracle": (6.3, 6)}


def _log_density(sample: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(sample; μ, σ²), elementwise with broadcasting: the authors' ``Normal.log_density``
    (``lib/dist.py`` of rtqichen/beta-tcvae), restated."""
    inv_sigma = torch.exp(-log_sigma)
    tmp = (sample - mu) * inv_sigma
    return -0.5 * (tmp * tmp + 2 * log_sigma + LOG_2PI)


def _mss_log_weights(batch: int, dataset_size: int, like: torch.Tensor) -> torch.Tensor:
    """log w_ij of minibatch stratified sampling (the paper's weights: 1/N on the diagonal,
    (N − B + 1)/(N(B − 1)) at j = i + 1 mod B, 1/(B − 1) elsewhere), a (B, B) matrix built at
    each call, as the authors' ``_log_importance_weight_matrix`` is."""
    n, m = dataset_size, batch - 1
    w = torch.full((batch, batch), 1.0 / m, dtype=like.dtype, device=like.device)
    rows = torch.arange(batch, device=like.device)
    w[rows, rows] = 1.0 / n
    w[rows, (rows + 1) % batch] = (n - m) / (n * m)
    return w.log()


def formula_terms(
    z: torch.Tensor, q_loc: torch.Tensor, q_scale: torch.Tensor, dataset_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mi, tc, dw_kl)`` the way public β-TCVAE code computes them, in the inputs' dtype:
    the (B, B, D) pairwise log-densities, then ``logsumexp`` over the posteriors (dim 1)
    for log q(z) (the joint: summed over D first) and for each marginal log q(z_d).

    Parameters
    ----------
    z, q_loc, q_scale : torch.Tensor
        Samples, posterior means and standard deviations, shape (B, D).
    dataset_size : int
        N.

    Returns
    -------
    mi, tc, dw_kl : torch.Tensor
        Batch means, differentiable in the three inputs.
    """
    batch, latent = z.shape
    log_sigma = torch.log(q_scale)
    # pair[i, j, d] = log N(z_id; μ_jd, σ_jd): the authors' `_logqz`, a (B, B, D) tensor.
    pair = _log_density(
        z.view(batch, 1, latent), q_loc.view(1, batch, latent), log_sigma.view(1, batch, latent)
    )
    log_w = _mss_log_weights(batch, dataset_size, z)
    log_qz = torch.logsumexp(log_w + pair.sum(2), dim=1)
    log_prod_qz = torch.logsumexp(log_w.view(batch, batch, 1) + pair, dim=1).sum(1)
    log_qz_x = _log_density(z, q_loc, log_sigma).sum(1)
    zero = torch.zeros_like(z)
    log_pz = _log_density(z, zero, zero).sum(1)
    return (
        (log_qz_x - log_qz).mean(),
        (log_qz - log_prod_qz).mean(),
        (log_prod_qz - log_pz).mean(),
    )


def bbd_bytes(batch: int, latent: int) -> int:
    """Bytes of one float32 (B, B, D) tensor."""
    return batch * batch * latent * 4


def predicted_peak_bytes(name: str, batch: int, latent: int) -> int | None:
    """Predicted peak extra memory of a forward + backward (``oracle``: forward alone in
    float64), from :data:`PEAK_FACTORS`; None for ours (O(B·D) plus blocks of about 2^20
    values, whatever B)."""
    if name not in PEAK_FACTORS:
        return None
    per_bbd, per_bb = PEAK_FACTORS[name]
    return int(per_bbd * bbd_bytes(batch, latent) + per_bb * batch * batch * 4)
