"""The β-TCVAE decomposition (Chen et al., 2018), in float64, the plainest way: B×B×D.

The oracle for the β-TCVAE loss (issue "β-TCVAE as fused kernels"): every pairwise
log-density log N(z_id; μ_jd, σ_jd) is materialised as a (B, B, D) tensor, weighted by the
estimator's log-weights log w_ij, and reduced with ``torch.logsumexp``. With B the batch
and N the dataset size:

- log q(z_i|x_i) = Σ_d log N(z_id; μ_id, σ_id)
- log q(z_i) ≈ LSE_j [Σ_d log N(z_id; μ_jd, σ_jd) + log w_ij]
- log Π_d q(z_id) ≈ Σ_d LSE_j [log N(z_id; μ_jd, σ_jd) + log w_ij]
- log p(z_i) = Σ_d log N(z_id; 0, 1)
- mi, tc, dw_kl = batch means of log q(z|x) − log q(z), log q(z) − log Π q(z),
  log Π q(z) − log p(z); their sum is the batch mean of log q(z|x) − log p(z).

Estimators (:func:`log_importance_weights`): ``"mws"``, minibatch weighted sampling,
log w_ij = −log(B·N); ``"mss"``, minibatch stratified sampling with the paper's weights
(row i: 1/N for its own sample j = i, (N − B + 1)/(N(B − 1)) for the next one,
j = i + 1 mod B, 1/(B − 1) for the others; each row sums to 1); ``"mss-reference"``, the
matrix of the authors' published code, which puts 1/N in column 0 of every row and the
stratum weight in column 1 (and at row B − 2, column 0), whatever the row.
"""

from __future__ import annotations

import math

import torch

from .beta_vae import reference_reconstruction_loss

__all__ = [
    "ESTIMATORS",
    "log_importance_weights",
    "reference_beta_tcvae_loss",
    "reference_beta_tcvae_terms",
    "reference_log_densities",
]

ESTIMATORS = ("mws", "mss", "mss-reference")


def log_importance_weights(
    batch: int, dataset_size: int, estimator: str, bank: int | None = None
) -> torch.Tensor:
    """The (B, B + K) matrix log w_ij of an estimator, in float64 (see the module
    docstring): with a bank of K posteriors (``bank`` not None, "mss" only), 1/N for the
    sample's own posterior and (N − 1)/(N(B + K − 1)) for each of the others, of the batch
    or the bank; without (K = 0), the estimator's own matrix.

    Raises
    ------
    ValueError
        If ``batch`` < 2, ``dataset_size`` < ``batch`` + K or ``estimator`` is unknown
        (or not "mss" with a bank).
    """
    if batch < 2:
        raise ValueError(f"the batch must hold at least 2 samples, got {batch}")
    if dataset_size < batch + (bank or 0):
        raise ValueError(f"dataset_size ({dataset_size}) is smaller than the batch ({batch})")
    n, m = dataset_size, batch - 1
    if bank is not None:
        if estimator != "mss":
            raise ValueError(f"a bank of posteriors needs estimator 'mss', got {estimator!r}")
        total = batch + bank
        w = torch.full((batch, total), (n - 1) / (n * (total - 1)), dtype=torch.float64)
        w[torch.arange(batch), torch.arange(batch)] = 1.0 / n
        return w.log()
    if estimator == "mws":
        return torch.full((batch, batch), -math.log(batch * n), dtype=torch.float64)
    strat = (n - m) / (n * m)
    w = torch.full((batch, batch), 1.0 / m, dtype=torch.float64)
    rows = torch.arange(batch)
    if estimator == "mss":
        w[rows, rows] = 1.0 / n
        w[rows, (rows + 1) % batch] = strat
    elif estimator == "mss-reference":
        w[:, 0] = 1.0 / n
        w[:, 1] = strat
        w[m - 1, 0] = strat
    else:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return w.log()


def _log_normal(z: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, σ²), elementwise (broadcasting)."""
    return -0.5 * math.log(2 * math.pi) - log_sigma - 0.5 * ((z - mu) * torch.exp(-log_sigma)) ** 2


def reference_log_densities(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    dataset_size: int,
    estimator: str = "mss",
    row_offset: int = 0,
    bank: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log q(z_i), log q(z_id))`` in float64, shapes (B_l,) and (B_l, D), from the full
    (B_l, B, D) pairwise log-densities.

    Parameters
    ----------
    z : torch.Tensor
        Samples, shape (B_l, D): rows ``row_offset`` … of the batch.
    mu, log_sigma : torch.Tensor
        Every posterior of the batch, shape (B, D), followed by the bank's, (K, D).
    dataset_size, estimator
        As for :func:`reference_beta_tcvae_terms`.
    row_offset : int, default=0
        The batch index of z's first row.
    bank : int or None, default=None
        K, the number of the bank's posteriors at the end of ``mu`` (None: no bank).
    """
    z, mu, log_sigma = (t.to(torch.float64) for t in (z, mu, log_sigma))
    batch = mu.shape[0] - (bank or 0)
    log_w = log_importance_weights(batch, dataset_size, estimator, bank).to(z.device)
    log_w = log_w[row_offset : row_offset + z.shape[0]]
    # pair[i, j, d] = log N(z_id; μ_jd, σ_jd)
    pair = _log_normal(z[:, None, :], mu[None, :, :], log_sigma[None, :, :])
    log_qz = torch.logsumexp(pair.sum(2) + log_w, dim=1)
    return log_qz, torch.logsumexp(pair + log_w[:, :, None], dim=1)


def reference_beta_tcvae_terms(
    z: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    dataset_size: int,
    estimator: str = "mss",
    q_is_logvar: bool = False,
    bank_loc: torch.Tensor | None = None,
    bank_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mi, tc, dw_kl)`` in float64 from the full (B, B + K, D) pairwise log-densities.

    Parameters
    ----------
    z : torch.Tensor
        The reparameterised samples, shape (B, D).
    q_loc, q_scale : torch.Tensor
        The posteriors' means and standard deviations (log-variances with
        ``q_is_logvar``), broadcastable to (B, D).
    dataset_size : int
        N, the number of samples in the dataset.
    estimator : {"mws", "mss", "mss-reference"}, default="mss"
        The weights of the minibatch estimate of q(z).
    q_is_logvar : bool, default=False
        ``q_scale`` holds log σ².
    bank_loc, bank_scale : torch.Tensor or None, default=None
        A bank of K earlier posteriors, shape (K, D), read as ``q_loc`` and ``q_scale``
        are: scored besides the batch's with the weights of
        :func:`log_importance_weights` (no gradient reaches them).
    """
    z = z.to(torch.float64)
    mu = q_loc.to(torch.float64).expand_as(z)
    second = q_scale.to(torch.float64).expand_as(z)
    log_sigma = 0.5 * second if q_is_logvar else torch.log(second)
    bank = None
    mu_all, log_sigma_all = mu, log_sigma
    if bank_loc is not None:
        bank = bank_loc.shape[0]
        bank_second = bank_scale.detach().to(torch.float64)
        bank_log_sigma = 0.5 * bank_second if q_is_logvar else torch.log(bank_second)
        mu_all = torch.cat((mu, bank_loc.detach().to(torch.float64)))
        log_sigma_all = torch.cat((log_sigma, bank_log_sigma))
    log_qz, log_prod = reference_log_densities(
        z, mu_all, log_sigma_all, dataset_size, estimator, bank=bank
    )
    log_qz_x = _log_normal(z, mu, log_sigma).sum(1)
    log_prod_qz = log_prod.sum(1)
    log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    mi = (log_qz_x - log_qz).mean()
    tc = (log_qz - log_prod_qz).mean()
    dw_kl = (log_prod_qz - log_pz).mean()
    return mi, tc, dw_kl


def reference_beta_tcvae_loss(
    x: torch.Tensor,
    p: torch.Tensor,
    z: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 6.0,
    gamma: float = 1.0,
    dataset_size: int = 60000,
    dist: str = "bernoulli",
    estimator: str = "mss",
    q_is_logvar: bool = False,
    p_is_logits: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``(loss, rec, mi, tc, dw_kl)`` with loss = rec + α·mi + β·tc + γ·dw_kl, rec the
    β-VAE's reconstruction term (:func:`reference_reconstruction_loss`)."""
    rec = reference_reconstruction_loss(p, x, dist, p_is_logits)
    mi, tc, dw_kl = reference_beta_tcvae_terms(
        z, q_loc, q_scale, dataset_size, estimator, q_is_logvar
    )
    return rec + alpha * mi + beta * tc + gamma * dw_kl, rec, mi, tc, dw_kl
