"""β-TCVAE's minibatch log-densities as ``torch.library`` operators, with one autograd.

Three operators under the ``betavae_triton`` namespace compute

    (log q(z_i), log q(z_id), [mi, tc, dw_kl]) = tc_log_densities(z, mu, log_sigma,
                                                  row_offset, dataset_size, estimator)

for the samples z (rows ``row_offset`` … of the batch) against every posterior (μ, log σ):
the pairwise log-densities by online log-sum-exps in O(B·D) memory, and the three terms
from them (:mod:`.decomposition`), so that a β-TCVAE step is one operator call forward and
one backward. Each has a ``*_backward`` operator that recomputes the gradients to z, μ and
log σ from the saved log-sum-exps. The first two take the fields of
:class:`.call.PairwiseCall` (the backward's next five: :class:`.call.PairwiseSaved`), the
third the same tensors with the estimator's log-weights; the schemas are written out in
:mod:`.call`. A fourth, the C kernels' forward with the terms' gradients, serves a
compiled step that will differentiate them (below).

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
``tc_log_densities_c``
    the C kernels themselves (schema :data:`.call.C_FORWARD_SCHEMA`; their CPU kernel is
    ``minibatch_ops.cpp``, which :mod:`.cpu` builds and loads at first use), without an
    autograd of their own: the eager operator's CPU implementation, and what a graph
    traced by ``torch.compile`` calls on a CPU where they are built
    (:func:`c_kernels_in_graph`), applied by :class:`_EagerPairwise` with the one
    autograd below. They cannot be the eager operator's registered CPU kernel: that
    operator also serves the interpreted form, ``BETAVAE_TRITON_NATIVE=0`` and machines
    without a compiler, which a C++ kernel cannot hand back to Python. A compiled graph
    calls them by torch's C++ dispatch, where the eager operator costs a trip through
    ``torch._library``'s Python (some 20 µs a call each way). ``torch.export`` keeps the
    eager operator: its programs name an operator that every install has.
``tc_terms_and_gradients_c``
    the C kernels' forward that also returns the pairwise parts of the three terms'
    gradients with respect to z, μ and log σ, computed in the same pass from its t and
    exponentials (schema :data:`.call.C_TERMS_SCHEMA`): what a step traced by
    ``torch.compile`` calls when it will differentiate the terms
    (:func:`terms_with_gradients`). Its graph then calls one operator forward and none
    backward: the backward weighs the saved gradients by the terms' incoming ones and adds
    the samples' own parts, element-wise ops that inductor fuses, where the pair of
    operators above costs a second call from the graph's Python (4–6 µs on the CPU) and a
    second pass over the posteriors. Its autograd (:class:`_TermsWithGradients`) is its
    own, and answers first derivatives only: a compiled step is never differentiated
    twice (AOTAutograd refuses double backward).

One autograd (:func:`_setup_context`, :func:`_backward`) is registered on the first two
(the C kernels' forward and backward run inside it); it answers
second derivatives (``create_graph=True``) through :mod:`.formula`. A call that nothing
traces (no ``torch.compile``, ``torch.export``, fake or functional tensors) applies the
eager operator's implementation and that same autograd directly
(:func:`tc_log_densities_eager_call`, :class:`_EagerPairwise`): the dispatcher's trip
through ``torch._library`` costs some 100 µs a step on a CPU, as much as the C kernels at
B × D = 64 × 10. ``torch.func``
transforms and forward-mode AD never reach the operators (:func:`.terms.minibatch_terms`
runs the formula under them). Importing this module registers the operators
(``betavae_triton.tcvae`` does on import); the Triton one only where Triton is
importable.
"""

from __future__ import annotations

import torch
from torch.library import custom_op, register_autograd, triton_op, wrap_triton

from .._dispatch import (
    backward_is_traced,
    create_graph_requested,
    interpreter_enabled,
    interpreter_launch,
    triton_available,
)
from . import cpu, decomposition, eager
from .call import (
    BACKWARD_SCHEMA,
    C_BACKWARD_SCHEMA,
    C_FORWARD_SCHEMA,
    C_TERMS_SCHEMA,
    FORWARD_SCHEMA,
    PairwiseCall,
    PairwiseSaved,
)
from .cpu import terms_and_gradients as c_terms_and_gradients
from .decomposition import add_own_gradients
from .formula import formula_log_densities
from .weights import estimator_weights

if triton_available():
    from .launch import launch_log_densities_bwd, launch_log_densities_fwd

Tensor = torch.Tensor


# ---- the implementations, on one call ------------------------------------------------------


def _c_kernels(z: Tensor, interpreted: bool = False) -> bool:
    """Whether the C kernels of :mod:`.cpu` compute a call on ``z``: CPU tensors, not the
    Triton backend's interpreted form, the kernels built (and not switched off)."""
    if interpreted and interpreter_enabled():
        return False
    return z.device.type == "cpu" and cpu.kernels_ready(z.dtype)


def c_kernels_in_graph(z: Tensor) -> bool:
    """Whether a call traced by ``torch.compile`` puts the C kernels' operators in its graph
    itself (applied by :class:`_EagerPairwise`, their autograd the operators' own), rather
    than the eager operator: a compiled graph then calls them by torch's C++ dispatch, not
    through ``torch._library``'s Python (some 20 µs a call). Not under ``torch.export``,
    whose programs name the eager operator."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return torch.compiler.is_compiling() and not exporting and _c_kernels(z)


def _forward(call: PairwiseCall, interpreted: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The operators' outputs, ``(log q(z_i), log q(z_id), [mi, tc, dw_kl])``: by the
    interpreted Triton kernels, the C kernels (which sum the terms' per-sample parts in
    the same pass), or the chunked torch algorithm (see the module docstring)."""
    call = call.contiguous()
    if _c_kernels(call.z, interpreted):
        return cpu.log_densities_fwd(call)
    if interpreted and interpreter_enabled():
        log_qz, log_prod = launch_log_densities_fwd(interpreter_launch, *call)
    else:
        log_qz, log_prod = eager.log_densities_fwd(*call)
    return log_qz, log_prod, decomposition.terms(call, log_qz, log_prod)


def _backward_impl(
    call: PairwiseCall, saved: PairwiseSaved, interpreted: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of ``call``'s z, μ and log σ, on the implementation of
    :func:`_forward`, the samples' own parts included."""
    call = call.contiguous()
    saved = PairwiseSaved(*(None if t is None else t.contiguous() for t in saved))
    if _c_kernels(call.z, interpreted):
        return cpu.log_densities_bwd(call, saved)
    g_qz, g_prod = decomposition.pairwise_gradients(call, saved.g_terms, saved.g_qz, saved.g_prod)
    args = (call.z, call.mu, call.log_sigma, saved.log_qz, saved.log_prod, g_qz, g_prod)
    if interpreted and interpreter_enabled():
        grads = launch_log_densities_bwd(interpreter_launch, *args, *call[3:])
    else:
        grads = eager.log_densities_bwd(*args, *call[3:])
    if saved.g_terms is not None:
        decomposition.add_own_gradients(*call[:4], saved.g_terms, *grads)
    return grads


# ---- the operators ------------------------------------------------------------------------


@custom_op("betavae_triton::tc_log_densities_eager", mutates_args=(), schema=FORWARD_SCHEMA)
def tc_log_densities_eager(*args):
    """``(log q(z_i), log q(z_id), [mi, tc, dw_kl])`` on any device; see the module
    docstring."""
    *fields, interpreted = args if len(args) == 7 else (*args, False)
    return _forward(PairwiseCall(*fields), interpreted)


@custom_op(
    "betavae_triton::tc_log_densities_eager_backward", mutates_args=(), schema=BACKWARD_SCHEMA
)
def tc_log_densities_eager_backward(*args):
    """The gradients of :func:`tc_log_densities_eager`'s z, μ and log σ, recomputed."""
    *fields, interpreted = args if len(args) == 12 else (*args, False)
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
) -> tuple[Tensor, Tensor, Tensor]:
    """β-TCVAE's ``(log q(z_i), log q(z_id), [mi, tc, dw_kl])`` by the Triton kernels; see
    the module docstring (``interpreted`` is implied on CPU tensors)."""
    call = PairwiseCall(z, mu, log_sigma, row_offset, dataset_size, estimator).contiguous()
    if z.device.type == "cpu":
        return tc_log_densities_eager(*call, True)
    with torch.cuda.device(z.device):
        log_qz, log_prod = launch_log_densities_fwd(wrap_triton, *call)
    return log_qz, log_prod, decomposition.terms(call, log_qz, log_prod)


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
    g_qz: Tensor | None,
    g_prod: Tensor | None,
    g_terms: Tensor | None,
    interpreted: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of :func:`tc_log_densities`' z, μ and log σ; see the module docstring."""
    call = PairwiseCall(z, mu, log_sigma, row_offset, dataset_size, estimator)
    saved = PairwiseSaved(log_qz, log_prod, g_qz, g_prod, g_terms)
    if z.device.type == "cpu":
        return tc_log_densities_eager_backward(*call, *saved, True)
    call = call.contiguous()
    g_qz, g_prod = decomposition.pairwise_gradients(call, g_terms, g_qz, g_prod)
    with torch.cuda.device(z.device):
        args = (call.z, call.mu, call.log_sigma, log_qz.contiguous(), log_prod.contiguous())
        grads = launch_log_densities_bwd(wrap_triton, *args, g_qz, g_prod, *call[3:])
    if g_terms is not None:
        grads = tuple(g.clone() for g in grads)  # (a triton_op's outputs: no aliasing)
        decomposition.add_own_gradients(*call[:4], g_terms, *grads)
    return grads


# The C kernels' operators: defined here, their CPU kernels registered by the library of
# minibatch_ops.cpp that tcvae/cpu.py builds and loads at first use.
torch.library.define("betavae_triton::tc_log_densities_c", C_FORWARD_SCHEMA)
torch.library.define("betavae_triton::tc_log_densities_c_backward", C_BACKWARD_SCHEMA)
torch.library.define("betavae_triton::tc_terms_and_gradients_c", C_TERMS_SCHEMA)


@torch.library.register_fake("betavae_triton::tc_log_densities_c")
@tc_log_densities_eager.register_fake
def _fake_forward(z, mu, log_sigma, *options):
    return z.new_empty(z.shape[:1]), torch.empty_like(z), z.new_empty((3,))


@torch.library.register_fake("betavae_triton::tc_log_densities_c_backward")
@tc_log_densities_eager_backward.register_fake
def _fake_backward(z, mu, log_sigma, *rest):
    return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(log_sigma)


@torch.library.register_fake("betavae_triton::tc_terms_and_gradients_c")
def _fake_terms_and_gradients(z, mu, log_sigma, *options):
    rows, batch = (3, *z.shape), (3, *mu.shape)
    return z.new_empty((3,)), z.new_empty(rows), mu.new_empty(batch), mu.new_empty(batch)


# ---- one autograd for both ---------------------------------------------------------------


def _setup_context(ctx, inputs, output) -> None:
    """Save the call and the log-sum-exps."""
    call = PairwiseCall(*inputs[:6])
    log_qz, log_prod, _ = output
    ctx.save_for_backward(call.z, call.mu, call.log_sigma, log_qz, log_prod)
    ctx.options = tuple(call[3:])
    ctx.interpreted = bool(inputs[6]) if len(inputs) > 6 else False
    ctx.set_materialize_grads(False)


def _second_order_gradients(call: PairwiseCall, g_qz, g_prod, g_terms) -> tuple[Tensor | None, ...]:
    """The gradients of z, μ and log σ as a graph (``create_graph=True``): recomputed by
    :func:`.formula.formula_log_densities` and :func:`.decomposition.terms`, which autograd
    differentiates again. O(B²·D) memory, as any second derivative of the pairwise terms
    built by autograd."""
    with torch.enable_grad():
        inputs = [t if t.requires_grad else t.detach().requires_grad_() for t in call[:3]]
        differentiable = call._replace(z=inputs[0], mu=inputs[1], log_sigma=inputs[2])
        log_qz, log_prod = formula_log_densities(differentiable)
        outputs = (log_qz, log_prod, decomposition.terms(differentiable, log_qz, log_prod))
        pairs = [
            (o, g) for o, g in zip(outputs, (g_qz, g_prod, g_terms), strict=True) if g is not None
        ]
        return torch.autograd.grad(
            [o for o, _ in pairs],
            inputs,
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
        )


def _backward(ctx, g_qz, g_prod, g_terms):
    """The gradients of z, μ and log σ (incoming gradients that autograd left undefined:
    None), by :func:`_pairwise_backward`."""
    z, mu, log_sigma, log_qz, log_prod = ctx.saved_tensors
    call = PairwiseCall(z, mu, log_sigma, *ctx.options)
    none = (None,) * (len(ctx.needs_input_grad) - 3)
    if g_qz is None and g_prod is None and g_terms is None:
        return (None, None, None, *none)
    saved = PairwiseSaved(log_qz, log_prod, g_qz, g_prod, g_terms)
    return (*_pairwise_backward(call, saved, ctx.is_triton, ctx.interpreted), *none)


def _pairwise_backward(
    call: PairwiseCall, saved: PairwiseSaved, is_triton: bool, interpreted: bool
) -> tuple[Tensor | None, ...]:
    """The one backward of the pairwise terms, whichever autograd node asks: recomputed by
    the operator's backward, or, with ``create_graph=True``, by
    :func:`_second_order_gradients`."""
    if create_graph_requested(call.z):
        return _second_order_gradients(call, saved.g_qz, saved.g_prod, saved.g_terms)
    if not is_triton and (not backward_is_traced(call.z) or c_kernels_in_graph(call.z)):
        # Run eagerly, the eager operator's backward is its implementation, called
        # without a second trip through the dispatcher; compiled on the C kernels, the
        # graph calls their operator (traced otherwise, the eager operator is needed:
        # the graph calls it).
        return _backward_impl(call, saved, interpreted)
    backward_op = tc_log_densities_backward if is_triton else tc_log_densities_eager_backward
    return backward_op(*call, *saved, interpreted)


class _EagerPairwise(torch.autograd.Function):
    """:func:`tc_log_densities_eager` applied without the dispatcher, where nothing traces
    the call (:func:`tc_log_densities_eager_call`): the same implementation and the same
    autograd (:func:`_setup_context`, :func:`_backward`) as the operator's. At the batch
    sizes people train β-TCVAE with, the dispatcher's trip through ``torch._library`` (its
    autograd wrapper, redispatch and argument defaults) costs as much as the C kernels."""

    @staticmethod
    def forward(ctx, *args):
        output = _forward(PairwiseCall(*args[:6]), args[6])
        _setup_context(ctx, args, output)
        ctx.is_triton = False
        return output

    backward = staticmethod(_backward)


class _EagerTerms(torch.autograd.Function):
    """β-TCVAE's three terms from σ (or log σ²) on the eager implementation, for an
    untraced call without gather or bank (:func:`eager_terms`): log σ is taken inside and
    the terms come out as three scalars, so that autograd walks one node, not three
    (``log``, the operator's, ``unbind``). Its backward is :func:`_pairwise_backward`'s,
    the gradient of log σ carried to σ."""

    @staticmethod
    def forward(ctx, z, mu, second, q_is_logvar, dataset_size, estimator):
        call = PairwiseCall(z, mu, log_sigma_from(second, q_is_logvar), 0, dataset_size, estimator)
        log_qz, log_prod, terms = _forward(call, False)
        ctx.save_for_backward(z, mu, second)
        ctx.pairwise = (call, log_qz, log_prod)
        ctx.q_is_logvar = q_is_logvar
        ctx.set_materialize_grads(False)
        return terms[0], terms[1], terms[2]

    @staticmethod
    def backward(ctx, g_mi, g_tc, g_dw):
        z, mu, second = ctx.saved_tensors
        call, log_qz, log_prod = ctx.pairwise
        if g_mi is None and g_tc is None and g_dw is None:
            return (None,) * 6
        zero = z.new_zeros(())
        g_terms = torch.stack([zero if g is None else g for g in (g_mi, g_tc, g_dw)])
        graph = create_graph_requested(z)
        with torch.set_grad_enabled(graph):  # a second derivative reaches σ through log σ
            log_sigma = log_sigma_from(second, ctx.q_is_logvar) if graph else call.log_sigma
        call = call._replace(z=z, mu=mu, log_sigma=log_sigma)
        saved = PairwiseSaved(log_qz, log_prod, None, None, g_terms)
        grad_z, grad_mu, grad_log_sigma = _pairwise_backward(call, saved, False, False)
        if ctx.q_is_logvar:
            grad_second = grad_log_sigma * 0.5 if graph else grad_log_sigma.mul_(0.5)
        else:
            grad_second = grad_log_sigma / second if graph else grad_log_sigma.div_(second)
        return grad_z, grad_mu, grad_second, None, None, None


class _TermsWithGradients(torch.autograd.Function):
    """β-TCVAE's three terms ``[mi, tc, dw_kl]`` of a call by the C kernels' operator that
    computes their gradients in the same pass (``tc_terms_and_gradients_c``), for a step
    traced by ``torch.compile`` that will differentiate them (:func:`terms_with_gradients`,
    :func:`.terms.planned_terms`): its graph calls one operator forward and none backward,
    where the backward weighs the saved gradients by the terms' incoming ones and adds the
    samples' own parts (element-wise ops that inductor fuses into one kernel). It takes
    the estimator's weights (the fields of :func:`.weights.estimator_weights`), not the
    estimator: a plan decides them once per trace. Its backward is not differentiable
    again: inside ``torch.compile`` AOTAutograd refuses a second derivative ("does not
    currently support double backward"), as it does for every compiled step."""

    @staticmethod
    def forward(ctx, z, mu, log_sigma, row_offset, code, own, strat, rest):
        weights = (code, own, strat, rest)
        terms, *pairwise = c_terms_and_gradients(z, mu, log_sigma, row_offset, weights)
        ctx.save_for_backward(z, mu, log_sigma, *pairwise)
        ctx.row_offset = row_offset
        ctx.set_materialize_grads(False)
        return terms

    @staticmethod
    def backward(ctx, g_terms):
        if g_terms is None:
            return (None,) * 8
        z, mu, log_sigma, *pairwise = ctx.saved_tensors
        weights = g_terms[:, None, None]
        grads = [(weights * g).sum(0) for g in pairwise]
        # the samples' own parts, from the inputs: a compiled backward then reads z, μ and
        # log σ, and AOTAutograd refuses a second derivative with respect to any of them
        add_own_gradients(z, mu, log_sigma, ctx.row_offset, g_terms, *grads)
        return (*grads, None, None, None, None, None)


def terms_with_gradients(call: PairwiseCall) -> Tensor:
    """``[mi, tc, dw_kl]`` of ``call`` (contiguous) by :class:`_TermsWithGradients`: inside
    ``torch.compile`` on the C kernels (:func:`c_kernels_in_graph`), for a step that will
    differentiate the terms (grad mode on, an input that requires grad)."""
    weights = estimator_weights(call.mu.shape[0], call.dataset_size, call.estimator)
    return weighed_terms_with_gradients(call.z, call.mu, call.log_sigma, call.row_offset, weights)


def weighed_terms_with_gradients(
    z: Tensor, mu: Tensor, log_sigma: Tensor, row_offset: int, weights: tuple
) -> Tensor:
    """:func:`terms_with_gradients` of the tensors of a call (contiguous) with the
    estimator's ``weights`` given (the fields of :func:`.weights.estimator_weights`): what
    a compiled call's plan (:func:`.terms.planned_terms`) applies, without a
    :class:`.call.PairwiseCall` to trace."""
    return _TermsWithGradients.apply(z, mu, log_sigma, row_offset, *weights)


def gradients_ahead(call: PairwiseCall) -> bool:
    """Whether a call traced by ``torch.compile`` computes its terms' gradients with them
    (:func:`terms_with_gradients`): on the C kernels, grad mode on and an input that
    requires grad."""
    return (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in call[:3])
        and c_kernels_in_graph(call.z)
    )


def log_sigma_from(second: Tensor, q_is_logvar: bool) -> Tensor:
    """log σ from σ, or from log σ² with ``q_is_logvar``: the one place a posterior's second
    parameter becomes log σ (the batch's on every route, the bank's too)."""
    return second * 0.5 if q_is_logvar else second.log()


def eager_terms(
    z: Tensor, mu: Tensor, second: Tensor, q_is_logvar: bool, dataset_size: int, estimator: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mi, tc, dw_kl)`` of an untraced eager call on one batch (no gather, no bank):
    z, μ and σ (or log σ² with ``q_is_logvar``) of one shape and dtype, by
    :class:`_EagerTerms`."""
    return _EagerTerms.apply(z, mu, second, q_is_logvar, dataset_size, estimator)


def untraced(*tensors: Tensor) -> bool:
    """Whether a call on ``tensors`` runs as it is (no ``torch.compile``, ``torch.export``,
    ``jit.trace``, ``make_fx``, fake or functional tensors, torch-function mode): only then
    may it skip the operator, which is what those see."""
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and torch._C._len_torch_dispatch_stack() == 0
        and torch._C._len_torch_function_stack() == 0
        and all(type(t) is Tensor for t in tensors)
    )


def tc_log_densities_eager_call(call: PairwiseCall) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`tc_log_densities_eager` on ``call``: the operator where anything traces the
    call, :class:`_EagerPairwise` (the same computation and autograd, without the
    dispatcher's overhead) where it runs as it is."""
    if untraced(call.z, call.mu, call.log_sigma) or c_kernels_in_graph(call.z):
        return _EagerPairwise.apply(*call, False)
    return tc_log_densities_eager(*call)


def _setup_with(is_triton: bool):
    def setup_context(ctx, inputs, output) -> None:
        _setup_context(ctx, inputs, output)
        ctx.is_triton = is_triton

    return setup_context


for _operator, _is_triton in ((tc_log_densities, True), (tc_log_densities_eager, False)):
    register_autograd(_operator, _backward, setup_context=_setup_with(_is_triton))
