"""β-TCVAE under ``torch.compile`` and ``torch.library.opcheck``.

The compiled loss has no graph break (``fullgraph=True``), weights that change every step
(numbers or 0-d tensors) compile at most twice, compiled values and gradients are the
eager ones; the two operators (``tc_log_densities`` and ``tc_log_densities_eager``, with
their backwards) pass ``opcheck`` (schema, fake tensors, autograd registration), the eager
one's Triton form (``interpreted=True``) with the interpreter and without it; their
schemas are the written-out ones.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Normal

from betavae_triton import BetaTCVAELoss, beta_tcvae_loss
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


def test_compiled_eager_path_keeps_the_walk_over_the_batch_out_of_the_graph():
    """The eager backend's chunked walk is one opaque operator in the compiled graph, not
    unrolled into it: at B = 40 and D = 13107 the walk takes chunks of 2 posteriors, 20
    steps (2048 at B = 4096, D = 128), none of which is in the graph."""
    from betavae_triton.tcvae import eager as _tcvae_eager

    batch, latent = 40, 13107
    assert _tcvae_eager.chunk_size(batch, batch, latent) == 2
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    x, p, z, mu, sigma = _inputs(batch, latent)
    step = torch.compile(beta_tcvae_loss, backend=counter, fullgraph=True)
    step(x, p, z, mu, sigma, dataset_size=100, backend="eager")
    graph = counter.graphs[0]
    nodes = [str(n.target) for n in graph.graph.nodes]
    assert sum("tc_log_densities_eager" in t for t in nodes) == 1, nodes
    assert len(nodes) < 80, len(nodes)
