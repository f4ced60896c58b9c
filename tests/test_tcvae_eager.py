"""β-TCVAE's minibatch terms (not yet public) against the B×B×D float64 oracle: the eager
path (``betavae_triton/_tcvae_eager.py``, chunked torch ops) and the Triton kernels
(``kernels/total_correlation.py``, interpreted on CPU); values and gradients, every
estimator, any chunk size, and the memory bound that is the point of the algorithm."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from betavae_triton import _tcvae_eager
from reference.beta_tcvae import ESTIMATORS, reference_beta_tcvae_terms


def _inputs(batch, latent, seed, logvar=False, spread=1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    log_sigma = (torch.rand(batch, latent, generator=gen, dtype=torch.float64) * 2 - 1.5) * spread
    z = mu + log_sigma.exp() * torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    second = 2 * log_sigma if logvar else log_sigma.exp()
    return [t.to(dtype) for t in (z, mu, second)]


PATHS = pytest.mark.parametrize("kernels", [False, True], ids=["eager", "triton"])


def _check(z, mu, second, n, estimator, logvar, chunk, rtol, atol, kernels=False):
    leaves = [t.clone().requires_grad_() for t in (z, mu, second)]
    terms = _tcvae_eager.beta_tcvae_terms(*leaves, n, estimator, logvar, chunk, kernels)
    ref_leaves = [t.detach().double().requires_grad_() for t in (z, mu, second)]
    ref = reference_beta_tcvae_terms(*ref_leaves, n, estimator, logvar)
    weights = (0.7, 6.0, -1.5)  # α, β, γ-like weights of mi, tc, dw_kl
    for got, want in zip(terms, ref, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)
    grads = torch.autograd.grad(sum(w * t for w, t in zip(weights, terms, strict=True)), leaves)
    ref_grads = torch.autograd.grad(
        sum(w * t for w, t in zip(weights, ref, strict=True)), ref_leaves
    )
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == z.dtype
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)


@PATHS
@given(
    batch=st.integers(2, 24),
    latent=st.integers(1, 8),
    estimator=st.sampled_from(ESTIMATORS),
    logvar=st.booleans(),
    chunk=st.sampled_from([1, 3, 7, 64]),
    spread=st.sampled_from([0.1, 1.0, 4.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_the_oracle_in_float64(
    kernels, batch, latent, estimator, logvar, chunk, spread, seed
):
    """Values and the gradients w.r.t. z, μ and σ (or log σ²); log-variances up to ±12."""
    z, mu, second = _inputs(batch, latent, seed, logvar, spread)
    _check(z, mu, second, 10_000, estimator, logvar, chunk, 1e-9, 1e-9, kernels)


@PATHS
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_matches_the_oracle_in_float32(kernels, estimator):
    z, mu, second = _inputs(12, 5, seed=7, dtype=torch.float32)
    _check(z, mu, second, 500, estimator, False, 5, 1e-4, 1e-4, kernels)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_log_weights_by_blocks_are_the_oracles_matrix(estimator):
    from reference.beta_tcvae import log_importance_weights

    weights = _tcvae_eager.LogWeights(9, 40, estimator)
    blocks = torch.cat([weights.block(s, min(s + 4, 9), "cpu") for s in range(0, 9, 4)], 1)
    torch.testing.assert_close(blocks, log_importance_weights(9, 40, estimator), rtol=1e-14, atol=0)


@PATHS
def test_ties_between_samples(kernels):
    """Identical samples and posteriors (ties in every log-sum-exp)."""
    z, mu, sigma = _inputs(6, 3, seed=8)
    z[3], mu[3], sigma[3] = z[1], mu[1], sigma[1]
    _check(z, mu, sigma, 100, "mss", False, 4, 1e-10, 1e-10, kernels)


def test_kernels_are_bitwise_deterministic():
    """Every sum of the kernels runs in one program in a fixed order (no atomics)."""
    z, mu, sigma = _inputs(37, 6, seed=10, dtype=torch.float32)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
        terms = _tcvae_eager.beta_tcvae_terms(*leaves, 1000, "mss", kernels=True)
        runs.append((*terms, *torch.autograd.grad(sum(terms), leaves)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_never_holds_a_batch_by_batch_by_latent_tensor(monkeypatch):
    """Every pairwise block the forward and backward passes build holds B·chunk·D values
    at most (B = 40, chunk = 8: a fifth of B×B×D)."""
    sizes = []
    inner = _tcvae_eager._pair_log_density

    def spy(z, mu, log_sigma):
        out = inner(z, mu, log_sigma)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(_tcvae_eager, "_pair_log_density", spy)
    z, mu, sigma = _inputs(40, 4, seed=9)
    leaves = [t.requires_grad_() for t in (z, mu, sigma)]
    terms = _tcvae_eager.beta_tcvae_terms(*leaves, 1000, "mss", chunk=8)
    torch.autograd.grad(sum(terms), leaves)
    assert sizes and max(sizes) == 40 * 8 * 4
    assert len(sizes) == 2 * 5  # five chunks, forward and backward
