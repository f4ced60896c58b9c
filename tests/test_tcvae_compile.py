"""β-TCVAE under ``torch.compile`` and ``torch.library.opcheck``.

The compiled loss has no graph break (``fullgraph=True``), weights that change every step
(numbers or 0-d tensors) compile at most twice, compiled values and gradients are the
eager ones; the two operators (``tc_log_densities`` and ``tc_log_densities_eager``, with
their backwards) pass ``opcheck`` (schema, fake tensors, autograd registration), the eager
one's Triton form (``interpreted=True``) with the interpreter and without it; their
schemas are the written-out ones.
"""

from __future__ import annotations

import operator

import pytest
import torch
from _helpers import guard_tree
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Normal
from torch.utils._python_dispatch import TorchDispatchMode

from betavae_triton import BetaTCVAELoss, beta_tcvae_loss, kl_decomposition
from betavae_triton._dispatch import interpreter_enabled
from betavae_triton.tcvae.call import BACKWARD_SCHEMA, FORWARD_SCHEMA, PairwiseCall, PairwiseSaved

BACKENDS = pytest.mark.parametrize("backend", ["eager", "triton"])


def _inputs(batch=8, latent=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 6, generator=gen).round()
    p = torch.rand(batch, 6, generator=gen) * 0.9 + 0.05
    mu = torch.randn(batch, latent, generator=gen)
    sigma = torch.rand(batch, latent, generator=gen) + 0.3
    z = mu + sigma * torch.randn(batch, latent, generator=gen)
    return x, p, z, mu, sigma


@BACKENDS
@pytest.mark.parametrize("form", ["module", "functional"])
def test_weight_schedule_compiles_at_most_twice_without_graph_breaks(backend, form):
    """α, β as numbers and γ as a 0-d tensor, all changed every step for 6 steps."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    loss_fn = BetaTCVAELoss(dataset_size=100, backend=backend)

    def step(x, p, z, mu, sigma, alpha, beta, gamma):
        if form == "module":
            loss_fn.alpha, loss_fn.beta, loss_fn.gamma = alpha, beta, gamma
            return loss_fn(x, p, Normal(mu, sigma), z)["loss"]
        return beta_tcvae_loss(x, p, z, mu, sigma, alpha, beta, gamma, 100, backend=backend)[0]

    compiled = torch.compile(step, backend=counter, fullgraph=True)
    x, p, *latents = _inputs()
    for i in range(6):
        weights = (0.5 * i, 1.0 + i, torch.tensor(2.0 + i))
        leaves = [t.clone().requires_grad_() for t in latents]
        loss = compiled(x, p, *leaves, *weights)
        grads = torch.autograd.grad(loss, leaves)
        eager_leaves = [t.clone().requires_grad_() for t in latents]
        want = beta_tcvae_loss(x, p, *eager_leaves, *weights, 100, backend=backend)[0]
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
        for g, w in zip(grads, torch.autograd.grad(want, eager_leaves), strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert counter.frame_count <= 2


def _op_args(dtype=torch.float64, rows=slice(None), offset=0):
    _, _, z, mu, sigma = _inputs(7, 3, seed=1)
    z, mu, log_sigma = (t.to(dtype) for t in (z, mu, sigma.log()))
    return z[rows].contiguous(), mu, log_sigma, offset, 40, "mss"


def _opcheck_both(fwd, bwd):
    for rows, offset in ((slice(None), 0), (slice(3, 6), 3)):
        args = _op_args(rows=rows, offset=offset)
        leaves = tuple(t.clone().requires_grad_() for t in args[:3])
        torch.library.opcheck(fwd, (*leaves, *args[3:]))
        log_qz, log_prod, _ = fwd(*args)
        g = (torch.linspace(-1, 1, log_qz.numel()).double(), torch.ones_like(log_prod))
        g_terms = torch.tensor([1.0, 6.0, 2.0], dtype=torch.float64)
        torch.library.opcheck(bwd, (*args, log_qz, log_prod, *g, g_terms))
        torch.library.opcheck(bwd, (*args, log_qz, log_prod, None, None, g_terms))


def test_triton_operators_pass_opcheck():
    ops = torch.ops.betavae_triton
    _opcheck_both(ops.tc_log_densities.default, ops.tc_log_densities_backward.default)


@pytest.mark.parametrize("interpret", ["1", "0"])
def test_cpu_operators_pass_opcheck(monkeypatch, interpret):
    """The Triton backend's CPU form (``interpreted=True``): with the interpreter (the
    kernels) and without (the eager path inside the op)."""
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    assert interpreter_enabled() == (interpret == "1")
    ops = torch.ops.betavae_triton
    for rows, offset in ((slice(None), 0), (slice(3, 6), 3)):
        args = _op_args(rows=rows, offset=offset)
        leaves = tuple(t.clone().requires_grad_() for t in args[:3])
        torch.library.opcheck(ops.tc_log_densities_eager.default, (*leaves, *args[3:], True))
        log_qz, log_prod, _ = ops.tc_log_densities_eager(*args, True)
        g = (torch.linspace(-1, 1, log_qz.numel()).double(), torch.ones_like(log_prod))
        g_terms = torch.tensor([1.0, 6.0, 2.0], dtype=torch.float64)
        bwd = ops.tc_log_densities_eager_backward.default
        torch.library.opcheck(bwd, (*args, log_qz, log_prod, *g, g_terms, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_kernels_operators_pass_opcheck(dtype):
    """The C kernels' three operators (no autograd of their own: they run inside the
    eager backend's), over the whole batch and a rank's rows: schema, fake tensors and
    the dispatcher's checks; their schemas are tcvae/call.py's."""
    from betavae_triton.tcvae import cpu as _tcvae_cpu
    from betavae_triton.tcvae.call import C_BACKWARD_SCHEMA, C_FORWARD_SCHEMA, C_TERMS_SCHEMA
    from betavae_triton.tcvae.weights import estimator_weights

    built = _tcvae_cpu.kernels(dtype) is not None
    assert built, f"no C kernels here: {_tcvae_cpu.unavailable_reason(dtype)}"
    ops = torch.ops.betavae_triton
    for name, schema in (
        ("tc_log_densities_c", C_FORWARD_SCHEMA),
        ("tc_log_densities_c_backward", C_BACKWARD_SCHEMA),
        ("tc_terms_and_gradients_c", C_TERMS_SCHEMA),
    ):
        assert str(getattr(ops, name).default._schema) == f"betavae_triton::{name}{schema}"
    for rows, offset in ((slice(None), 0), (slice(3, 6), 3)):
        z, mu, log_sigma, offset, size, estimator = _op_args(dtype, rows, offset)
        args = (z, mu, log_sigma, offset, *estimator_weights(mu.shape[0], size, estimator))
        torch.library.opcheck(ops.tc_log_densities_c.default, args)
        torch.library.opcheck(ops.tc_terms_and_gradients_c.default, args)
        log_qz, log_prod, _ = ops.tc_log_densities_c(*args)
        g_terms = torch.tensor([1.0, 6.0, 2.0], dtype=dtype)
        saved = (log_qz, log_prod, None, None, g_terms)
        backward = ops.tc_log_densities_c_backward.default
        torch.library.opcheck(backward, (*args[:3], *saved, *args[3:]))


def test_the_operators_schemas_are_written_out_and_agree():
    """Both forms of each operator have the schema of tcvae/call.py, whose leading
    arguments are PairwiseCall's fields and the backward's next ones PairwiseSaved's."""
    ops = torch.ops.betavae_triton
    for name, schema in (
        ("tc_log_densities", FORWARD_SCHEMA),
        ("tc_log_densities_eager", FORWARD_SCHEMA),
        ("tc_log_densities_backward", BACKWARD_SCHEMA),
        ("tc_log_densities_eager_backward", BACKWARD_SCHEMA),
    ):
        op = getattr(ops, name).default
        assert str(op._schema) == f"betavae_triton::{name}{schema}"
        names = tuple(a.name for a in op._schema.arguments)
        assert names[:6] == PairwiseCall._fields
        if "backward" in name:
            assert names[6:11] == PairwiseSaved._fields


def test_eager_operators_pass_opcheck():
    ops = torch.ops.betavae_triton
    _opcheck_both(ops.tc_log_densities_eager.default, ops.tc_log_densities_eager_backward.default)


def _graph_targets(graph: torch.fx.GraphModule) -> list[str]:
    """The targets of every node of a dynamo graph, its subgraphs' included (an
    ``autograd.Function`` is a higher-order operator over a forward and a backward
    subgraph)."""
    return [
        str(node.target)
        for module in graph.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
    ]


def _c_kernels_built() -> bool:
    from betavae_triton.tcvae import cpu as _tcvae_cpu

    return _tcvae_cpu.kernels(torch.float32) is not None


@pytest.mark.parametrize("native", ["0", "1"])
def test_compiled_eager_path_keeps_the_walk_over_the_batch_out_of_the_graph(monkeypatch, native):
    """The eager backend's chunked walk (``BETAVAE_TRITON_NATIVE=0``) is one opaque
    operator in the compiled graph, not unrolled into it: at B = 40 and D = 13107 the walk
    takes chunks of 2 posteriors, 20 steps (2048 at B = 4096, D = 128), none of which is in
    the graph. With the C kernels built, the graph calls their operator instead, and not
    the eager operator."""
    from betavae_triton.tcvae import eager as _tcvae_eager

    monkeypatch.setenv("BETAVAE_TRITON_NATIVE", native)
    batch, latent = 40, 13107
    assert _tcvae_eager.chunk_size(batch, batch, latent) == 2
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    x, p, z, mu, sigma = _inputs(batch, latent)
    step = torch.compile(beta_tcvae_loss, backend=counter, fullgraph=True)
    step(x, p, z, mu, sigma, dataset_size=100, backend="eager")
    nodes = _graph_targets(counter.graphs[0])
    c_kernels = native == "1" and _c_kernels_built()
    assert sum("tc_log_densities_eager" in t for t in nodes) == (0 if c_kernels else 1), nodes
    c_nodes = [t for t in nodes if "tc_log_densities_c" in t]
    assert len(c_nodes) == (1 if c_kernels else 0), nodes  # (no gradient asked: forward)
    assert len(nodes) < 80, len(nodes)


# ---- how a call reaches the eager implementation ---------------------------------------


def _terms_and_grads(terms_fn, z, mu, sigma):
    leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
    mi, tc, dw_kl = terms_fn(*leaves)
    (1.5 * mi + 6.0 * tc + 0.5 * dw_kl).backward()
    return torch.stack((mi, tc, dw_kl)).detach(), [t.grad for t in leaves]


def _decomposition(z, mu, sigma):
    return kl_decomposition(z, mu, sigma, 100, backend="eager", validate_args=False)


def test_untraced_eager_calls_skip_the_dispatcher_and_traced_ones_keep_the_operator():
    """Run as it is, the eager backend applies the operator's implementation and backward
    without the dispatcher, from σ to the three terms in one autograd node
    (``_EagerTerms``): bit for bit the operator's values and gradients, and both the
    float64 oracle's. Traced (``make_fx``) or watched by a dispatch mode (a FLOP counter),
    the call is the operator, not the C kernels run behind their backs."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from betavae_triton.tcvae.call import PairwiseCall
    from betavae_triton.tcvae.ops import tc_log_densities_eager_call
    from reference.beta_tcvae import reference_beta_tcvae_terms

    _, _, z, mu, sigma = (t.double() for t in _inputs(12, 5, seed=3))
    mi, _, _ = _decomposition(*(t.clone().requires_grad_() for t in (z, mu, sigma)))
    assert type(mi.grad_fn).__name__ == "_EagerTermsBackward"

    def by_operator(z, mu, sigma):
        call = PairwiseCall(z, mu, sigma.log(), 0, 100, "mss")
        return torch.ops.betavae_triton.tc_log_densities_eager(*call)[2].unbind()

    direct, direct_grads = _terms_and_grads(_decomposition, z, mu, sigma)
    op, op_grads = _terms_and_grads(by_operator, z, mu, sigma)
    assert torch.equal(direct, op)
    for got, want in zip(direct_grads, op_grads, strict=True):
        assert torch.equal(got, want)
    oracle, oracle_grads = _terms_and_grads(
        lambda *t: reference_beta_tcvae_terms(*t, 100, "mss"), z, mu, sigma
    )
    torch.testing.assert_close(direct, oracle, rtol=1e-9, atol=1e-9)
    for got, want in zip(direct_grads, oracle_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)

    def traced(z, mu, log_sigma):
        return tc_log_densities_eager_call(PairwiseCall(z, mu, log_sigma, 0, 100, "mss"))[2]

    graph = make_fx(traced)(z, mu, sigma.log())
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert sum("tc_log_densities_eager" in t for t in targets) == 1, targets

    class Recorder(TorchDispatchMode):  # what a FLOP counter or a debug mode sees
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    seen: list[str] = []
    with Recorder():
        traced(z, mu, sigma.log())
    assert "betavae_triton.tc_log_densities_eager.default" in seen, seen


@pytest.mark.parametrize("grad", [True, False], ids=["step", "no_grad"])
@pytest.mark.parametrize("batch, latent", [(16, 4), (64, 6), (64, 16), (64, 520)])
def test_compiled_eager_backend_routes_each_call_to_its_cheapest_form(batch, latent, grad):
    """Inside ``torch.compile`` on the eager backend, where the C kernels are built: a step
    that differentiates the terms calls their forward with gradients
    (``tc_terms_and_gradients_c``) while B·D ≤ ``terms.GRADIENTS_AHEAD``, one operator
    forward and none backward, and their forward and backward operators beyond (64 × 520);
    a ``no_grad`` forward is the formula (fused by inductor) while B·B·D ≤ ``terms.FUSED``
    and B ≤ ``FUSED_BATCH`` (16 × 4), their forward operator beyond. Without them, the
    formula while B·B·D ≤ ``FUSED``, the eager operator beyond (64 × 520). Either way the
    oracle's values and gradients, and three outputs of their own, not views of one tensor
    (whose views AOTAutograd's runtime would regenerate at every call: some 40 µs of a
    450 µs step at B × D = 32 × 6 on the CPU)."""
    from betavae_triton.tcvae.terms import FUSED, FUSED_BATCH, GRADIENTS_AHEAD
    from reference.beta_tcvae import reference_beta_tcvae_terms

    assert 64 * 520 > GRADIENTS_AHEAD  # the case beyond it
    built = _c_kernels_built()
    small = batch * batch * latent <= FUSED
    if built and grad and batch * latent <= GRADIENTS_AHEAD:
        expected = {"tc_terms_and_gradients_c"}
    elif built and grad:
        expected = {"tc_log_densities_c", "tc_log_densities_c_backward"}
    elif built:
        expected = set() if small and batch <= FUSED_BATCH else {"tc_log_densities_c"}
    else:
        expected = set() if small else {"tc_log_densities_eager"}
    _, _, z, mu, sigma = _inputs(batch, latent, seed=4)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(_decomposition, backend=counter, fullgraph=True)
    if grad:
        got, got_grads = _terms_and_grads(compiled, z, mu, sigma)
    else:
        with torch.no_grad():
            got = torch.stack(compiled(z, mu, sigma))
    graph = counter.graphs[0].graph
    nodes = _graph_targets(counter.graphs[0])
    operators = {t.split(".")[1] for t in nodes if t.startswith("betavae_triton.")}
    assert operators == expected, nodes
    (returned,) = [n.args[0] for n in graph.nodes if n.op == "output"]
    assert not any(n.target is operator.getitem for n in returned), returned  # no views
    oracle, oracle_grads = _terms_and_grads(
        lambda *t: reference_beta_tcvae_terms(*(x.double() for x in t), 100, "mss"), z, mu, sigma
    )
    torch.testing.assert_close(got, oracle.float(), rtol=1e-5, atol=1e-5)
    if grad:
        for g, w in zip(got_grads, oracle_grads, strict=True):
            torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5)


def test_a_compiled_step_on_the_c_kernels_is_checked_and_routed_once_per_trace():
    """Inside ``torch.compile`` on the C kernels, a step's checks and route are two
    constants to dynamo (``terms._c_route``, ``terms._weights``): the compiled function's
    guards name them and none of the checks, the dispatch or the routing that a traced
    call reads, and they are half of what they were (316 guard entries at 32 × 16 before
    the plan, 125 with it; the compiled formula's: 72), and no object is reached by two
    names (each such pair a Python guard: one is left, torch's ``Tensor`` read by
    ``terms`` and by torch's own autograd.Function code). Each entry costs about 100 ns a
    call in a training step (``perf/RESULTS.md``, "an eighth pass", "a ninth pass")."""
    if not _c_kernels_built():
        pytest.fail("the C kernels are not built here: the plan serves them only")
    _, _, z, mu, sigma = _inputs(32, 16, seed=6)

    def step(z, mu, sigma):
        return kl_decomposition(z, mu, sigma, 100, validate_args=False)

    torch._dynamo.reset()
    _terms_and_grads(torch.compile(step, fullgraph=True), z, mu, sigma)
    guards = guard_tree(step)
    assert "_c_route" in guards and "_weights" in guards
    for traced in ("check_tcvae_inputs", "resolve_backend", "gradients_ahead", "_fused"):
        assert traced not in guards, traced
    assert guards.count("+-") <= 150, guards.count("+-")
    assert guards.count(" is G[") <= 1, [x for x in guards.splitlines() if " is G[" in x]


@pytest.mark.parametrize("estimator", ["mws", "mss", "mss-reference"])
def test_a_planned_step_recompiles_for_another_dataset_size_or_estimator(estimator):
    """The plan reads N and the estimator as constants: dynamo guards on both where the
    compiled function takes them as arguments (N made a plain int where it became
    symbolic), so that each new value is a new trace with its own weights, and every call
    is the oracle's."""
    from reference.beta_tcvae import reference_beta_tcvae_terms

    _, _, z, mu, sigma = _inputs(8, 3, seed=7)

    def step(z, mu, sigma, n, estimator):
        return kl_decomposition(z, mu, sigma, n, estimator, validate_args=False)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    for n in (10, 1000):
        for name in ("mss", estimator):

            def ours(*t, n=n, name=name):
                return compiled(*t, n, name)

            def oracle(*t, n=n, name=name):
                return reference_beta_tcvae_terms(*(x.double() for x in t), n, name)

            got, got_grads = _terms_and_grads(ours, z, mu, sigma)
            want, want_grads = _terms_and_grads(oracle, z, mu, sigma)
            torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
            for g, w in zip(got_grads, want_grads, strict=True):
                torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "bad, error",
    [
        ({"dataset_size": 4}, "smaller than the batch"),
        ({"estimator": "msx"}, "estimator must be one of"),
        ({"dataset_size": 2**63}, "below 2\\*\\*63"),
    ],
    ids=["dataset-smaller-than-the-batch", "unknown-estimator", "dataset-of-2-63"],
)
def test_a_compiled_call_the_plan_refuses_raises_the_checks_error(bad, error):
    """Arguments that the checks refuse are left to the traced path by the plan, which
    raises the checks' own error (a ValueError that says what is wrong), as in eager
    mode: never dynamo's wrapping of an error raised at trace time."""
    _, _, z, mu, sigma = _inputs(8, 3, seed=8)
    n, estimator = bad.get("dataset_size", 100), bad.get("estimator", "mss")

    def step(z, mu, sigma):
        return kl_decomposition(z, mu, sigma, n, estimator, validate_args=False)

    torch._dynamo.reset()
    leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
    with pytest.raises(ValueError, match=error):
        torch.compile(step)(*leaves)


def test_a_planned_step_with_dynamic_sizes_has_no_graph_break():
    """With symbolic sizes (``dynamic=True``) the plan takes the batch size as a plain
    int (as the C kernels' weights did before it): no graph break, a trace per batch
    size, and the oracle's values and gradients at each."""
    from reference.beta_tcvae import reference_beta_tcvae_terms

    def step(z, mu, sigma):
        return kl_decomposition(z, mu, sigma, 100, validate_args=False)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, backend=counter, dynamic=True, fullgraph=True)
    for batch in (6, 9, 12):
        _, _, z, mu, sigma = _inputs(batch, 3, seed=batch)
        got, got_grads = _terms_and_grads(compiled, z, mu, sigma)
        want, want_grads = _terms_and_grads(
            lambda *t: reference_beta_tcvae_terms(*(x.double() for x in t), 100, "mss"),
            z,
            mu,
            sigma,
        )
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5)
    assert counter.frame_count == 3


@pytest.mark.parametrize("batch, latent", [(16, 4), (64, 6)])
def test_a_step_the_plan_declines_takes_the_same_route_traced(batch, latent):
    """Posteriors that share one σ (broadcast, (1, D)) are left to the traced path by the
    plan (:func:`terms.planned_terms` takes one shape for z, μ and σ): a step that
    differentiates the terms still calls the C kernels' forward with gradients while
    B·D ≤ ``terms.GRADIENTS_AHEAD``, routed by the traced Python (its guards name it),
    with the oracle's values and gradients."""
    from reference.beta_tcvae import reference_beta_tcvae_terms

    if not _c_kernels_built():
        pytest.fail("the C kernels are not built here: the route is theirs")
    _, _, z, mu, sigma = _inputs(batch, latent, seed=9)
    shared = sigma[:1].clone()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(_decomposition, backend=counter, fullgraph=True)
    got, got_grads = _terms_and_grads(compiled, z, mu, shared)
    operators = {t.split(".")[1] for t in _graph_targets(counter.graphs[0]) if "betavae" in t}
    assert operators == {"tc_terms_and_gradients_c"}, operators
    assert "gradients_ahead" in guard_tree(_decomposition)

    def oracle(z, mu, sigma):
        sigma = sigma.expand_as(z)
        return reference_beta_tcvae_terms(*(x.double() for x in (z, mu, sigma)), 100, "mss")

    want, want_grads = _terms_and_grads(oracle, z, mu, shared)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch, latent", [(16, 4), (64, 520)])
def test_a_compiled_step_refuses_second_derivatives_by_name(batch, latent):
    """Inside ``torch.compile``, a second derivative of the terms (``create_graph=True``,
    then a gradient of a gradient) with respect to any of z, μ and σ raises AOTAutograd's
    error, which names the limit, on the C kernels' two routes (their forward with
    gradients at 16 × 4, their two operators at 64 × 520): never a missing or zero
    gradient. Eagerly, second derivatives are served (``test_autograd_modes.py``)."""
    _, _, z, mu, sigma = _inputs(batch, latent, seed=2)
    torch._dynamo.reset()
    compiled = torch.compile(_decomposition, fullgraph=True)
    for k in range(3):
        leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
        mi, tc, dw_kl = compiled(*leaves)
        (grad_z, *_) = torch.autograd.grad(mi + 6 * tc + dw_kl, leaves, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(grad_z.sum(), leaves[k], allow_unused=True)


def test_exported_programs_name_the_eager_operator_not_the_c_kernels():
    """``torch.export`` keeps the eager operator beyond the fused sizes, where
    ``torch.compile`` puts the C kernels' operators in its graph: an exported program
    names an operator every install has (the C kernels' need a compiler where it loads),
    and it still computes the oracle's terms."""
    from reference.beta_tcvae import reference_beta_tcvae_terms

    class Terms(torch.nn.Module):
        def forward(self, z, mu, sigma):
            return _decomposition(z, mu, sigma)

    _, _, z, mu, sigma = _inputs(64, 40, seed=5)
    exported = torch.export.export(Terms(), (z, mu, sigma))
    targets = [str(node.target) for node in exported.graph.nodes]
    assert any("tc_log_densities_eager" in t for t in targets), targets
    assert not any("tc_log_densities_c" in t for t in targets), targets
    got = torch.stack(exported.module()(z, mu, sigma))
    want = torch.stack(reference_beta_tcvae_terms(z.double(), mu.double(), sigma.double(), 100))
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
