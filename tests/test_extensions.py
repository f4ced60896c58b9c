"""Examples for what the package adds to nidl's loss (issue 8): bernoulli logits,
log-variance posteriors, the capacity-controlled loss, per-sample losses, the learned
decoder scale. Each is compared with a float64
formula written out here or with ``reference/``; the Hypothesis comparisons live in
``test_properties.py``."""

from __future__ import annotations

import pytest
import torch
from _helpers import DEVICE
from torch.distributions import Bernoulli, Laplace, Normal

from betavae_triton import (
    BetaVAELoss,
    CapacityBetaVAELoss,
    beta_vae_loss,
    capacity_beta_vae_loss,
    kl_normal_loss,
    reconstruction_loss,
)
from reference import (
    reference_beta_vae_loss,
    reference_kl_normal_loss,
    reference_reconstruction_loss,
)

BACKENDS = pytest.mark.parametrize("backend", ["eager", "triton"])

# Logits where float32's sigmoid saturates (|l| > ~17), beyond nidl's −100 clamp, and huge.
LOGITS = [-1e4, -150.0, -40.0, -17.5, -1.0, 0.0, 0.5, 17.5, 40.0, 150.0, 1e4]


def _exact_bce_with_logits(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ softplus(l) − x·l over the batch, / B, in float64: log(1 + e^l) = logaddexp(0, l)."""
    lg, x = logits.double(), x.double()
    return (torch.logaddexp(torch.zeros_like(lg), lg) - x * lg).sum() / x.shape[0]


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_give_the_exact_cross_entropy_where_nidls_clamp_does_not(backend, dtype):
    logits = torch.tensor([LOGITS, LOGITS[::-1]], dtype=dtype, device=DEVICE)
    x = torch.tensor([[0.0, 1.0] * 5 + [1.0]] * 2, dtype=dtype, device=DEVICE)
    exact = _exact_bce_with_logits(logits, x)

    rec = reconstruction_loss(logits, x, "bernoulli", backend, p_is_logits=True)
    torch.testing.assert_close(
        rec.double(), exact, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0
    )
    module_rec = BetaVAELoss(backend=backend).reconstruction_loss(Bernoulli(logits=logits), x)
    assert module_rec.dtype == dtype and module_rec.item() == rec.item()

    # nidl reads Bernoulli(logits).probs: σ(l) saturates to 0 or 1 and the −100 clamp gives
    # a different (bounded) answer. We document the difference; the exact one is ours.
    clamped = reference_reconstruction_loss(torch.sigmoid(logits), x, "bernoulli")
    assert (clamped - exact).abs().item() > 1.0


@BACKENDS
def test_logit_gradients_are_sigmoid_minus_x_and_minus_l(backend):
    logits = torch.tensor([LOGITS], dtype=torch.float64, device=DEVICE, requires_grad=True)
    x = torch.rand(1, len(LOGITS), dtype=torch.float64, device=DEVICE, requires_grad=True)
    rec = reconstruction_loss(logits, x, "bernoulli", backend, p_is_logits=True)
    g_l, g_x = torch.autograd.grad(rec, [logits, x])
    torch.testing.assert_close(g_l, torch.sigmoid(logits.detach()) - x.detach())
    torch.testing.assert_close(g_x, -logits.detach())


def test_p_is_logits_needs_bernoulli():
    x = torch.rand(2, 3, device=DEVICE)
    with pytest.raises(ValueError, match="bernoulli"):
        reconstruction_loss(x, x, "normal", p_is_logits=True)
    with pytest.raises(ValueError, match="bernoulli"):
        beta_vae_loss(x, x, x, x.exp(), dist="laplace", p_is_logits=True)


@BACKENDS
def test_logits_may_be_any_real_but_targets_are_validated(backend):
    logits = torch.tensor([[-3.0, 250.0]], device=DEVICE)
    x = torch.tensor([[0.0, 1.0]], device=DEVICE)
    assert torch.isfinite(reconstruction_loss(logits, x, "bernoulli", backend, p_is_logits=True))
    bad_x = torch.tensor([[0.0, 1.5]], device=DEVICE)
    with pytest.raises(ValueError, match=r"targets x must lie in \[0, 1\]"):
        reconstruction_loss(
            logits, bad_x, "bernoulli", backend, validate_args=True, p_is_logits=True
        )
    rec = reconstruction_loss(
        logits, bad_x, "bernoulli", backend, validate_args=False, p_is_logits=True
    )
    assert rec.isnan()


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logvar_posterior_matches_normal_of_exp_half_logvar(backend, dtype):
    gen = torch.Generator().manual_seed(3)
    loc = torch.randn(4, 6, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()
    logvar = (3 * torch.randn(4, 6, generator=gen, dtype=dtype)).to(DEVICE).requires_grad_()
    kl = kl_normal_loss(loc, logvar, backend, q_is_logvar=True)
    assert kl.dtype == dtype
    ref_leaves = [loc.detach().double().requires_grad_(), logvar.detach().double().requires_grad_()]
    ref = reference_kl_normal_loss(*ref_leaves, q_is_logvar=True)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    torch.testing.assert_close(kl.double(), ref, **tol)
    # d KL / d v = ½(e^v − 1) / B, d KL / d μ = μ / B
    g_loc, g_logvar = torch.autograd.grad(kl, [loc, logvar])
    torch.testing.assert_close(g_loc.double(), ref_leaves[0].detach() / 4, **tol)
    torch.testing.assert_close(
        g_logvar.double(), 0.5 * (ref_leaves[1].detach().exp() - 1) / 4, **tol
    )


@BACKENDS
def test_logvar_and_logits_in_one_call(backend):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3, 1, 4, 4, generator=gen).round().to(DEVICE)
    logits = (4 * torch.randn(3, 1, 4, 4, generator=gen)).to(DEVICE)
    loc, logvar = (torch.randn(3, 8, generator=gen).to(DEVICE) for _ in range(2))
    loss, rec, kl = beta_vae_loss(
        x, logits, loc, logvar, 2.0, "bernoulli", backend, p_is_logits=True, q_is_logvar=True
    )
    out = BetaVAELoss(2.0, backend=backend)(
        x, Bernoulli(logits=logits), Normal(loc, torch.exp(0.5 * logvar))
    )
    torch.testing.assert_close(out["rec_loss"], rec)
    torch.testing.assert_close(out["kl_loss"], kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, rec + 2.0 * kl)


# ---- capacity-controlled beta-VAE --------------------------------------------------------


def _capacity_inputs(seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 2, 5, generator=gen, dtype=dtype)
    p = torch.rand(4, 2, 5, generator=gen, dtype=dtype)
    loc = torch.randn(4, 6, generator=gen, dtype=dtype)
    scale = torch.rand(4, 6, generator=gen, dtype=dtype) + 0.3
    return [t.to(DEVICE) for t in (x, p, loc, scale)]


@BACKENDS
@pytest.mark.parametrize("capacity", [0.0, 1.5, 40.0])
def test_capacity_loss_matches_reference(backend, capacity):
    """loss = rec + γ·|KL − C| and its gradients, KL below and above C."""
    leaves = [t.requires_grad_() for t in _capacity_inputs()]
    loss, rec, kl = capacity_beta_vae_loss(*leaves, capacity, 30.0, "laplace", backend)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    _, ref_rec, ref_kl = reference_beta_vae_loss(*ref_leaves, 0.0, "laplace")
    ref_loss = ref_rec + 30.0 * (ref_kl - capacity).abs()
    for got, want in ((loss, ref_loss), (rec, ref_rec), (kl, ref_kl)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(loss, leaves)
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_capacity_schedule_and_step_counter():
    loss_fn = CapacityBetaVAELoss(gamma=10.0, c_min=1.0, c_max=5.0, n_steps=4).to(DEVICE)
    inputs = [t.float() for t in _capacity_inputs()]
    q = Normal(inputs[2], inputs[3])
    seen = [loss_fn(inputs[0], inputs[1], q)["capacity"].item() for _ in range(6)]
    assert seen == [1.0, 2.0, 3.0, 4.0, 5.0, 5.0]
    assert loss_fn.step.item() == 6 and loss_fn.step.device.type == DEVICE.type
    loss_fn.eval()
    loss_fn(inputs[0], inputs[1], q)
    assert loss_fn.step.item() == 6  # eval mode does not advance
    assert "step" in loss_fn.state_dict()
    resumed = CapacityBetaVAELoss(gamma=10.0, c_min=1.0, c_max=5.0, n_steps=4)
    resumed.load_state_dict(loss_fn.state_dict())
    assert resumed.capacity().item() == 5.0


def test_capacity_module_keeps_the_parent_api():
    loss_fn = CapacityBetaVAELoss(default_dist="bernoulli").to(DEVICE)
    x = torch.rand(2, 3, device=DEVICE).round()
    logits = torch.randn(2, 3, device=DEVICE)
    q = Normal(torch.zeros(2, 4, device=DEVICE), torch.ones(2, 4, device=DEVICE))
    out = loss_fn(x, Bernoulli(logits=logits), q)
    assert set(out) == {"loss", "rec_loss", "kl_loss", "capacity"}
    # KL is 0 at the prior and C = 0 at step 0: loss = rec, the exact logit cross-entropy.
    torch.testing.assert_close(out["loss"], _exact_bce_with_logits(logits, x).float())
    assert "gamma=1000.0" in repr(loss_fn)


def test_capacity_bad_arguments():
    with pytest.raises(ValueError, match="n_steps"):
        CapacityBetaVAELoss(n_steps=0)
    with pytest.raises(ValueError, match="gamma"):
        CapacityBetaVAELoss(gamma=-1.0)
    x, p, loc, scale = _capacity_inputs()
    with pytest.raises(ValueError, match="one-element"):
        capacity_beta_vae_loss(x, p, loc, scale, torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="device"):
        capacity_beta_vae_loss(x, p, loc, scale, torch.ones((), device="meta"))


def test_docstring_examples_run():
    import doctest

    import betavae_triton.functional
    import betavae_triton.loss

    for module in (betavae_triton.loss, betavae_triton.functional):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(betavae_triton.loss).attempted > 0


# ---- per-sample losses and the per-dimension KL -------------------------------------------


@BACKENDS
def test_per_sample_losses_with_a_posterior_shared_by_the_batch(backend):
    """A posterior of batch 1 next to data of batch B: kl has shape (1,), loss (B,), and
    the KL gradient sums the B samples' weights."""
    gen = torch.Generator().manual_seed(7)
    x, p = (torch.rand(3, 5, generator=gen, dtype=torch.float64).to(DEVICE) for _ in range(2))
    loc = torch.randn(1, 4, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    scale = (torch.rand(1, 4, generator=gen, dtype=torch.float64) + 0.5).to(DEVICE)
    loss, rec, kl = beta_vae_loss(x, p, loc, scale, 2.0, "normal", backend, reduction="none")
    assert loss.shape == (3,) and rec.shape == (3,) and kl.shape == (1,)
    torch.testing.assert_close(rec, ((p - x) ** 2).sum(1))
    torch.testing.assert_close(loss, rec + 2.0 * kl)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, device=DEVICE)
    (g_loc,) = torch.autograd.grad((loss * w).sum(), [loc])
    torch.testing.assert_close(g_loc, 2.0 * w.sum() * loc.detach())


@BACKENDS
def test_per_sample_terms_average_to_the_mean_terms(backend):
    x, p, loc, scale = _capacity_inputs(11)
    mean = beta_vae_loss(x, p, loc, scale, 3.0, "laplace", backend)
    per_sample = beta_vae_loss(x, p, loc, scale, 3.0, "laplace", backend, reduction="none")
    for m, s in zip(mean, per_sample, strict=True):
        torch.testing.assert_close(s.mean(), m, rtol=1e-12, atol=0)
    rec = reconstruction_loss(p, x, "laplace", backend, reduction="none")
    kl = kl_normal_loss(loc, scale, backend, reduction="none")
    torch.testing.assert_close(rec, per_sample[1])
    torch.testing.assert_close(kl, per_sample[2])


@BACKENDS
def test_kl_per_dim_shows_the_active_units(backend):
    """Latents 0 and 2 carry information, the others sit at the prior: their batch-mean
    KL is exactly 0; the per-dimension KL sums to the KL term."""
    loc = torch.zeros(6, 5, device=DEVICE)
    scale = torch.ones(6, 5, device=DEVICE)
    loc[:, 0] = torch.linspace(-2, 2, 6, device=DEVICE)
    scale[:, 2] = 0.3
    x = torch.rand(6, 8, device=DEVICE)
    module = BetaVAELoss(backend=backend, kl_per_dim=True)
    out = module(x, x.clone(), Normal(loc, scale))
    dims = out["kl_per_dim"]
    assert dims.shape == (5,)
    assert dims[0] > 0 and dims[2] > 0
    assert dims[1].item() == dims[3].item() == dims[4].item() == 0.0
    torch.testing.assert_close(dims.sum(), out["kl_loss"])
    ref = reference_kl_normal_loss(loc.double(), scale.double(), reduction="per_dim")
    torch.testing.assert_close(dims.double(), ref, rtol=1e-6, atol=1e-7)


def test_reduction_errors():
    x, p, loc, scale = _capacity_inputs()
    with pytest.raises(ValueError, match="reduction"):
        beta_vae_loss(x, p, loc, scale, reduction="sum")
    with pytest.raises(ValueError, match="reduction"):
        BetaVAELoss(reduction="batchmean")
    with pytest.raises(ValueError, match="posterior's batch"):
        beta_vae_loss(x, p, loc[:2], scale[:2], reduction="none")


# ---- the learned decoder scale (full likelihood) -----------------------------------------


@BACKENDS
def test_learned_shared_scale_converges_to_the_rms_error(backend):
    """σ-VAE: minimising the full Gaussian likelihood over a shared σ alone gives
    σ² = mean squared error (the closed-form optimum)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, generator=gen, dtype=torch.float64).to(DEVICE)
    p = x + 0.3 * torch.randn(4, 3, 8, generator=gen, dtype=torch.float64).to(DEVICE)
    log_sigma = torch.zeros((), dtype=torch.float64, device=DEVICE, requires_grad=True)
    opt = torch.optim.SGD([log_sigma], lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        rec = reconstruction_loss(p, x, "normal", backend, p_scale=log_sigma.exp())
        rec.backward()
        opt.step()
    rms = ((p - x) ** 2).mean().sqrt()
    torch.testing.assert_close(log_sigma.exp().detach(), rms, rtol=1e-3, atol=0)


@BACKENDS
def test_full_nll_module_reads_the_decoder_scale(backend):
    x, p, loc, scale = _capacity_inputs(4)
    b = torch.rand(1, 2, 1, dtype=torch.float64, device=DEVICE) + 0.5
    module = BetaVAELoss(1.0, backend=backend, full_nll=True)
    out = module(x, Laplace(p, b), Normal(loc, scale))
    ref = -Laplace(p, b.expand_as(p)).log_prob(x).sum() / x.shape[0]
    torch.testing.assert_close(out["rec_loss"], ref)
    # Without full_nll the scale is ignored: nidl's absolute error.
    plain = BetaVAELoss(1.0, backend=backend)(x, Laplace(p, b), Normal(loc, scale))
    torch.testing.assert_close(plain["rec_loss"], (p - x).abs().sum() / x.shape[0])
    assert "full_nll=True" in repr(module)


def test_full_nll_bad_arguments():
    x, p, loc, scale = _capacity_inputs()
    with pytest.raises(TypeError, match="Normal or Laplace"):
        BetaVAELoss(full_nll=True)(x, p, Normal(loc, scale))
    with pytest.raises(ValueError, match="p_scale needs"):
        reconstruction_loss(p, x.round(), "bernoulli", p_scale=torch.ones((), device=DEVICE))
    with pytest.raises(ValueError, match="does not broadcast"):
        reconstruction_loss(p, x, "normal", p_scale=torch.ones(3, 1, 1, device=DEVICE))
    int_scale = torch.ones((), dtype=torch.int64, device=DEVICE)
    with pytest.raises(TypeError, match="floating"):
        reconstruction_loss(p, x, "normal", p_scale=int_scale)


@BACKENDS
def test_capacity_module_is_rec_plus_gamma_distance_to_the_scheduled_capacity(backend):
    """CapacityBetaVAELoss over six steps: loss = rec + γ·|KL − C_t| with C_t from the
    schedule and the module's own γ, where KL ≠ C_t (the distance changes sign on the
    way), values and all four gradients against the float64 reference."""
    gamma, c_min, c_max, n_steps = 7.0, 2.0, 30.0, 4
    loss_fn = CapacityBetaVAELoss(
        gamma=gamma, c_min=c_min, c_max=c_max, n_steps=n_steps, default_dist="laplace"
    )
    loss_fn = loss_fn.to(DEVICE)
    loss_fn.backend = backend
    tensors = _capacity_inputs(seed=3)
    ref_leaves = [t.detach().clone().requires_grad_() for t in tensors]
    _, ref_rec, ref_kl = reference_beta_vae_loss(*ref_leaves, 0.0, "laplace")
    assert c_min < ref_kl.item() < c_max, "the test needs KL between the capacity bounds"
    for step in range(6):
        capacity = c_min + (c_max - c_min) * min(step / n_steps, 1.0)
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        x, p, loc, scale = leaves
        out = loss_fn(x, p, Normal(loc, scale))
        assert float(out["capacity"]) == capacity
        ref_loss = ref_rec + gamma * (ref_kl - capacity).abs()
        torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-12, atol=0.0)
        grads = torch.autograd.grad(out["loss"], leaves)
        ref_grads = torch.autograd.grad(ref_loss, ref_leaves, retain_graph=True)
        for name, got, want in zip(("x", "p", "loc", "scale"), grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=f"step {step} {name}")
    assert int(loss_fn.step) == 6
