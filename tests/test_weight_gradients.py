"""Loss weights given as tensors that require grad, and the β-VAE operator called with a
tensor β (issue 24, items 9 and 10): every gradient against the float64 oracle.

- The operator ``betavae_triton::loss_fwd``, called directly (as a ``torch.export``
  graph calls it) with a 0-d tensor β: the gradients of x, p, μ, σ and β through the
  operator's own autograd (``op_backward``), which ``opcheck`` compares only with itself.
- α, β, γ (and the capacity loss's γ) as 0-d tensors with ``requires_grad=True``: the
  gradient of the loss in each weight is its term, dL/dα = mi, dL/dβ = tc, dL/dγ = dw_kl
  (β-VAE: dL/dβ = kl; capacity: dL/dγ = |kl − C|), in eager mode and compiled, on both
  backends; a weight read as a number (``float(tensor) * term``) would have none.

The compiled runs use the ``aot_eager`` backend: whether a weight gets a gradient is
decided by dynamo and AOTAutograd, which build the joint graph; inductor only generates
code for it (and would add minutes of C++ compilation on a CPU).

Tolerances: everything is float64, so values and gradients agree with the oracle to
summation order: ``rtol = 1e-10`` and ``atol = 1e-10`` times the largest absolute value of
the oracle's tensor (at least 1).
"""

from __future__ import annotations

import pytest
import torch
from _helpers import DEVICE

from betavae_triton import beta_tcvae_loss, beta_vae_loss, capacity_beta_vae_loss
from betavae_triton.vae.call import LossOutputs
from betavae_triton.vae.terms import loss_call
from reference import reference_beta_tcvae_loss, reference_beta_vae_loss

BACKENDS = pytest.mark.parametrize("backend", ["eager", "triton"])
MODES = pytest.mark.parametrize("mode", ["eager", "compiled"])
N = 50


def _close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    scale = max(1.0, float(want.detach().abs().max()))
    torch.testing.assert_close(
        got.detach().cpu(), want.detach().cpu(), rtol=1e-10, atol=1e-10 * scale, msg=name
    )


def _data(seed: int = 0):
    """x, p (Gaussian, 6×2×3), z, μ, σ (6×4): float64, on the test device."""
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(generator=gen, dtype=torch.float64)
    x, p = torch.randn(6, 2, 3, **f64), torch.randn(6, 2, 3, **f64)
    mu, sigma = torch.randn(6, 4, **f64), torch.rand(6, 4, **f64) + 0.4
    z = mu + sigma * torch.randn(6, 4, **f64)
    return [t.to(DEVICE) for t in (x, p, z, mu, sigma)]


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


def _weight(value: float) -> torch.Tensor:
    """A 0-d float64 weight on the CPU (a schedule's usual place) that requires grad."""
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


# ---- item 9: the operator with a tensor β ----------------------------------------------------


def _operator_loss(x, p, mu, sigma, beta):
    """The loss through ``betavae_triton::loss_fwd`` itself (not the package's autograd
    Function): what an exported program, or a caller of ``torch.ops``, runs."""
    call = loss_call(x, p, mu, sigma, beta=beta, dist="normal")
    assert call.beta_tensor is not None and call.beta == 0.0  # β reaches the op as a tensor
    # A caller of torch.ops keeps the operator's outputs: the backward scales out of place.
    call = call._replace(in_place_backward=False)
    return LossOutputs(*torch.ops.betavae_triton.loss_fwd(*call)).loss


class _Exported(torch.nn.Module):
    def forward(self, x, p, mu, sigma, beta):
        return beta_vae_loss(x, p, mu, sigma, beta, "normal", "triton", validate_args=False)[0]


@pytest.mark.parametrize("how", ["direct", "export"])
def test_operator_gradients_with_a_tensor_beta_match_the_reference(how):
    """dL/dx, dL/dp, dL/dμ, dL/dσ and dL/dβ through the operator's registered autograd,
    with β a 0-d tensor and the number β 0 beside it: a backward that read the number
    instead would give the posterior no gradient and β the wrong one."""
    x, p, _, mu, sigma = _data()
    beta = 2.5
    if how == "direct":
        run = _operator_loss
    else:
        # Traced with inputs that require grad, so that the graph's operator writes every
        # gradient (which ones is a flag of the call, fixed at export).
        args = (*_leaves(x, p, mu, sigma), _weight(beta))
        exported = torch.export.export(_Exported(), args)
        assert "betavae_triton.loss_fwd" in str(exported.graph_module.code)
        run = exported.module()
    leaves = _leaves(x, p, mu, sigma)
    beta_leaf = _weight(beta)
    loss = run(*leaves, beta_leaf)
    grads = torch.autograd.grad(loss, [*leaves, beta_leaf])
    ref_leaves, ref_beta = _leaves(x, p, mu, sigma), _weight(beta)
    ref_loss = reference_beta_vae_loss(*ref_leaves, ref_beta, "normal")[0]
    ref_grads = torch.autograd.grad(ref_loss, [*ref_leaves, ref_beta])
    _close(loss, ref_loss, "loss")
    for name, got, want in zip(("x", "p", "mu", "sigma", "beta"), grads, ref_grads, strict=True):
        _close(got, want, f"grad {name}")


# ---- item 10: weights that require grad ------------------------------------------------------


def _run(fn, mode: str):
    return torch.compile(fn, backend="aot_eager", fullgraph=True) if mode == "compiled" else fn


@BACKENDS
@MODES
def test_tcvae_weight_gradients_are_their_terms(backend, mode):
    """dL/dα = mi_loss, dL/dβ = tc_loss, dL/dγ = dw_kl_loss (the oracle's, and the ones
    the call returns), with the posterior's gradients unchanged by the weights' form."""
    torch._dynamo.reset()
    x, p, z, mu, sigma = _data(1)
    weights = [_weight(w) for w in (0.5, 6.0, 1.5)]
    leaves = _leaves(p, z, mu, sigma)

    def loss_of(p, z, mu, sigma, alpha, beta, gamma):
        return beta_tcvae_loss(
            x, p, z, mu, sigma, alpha, beta, gamma, N, backend=backend, validate_args=False
        )

    out = _run(loss_of, mode)(*leaves, *weights)
    grads = torch.autograd.grad(out[0], [*weights, *leaves])
    ref_weights = [_weight(w) for w in (0.5, 6.0, 1.5)]
    ref_leaves = _leaves(p, z, mu, sigma)
    ref = reference_beta_tcvae_loss(x, *ref_leaves, *ref_weights, N, "normal", "mss")
    ref_grads = torch.autograd.grad(ref[0], [*ref_weights, *ref_leaves])
    names = ("alpha", "beta", "gamma", "p", "z", "mu", "sigma")
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        _close(got, want, f"grad {name}")
    for got, term in zip(grads[:3], out[2:], strict=True):
        _close(got, term, "a weight's gradient is its term")
    torch._dynamo.reset()


@BACKENDS
@MODES
def test_beta_vae_beta_gradient_is_the_kl(backend, mode):
    """dL/dβ = kl_loss, with a 0-d β on the CPU beside data on the test device."""
    torch._dynamo.reset()
    x, p, _, mu, sigma = _data(2)
    beta = _weight(4.0)
    leaves = _leaves(p, mu, sigma)

    def loss_of(p, mu, sigma, beta):
        return beta_vae_loss(x, p, mu, sigma, beta, "normal", backend, validate_args=False)

    loss, _, kl = _run(loss_of, mode)(*leaves, beta)
    grads = torch.autograd.grad(loss, [beta, *leaves])
    ref_beta, ref_leaves = _weight(4.0), _leaves(p, mu, sigma)
    ref_loss, _, ref_kl = reference_beta_vae_loss(x, *ref_leaves, ref_beta, "normal")
    ref_grads = torch.autograd.grad(ref_loss, [ref_beta, *ref_leaves])
    for name, got, want in zip(("beta", "p", "mu", "sigma"), grads, ref_grads, strict=True):
        _close(got, want, f"grad {name}")
    _close(grads[0], kl, "dL/dβ is the returned kl")
    _close(grads[0], ref_kl, "dL/dβ is the oracle's kl")
    torch._dynamo.reset()


@BACKENDS
@MODES
def test_capacity_gamma_gradient_is_the_distance_to_the_capacity(backend, mode):
    """Capacity loss, rec + γ·|kl − C|: dL/dγ = |kl − C| (the oracle's kl)."""
    torch._dynamo.reset()
    x, p, _, mu, sigma = _data(3)
    gamma, capacity = _weight(20.0), 1.5

    def loss_of(mu, sigma, gamma):
        return capacity_beta_vae_loss(
            x, p, mu, sigma, capacity, gamma, "normal", backend, validate_args=False
        )

    loss, _, kl = _run(loss_of, mode)(*_leaves(mu, sigma), gamma)
    (grad,) = torch.autograd.grad(loss, [gamma])
    ref_kl = reference_beta_vae_loss(x, p, mu, sigma, 0.0, "normal")[2]
    _close(grad, (ref_kl - capacity).abs(), "dL/dγ")
    _close(grad, (kl - capacity).abs(), "dL/dγ is the returned distance")
    torch._dynamo.reset()
