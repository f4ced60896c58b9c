"""β-TCVAE's minibatch terms in plain PyTorch, in O(B·chunk·D) memory (not B×B×D).

The eager path of the β-TCVAE loss (issue "β-TCVAE as fused kernels"; not yet public):
log q(z_i) and log Π_d q(z_id) are log-sum-exps over the batch j of the pairwise Gaussian
log-densities M_ijd = log N(z_id; μ_jd, σ_jd) plus the estimator's log-weights log w_ij.
The forward pass walks j in chunks with an online log-sum-exp (a running maximum and a
rescaled sum per row, and per row and dimension); the backward pass recomputes each chunk
from the saved log-sum-exps, so that no B×B×D tensor ever exists:

    dL/dM_ijd = c_q · softmax_j(Σ_d M_ij· + log w_ij) + c_p · softmax_j(M_ijd + log w_ij)

with c_q, c_p the weights of log q(z) and log Π q(z) in the loss. The log-weights are made
a block of columns at a time too (:class:`LogWeights`): extra memory O(B·chunk·D) in all.
The reference is ``reference/beta_tcvae.py`` (the same formulas on the full tensor).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class LogWeights:
    """The estimator's log-weights log w_ij, produced a block of columns at a time (never
    the whole B×B matrix): ``"mws"`` −log(B·N) everywhere; ``"mss"`` (the paper's) log 1/N
    on the diagonal, log (N − B + 1)/(N(B − 1)) at j = i + 1 mod B, log 1/(B − 1)
    elsewhere; ``"mss-reference"`` (the authors' published matrix) log 1/N in column 0, the
    stratum weight in column 1 and at row B − 2 of column 0, log 1/(B − 1) elsewhere."""

    def __init__(self, batch: int, dataset_size: int, estimator: str) -> None:
        n, m = dataset_size, batch - 1
        self.batch, self.dataset_size, self.estimator = batch, dataset_size, estimator
        self.own = -math.log(n)
        self.strat = math.log((n - m) / (n * m))
        self.rest = -math.log(m)
        self.mws = -math.log(batch * n)

    def block(self, start: int, stop: int, device) -> Tensor:
        """log w[:, start:stop], shape (B, stop − start), float64."""
        rows = torch.arange(self.batch, device=device)[:, None]
        cols = torch.arange(start, stop, device=device)[None, :]
        if self.estimator == "mws":
            return torch.full(
                (self.batch, stop - start), self.mws, dtype=torch.float64, device=device
            )
        w = torch.full((self.batch, stop - start), self.rest, dtype=torch.float64, device=device)
        if self.estimator == "mss":
            w = torch.where(cols == (rows + 1) % self.batch, self.strat, w)
            return torch.where(cols == rows, self.own, w)
        w = torch.where(cols == 1, self.strat, w)
        w = torch.where(cols == 0, self.own, w)
        return torch.where((cols == 0) & (rows == self.batch - 2), self.strat, w)


def _pair_log_density(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """M[i, j, d] = log N(z_id; μ_jd, σ_jd) for a chunk of j: (B, C, D)."""
    scaled = (z[:, None, :] - mu[None, :, :]) * torch.exp(-log_sigma)[None, :, :]
    return -_HALF_LOG_2PI - log_sigma[None, :, :] - 0.5 * scaled * scaled


def minibatch_log_densities(
    z: Tensor, mu: Tensor, log_sigma: Tensor, log_w: LogWeights, chunk: int
) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log Π_d q(z_id))``, shapes (B,) and (B, D): online log-sum-exps over
    chunks of ``chunk`` posteriors, in the inputs' dtype (float32 or float64)."""
    batch, latent = z.shape
    run_max_q = torch.full((batch,), -math.inf, dtype=z.dtype, device=z.device)
    run_sum_q = torch.zeros((batch,), dtype=z.dtype, device=z.device)
    run_max_p = torch.full((batch, latent), -math.inf, dtype=z.dtype, device=z.device)
    run_sum_p = torch.zeros((batch, latent), dtype=z.dtype, device=z.device)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        pair = _pair_log_density(z, mu[start:stop], log_sigma[start:stop])
        lw = log_w.block(start, stop, z.device).to(z.dtype)
        joint = pair.sum(2) + lw  # (B, C)
        marginal = pair + lw[:, :, None]  # (B, C, D)
        new_max_q = torch.maximum(run_max_q, joint.amax(1))
        run_sum_q = run_sum_q * torch.exp(run_max_q - new_max_q) + torch.exp(
            joint - new_max_q[:, None]
        ).sum(1)
        run_max_q = new_max_q
        new_max_p = torch.maximum(run_max_p, marginal.amax(1))
        run_sum_p = run_sum_p * torch.exp(run_max_p - new_max_p) + torch.exp(
            marginal - new_max_p[:, None, :]
        ).sum(1)
        run_max_p = new_max_p
    return run_max_q + torch.log(run_sum_q), run_max_p + torch.log(run_sum_p)


class _MinibatchLogDensities(torch.autograd.Function):
    """``(log q(z), log Π q(z))`` with a backward pass that recomputes each chunk."""

    @staticmethod
    def forward(ctx, z, mu, log_sigma, log_w, chunk):
        log_qz, log_prod = minibatch_log_densities(z, mu, log_sigma, log_w, chunk)
        ctx.save_for_backward(z, mu, log_sigma, log_qz, log_prod)
        ctx.chunk, ctx.log_w = chunk, log_w
        return log_qz, log_prod

    @staticmethod
    def backward(ctx, g_qz, g_prod):
        z, mu, log_sigma, log_qz, log_prod = ctx.saved_tensors
        g_qz = torch.zeros_like(log_qz) if g_qz is None else g_qz
        g_prod = torch.zeros_like(log_prod) if g_prod is None else g_prod
        grad_z = torch.zeros_like(z)
        grad_mu = torch.zeros_like(mu)
        grad_log_sigma = torch.zeros_like(log_sigma)
        batch = z.shape[0]
        for start in range(0, batch, ctx.chunk):
            stop = min(start + ctx.chunk, batch)
            mu_c, ls_c = mu[start:stop], log_sigma[start:stop]
            pair = _pair_log_density(z, mu_c, ls_c)
            lw = ctx.log_w.block(start, stop, z.device).to(z.dtype)
            soft_q = torch.exp(pair.sum(2) + lw - log_qz[:, None])  # (B, C)
            soft_p = torch.exp(pair + lw[:, :, None] - log_prod[:, None, :])  # (B, C, D)
            g = g_qz[:, None, None] * soft_q[:, :, None] + g_prod[:, None, :] * soft_p
            inv_var = torch.exp(-2.0 * ls_c)[None, :, :]
            diff = z[:, None, :] - mu_c[None, :, :]
            d_pair_d_mu = diff * inv_var  # dM/dμ; dM/dz is its negative
            grad_z -= (g * d_pair_d_mu).sum(1)
            grad_mu[start:stop] += (g * d_pair_d_mu).sum(0)
            grad_log_sigma[start:stop] += (g * (diff * diff * inv_var - 1.0)).sum(0)
        return grad_z, grad_mu, grad_log_sigma, None, None


def beta_tcvae_terms(
    z: Tensor,
    q_loc: Tensor,
    q_scale: Tensor,
    dataset_size: int,
    estimator: str = "mss",
    q_is_logvar: bool = False,
    chunk: int = 64,
    kernels: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mi, tc, dw_kl)``: batch means of log q(z|x) − log q(z), log q(z) − log Π q(z)
    and log Π q(z) − log p(z), with extra memory O(B·chunk·D) (O(B·D) with ``kernels``:
    the Triton kernels instead of the chunked torch ops), differentiable in z, q_loc and
    q_scale (float64 for float64 inputs, float32 otherwise)."""
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.to(dtype)
    mu = q_loc.to(dtype).expand_as(z)
    second = q_scale.to(dtype).expand_as(z)
    log_sigma = 0.5 * second if q_is_logvar else torch.log(second)
    log_w = LogWeights(z.shape[0], dataset_size, estimator)
    if kernels:
        from ._tcvae_triton import MinibatchLogDensities

        log_qz, log_prod = MinibatchLogDensities.apply(z, mu, log_sigma, log_w)
    else:
        log_qz, log_prod = _MinibatchLogDensities.apply(z, mu, log_sigma, log_w, chunk)
    scaled = (z - mu) * torch.exp(-log_sigma)
    log_qz_x = (-_HALF_LOG_2PI - log_sigma - 0.5 * scaled * scaled).sum(1)
    log_pz = (-_HALF_LOG_2PI - 0.5 * z * z).sum(1)
    log_prod_qz = log_prod.sum(1)
    return (
        (log_qz_x - log_qz).mean(),
        (log_qz - log_prod_qz).mean(),
        (log_prod_qz - log_pz).mean(),
    )
