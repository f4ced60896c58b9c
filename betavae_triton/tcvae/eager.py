"""β-TCVAE's minibatch log-densities in plain PyTorch, in O(B·chunk·D) memory (not B×B×D).

The chunk adapts to the sizes (:func:`chunk_size`): each block holds at most about 2^20
values whatever the batch (at B = 4096, D = 128: chunks of 2 posteriors, (4096, 128, 2)
blocks, where the B×B×D formula holds 2^31 values per tensor).

log q(z_i) and log Π_d q(z_id) are log-sum-exps over the posteriors j of the pairwise
Gaussian log-densities M_ijd = log N(z_id; μ_jd, σ_jd) plus the estimator's log-weights
log w_ij. The forward pass walks j in chunks with an online log-sum-exp (a running maximum
and a rescaled sum per row, and per row and dimension); the backward pass recomputes each
chunk from the saved log-sum-exps, so that no B×B×D tensor ever exists:

    dL/dM_ijd = g_q,i · softmax_j(Σ_d M_ij· + log w_ij) + g_p,id · softmax_j(M_ijd + log w_ij)

with g_q, g_p the incoming gradients of log q(z) and log q(z_d). The log-weights are made a
block of columns at a time too (:class:`LogWeights`): extra memory O(B·chunk·D) in all.
The samples are ``n_rows`` rows whose batch indices start at ``row_offset`` (one rank's
share of a gathered batch); the posteriors are the whole batch. The same algorithm as the
kernels (``kernels/total_correlation.py``); the oracle is ``reference/beta_tcvae.py``.
The operators that run it (``betavae_triton::tc_log_densities_eager`` and its backward)
are registered in :mod:`.ops`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._constants import HALF_LOG_2PI
from .weights import estimator_weights

Tensor = torch.Tensor
# Each step of the walk over the posteriors builds (B_l, chunk, D) blocks of about this many
# values (4 MiB in float32: a few such blocks live at once, in the cache of a large CPU).
BLOCK_ELEMENTS = 1 << 20


class LogWeights:
    """The estimator's log-weights log w_ij, produced a block of columns at a time (never
    the whole B×B matrix), for rows ``row_offset`` … ``row_offset + n_rows − 1`` of a
    batch of ``batch``: ``"mws"`` −log(B·N) everywhere; ``"mss"`` (the paper's) log 1/N on
    the diagonal, log (N − B + 1)/(N(B − 1)) at j = i + 1 mod B, log 1/(B − 1) elsewhere;
    ``"mss-reference"`` (the authors' published matrix) log 1/N in column 0, the stratum
    weight in column 1 and at row B − 2 of column 0, log 1/(B − 1) elsewhere."""

    def __init__(
        self,
        batch: int,
        dataset_size: int,
        estimator: str,
        row_offset: int = 0,
        n_rows: int | None = None,
        log: Callable[[float], float | Tensor] = math.log,
    ) -> None:
        self.batch, self.estimator = batch, estimator
        self.row_offset = row_offset
        self.n_rows = batch if n_rows is None else n_rows
        weights = estimator_weights(batch, dataset_size, estimator, log)
        _, self.own, self.strat, self.rest = weights

    def block(self, start: int, stop: int, dtype: torch.dtype, device) -> Tensor:
        """log w[rows, start:stop], shape (n_rows, stop − start)."""
        shape = (self.n_rows, stop - start)
        # (torch.as_tensor: the weights may be numbers or 0-d tensors, see __init__)
        if self.estimator == "mws":
            return torch.as_tensor(self.own, dtype=dtype, device=device).expand(shape)
        rows = torch.arange(self.row_offset, self.row_offset + self.n_rows, device=device)
        rows = rows[:, None]
        cols = torch.arange(start, stop, device=device)[None, :]
        w = torch.as_tensor(self.rest, dtype=dtype, device=device).expand(shape)
        if self.estimator in ("mss", "mss-bank"):  # (the bank's strat is its rest)
            w = torch.where(cols == (rows + 1) % self.batch, self.strat, w)
            return torch.where(cols == rows, self.own, w)
        w = torch.where(cols == 1, self.strat, w)
        w = torch.where(cols == 0, self.own, w)
        return torch.where((cols == 0) & (rows == self.batch - 2), self.strat, w)


def _pair_log_density(z: Tensor, mu_t: Tensor, log_sigma_t: Tensor) -> tuple[Tensor, Tensor]:
    """``(M, t)`` for a chunk of posteriors, both (B_l, D, C): M[i, d, j] = log N(z_id; μ_jd,
    σ_jd) and t[i, d, j] = (z_id − μ_jd)/σ_jd, from μ and log σ of the chunk transposed,
    (D, C). The posteriors lie along the last, contiguous axis, so that the reductions over
    them (max, sum) run over contiguous memory: in torch on a CPU, a max over the middle
    axis of a (B, C, D) block is some 20 times slower."""
    t = (z[:, :, None] - mu_t[None, :, :]).mul_(torch.exp(-log_sigma_t)[None, :, :])
    # −½t² + (−½ log 2π − log σ), rounded as the oracle rounds it (no fused multiply-add:
    # at |M| ~ 1e8, one unit in the last place of M moves the softmax weights by 1e-8).
    return t.square().mul_(-0.5).add_((-HALF_LOG_2PI - log_sigma_t)[None, :, :]), t


def chunk_size(n_rows: int, batch: int, latent: int) -> int:
    """Posteriors per step: as many as keep a (n_rows, D, chunk) block within
    :data:`BLOCK_ELEMENTS` values (at least 1, at most the batch)."""
    return max(1, min(batch, BLOCK_ELEMENTS // max(1, n_rows * latent)))


def _chunks(log_w: LogWeights, z: Tensor, mu: Tensor, log_sigma: Tensor, chunk: int | None):
    """``(start, stop, μ, log σ, log w)`` of each chunk of ``chunk`` posteriors (default:
    :func:`chunk_size`), μ and log σ transposed, (D, C)."""
    if chunk is None:
        chunk = chunk_size(z.shape[0], mu.shape[0], z.shape[1])
    elif chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    for start in range(0, mu.shape[0], chunk):
        stop = min(start + chunk, mu.shape[0])
        lw = log_w.block(start, stop, mu.dtype, mu.device)
        mu_t, ls_t = (t[start:stop].t().contiguous() for t in (mu, log_sigma))
        yield start, stop, mu_t, ls_t, lw


def log_densities_fwd(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
    *,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log q(z_id))``, shapes (B_l,) and (B_l, D), in the inputs' dtype:
    online log-sum-exps over chunks of ``chunk`` posteriors (default: :func:`chunk_size`).
    No autograd."""
    n_rows, latent = z.shape
    log_w = LogWeights(mu.shape[0], dataset_size, estimator, row_offset, n_rows)
    run_max_q = torch.full((n_rows,), -math.inf, dtype=z.dtype, device=z.device)
    run_sum_q = torch.zeros((n_rows,), dtype=z.dtype, device=z.device)
    run_max_p = torch.full((n_rows, latent), -math.inf, dtype=z.dtype, device=z.device)
    run_sum_p = torch.zeros((n_rows, latent), dtype=z.dtype, device=z.device)
    for _, _, mu_t, ls_t, lw in _chunks(log_w, z, mu, log_sigma, chunk):
        pair, _ = _pair_log_density(z, mu_t, ls_t)  # (B_l, D, C)
        joint = pair.sum(1) + lw  # (B_l, C)
        new_max_q = torch.maximum(run_max_q, joint.amax(1))
        run_sum_q = run_sum_q * torch.exp(run_max_q - new_max_q) + torch.exp(
            joint - new_max_q[:, None]
        ).sum(1)
        run_max_q = new_max_q
        marginal = pair.add_(lw[:, None, :])  # (B_l, D, C), in place
        new_max_p = torch.maximum(run_max_p, marginal.amax(2))
        run_sum_p = run_sum_p * torch.exp(run_max_p - new_max_p) + (
            marginal.sub_(new_max_p[:, :, None]).exp_().sum(2)
        )
        run_max_p = new_max_p
    return run_max_q + torch.log(run_sum_q), run_max_p + torch.log(run_sum_p)


def log_densities_bwd(
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
    *,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dz, dL/dμ, dL/d log σ)``, recomputing each chunk of ``chunk`` posteriors
    (default: :func:`chunk_size`) from the saved log-sum-exps. No autograd."""
    log_w = LogWeights(mu.shape[0], dataset_size, estimator, row_offset, z.shape[0])
    grad_z = torch.zeros_like(z)
    grad_mu = torch.zeros_like(mu)
    grad_log_sigma = torch.zeros_like(log_sigma)
    for start, stop, mu_t, ls_t, lw in _chunks(log_w, z, mu, log_sigma, chunk):
        pair, t = _pair_log_density(z, mu_t, ls_t)  # (B_l, D, C)
        soft_q = torch.exp(pair.sum(1) + lw - log_qz[:, None])  # (B_l, C)
        # G = g_q · softmax_j(joint) + g_p · softmax_j(marginal), in place of M.
        g = pair.add_(lw[:, None, :]).sub_(log_prod[:, :, None]).exp_()
        g = g.mul_(g_prod[:, :, None]).add_((g_qz[:, None] * soft_q)[:, None, :])
        g_sum = g.sum(0)  # (D, C)
        # dM/dμ = t/σ, dM/dz = −t/σ, dM/d log σ = t² − 1.
        inv_sigma = torch.exp(-ls_t)
        g_t = g.mul_(t)  # G·t, in place of G
        grad_z -= (g_t * inv_sigma[None, :, :]).sum(2)
        grad_mu[start:stop] = (g_t.sum(0) * inv_sigma).t()
        grad_log_sigma[start:stop] = (g_t.mul_(t).sum(0) - g_sum).t()
    return grad_z, grad_mu, grad_log_sigma
