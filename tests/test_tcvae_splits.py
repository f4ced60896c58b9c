"""The Triton β-TCVAE kernels' split grid (interpreted): a walk over the batch cut into
splits whose partial log-sum-exps and gradient shares are merged afterwards. Against the
float64 oracle: odd batches, a batch below one split, a batch that is no multiple of the
split, empty splits, a rank's rows, NaN and infinite samples; and the GPU plans that fill
one wave."""

from __future__ import annotations

import pytest
import torch

from betavae_triton import _device
from betavae_triton.tcvae import launch
from betavae_triton.tcvae import terms as _tcvae
from reference.beta_tcvae import reference_beta_tcvae_terms


def _inputs(batch, latent, seed):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    log_sigma = torch.rand(batch, latent, generator=gen, dtype=torch.float64) * 2 - 1.5
    z = mu + log_sigma.exp() * torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    return z, mu, log_sigma.exp()


def _check_against_the_oracle(z, mu, sigma, estimator="mss", rtol=1e-10, atol=1e-10):
    leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
    terms = _tcvae.minibatch_terms(*leaves, 1000, estimator, False, "triton")
    ref_leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
    ref = reference_beta_tcvae_terms(*ref_leaves, 1000, estimator)
    for got, want in zip(terms, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    weights = (0.7, 6.0, -1.5)
    grads = torch.autograd.grad(sum(w * t for w, t in zip(weights, terms, strict=True)), leaves)
    want = torch.autograd.grad(sum(w * t for w, t in zip(weights, ref, strict=True)), ref_leaves)
    for got, expected in zip(grads, want, strict=True):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize(
    ("batch", "span", "splits"),
    [
        (7, 2, None),  # odd batch, no multiple of the span: the last split holds one
        (5, 8, None),  # the batch below one split: one split, partly used
        (9, 3, 5),  # two splits past the batch: empty, (−inf, 0) merged in
        (6, 1, None),  # one posterior (and, backward, one sample) a split
        (33, 4, None),  # more rows than one block (16), the splits across blocks
        (40, 1, None),  # more splits than the merge takes a step (32): folded online
        (9, 3, 40),  # a second merge step of empty splits only
    ],
)
@pytest.mark.parametrize("estimator", ["mss", "mws", "mss-reference"])
def test_split_plans_match_the_oracle(monkeypatch, batch, span, splits, estimator):
    monkeypatch.setattr(launch, "SPAN", span)
    monkeypatch.setattr(launch, "SPLITS", splits)
    _check_against_the_oracle(*_inputs(batch, 3, seed=batch), estimator)


def test_a_ranks_rows_with_splits(monkeypatch):
    """Rows 5 … 11 of a batch of 12 scored against every posterior, in splits of 5: the
    single-process rows (what gather=True runs on each rank)."""
    monkeypatch.setattr(launch, "SPAN", 5)
    z, mu, sigma = _inputs(12, 4, seed=3)
    log_sigma = sigma.log()
    op = torch.ops.betavae_triton.tc_log_densities
    whole = op(z, mu, log_sigma, 0, 50, "mss")
    part = op(z[5:], mu, log_sigma, 5, 50, "mss")
    for got, want in zip(part, whole, strict=True):
        torch.testing.assert_close(got, want[5:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_nan_or_infinite_sample_in_one_split(monkeypatch, value):
    """A non-finite coordinate of sample 4: its own split's partials are NaN or −inf, the
    merge carries that to the oracle's result (NaN terms), and the other rows' log-densities
    are unchanged."""
    monkeypatch.setattr(launch, "SPAN", 2)
    z, mu, sigma = _inputs(7, 3, seed=5)
    clean = torch.ops.betavae_triton.tc_log_densities(z, mu, sigma.log(), 0, 100, "mss")
    z[4, 1] = value
    _check_against_the_oracle(z, mu, sigma)
    log_qz, log_prod = torch.ops.betavae_triton.tc_log_densities(z, mu, sigma.log(), 0, 100, "mss")
    rows = [0, 1, 2, 3, 5, 6]
    torch.testing.assert_close(log_qz[rows], clean[0][rows], rtol=0, atol=0)
    torch.testing.assert_close(log_prod[rows], clean[1][rows], rtol=0, atol=0)
    assert not torch.isfinite(log_qz[4])
    # log N(±inf; μ, σ) = −inf for every posterior: log q(z_41) is not finite (−inf in
    # the oracle's logsumexp, NaN in the online one, whose first step computes
    # (−inf) − (−inf)); a NaN stays NaN through the merge.
    assert not torch.isfinite(log_prod[4, 1])
    assert torch.isnan(log_prod[4, 1]) or value == value


@pytest.mark.parametrize("batch", [256, 1024, 4096, 16384])
@pytest.mark.parametrize("latent", [10, 32])
def test_gpu_plans_fill_one_wave(batch, latent):
    """On a 132-SM GPU, before any kernel ran there: every pairwise kernel's grid holds at
    least as many programs as the SMs hold at once (the planned blocks per SM)."""
    gpu = _device.H100
    block_d = 16 if latent <= 16 else 32
    per_sm = launch.PLANNED_BLOCKS_PER_SM[block_d]
    blocks = -(-batch // launch.BLOCK_ROWS)
    plan = launch.plan_splits(blocks, batch, block_d, gpu, ("fwd",))
    assert blocks * plan.splits >= gpu.sm_count * per_sm
    assert (plan.splits - 1) * plan.span < batch <= plan.splits * plan.span  # none empty
