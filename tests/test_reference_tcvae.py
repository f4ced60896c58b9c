"""The β-TCVAE oracle (``reference/beta_tcvae.py``) against independent statements: its
weights, the decomposition it computes, and invariants that hold for every estimator.

First step of the β-TCVAE issue: the package's kernels and eager path will be compared
with this oracle, so the oracle itself is checked here against ``torch.distributions``
written out pair by pair, and against closed forms.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Normal

from reference.beta_tcvae import (
    ESTIMATORS,
    log_importance_weights,
    reference_beta_tcvae_loss,
    reference_beta_tcvae_terms,
)


def _posterior(batch: int, latent: int, seed: int, logvar: bool = False):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    log_sigma = torch.rand(batch, latent, generator=gen, dtype=torch.float64) * 2 - 1.5
    z = mu + log_sigma.exp() * torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    return z, mu, (2 * log_sigma if logvar else log_sigma.exp())


def test_mss_weights_follow_the_paper():
    """Row i: 1/N on the diagonal, (N − B + 1)/(N(B − 1)) at j = i + 1 mod B, 1/(B − 1)
    elsewhere; every row sums to 1."""
    b, n = 5, 100
    w = log_importance_weights(b, n, "mss").exp()
    strat = (n - b + 1) / (n * (b - 1))
    for i in range(b):
        for j in range(b):
            want = 1 / n if j == i else strat if j == (i + 1) % b else 1 / (b - 1)
            assert w[i, j].item() == pytest.approx(want, rel=1e-14)
    torch.testing.assert_close(w.sum(1), torch.ones(b, dtype=torch.float64))


def test_mss_reference_reproduces_the_published_matrix():
    """The authors' code fills a B×B matrix with 1/(B − 1), then writes 1/N at every B-th
    flat index (column 0), the stratum weight at every B-th index from 1 (column 1), and
    the stratum weight at row B − 2, column 0: the own sample sits in column 0, not on the
    diagonal."""
    b, n = 6, 50
    w = log_importance_weights(b, n, "mss-reference").exp()
    strat = (n - b + 1) / (n * (b - 1))
    flat = torch.full((b * b,), 1 / (b - 1), dtype=torch.float64)
    flat[::b] = 1 / n
    flat[1::b] = strat
    published = flat.view(b, b).clone()
    published[b - 2, 0] = strat
    torch.testing.assert_close(w, published, rtol=1e-14, atol=0)
    assert w[3, 3].item() == pytest.approx(1 / (b - 1))  # not 1/N: the reported bug


def test_mws_weights():
    w = log_importance_weights(4, 10, "mws")
    torch.testing.assert_close(w, torch.full((4, 4), -math.log(40), dtype=torch.float64))


def test_log_q_z_against_distributions_pair_by_pair():
    """log q(z_i) and log Π_d q(z_id) for MWS, written out with Normal.log_prob."""
    b, d, n = 4, 3, 20
    z, mu, sigma = _posterior(b, d, seed=1)
    mi, tc, dw_kl = reference_beta_tcvae_terms(z, mu, sigma, n, "mws")
    log_qz, log_prod, log_qzx, log_pz = [], [], [], []
    for i in range(b):
        joint = [Normal(mu[j], sigma[j]).log_prob(z[i]).sum() for j in range(b)]
        log_qz.append(torch.logsumexp(torch.stack(joint), 0) - math.log(b * n))
        per_dim = torch.stack([Normal(mu[j], sigma[j]).log_prob(z[i]) for j in range(b)])
        log_prod.append((torch.logsumexp(per_dim, 0) - math.log(b * n)).sum())
        log_qzx.append(Normal(mu[i], sigma[i]).log_prob(z[i]).sum())
        log_pz.append(Normal(0.0, 1.0).log_prob(z[i]).sum())
    log_qz, log_prod = torch.stack(log_qz), torch.stack(log_prod)
    log_qzx, log_pz = torch.stack(log_qzx), torch.stack(log_pz)
    torch.testing.assert_close(mi, (log_qzx - log_qz).mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tc, (log_qz - log_prod).mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw_kl, (log_prod - log_pz).mean(), rtol=1e-12, atol=1e-12)


@given(
    batch=st.integers(2, 16),
    latent=st.integers(1, 8),
    estimator=st.sampled_from(ESTIMATORS),
    logvar=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_terms_add_up_to_the_single_sample_kl(batch, latent, estimator, logvar, seed):
    """mi + tc + dw_kl = mean_i [log q(z_i|x_i) − log p(z_i)], whatever the weights."""
    z, mu, second = _posterior(batch, latent, seed, logvar)
    mi, tc, dw_kl = reference_beta_tcvae_terms(z, mu, second, 1000, estimator, logvar)
    sigma = torch.exp(0.5 * second) if logvar else second
    kl = (Normal(mu, sigma).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(1).mean()
    torch.testing.assert_close(mi + tc + dw_kl, kl, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_one_latent_has_no_total_correlation(estimator):
    """With D = 1, q(z) and Π_d q(z_d) are the same: TC = 0."""
    z, mu, sigma = _posterior(7, 1, seed=2)
    _, tc, _ = reference_beta_tcvae_terms(z, mu, sigma, 100, estimator)
    assert abs(tc.item()) < 1e-12


def test_identical_posteriors_carry_no_information_under_mss():
    """Every x with the same posterior: q(z) = q(z|x), and MSS's weights sum to 1, so the
    mutual information is 0."""
    z, mu, sigma = _posterior(5, 3, seed=3)
    mu, sigma = mu[:1].expand(5, 3), sigma[:1].expand(5, 3)
    mi, _, _ = reference_beta_tcvae_terms(z, mu, sigma, 50, "mss")
    assert abs(mi.item()) < 1e-12


def test_loss_adds_the_weighted_terms():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(3, 8, generator=gen, dtype=torch.float64).round()
    p = torch.rand(3, 8, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    z, mu, sigma = _posterior(3, 2, seed=5)
    loss, rec, mi, tc, dw_kl = reference_beta_tcvae_loss(
        x, p, z, mu, sigma, 0.5, 6.0, 2.0, 30, "bernoulli", "mss"
    )
    torch.testing.assert_close(loss, rec + 0.5 * mi + 6.0 * tc + 2.0 * dw_kl)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        log_importance_weights(1, 10, "mss")
    with pytest.raises(ValueError, match="smaller than the batch"):
        log_importance_weights(5, 4, "mss")
    with pytest.raises(ValueError, match="estimator"):
        log_importance_weights(3, 10, "mss-paper")
