"""The operators' CPU implementation without the interpreter: eager PyTorch, packed as the
kernels pack their outputs.

``betavae_triton::loss_fwd`` on CPU tensors runs the kernels under ``TRITON_INTERPRET=1``
(every other test here) and eager PyTorch otherwise: what a program exported or compiled
with the operators runs on a machine without the interpreter. These tests switch the
interpreter off and drive the operator through the package's autograd function, for every
option the call bundle carries, against the float64 reference.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import DISTS, LossInputs, assert_grads_match, assert_values_match, loss_inputs
from hypothesis import given
from hypothesis import strategies as st

from betavae_triton._dispatch import interpreter_enabled
from betavae_triton.vae.ops import triton_terms
from betavae_triton.vae.terms import loss_call as _loss_call
from reference import reference_beta_vae_loss, reference_reconstruction_loss


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not interpreter_enabled()


def _run(leaves, dist, beta, **options):
    x, p, loc, scale = leaves
    call = _loss_call(x, p, loc, scale, beta=beta, dist=dist, **options)
    loss, rec, kl, _ = triton_terms(call)
    return loss, rec, kl


@given(
    inputs=loss_inputs(device=torch.device("cpu")),
    beta=st.sampled_from([0.0, 1.0, 4.0]),
    factor=st.sampled_from([1.0, 2.0, -0.5]),
)
def test_eager_operator_matches_reference(inputs, beta, factor):
    """Values and gradients, with an incoming factor of 1 (the saved gradient as is) and
    others (the CPU rescaling fallback)."""
    leaves = inputs.leaves()
    values = _run(leaves, inputs.dist, beta)
    assert_values_match(values, inputs, beta)
    grads = torch.autograd.grad(factor * values[0], leaves)
    assert_grads_match(grads, inputs, beta, weights=(factor, 0.0, 0.0))


@pytest.mark.parametrize("dist", DISTS)
def test_eager_operator_per_sample_matches_reference(dist):
    gen = torch.Generator().manual_seed(31)
    x = torch.rand(3, 2, 5, generator=gen, dtype=torch.float64)
    p = torch.rand(3, 2, 5, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    if dist == "bernoulli":
        x = x.round()
    loc = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    scale = torch.rand(3, 4, generator=gen, dtype=torch.float64) + 0.3
    weights = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, p, loc, scale)]
    loss, rec, kl = _run(leaves, dist, 1.5, per_sample=True)
    grads = torch.autograd.grad((loss * weights).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (x, p, loc, scale)]
    ref = reference_beta_vae_loss(*ref_leaves, 1.5, dist, reduction="none")
    ref_grads = torch.autograd.grad((ref[0] * weights).sum(), ref_leaves)
    for got, want in zip((loss, rec, kl, *grads), (*ref, *ref_grads), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dist", ["normal", "laplace"])
@pytest.mark.parametrize("scale_shape", [(), (1, 2, 1)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_eager_operator_decoder_scale_matches_reference(dist, scale_shape, reduction):
    """The full likelihood with a shared or per-channel decoder scale: the scale's
    gradient (a per-row reduction, or per element summed to its shape)."""
    gen = torch.Generator().manual_seed(32)
    x = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    p = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    s = torch.rand(scale_shape, generator=gen, dtype=torch.float64) + 0.5
    leaves = [t.clone().requires_grad_() for t in (x, p, s)]
    call = _loss_call(
        leaves[0],
        leaves[1],
        None,
        None,
        p_scale=leaves[2],
        dist=dist,
        per_sample=reduction == "none",
    )
    _, rec, _, _ = triton_terms(call)
    weights = torch.linspace(-1.0, 2.0, rec.numel(), dtype=torch.float64).reshape(rec.shape)
    grads = torch.autograd.grad((rec * weights).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (x, p, s)]
    ref = reference_reconstruction_loss(
        ref_leaves[1], ref_leaves[0], dist, reduction=reduction, p_scale=ref_leaves[2]
    )
    ref_grads = torch.autograd.grad((ref * weights).sum(), ref_leaves)
    for got, want in zip((rec, *grads), (ref, *ref_grads), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)


def test_eager_operator_kl_per_dim_and_layouts():
    """A batch-inner data layout and a chunked posterior, with the per-dimension KL."""
    gen = torch.Generator().manual_seed(33)
    x = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    p = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    h = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    inputs = LossInputs(
        "normal", x.movedim(0, -1).contiguous().movedim(-1, 0), p, h[:, :3], h[:, 3:].exp()
    )
    leaves = inputs.leaves()
    call = _loss_call(*leaves, beta=2.0, dist="normal", kl_per_dim=True)
    loss, rec, kl, kl_dims = triton_terms(call)
    assert_values_match((loss, rec, kl), inputs, 2.0)
    assert_grads_match(torch.autograd.grad(loss, leaves), inputs, 2.0)
    kl_elements = 0.5 * (h[:, :3] ** 2 + h[:, 3:].exp() ** 2 - 1) - h[:, 3:]
    torch.testing.assert_close(kl_dims, kl_elements.mean(0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dist", [*DISTS, "bernoulli_logits"])
def test_eager_operator_passes_opcheck(dist):
    """The operator's fake and autograd registrations hold for the eager implementation."""
    gen = torch.Generator().manual_seed(34)
    x = torch.rand(2, 3, 4, generator=gen).round()
    p = torch.rand(2, 3, 4, generator=gen) * 0.9 + 0.05
    loc, scale = torch.randn(2, 5, generator=gen), torch.rand(2, 5, generator=gen) + 0.5
    p_scale = torch.rand(1, 3, 1, generator=gen) + 0.5 if dist in ("normal", "laplace") else None
    tensors = [t.requires_grad_() for t in (x, p, loc, scale)]
    call = _loss_call(*tensors, p_scale=p_scale, beta=0.5, dist=dist, per_sample=True)
    torch.library.opcheck(torch.ops.betavae_triton.loss_fwd_cpu.default, tuple(call))
