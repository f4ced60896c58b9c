"""The Triton β-TCVAE kernels' split grid (interpreted): a walk over the batch cut into
splits whose partial log-sum-exps and gradient shares are merged afterwards. The split
plans are the launchers' arguments (``tcvae/launch.py``); the log-densities and their
gradients are compared with the float64 oracle's (the B×B×D formula): odd batches, a batch
below one split, a batch that is no multiple of the split, empty splits, a rank's rows,
NaN and infinite samples; and the GPU plans that fill one wave."""

from __future__ import annotations

import pytest
import torch

from betavae_triton import _device
from betavae_triton._dispatch import interpreter_launch
from betavae_triton.tcvae import launch
from betavae_triton.tcvae.launch import SplitPlan
from reference.beta_tcvae import reference_log_densities

N = 1000  # the dataset size


def _inputs(batch, latent, seed):
    """``(z, μ, log σ)``, float64: z drawn from the posteriors."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    log_sigma = torch.rand(batch, latent, generator=gen, dtype=torch.float64) * 2 - 1.5
    z = mu + log_sigma.exp() * torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    return z, mu, log_sigma


def _plan(span, splits, extent):
    """Ranges of ``span``: ``splits`` of them, or as many as ``extent`` needs."""
    return SplitPlan(span, splits or -(-extent // span))


def _incoming(z):
    """Incoming gradients of log q(z_i) and log q(z_id), of both signs."""
    n_rows, latent = z.shape
    g_prod = torch.linspace(-1.0, 2.0, n_rows * latent, dtype=z.dtype).reshape(n_rows, latent)
    return torch.linspace(0.7, -1.5, n_rows, dtype=z.dtype), g_prod


def _split_run(z, mu, log_sigma, span, splits=None, row_offset=0, estimator="mss"):
    """``((log q(z_i), log q(z_id)), (dL/dz, dL/dμ, dL/d log σ))`` by the launchers, every
    walk cut into ranges of ``span`` (``splits`` of them, or as many as it needs), for the
    incoming gradients of :func:`_incoming`."""
    options = (row_offset, N, estimator)
    fwd_plan = _plan(span, splits, mu.shape[0])
    log_qz, log_prod = launch.launch_log_densities_fwd(
        interpreter_launch, z, mu, log_sigma, *options, plan=fwd_plan
    )
    grads = launch.launch_log_densities_bwd(
        interpreter_launch, z, mu, log_sigma, log_qz, log_prod, *_incoming(z), *options,
        plan_z=fwd_plan, plan_posterior=_plan(span, splits, z.shape[0]),
    )  # fmt: skip
    return (log_qz, log_prod), grads


def _oracle(z, mu, log_sigma, row_offset=0, estimator="mss"):
    """The same from the oracle, its gradients by autograd."""
    leaves = [t.clone().requires_grad_() for t in (z, mu, log_sigma)]
    values = reference_log_densities(*leaves, N, estimator, row_offset)
    return values, torch.autograd.grad(values, leaves, _incoming(z))


def _assert_close(got, want, rtol=1e-10, atol=1e-10):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.detach(), rtol=rtol, atol=atol, equal_nan=True)


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
def test_split_plans_match_the_oracle(batch, span, splits, estimator):
    z, mu, log_sigma = _inputs(batch, 3, seed=batch)
    values, grads = _split_run(z, mu, log_sigma, span, splits, estimator=estimator)
    want_values, want_grads = _oracle(z, mu, log_sigma, estimator=estimator)
    _assert_close(values, want_values)
    _assert_close(grads, want_grads)


def test_a_plan_must_cover_the_batch():
    """A plan of fewer than B posteriors (or B_l samples) is refused, not cut short."""
    z, mu, log_sigma = _inputs(9, 3, seed=1)
    with pytest.raises(ValueError, match="does not cover 9"):
        launch.launch_log_densities_fwd(
            interpreter_launch, z, mu, log_sigma, 0, N, "mss", plan=SplitPlan(2, 4)
        )
    log_qz, log_prod = launch.launch_log_densities_fwd(
        interpreter_launch, z, mu, log_sigma, 0, N, "mss"
    )
    with pytest.raises(ValueError, match="does not cover 9"):
        launch.launch_log_densities_bwd(
            interpreter_launch, z, mu, log_sigma, log_qz, log_prod, *_incoming(z), 0, N, "mss",
            plan_posterior=SplitPlan(4, 2),
        )  # fmt: skip


def test_a_ranks_rows_with_splits():
    """Rows 5 … 11 of a batch of 12 scored against every posterior, in splits of 5: the
    single-process rows (what gather=True runs on each rank), and the oracle's rows with
    their gradients."""
    z, mu, log_sigma = _inputs(12, 4, seed=3)
    whole, _ = _split_run(z, mu, log_sigma, 5)
    part, grads = _split_run(z[5:], mu, log_sigma, 5, row_offset=5)
    for got, want in zip(part, whole, strict=True):
        torch.testing.assert_close(got, want[5:], rtol=1e-12, atol=1e-12)
    want_values, want_grads = _oracle(z[5:], mu, log_sigma, row_offset=5)
    _assert_close(part, want_values)
    _assert_close(grads, want_grads)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_nan_or_infinite_sample_in_one_split(value):
    """A non-finite coordinate of sample 4, in splits of 2: the other rows' log-densities
    are unchanged and the oracle's; row 4's are not finite (a NaN stays NaN through the
    merge); the gradients are the oracle's, NaN where its are."""
    z, mu, log_sigma = _inputs(7, 3, seed=5)
    (clean_qz, clean_prod), _ = _split_run(z, mu, log_sigma, 2)
    z[4, 1] = value
    (log_qz, log_prod), grads = _split_run(z, mu, log_sigma, 2)
    (want_qz, want_prod), want_grads = _oracle(z, mu, log_sigma)
    rows = [0, 1, 2, 3, 5, 6]
    torch.testing.assert_close(log_qz[rows], clean_qz[rows], rtol=0, atol=0)
    torch.testing.assert_close(log_prod[rows], clean_prod[rows], rtol=0, atol=0)
    _assert_close((log_qz[rows], log_prod[rows]), (want_qz[rows], want_prod[rows]))
    assert not torch.isfinite(log_qz[4])
    # log N(±inf; μ, σ) = −inf for every posterior: log q(z_41) is not finite (−inf in
    # the oracle's logsumexp, NaN in the online one, whose first step computes
    # (−inf) − (−inf)); a NaN stays NaN through the merge.
    assert not torch.isfinite(log_prod[4, 1])
    assert torch.isnan(log_prod[4, 1]) or value == value
    _assert_close(grads, want_grads)


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
