"""Every derivative a user can ask for: right, or refused with an error that names the way
out. Never silent zeros.

- Second derivatives (``create_graph=True``: Hessians, Hessian-vector products, gradient
  penalties): the eager β-VAE backend and β-TCVAE's pairwise operators (both backends)
  compute them; the Triton β-VAE backend refuses them, naming ``backend="eager"``.
- Forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) and ``torch.func``
  transforms (``grad``, ``vmap(grad)``, ``jacrev``): ``"auto"`` and ``"eager"`` run plain
  autograd; ``"triton"`` refuses, naming ``backend="eager"``.
- ``torch.export``: export, save, load and backward through the loaded program, for the
  three modules, on both backends.

Every value is compared with ``reference/`` in float64, differentiated by autograd.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.distributions import Bernoulli, Normal

from betavae_triton import (
    BetaTCVAELoss,
    BetaVAELoss,
    CapacityBetaVAELoss,
    beta_tcvae_loss,
    beta_vae_loss,
    kl_decomposition,
)
from reference import reference_beta_tcvae_loss, reference_beta_tcvae_terms, reference_beta_vae_loss

F64 = torch.float64
# float64 throughout: the results differ from the oracle's by summation order alone.
TOL = dict(rtol=1e-9, atol=1e-11)
REFUSES_SECOND = "does not compute second derivatives.*backend='eager'"
REFUSES_TRANSFORM = "cannot run under .*backend='eager'"


def _vae_inputs(dist: str, seed: int = 0, batch: int = 3):
    """x, p (probabilities, logits or means), μ, σ in float64: values away from the clamps."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 5, generator=gen, dtype=F64)
    if dist.startswith("bernoulli"):
        x = x.round()
    p = torch.randn(batch, 5, generator=gen, dtype=F64)
    if dist == "bernoulli":
        p = torch.sigmoid(p)
    mu = torch.randn(batch, 2, generator=gen, dtype=F64)
    sigma = torch.rand(batch, 2, generator=gen, dtype=F64) + 0.5
    return x, p, mu, sigma


def _tc_inputs(seed: int = 0, batch: int = 6, latent: int = 3):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, latent, generator=gen, dtype=F64)
    mu = torch.randn(batch, latent, generator=gen, dtype=F64)
    sigma = torch.rand(batch, latent, generator=gen, dtype=F64) + 0.5
    return z, mu, sigma


def _ours_vae(dist: str, backend: str, **kw):
    logits = dist == "bernoulli_logits"
    kind = "bernoulli" if logits else dist

    def f(x, p, mu, sigma):
        return beta_vae_loss(x, p, mu, sigma, 2.0, kind, backend, p_is_logits=logits, **kw)[0]

    return f


def _reference_vae(dist: str, **kw):
    logits = dist == "bernoulli_logits"
    kind = "bernoulli" if logits else dist

    def f(x, p, mu, sigma):
        return reference_beta_vae_loss(x, p, mu, sigma, 2.0, kind, p_is_logits=logits, **kw)[0]

    return f


def _hvp(f, inputs, vectors):
    """The Hessian-vector products of scalar ``f`` at ``inputs`` (double backward)."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(f(*inputs), inputs, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vectors, strict=True))
    return torch.autograd.grad(dot, inputs, allow_unused=True, materialize_grads=True)


# ---- second derivatives --------------------------------------------------------------------


@pytest.mark.parametrize("dist", ["normal", "bernoulli", "bernoulli_logits"])
def test_triton_second_derivatives_are_refused_not_zero(dist):
    x, p, mu, sigma = _vae_inputs(dist)
    f = _ours_vae(dist, "triton")
    with pytest.raises(RuntimeError, match=REFUSES_SECOND):
        torch.autograd.functional.hessian(lambda p_: f(x, p_, mu, sigma), p)
    with pytest.raises(RuntimeError, match=REFUSES_SECOND):
        torch.autograd.functional.hvp(lambda m: f(x, p, m, sigma), mu, torch.ones_like(mu))
    per_sample = _ours_vae(dist, "triton", reduction="none")
    leaf = p.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=REFUSES_SECOND):
        torch.autograd.grad(per_sample(x, leaf, mu, sigma).sum(), leaf, create_graph=True)


@pytest.mark.parametrize("dist", ["normal", "laplace", "bernoulli", "bernoulli_logits"])
def test_eager_second_derivatives_match_reference(dist):
    """Hessian-vector products in (p, μ, σ), the data fixed (the oracle's Bernoulli, torch's
    binary_cross_entropy, has no second derivative in its target)."""
    x, *inputs = _vae_inputs(dist, seed=1)
    gen = torch.Generator().manual_seed(2)
    vectors = [torch.randn(t.shape, generator=gen, dtype=F64) for t in inputs]
    got = _hvp(lambda *a: _ours_vae(dist, "eager")(x, *a), inputs, vectors)
    want = _hvp(lambda *a: _reference_vae(dist)(x, *a), inputs, vectors)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("logvar", [False, True], ids=["sigma", "logvar"])
@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_beta_tcvae_second_derivatives_match_reference(backend, estimator, logvar):
    """Double backward through the pairwise operators (which used to fail with "no
    autograd formula was registered"): the backward recomputes its gradients by the
    differentiable formula when a graph is asked for, through σ or log σ²."""
    z, mu, sigma = _tc_inputs(seed=3)
    inputs = (z, mu, 2 * sigma.log() if logvar else sigma)
    gen = torch.Generator().manual_seed(4)
    vectors = [torch.randn(t.shape, generator=gen, dtype=F64) for t in inputs]

    def ours(z, mu, second):
        mi, tc, dw_kl = kl_decomposition(
            z, mu, second, 50, estimator, q_is_logvar=logvar, backend=backend
        )
        return mi + 6.0 * tc + dw_kl

    def reference(z, mu, second):
        mi, tc, dw_kl = reference_beta_tcvae_terms(z, mu, second, 50, estimator, logvar)
        return mi + 6.0 * tc + dw_kl

    got, want = _hvp(ours, inputs, vectors), _hvp(reference, inputs, vectors)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


# ---- forward-mode AD -------------------------------------------------------------------------


def _tc_loss_inputs(seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 4, generator=gen, dtype=F64).round()
    logits = torch.randn(6, 4, generator=gen, dtype=F64)
    return (x, logits, *_tc_inputs(seed))


def _tc_loss(backend):
    def f(x, logits, z, mu, sigma):
        out = beta_tcvae_loss(
            x, logits, z, mu, sigma, 1.0, 6.0, 1.0, 50, "bernoulli", backend=backend,
            p_is_logits=True,
        )  # fmt: skip
        return out[0]

    return f


def _reference_tc_loss(x, logits, z, mu, sigma):
    return reference_beta_tcvae_loss(
        x, logits, z, mu, sigma, 1.0, 6.0, 1.0, 50, "bernoulli", p_is_logits=True
    )[0]


def _directional(f, inputs, tangents):
    """⟨∇f, v⟩ by reverse mode: what a JVP must equal."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(f(*leaves), leaves)
    return sum((g * v).sum() for g, v in zip(grads, tangents, strict=True))


@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_beta_tcvae_forward_mode_matches_reference(backend):
    """torch.func.jvp and torch.autograd.forward_ad through β-TCVAE: the pairwise term's
    contribution used to be dropped (its operator's outputs were constants to forward
    mode)."""
    inputs = _tc_loss_inputs()
    gen = torch.Generator().manual_seed(6)
    tangents = [torch.randn(t.shape, generator=gen, dtype=F64) for t in inputs]
    want = _directional(_reference_tc_loss, inputs, tangents)
    _, got = torch.func.jvp(_tc_loss(backend), tuple(inputs), tuple(tangents))
    torch.testing.assert_close(got, want, **TOL)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(t, v) for t, v in zip(inputs, tangents, strict=True)]
        got = fwAD.unpack_dual(_tc_loss(backend)(*duals)).tangent
    torch.testing.assert_close(got, want, **TOL)
    # The total correlation alone (the term that used to come out as 0.0).
    z, mu, sigma = inputs[2:]
    v = tangents[2]
    _, tc_jvp = torch.func.jvp(lambda z_: kl_decomposition(z_, mu, sigma, 50)[1], (z,), (v,))
    want_tc = _directional(lambda z_: reference_beta_tcvae_terms(z_, mu, sigma, 50)[1], [z], [v])
    torch.testing.assert_close(tc_jvp, want_tc, **TOL)
    assert want_tc.abs() > 1e-3  # a term that is there to drop


@pytest.mark.parametrize("dist", ["normal", "bernoulli", "bernoulli_logits"])
def test_beta_vae_forward_mode_matches_reference(dist):
    inputs = _vae_inputs(dist, seed=7)
    gen = torch.Generator().manual_seed(8)
    tangents = [torch.randn(t.shape, generator=gen, dtype=F64) for t in inputs]
    want = _directional(_reference_vae(dist), inputs, tangents)
    for backend in ("auto", "eager"):
        _, got = torch.func.jvp(_ours_vae(dist, backend), tuple(inputs), tuple(tangents))
        torch.testing.assert_close(got, want, **TOL)
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t, v) for t, v in zip(inputs, tangents, strict=True)]
            got = fwAD.unpack_dual(_ours_vae(dist, backend)(*duals)).tangent
        torch.testing.assert_close(got, want, **TOL)


def test_triton_backend_refuses_forward_mode_and_transforms_by_name():
    x, p, mu, sigma = _vae_inputs("normal")
    f = _ours_vae("normal", "triton")
    with pytest.raises(RuntimeError, match=REFUSES_TRANSFORM):
        torch.func.jvp(lambda p_: f(x, p_, mu, sigma), (p,), (torch.ones_like(p),))
    with fwAD.dual_level(), pytest.raises(RuntimeError, match=REFUSES_TRANSFORM):
        f(x, fwAD.make_dual(p, torch.ones_like(p)), mu, sigma)
    with pytest.raises(RuntimeError, match=REFUSES_TRANSFORM):
        torch.func.grad(lambda p_: f(x, p_, mu, sigma))(p)
    z, mu, sigma = _tc_inputs()
    with pytest.raises(RuntimeError, match=REFUSES_TRANSFORM):
        torch.func.grad(lambda z_: kl_decomposition(z_, mu, sigma, 50, backend="triton")[1])(z)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match=REFUSES_TRANSFORM):
        kl_decomposition(fwAD.make_dual(z, torch.ones_like(z)), mu, sigma, 50, backend="triton")


# ---- torch.func: per-sample gradients, Jacobians -------------------------------------------


@pytest.mark.parametrize("dist", ["normal", "laplace", "bernoulli", "bernoulli_logits"])
def test_vmap_grad_gives_the_reference_per_sample_gradients(dist):
    """The DP-SGD idiom: vmap(grad) over the samples, validation on (skipped under the
    transform, as torch's own losses skip theirs, rather than a data-dependent branch)."""
    x, p, mu, sigma = _vae_inputs(dist, seed=9, batch=4)
    logits = dist == "bernoulli_logits"
    kind = "bernoulli" if logits else dist

    def one(p_i, x_i, mu_i, sigma_i):  # one sample as a batch of one
        return beta_vae_loss(
            x_i[None], p_i[None], mu_i[None], sigma_i[None], 2.0, kind, "auto",
            validate_args=True, p_is_logits=logits,
        )[0]  # fmt: skip

    got = torch.func.vmap(torch.func.grad(one, argnums=(0, 2, 3)))(p, x, mu, sigma)
    for i in range(x.shape[0]):
        leaves = [t[i : i + 1].detach().requires_grad_() for t in (p, mu, sigma)]
        ref = _reference_vae(dist)(x[i : i + 1], *leaves)
        want = torch.autograd.grad(ref, leaves)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g[i], w[0], **TOL)


def test_jacrev_of_per_sample_losses_matches_reference():
    x, p, mu, sigma = _vae_inputs("bernoulli", seed=10)
    f = _ours_vae("bernoulli", "eager", reduction="none")
    ref = _reference_vae("bernoulli", reduction="none")
    got = torch.func.jacrev(lambda p_: f(x, p_, mu, sigma))(p)
    want = torch.autograd.functional.jacobian(lambda p_: ref(x, p_, mu, sigma), p)
    torch.testing.assert_close(got, want, **TOL)


def test_torch_func_grad_and_jacrev_of_beta_tcvae_match_reference():
    z, mu, sigma = _tc_inputs(seed=11)

    def ours(z_, mu_):
        mi, tc, dw_kl = kl_decomposition(z_, mu_, sigma, 50)
        return torch.stack((mi, tc, dw_kl))

    def reference(z_, mu_):
        return torch.stack(reference_beta_tcvae_terms(z_, mu_, sigma, 50))

    got = torch.func.grad(lambda z_, mu_: ours(z_, mu_)[1], argnums=(0, 1))(z, mu)
    want = torch.autograd.functional.jacobian(lambda z_, mu_: reference(z_, mu_)[1], (z, mu))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    got = torch.func.jacrev(ours)(z, mu)
    want = torch.autograd.functional.jacobian(lambda z_: reference(z_, mu), z)
    torch.testing.assert_close(got, want, **TOL)


# ---- torch.export: export, save, load, backward ---------------------------------------------


class _Step(torch.nn.Module):
    """A loss module over a Bernoulli(logits) decoder: the inputs a training step has."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, x, logits, mu, sigma, z):
        p = Bernoulli(logits=logits, validate_args=False)
        q = Normal(mu, sigma, validate_args=False)
        out = self.loss(x, p, q, z) if isinstance(self.loss, BetaTCVAELoss) else self.loss(x, p, q)
        return out["loss"], out["kl_loss"]


MODULES = {
    "BetaVAELoss": lambda backend: BetaVAELoss(2.0, backend=backend),
    "CapacityBetaVAELoss": lambda backend: CapacityBetaVAELoss(backend=backend),
    "BetaTCVAELoss": lambda backend: BetaTCVAELoss(dataset_size=100, backend=backend),
}


def _step_inputs(requires_grad: bool):
    gen = torch.Generator().manual_seed(12)
    x = torch.rand(4, 6, generator=gen).round()
    rest = [torch.randn(4, 6, generator=gen), torch.randn(4, 3, generator=gen)]
    rest += [torch.rand(4, 3, generator=gen) + 0.5, torch.randn(4, 3, generator=gen)]
    return [x, *(t.requires_grad_(requires_grad) for t in rest)]


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("name", list(MODULES))
def test_export_save_load_and_backward(name, backend):
    """torch.export.load used to fail on BetaTCVAELoss (its no_grad block), and backward
    through the loaded program on the eager backend (an in-place write on a tensor
    autograd had saved)."""
    module = _Step(MODULES[name](backend))
    exported = torch.export.export(module, tuple(_step_inputs(requires_grad=True)))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    got_in, want_in = _step_inputs(True), _step_inputs(True)
    got, want = loaded(*got_in), module(*want_in)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    got[0].backward()
    want[0].backward()
    for g, w in zip(got_in[1:], want_in[1:], strict=True):
        torch.testing.assert_close(g.grad, w.grad)


def test_exported_triton_call_without_the_gradient_it_was_traced_for_refuses_clearly():
    """Exported with inputs that did not require grad, the operator's call does not write
    their gradients: asking for them later raises, never silently returns None."""
    module = _Step(BetaVAELoss(2.0, backend="triton"))
    loaded = torch.export.export(module, tuple(_step_inputs(requires_grad=False))).module()
    inputs = _step_inputs(True)
    with pytest.raises(RuntimeError, match=r"need_grad_p=False.*require grad"):
        loaded(*inputs)[0].backward()
