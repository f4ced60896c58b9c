"""Property tests: every backend against the float64 reference, and the loss's invariants.

Each property runs for ``backend="eager"`` and ``backend="triton"`` (on CPU, the kernels
under Triton's interpreter; conftest sets it up). Values and the gradients with respect to
all four inputs (x, p, q_loc, q_scale) are compared with ``reference/`` in float64, with the
tolerances stated in ``_helpers``. Examples stay small for the interpreter.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from _helpers import (
    BETAS,
    DEVICE,
    DISTS,
    FORMS,
    FULL_DTYPES,
    GRAD_WEIGHTS,
    HALF_DTYPES,
    LossInputs,
    as_distribution,
    assert_close_to_reference,
    assert_grads_match,
    call_loss,
    check_against_reference,
    grad_floor_scale,
    grad_magnitudes,
    grads_of,
    loss_inputs,
    permute_batch,
    posterior,
    reference_results,
    result_dtypes,
    value_magnitudes,
)
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Laplace, Normal

from betavae_triton import BetaVAELoss, beta_vae_loss, kl_normal_loss, reconstruction_loss
from reference import (
    reference_beta_vae_loss,
    reference_kl_normal_loss,
    reference_reconstruction_loss,
)

BACKENDS = pytest.mark.parametrize("backend", ["eager", "triton"])


@BACKENDS
@given(
    inputs=loss_inputs(),
    beta=st.sampled_from(BETAS),
    form=st.sampled_from(FORMS),
    weights=st.sampled_from(GRAD_WEIGHTS),
)
def test_matches_reference(backend, inputs, beta, form, weights):
    """float32/float64, any dist, p as tensor or distribution, q broadcast or not."""
    check_against_reference(inputs, beta, backend, form, weights)


@BACKENDS
@given(
    data=st.data(),
    dtype=st.sampled_from(HALF_DTYPES),
    beta=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    form=st.sampled_from(FORMS),
)
def test_half_precision_matches_reference(backend, data, dtype, beta, form):
    """float16/bfloat16 inputs: float32 inside, results rounded to the input dtype."""
    inputs = data.draw(loss_inputs(dtype=dtype), label="inputs")
    check_against_reference(inputs, beta, backend, form)


@BACKENDS
@given(
    data=st.data(),
    dtype=st.sampled_from(FULL_DTYPES + HALF_DTYPES),
    shape=st.lists(st.integers(1, 8), min_size=1, max_size=3),
)
def test_kl_is_zero_exactly_at_the_prior_and_positive_elsewhere(backend, data, dtype, shape):
    loc = torch.zeros(shape, dtype=dtype, device=DEVICE)
    scale = torch.ones(shape, dtype=dtype, device=DEVICE)
    assert kl_normal_loss(loc, scale, backend=backend).item() == 0.0
    # Move one coordinate clearly away from (0, 1): the KL is then positive.
    index = data.draw(st.integers(0, loc.numel() - 1), label="index")
    which = data.draw(st.sampled_from(["loc", "scale"]), label="which")
    if which == "loc":
        loc.view(-1)[index] = data.draw(st.sampled_from([-2.0, -0.25, 0.25, 3.0]), label="mu")
    else:
        scale.view(-1)[index] = data.draw(st.sampled_from([0.1, 0.75, 1.25, 4.0]), label="sigma")
    assert kl_normal_loss(loc, scale, backend=backend).item() > 0.0


@BACKENDS
@given(inputs=loss_inputs(), form=st.sampled_from(FORMS))
def test_reconstruction_is_zero_at_a_perfect_fit(backend, inputs, form):
    """p == x gives rec == 0 exactly (for bernoulli, with binary targets)."""
    x = inputs.x.round().clamp(0, 1) if inputs.dist == "bernoulli" else inputs.x
    leaves = [x, x.clone(), inputs.q_loc, inputs.q_scale]
    _, rec, _ = call_loss(leaves, inputs.dist, 1.0, backend, form)
    assert rec.item() == 0.0
    assert reconstruction_loss(x.clone(), x, inputs.dist, backend=backend).item() == 0.0


@BACKENDS
@given(
    inputs=loss_inputs(),
    betas=st.lists(st.sampled_from([0.0, 0.1, 1.0, 3.5, 100.0]), min_size=2, max_size=3),
)
def test_loss_is_linear_in_beta(backend, inputs, betas):
    """rec and kl do not depend on beta, and loss(beta) = rec + beta * kl."""
    runs = [beta_vae_loss(*inputs.tensors, beta, inputs.dist, backend) for beta in betas]
    _, rec0, kl0 = runs[0]
    _, rec_mag, kl_mag = value_magnitudes(inputs, 0.0)
    for beta, (loss, rec, kl) in zip(betas, runs, strict=True):
        assert_close_to_reference(rec, rec0.double(), rec_mag, "rec across betas")
        assert_close_to_reference(kl, kl0.double(), kl_mag, "kl across betas")
        assert_close_to_reference(
            loss, rec.double() + beta * kl.double(), rec_mag + beta * kl_mag, f"loss({beta})"
        )


@BACKENDS
@given(data=st.data(), beta=st.sampled_from([0.0, 1.0, 4.0]))
def test_invariant_under_batch_permutation(backend, data, beta):
    """Reordering the batch (data, decoder and posterior alike) changes nothing: values
    agree and each gradient is the permuted gradient."""
    inputs = data.draw(loss_inputs(same_q_batch=True), label="inputs")
    batch = inputs.x.shape[0]
    perm = torch.tensor(data.draw(st.permutations(range(batch)), label="perm"))
    permuted = permute_batch(inputs, perm)

    leaves = inputs.leaves()
    values = beta_vae_loss(*leaves, beta, inputs.dist, backend)
    grads = grads_of(values, leaves, (1.0, 0.0, 0.0))
    p_leaves = permuted.leaves()
    p_values = beta_vae_loss(*p_leaves, beta, inputs.dist, backend)
    p_grads = grads_of(p_values, p_leaves, (1.0, 0.0, 0.0))

    for name, got, ref, mag in zip(
        ("loss", "rec", "kl"), p_values, values, value_magnitudes(inputs, beta), strict=True
    ):
        assert_close_to_reference(got, ref.double(), mag, name, "permuted batch")
    # The permuted run's gradients, un-permuted, are the original run's; both are also
    # checked against the reference.
    assert_grads_match(p_grads, permuted, beta)
    unpermuted = permute_batch(LossInputs(inputs.dist, *p_grads), torch.argsort(perm)).tensors
    mags = grad_magnitudes(inputs, beta, (1.0, 0.0, 0.0))
    for name, got, ref, mag in zip(
        ("x", "p", "q_loc", "q_scale"), unpermuted, grads, mags, strict=True
    ):
        assert got.shape == ref.shape, name
        assert_close_to_reference(got, ref.double(), mag, f"grad {name}", "un-permuted")


@BACKENDS
@given(
    data=st.data(),
    dtype=st.sampled_from(FULL_DTYPES + HALF_DTYPES),
    which=st.sampled_from(["logits", "logvar", "both"]),
    beta=st.sampled_from(BETAS),
    form=st.sampled_from(FORMS),
    weights=st.sampled_from(GRAD_WEIGHTS),
)
def test_logits_and_logvar_match_reference(backend, data, dtype, which, beta, form, weights):
    """Bernoulli logits (exact cross-entropy, logits up to ±1e4) and log-variance
    posteriors: values and all four gradients against the float64 reference."""
    logits, logvar = which in ("logits", "both"), which in ("logvar", "both")
    dist = "bernoulli" if logits else data.draw(st.sampled_from(DISTS), label="dist")
    inputs = data.draw(loss_inputs(dist, dtype, logits=logits, logvar=logvar), label="inputs")
    check_against_reference(inputs, beta, backend, form, weights)


@BACKENDS
@given(
    data=st.data(),
    dtype=st.sampled_from(FULL_DTYPES + HALF_DTYPES),
    beta=st.sampled_from(BETAS),
    form=st.sampled_from(FORMS),
    weights=st.sampled_from(GRAD_WEIGHTS),
    flags=st.sampled_from([(False, False), (True, False), (False, True)]),
)
def test_per_sample_losses_match_reference(backend, data, dtype, beta, form, weights, flags):
    """reduction="none": per-sample rec, KL and loss of shape (B,), and the gradients of
    a per-sample weighted sum of them, against the float64 reference; the per-dimension
    KL with them."""
    logits, logvar = flags
    dist = "bernoulli" if logits else data.draw(st.sampled_from(DISTS), label="dist")
    inputs = data.draw(
        loss_inputs(dist, dtype, same_q_batch=True, logits=logits, logvar=logvar),
        label="inputs",
    )
    batch = inputs.x.shape[0]
    sample_weights = torch.tensor(
        data.draw(st.lists(st.sampled_from([-1.0, 0.5, 2.0]), min_size=batch, max_size=batch)),
        dtype=torch.float64,
    )
    leaves = inputs.leaves()
    x, p, loc, scale = leaves
    if form == "functional":
        loss, rec, kl, kl_dims = beta_vae_loss(
            *leaves,
            beta,
            dist,
            backend,
            p_is_logits=logits,
            q_is_logvar=logvar,
            reduction="none",
            kl_per_dim=True,
        )
    else:
        q = posterior(loc, scale, logvar)
        decoder = as_distribution(p, dist, logits) if form == "module_dist" or logits else p
        module = BetaVAELoss(beta, dist, backend=backend, reduction="none", kl_per_dim=True)
        out = module(x, decoder, q)
        loss, rec, kl, kl_dims = out["loss"], out["rec_loss"], out["kl_loss"], out["kl_per_dim"]

    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in inputs.tensors]
    ref = reference_beta_vae_loss(*ref_leaves, beta, dist, logits, logvar, "none")
    ref_dims = reference_kl_normal_loss(*ref_leaves[2:], logvar, "per_dim").detach()
    context = f"{inputs.describe()} beta={beta} backend={backend} form={form}"
    # Each per-sample term is bounded by the batch total, B × the batch-mean magnitude.
    mags = [batch * m for m in value_magnitudes(inputs, beta)]
    for name, got, want, mag in zip(("loss", "rec", "kl"), (loss, rec, kl), ref, mags, strict=True):
        assert got.shape == (batch,), (name, tuple(got.shape))
        tol_dtype = dtype if name != "loss" else None
        assert_close_to_reference(got, want.detach(), mag, name, context, tol_dtype)
    assert (
        kl_dims.shape == inputs.q_loc.shape[1:]
        or kl_dims.shape == torch.broadcast_shapes(inputs.q_loc.shape, inputs.q_scale.shape)[1:]
    )
    assert not kl_dims.requires_grad
    assert_close_to_reference(kl_dims, ref_dims, mags[2] / batch, "kl_per_dim", context)

    def weighted(values, w):
        return sum(wi * (v * w.to(v)).sum() for wi, v in zip(weights, values, strict=True) if wi)

    grads = torch.autograd.grad(
        weighted((loss, rec, kl), sample_weights.to(DEVICE)),
        leaves,
        allow_unused=True,
        materialize_grads=True,
    )
    ref_grads = torch.autograd.grad(
        weighted(ref, sample_weights), ref_leaves, allow_unused=True, materialize_grads=True
    )
    if backend == "triton" and dtype == torch.float16:
        ref_grads = _with_float16_limit(ref_grads, inputs, beta, logits, logvar)
    grad_mags = grad_magnitudes(inputs, beta, weights)
    for name, got, want, mag in zip(
        ("x", "p", "q_loc", "q_scale"), grads, ref_grads, grad_mags, strict=True
    ):
        assert got.shape == want.shape and got.dtype == dtype, name
        scale = 2 * grad_floor_scale(inputs, beta, weights)  # sample weights up to 2
        assert_close_to_reference(got, want, 2 * batch * mag, f"grad {name}", context, None, scale)


def _with_float16_limit(ref_grads, inputs, beta, logits, logvar):
    """The documented float16 limit of the Triton backend (README, "float16 limit"): a
    per-element derivative of the reconstruction beyond 65504 is stored as ±inf before the
    per-sample factor applies, so the gradient there is ±inf whatever the factor (found by
    ``make fuzz``: p = 3.2e-6, x = 0.35, weight 0.5; pinned in ``test_examples.py``)."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in inputs.tensors]
    ref = reference_beta_vae_loss(*leaves, beta, inputs.dist, logits, logvar, "none")
    unscaled = torch.autograd.grad(ref[1].sum(), leaves[:2])
    limited = list(ref_grads)
    for i, derivative in enumerate(unscaled):
        # Where the factor is 0 (no gradient reaches the term) the gradient stays 0.
        beyond = (derivative.abs() > torch.finfo(torch.float16).max) & (ref_grads[i] != 0)
        limited[i] = torch.where(beyond, ref_grads[i].sign() * torch.inf, ref_grads[i])
    return tuple(limited)


SCALE_SHAPES = ("shared", "per_element", "per_channel")


@BACKENDS
@given(
    data=st.data(),
    dtype=st.sampled_from(FULL_DTYPES + HALF_DTYPES),
    dist=st.sampled_from(["normal", "laplace"]),
    scale_shape=st.sampled_from(SCALE_SHAPES),
    reduction=st.sampled_from(["mean", "none"]),
    form=st.sampled_from(["functional", "module_dist"]),
)
def test_learned_decoder_scale_matches_reference(
    backend, data, dtype, dist, scale_shape, reduction, form
):
    """The full Gaussian / Laplace likelihood with the decoder's scale (shared, per
    element, per channel): values and the gradients of p, x and the scale against
    ``-Normal(p, s).log_prob(x)`` in float64."""
    inputs = data.draw(loss_inputs(dist, dtype, same_q_batch=True), label="inputs")
    x, p = inputs.x, inputs.p
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    shape = {
        "shared": (1,) * x.dim() if data.draw(st.booleans(), label="ndim") else (),
        "per_element": tuple(x.shape),
        "per_channel": (1, x.shape[1], *([1] * (x.dim() - 2))),
    }[scale_shape]
    log_s = torch.rand(shape, generator=gen, dtype=torch.float64) * 3.0 - 1.5
    s = log_s.exp().to(DEVICE, dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (x, p, s)]
    lx, lp, ls = leaves
    if form == "functional":
        loss, rec, _ = beta_vae_loss(
            lx,
            lp,
            inputs.q_loc,
            inputs.q_scale,
            2.0,
            dist,
            backend,
            reduction=reduction,
            p_scale=ls,
        )
    else:
        decoder = (Normal if dist == "normal" else Laplace)(lp, ls)
        module = BetaVAELoss(2.0, backend=backend, reduction=reduction, full_nll=True)
        out = module(lx, decoder, Normal(inputs.q_loc, inputs.q_scale))
        loss, rec = out["loss"], out["rec_loss"]
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (x, p, s)]
    ref_rec = reference_reconstruction_loss(
        ref_leaves[1], ref_leaves[0], dist, reduction=reduction, p_scale=ref_leaves[2]
    )
    context = f"{inputs.describe()} scale={scale_shape}{shape} {reduction} {backend} {form}"

    xd, pd, sd = (t.detach().cpu().double() for t in (x, p, s))
    a = (pd - xd).abs() / sd
    term = (0.5 * a * a if dist == "normal" else a) + sd.log().abs() + 1.0
    per_sample = term.expand(xd.shape).reshape(xd.shape[0], -1).sum(1)
    mag = per_sample if reduction == "none" else per_sample.sum() / xd.shape[0]
    assert rec.dtype == dtype and rec.shape == ref_rec.shape
    assert_close_to_reference(rec, ref_rec.detach(), mag, "rec", context)

    weights = torch.linspace(-1.0, 2.0, rec.numel(), dtype=torch.float64).reshape(rec.shape)
    # The KL does not depend on x, p or the scale: the loss has the same gradients.
    grads = torch.autograd.grad((loss * weights.to(loss)).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_rec * weights).sum(), ref_leaves)
    div = 1 if reduction == "none" else xd.shape[0]
    g_p = (a if dist == "normal" else torch.ones_like(a)) / sd * 2.0 / div
    g_s = ((1 + a * a if dist == "normal" else 1 + a) / sd * 2.0 / div).expand(xd.shape)
    grad_mags = (g_p, g_p, g_s.sum_to_size(sd.shape))
    for name, got, want, gmag in zip(("x", "p", "scale"), grads, ref_grads, grad_mags, strict=True):
        assert got.shape == want.shape and got.dtype == dtype, name
        assert_close_to_reference(got, want, gmag, f"grad {name}", context)


@pytest.mark.parametrize("dist", DISTS)
@BACKENDS
def test_reference_example_per_dist(backend, dist):
    """A fixed example per dist (runs even where Hypothesis finds nothing new)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 5, generator=gen, dtype=torch.float64)
    p = torch.rand(3, 2, 5, generator=gen, dtype=torch.float64)
    if dist == "bernoulli":
        x = x.round()
    loc = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    scale = torch.rand(3, 4, generator=gen, dtype=torch.float64) + 0.5
    inputs = LossInputs(dist, *(t.to(DEVICE) for t in (x, p, loc, scale)))
    for dtype in FULL_DTYPES:
        check_against_reference(inputs.to(dtype), 2.5, backend, "functional", (0.5, -2.0, 3.0))


@BACKENDS
@given(
    data=st.data(),
    half=st.sampled_from(HALF_DTYPES),
    which=st.sampled_from(["p", "x", "posterior_full"]),
    beta=st.sampled_from([0.0, 1.0, 4.0]),
    weights=st.sampled_from(GRAD_WEIGHTS),
)
def test_mixed_dtypes_match_reference(backend, data, half, which, beta, weights):
    """Mixed precision as autocast makes it: a 16-bit decoder output beside float32 data
    and posterior (or 16-bit data beside a float32 decoder; or a float32 posterior with a
    16-bit decoder and data). Results follow the reference's dtype promotion; each
    gradient comes back in its own input's dtype."""
    inputs = data.draw(loss_inputs(dtype=torch.float32), label="inputs")
    if which == "p":
        inputs = replace(inputs, p=inputs.p.to(half))
    elif which == "x":
        inputs = replace(inputs, x=inputs.x.to(half))
    else:
        inputs = replace(inputs, x=inputs.x.to(half), p=inputs.p.to(half))
    leaves = inputs.leaves()
    values = call_loss(leaves, inputs.dist, beta, backend)
    context = f"{inputs.describe()} p={inputs.p.dtype} beta={beta} backend={backend}"
    mags = value_magnitudes(inputs, beta)
    ref_values, ref_grads = reference_results(inputs, beta, weights)
    for name, got, want, mag, dtype in zip(
        ("loss", "rec", "kl"), values, ref_values, mags, result_dtypes(inputs), strict=True
    ):
        assert got.dtype == dtype, (name, got.dtype, dtype)
        assert_close_to_reference(got, want, mag, name, context, tol_dtype=half)
    grads = grads_of(values, leaves, weights)
    grad_mags = grad_magnitudes(inputs, beta, weights)
    for name, got, want, mag, t in zip(
        ("x", "p", "q_loc", "q_scale"), grads, ref_grads, grad_mags, inputs.tensors, strict=True
    ):
        assert got.dtype == t.dtype, (name, got.dtype, t.dtype)
        assert_close_to_reference(got, want, mag, f"grad {name}", context, tol_dtype=half)
