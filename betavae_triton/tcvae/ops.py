"""β-TCVAE's minibatch log-densities as ``torch.library`` operators, with one autograd.

Two operators under the ``betavae_triton`` namespace compute

    (log q(z_i), log q(z_id)) = tc_log_densities(z, mu, log_sigma, row_offset,
                                                  dataset_size, estimator)

for the samples z (rows ``row_offset`` … of the batch) against every posterior (μ, log σ),
by online log-sum-exps in O(B·D) memory, and each has a ``*_backward`` operator that
recomputes the gradients to z, μ and log σ from the saved log-sum-exps. Their first six
arguments are the fields of :class:`.call.PairwiseCall`; the backward's next four those of
:class:`.call.PairwiseSaved`; the schemas are written out in :mod:`.call`.

``tc_log_densities``
    the Triton backend: a ``torch.library.triton_op`` whose kernels (:mod:`.launch`) are
    launched through ``wrap_triton`` on CUDA, so that inductor sees them. On CPU tensors
    it calls ``tc_log_densities_eager(..., interpreted=True)``.
``tc_log_densities_eager``
    the eager backend on any device: the C kernels of :mod:`.cpu` on a CPU, the chunked
    torch algorithm of :mod:`.eager` elsewhere (and where no C compiler works), opaque
    to ``torch.compile`` (which would otherwise unroll the walk over the chunks). With
    ``interpreted=True``: the Triton kernels under Triton's interpreter (the eager
    algorithm without it), the Triton backend's CPU form. That form cannot be a CPU
    kernel registered on the ``triton_op`` (``register_kernel("cpu")``): it runs in eager
    mode, but dynamo and inductor decompose a ``triton_op`` into its body whatever the
    device, and the body's ``wrap_triton`` launch then asks Triton for a GPU driver.

One autograd (:func:`_setup_context`, :func:`_backward`) is registered on both; it answers
second derivatives (``create_graph=True``) through :mod:`.formula`. ``torch.func``
transforms and forward-mode AD never reach the operators (:func:`.terms.minibatch_terms`
runs the formula under them). Importing this module registers the operators
(``betavae_triton.tcvae`` does on import); the Triton one only where Triton is
importable.
"""

from __future__ import annotations

import torch
from torch.library import custom_op, register_autograd, triton_op, wrap_triton

from .._dispatch import (
    create_graph_requested,
    interpreter_enabled,
    interpreter_launch,
    triton_available,
)
from . import cpu, eager
from .call import BACKWARD_SCHEMA, FORWARD_SCHEMA, PairwiseCall, PairwiseSaved
from .formula import formula_log_densities

if triton_available():
    from .launch import launch_log_densities_bwd, launch_log_densities_fwd

Tensor = torch.Tensor


# ---- the implementations, on one call ------------------------------------------------------


def _native(z: Tensor):
    """The C kernels of :mod:`.cpu` for CPU tensors, where they build; else None."""
    return cpu.kernels(z.dtype) if z.device.type == "cpu" else None


def _forward(call: PairwiseCall, interpreted: bool) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log q(z_id))`` of ``call``: the interpreted Triton kernels, the C
    kernels, or the chunked torch algorithm (see the module docstring)."""
    call = call.contiguous()
    if interpreted and interpreter_enabled():
        return launch_log_densities_fwd(interpreter_launch, *call)
    native = _native(call.z)
    if native is not None:
        return cpu.log_densities_fwd(native[0], *call)
    return eager.log_densities_fwd(*call)


def _backward_impl(
    call: PairwiseCall, saved: PairwiseSaved, interpreted: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of ``call``'s z, μ and log σ, on the implementation of :func:`_forward`."""
    call, saved = call.contiguous(), saved.contiguous()
    args = (call.z, call.mu, call.log_sigma, *saved, *call[3:])
    if interpreted and interpreter_enabled():
        return launch_log_densities_bwd(interpreter_launch, *args)
    native = _native(call.z)
    if native is not None:
        return cpu.log_densities_bwd(native[1], *args)
    return eager.log_densities_bwd(*args)


# ---- the operators ------------------------------------------------------------------------


@custom_op("betavae_triton::tc_log_densities_eager", mutates_args=(), schema=FORWARD_SCHEMA)
def tc_log_densities_eager(*args):
    """``(log q(z_i), log q(z_id))`` on any device; see the module docstring."""
    *fields, interpreted = args if len(args) == 7 else (*args, False)
    return _forward(PairwiseCall(*fields), interpreted)


@custom_op(
    "betavae_triton::tc_log_densities_eager_backward", mutates_args=(), schema=BACKWARD_SCHEMA
)
def tc_log_densities_eager_backward(*args):
    """The gradients of :func:`tc_log_densities_eager`'s z, μ and log σ, recomputed."""
    *fields, interpreted = args if len(args) == 11 else (*args, False)
    return _backward_impl(PairwiseCall(*fields[:6]), PairwiseSaved(*fields[6:]), interpreted)


# torch infers a triton_op's schema from its signature (it takes no schema= argument):
# the parameters are those of FORWARD_SCHEMA / BACKWARD_SCHEMA, written out here
# (tests/test_tcvae_compile.py checks that the schemas agree).
@triton_op("betavae_triton::tc_log_densities", mutates_args=())
def tc_log_densities(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
    interpreted: bool = False,
) -> tuple[Tensor, Tensor]:
    """β-TCVAE's ``(log q(z_i), log q(z_id))`` by the Triton kernels; see the module
    docstring (``interpreted`` is implied on CPU tensors)."""
    call = PairwiseCall(z, mu, log_sigma, row_offset, dataset_size, estimator).contiguous()
    if z.device.type == "cpu":
        return tc_log_densities_eager(*call, True)
    with torch.cuda.device(z.device):
        return launch_log_densities_fwd(wrap_triton, *call)


@triton_op("betavae_triton::tc_log_densities_backward", mutates_args=())
def tc_log_densities_backward(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
    log_qz: Tensor,
    log_prod: Tensor,
    g_qz: Tensor,
    g_prod: Tensor,
    interpreted: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of :func:`tc_log_densities`' z, μ and log σ; see the module docstring."""
    call = PairwiseCall(z, mu, log_sigma, row_offset, dataset_size, estimator).contiguous()
    saved = PairwiseSaved(log_qz, log_prod, g_qz, g_prod).contiguous()
    if z.device.type == "cpu":
        return tc_log_densities_eager_backward(*call, *saved, True)
    with torch.cuda.device(z.device):
        args = (call.z, call.mu, call.log_sigma, *saved, *call[3:])
        return launch_log_densities_bwd(wrap_triton, *args)


@tc_log_densities_eager.register_fake
def _fake_forward(z, mu, log_sigma, *options):
    return z.new_empty(z.shape[:1]), torch.empty_like(z)


@tc_log_densities_eager_backward.register_fake
def _fake_backward(z, mu, log_sigma, *rest):
    return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(log_sigma)


# ---- one autograd for both ---------------------------------------------------------------


def _setup_context(ctx, inputs, output) -> None:
    """Save the call and the log-sum-exps."""
    call = PairwiseCall(*inputs[:6])
    ctx.save_for_backward(call.z, call.mu, call.log_sigma, *output)
    ctx.options = tuple(call[3:])
    ctx.interpreted = bool(inputs[6]) if len(inputs) > 6 else False


def _second_order_gradients(call: PairwiseCall, g_qz, g_prod) -> tuple[Tensor | None, ...]:
    """The gradients of z, μ and log σ as a graph (``create_graph=True``): recomputed by
    :func:`.formula.formula_log_densities`, which autograd differentiates again. O(B²·D)
    memory, as any second derivative of the pairwise terms built by autograd."""
    with torch.enable_grad():
        inputs = [t if t.requires_grad else t.detach().requires_grad_() for t in call[:3]]
        outputs = formula_log_densities(*inputs, *call[3:])
        pairs = [(o, g) for o, g in zip(outputs, (g_qz, g_prod), strict=True) if g is not None]
        return torch.autograd.grad(
            [o for o, _ in pairs],
            inputs,
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
        )


def _backward(ctx, g_qz, g_prod):
    """The gradients of z, μ and log σ (incoming gradients that autograd left undefined
    count as zeros): recomputed by the operator's backward, or, with
    ``create_graph=True``, by :func:`_second_order_gradients`."""
    z, mu, log_sigma, log_qz, log_prod = ctx.saved_tensors
    call = PairwiseCall(z, mu, log_sigma, *ctx.options)
    none = (None,) * (len(ctx.needs_input_grad) - 3)
    if create_graph_requested(z):
        return (*_second_order_gradients(call, g_qz, g_prod), *none)
    g_qz = torch.zeros_like(log_qz) if g_qz is None else g_qz
    g_prod = torch.zeros_like(log_prod) if g_prod is None else g_prod
    saved = PairwiseSaved(log_qz, log_prod, g_qz, g_prod)
    backward_op = tc_log_densities_backward if ctx.is_triton else tc_log_densities_eager_backward
    return (*backward_op(*call, *saved, ctx.interpreted), *none)


def _setup_with(is_triton: bool):
    def setup_context(ctx, inputs, output) -> None:
        _setup_context(ctx, inputs, output)
        ctx.is_triton = is_triton

    return setup_context


for _operator, _is_triton in ((tc_log_densities, True), (tc_log_densities_eager, False)):
    register_autograd(_operator, _backward, setup_context=_setup_with(_is_triton))
