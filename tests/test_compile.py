"""torch.compile, torch.export and torch.library.opcheck (the README's "torch.compile").

On a CPU the Triton backend runs under the interpreter inside an opaque custom operator;
on a GPU the same tests trace the kernels through ``triton_op``. GPU-only tests carry the
``gpu`` mark.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import guard_tree
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Bernoulli, Laplace, Normal

import betavae_triton.vae.ops  # noqa: F401  (registers the operators)
from betavae_triton import BetaVAELoss, CapacityBetaVAELoss, beta_vae_loss
from betavae_triton.vae.call import LOSS_FWD_SCHEMA, LossCall, LossOutputs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ("eager", "triton")
DISTS = ("normal", "laplace", "bernoulli")
WRAP = {"normal": Normal, "laplace": Laplace}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _batch(dist: str, batch: int = 4, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 6, 6, generator=gen, dtype=dtype)
    if dist == "bernoulli":
        x = x.round()
    h = torch.randn(batch, 1, 6, 6, generator=gen, dtype=dtype)
    mu = torch.randn(batch, 5, generator=gen, dtype=dtype)
    log_sigma = 0.3 * torch.randn(batch, 5, generator=gen, dtype=dtype)
    return [t.to(DEVICE) for t in (x, h, mu, log_sigma)]


def _step(loss_fn: BetaVAELoss, dist: str, as_distribution: bool):
    """A training step's loss: decoder and encoder heads turned into distributions."""

    def step(x, h, mu, log_sigma):
        mean = torch.sigmoid(h) if dist == "bernoulli" else h
        if not as_distribution:
            p = mean
        elif dist == "bernoulli":
            p = Bernoulli(probs=mean)
        else:
            p = WRAP[dist](mean, torch.ones_like(mean))
        out = loss_fn(x, p, Normal(mu, log_sigma.exp()))
        return out["loss"], out["rec_loss"], out["kl_loss"]

    return step


def _compiles_like_eager(step, x, *inputs) -> None:
    """``step(x, *inputs)`` has no graph break, and its fullgraph compile matches eager in
    every output and in the gradients of the first output w.r.t. ``inputs``."""
    explanation = torch._dynamo.explain(step)(x, *inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    leaves = [t.detach().requires_grad_() for t in inputs]
    got = torch.compile(step, fullgraph=True)(x, *leaves)
    want_leaves = [t.detach().requires_grad_() for t in inputs]
    want = step(x, *want_leaves)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    grads = torch.autograd.grad(got[0], leaves)
    for a, b in zip(grads, torch.autograd.grad(want[0], want_leaves), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_and_logvar_compile_without_breaks(backend):
    """Bernoulli(logits=...) through the module, and a log-variance posterior through the
    functional form, in one graph."""
    loss_fn = BetaVAELoss(4.0, backend=backend)

    def step(x, h, mu, log_var):
        out = loss_fn(x, Bernoulli(logits=h), Normal(mu, torch.exp(0.5 * log_var)))
        loss, rec, kl = beta_vae_loss(
            x, h, mu, log_var, 4.0, "bernoulli", backend, p_is_logits=True, q_is_logvar=True
        )
        return out["loss"] + loss, rec, kl

    _compiles_like_eager(step, *_batch("bernoulli"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_sample_losses_compile_without_breaks(backend):
    loss_fn = BetaVAELoss(4.0, "laplace", backend=backend, reduction="none", kl_per_dim=True)

    def step(x, h, mu, log_sigma):
        out = loss_fn(x, h, Normal(mu, log_sigma.exp()))
        weights = torch.arange(1.0, 5.0, device=DEVICE)
        return (out["loss"] * weights).sum(), out["rec_loss"], out["kl_per_dim"]

    _compiles_like_eager(step, *_batch("laplace"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_learned_decoder_scale_compiles_without_breaks(backend):
    loss_fn = BetaVAELoss(4.0, backend=backend, full_nll=True)

    def step(x, h, log_b, mu, log_sigma):
        out = loss_fn(x, Normal(h, log_b.exp()), Normal(mu, log_sigma.exp()))
        return out["loss"], out["rec_loss"]

    x, h, mu, log_sigma = _batch("normal")
    _compiles_like_eager(step, x, h, torch.zeros((), device=DEVICE), mu, log_sigma)


@pytest.mark.parametrize("backend", BACKENDS)
def test_capacity_anneals_inside_one_compiled_graph(backend):
    """The capacity's step counter advances on the device: five steps, one compile, and
    the compiled losses equal eager ones at the same capacities."""
    x, h, mu, log_sigma = _batch("normal")
    compiled_fn = CapacityBetaVAELoss(50.0, 0.0, 10.0, 4, backend=backend).to(DEVICE)
    eager_fn = CapacityBetaVAELoss(50.0, 0.0, 10.0, 4, backend=backend).to(DEVICE)

    def step(loss_fn, x, h, mu, log_sigma):
        out = loss_fn(x, h, Normal(mu, log_sigma.exp()))
        return out["loss"], out["capacity"]

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for i in range(5):
        got, capacity = compiled(compiled_fn, x, h, mu, log_sigma)
        want, want_capacity = step(eager_fn, x, h, mu, log_sigma)
        assert capacity.item() == want_capacity.item() == min(i, 4) * 2.5
        torch.testing.assert_close(got, want)
    assert counter.frame_count == 1
    assert compiled_fn.step.item() == 5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("as_distribution", [True, False])
def test_no_graph_breaks(backend, dist, as_distribution):
    step = _step(BetaVAELoss(4.0, dist, backend=backend), dist, as_distribution)
    explanation = torch._dynamo.explain(step)(*_batch(dist))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_batch_compiles_once(backend):
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(
        _step(BetaVAELoss(2.0, "normal", backend=backend), "normal", True),
        backend=counter,
        dynamic=True,
        fullgraph=True,
    )
    frames = []
    for batch in (3, 5, 8, 13, 21):
        leaves = [t.requires_grad_() for t in _batch("normal", batch, seed=batch)]
        loss, _, _ = step(*leaves)
        loss.backward()
        frames.append(counter.frame_count)
    # One compile, at the first batch size; none after. (Dynamo may also hand the backend
    # an empty graph for a helper frame: only graphs that hold operations count.)
    assert frames == [frames[0]] * 5
    assert sum(len(g.graph.nodes) > 0 for g in counter.graphs) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dist", DISTS)
def test_compiled_matches_eager(backend, dist):
    step = _step(BetaVAELoss(3.0, dist, backend=backend), dist, True)
    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = [t.requires_grad_() for t in _batch(dist, seed=1)]
        loss, rec, kl = fn(*leaves)
        grads = torch.autograd.grad(2 * loss + rec, leaves[1:])
        results.append((loss, rec, kl, *grads))
    for eager_t, compiled_t in zip(*results, strict=True):
        torch.testing.assert_close(compiled_t, eager_t, rtol=1e-5, atol=1e-6)


class TinyVAE(nn.Module):
    def __init__(self, pixels: int = 36, latent: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(pixels, 32), nn.ReLU(), nn.Linear(32, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, pixels))

    def forward(self, x):
        mu, log_sigma = self.encoder(x.flatten(1)).chunk(2, dim=1)
        z = mu + log_sigma.exp() * torch.randn_like(mu)
        probs = torch.sigmoid(self.decoder(z)).view_as(x)
        return Bernoulli(probs=probs), Normal(mu, log_sigma.exp())


# Reading the loss must not warn (``float()`` of a tensor that requires grad does).
@pytest.mark.filterwarnings("error:Converting a tensor with requires_grad:UserWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_optimizer_step_trains_a_vae(backend):
    torch.manual_seed(0)
    patterns = (torch.rand(4, 1, 6, 6) > 0.5).float()
    data = patterns.repeat(4, 1, 1, 1).to(DEVICE)  # four images to learn, four times each
    model = TinyVAE().to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = BetaVAELoss(1.0, "bernoulli", backend=backend)

    @torch.compile(fullgraph=True)
    def loss_of(x):
        p, q = model(x)
        return loss_fn(x, p, q)["loss"]

    @torch.compile  # PyTorch's optimizer step has graph breaks of its own
    def update():
        opt.step()

    losses = []
    for _ in range(40):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(data)
        loss.backward()
        update()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


# The operator's schema, as an exported program records it. Changing it is changing the
# operator: update this string on purpose (and the CHANGELOG), never by accident.
PINNED_LOSS_FWD_SCHEMA = (
    "(Tensor? x, Tensor? p, Tensor? q_loc, Tensor? q_scale, Tensor? p_scale, "
    "Tensor? beta_tensor, float beta, str dist, bool q_is_logvar, bool per_sample, "
    "bool kl_per_dim, bool need_grad_x, bool need_grad_p, bool need_grad_q, "
    "bool need_grad_p_scale, bool in_place_backward=False) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def test_loss_fwd_schema_is_written_out_and_stable():
    """Both forms of the operator have the pinned schema, whose arguments are LossCall's
    fields and whose results are LossOutputs' (a field added to the bundle without
    changing the schema fails here, not in a user's exported program)."""
    assert LOSS_FWD_SCHEMA == PINNED_LOSS_FWD_SCHEMA
    for op in (torch.ops.betavae_triton.loss_fwd, torch.ops.betavae_triton.loss_fwd_cpu):
        schema = op.default._schema
        assert str(schema).split("::", 1)[1] == op.default._opname + LOSS_FWD_SCHEMA
        assert tuple(a.name for a in schema.arguments) == LossCall._fields
        assert len(schema.returns) == len(LossOutputs._fields)


@pytest.mark.parametrize("dist", [*DISTS, "bernoulli_logits"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_opcheck(dist, dtype):
    x, h, mu, log_sigma = _batch(dist.removesuffix("_logits"), dtype=dtype)
    p = torch.sigmoid(h) if dist == "bernoulli" else h
    # The KL reads σ, or log σ² (q_logvar) for the logits case.
    q_logvar = dist == "bernoulli_logits"
    second = 2 * log_sigma if q_logvar else log_sigma.exp()
    args = (x, p.requires_grad_(), mu.requires_grad_(), second.detach().requires_grad_())
    # The decoder scale of the full likelihood: none, shared, per element.
    scales = [
        torch.full((), 0.7, dtype=dtype, device=DEVICE).requires_grad_(),
        (torch.rand_like(x) + 0.5).requires_grad_(),
    ]
    ops = [torch.ops.betavae_triton.loss_fwd.default]
    if DEVICE.type == "cpu":
        ops.append(torch.ops.betavae_triton.loss_fwd_cpu.default)
    for op in ops:
        for need in ((True, False, True), (True, True, True), (False, False, False)):
            need_grad_p, need_grad_x, need_grad_q = need
            # Inputs that require grad where the call writes their gradient (asking for
            # one it did not write raises: test_autograd_modes.py).
            wanted = (need_grad_x, need_grad_p, need_grad_q, need_grad_q)
            call_args = [t.detach().requires_grad_(w) for t, w in zip(args, wanted, strict=True)]
            for per_sample, kl_per_dim in ((False, False), (True, True)):
                call = LossCall(
                    *call_args,
                    p_scale=None,
                    beta_tensor=None,
                    beta=0.5,
                    dist=dist,
                    q_is_logvar=q_logvar,
                    per_sample=per_sample,
                    kl_per_dim=kl_per_dim,
                    need_grad_x=need_grad_x,
                    need_grad_p=need_grad_p,
                    need_grad_q=need_grad_q,
                    need_grad_p_scale=False,
                )
                torch.library.opcheck(op, tuple(call))
                if need_grad_q and per_sample:  # β as a 0-d tensor, with its gradient
                    beta = torch.tensor(0.5, dtype=dtype, device=DEVICE, requires_grad=True)
                    torch.library.opcheck(op, tuple(call._replace(beta_tensor=beta, beta=0.0)))
                if dist in ("normal", "laplace"):
                    for s in scales:
                        s = s.detach().requires_grad_(need_grad_p)
                        full = call._replace(p_scale=s, need_grad_p_scale=need_grad_p)
                        torch.library.opcheck(op, tuple(full))
    grads = torch.rand(50, dtype=dtype, device=DEVICE), torch.rand(10, dtype=dtype, device=DEVICE)
    g = torch.tensor(2.0, dtype=dtype, device=DEVICE)
    rescale = torch.ops.betavae_triton.rescale_grads_.default
    torch.library.opcheck(rescale, (*grads, g, None, g, None, 0.5))
    torch.library.opcheck(rescale, (*grads, g, None, g, g, 0.0))


class LossModule(nn.Module):
    def __init__(self, backend: str) -> None:
        super().__init__()
        self.loss_fn = BetaVAELoss(2.0, "normal", backend=backend)

    def forward(self, x, p, mu, sigma):
        out = self.loss_fn(x, p, Normal(mu, sigma, validate_args=False))
        return out["loss"], out["rec_loss"], out["kl_loss"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_runs(backend):
    x, h, mu, log_sigma = _batch("normal")
    args = (x, h, mu, log_sigma.exp())
    module = LossModule(backend)
    exported = torch.export.export(module, args)
    if backend == "triton":
        assert "betavae_triton" in str(exported.graph_module.code)
    for got, want in zip(exported.module()(*args), module(*args), strict=True):
        torch.testing.assert_close(got, want)


def test_functional_form_compiles_without_breaks():
    x, h, mu, log_sigma = _batch("normal")

    def f(x, h, mu, log_sigma):
        return beta_vae_loss(x, h, mu, log_sigma.exp(), 4.0, "normal", "triton")

    assert torch._dynamo.explain(f)(x, h, mu, log_sigma).graph_break_count == 0


@pytest.mark.parametrize("loss", ["beta_vae_loss", "kl_decomposition"])
def test_a_compiled_call_guards_on_no_environment_variable(loss):
    """The default backend (BETAVAE_TRITON_BACKEND) and the C kernels' switch are read once
    when a call is traced, as constants (_dispatch._backend_variable, cpu.kernels_ready):
    dynamo guards on no environment variable's value either way, and reading them inline
    put a dozen guards on os.environ's internals into every compiled call's checks."""
    from betavae_triton import kl_decomposition

    x, h, mu, log_sigma = _batch("normal", batch=6)

    def vae(x, h, mu, log_sigma):
        return beta_vae_loss(x, h, mu, log_sigma.exp(), 4.0, "normal")

    def tcvae(x, h, mu, log_sigma):
        return kl_decomposition(mu[:, :3] + 0.5, mu[:, :3], log_sigma[:, :3].exp(), 100)

    fn = vae if loss == "beta_vae_loss" else tcvae
    torch.compile(fn, dynamic=False)(x, h, mu, log_sigma)
    guards = guard_tree(fn)
    assert "TENSOR_MATCH" in guards  # the tree is the one this reads
    assert "environ" not in guards


@pytest.mark.gpu
@pytest.mark.parametrize("dist", DISTS)
def test_cuda_graphs_match_eager(dist):
    step = _step(BetaVAELoss(4.0, dist), dist, True)
    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    for seed in range(3):  # warm-up, record, replay
        leaves = [t.requires_grad_() for t in _batch(dist, 64, seed=seed)]
        loss, rec, kl = compiled(*leaves)
        grads = torch.autograd.grad(loss, leaves[1:])
        ref_leaves = [t.detach().requires_grad_() for t in leaves]
        ref = step(*ref_leaves)
        ref_grads = torch.autograd.grad(ref[0], ref_leaves[1:])
        for got, want in zip((loss, rec, kl, *grads), (*ref, *ref_grads), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---- schedules: a weight that changes every step compiles at most twice -----------------

BETA_FORMS = ("module_float", "module_tensor", "functional_float", "functional_tensor")
SCHEDULE = [0.0, 0.125, 0.5, 1.0, 1.75, 2.5, 4.0, 6.0]  # a KL warm-up's eight steps


def _beta(form: str, value: float):
    return torch.tensor(value, device=DEVICE) if form.endswith("tensor") else value


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", BETA_FORMS)
def test_beta_schedule_compiles_at_most_twice(backend, form):
    """β set every step (``loss_fn.beta = …`` or ``beta=…``), as a number or a 0-d tensor:
    a fullgraph compile of the step compiles at most twice over eight values (the first,
    static compile and one with β as an input), and every step's values and gradients
    equal eager's."""
    loss_fn = BetaVAELoss(0.0, "normal", backend=backend)

    def step(x, h, mu, log_sigma, beta):
        if form.startswith("module"):
            loss_fn.beta = beta
            out = loss_fn(x, h, Normal(mu, log_sigma.exp()))
            return out["loss"], out["rec_loss"], out["kl_loss"]
        return beta_vae_loss(x, h, mu, log_sigma.exp(), beta, "normal", backend)

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    x, h, mu, log_sigma = _batch("normal")
    for value in SCHEDULE:
        leaves = [t.detach().requires_grad_() for t in (h, mu, log_sigma)]
        got = compiled(x, *leaves, _beta(form, value))
        grads = torch.autograd.grad(got[0], leaves)
        want_leaves = [t.detach().requires_grad_() for t in (h, mu, log_sigma)]
        want = step(x, *want_leaves, _beta(form, value))
        want_grads = torch.autograd.grad(want[0], want_leaves)
        for a, b in zip((*got, *grads), (*want, *want_grads), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert counter.frame_count <= 2, counter.frame_count


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ("module_float", "module_tensor"))
def test_capacity_schedule_weights_compile_at_most_twice(backend, form):
    """CapacityBetaVAELoss's γ and capacity bounds changed every step, as numbers or 0-d
    tensors: at most two compiles, values equal eager's."""
    loss_fn = CapacityBetaVAELoss(gamma=10.0, c_min=0.0, c_max=5.0, n_steps=4, backend=backend)
    loss_fn = loss_fn.to(DEVICE)

    def step(x, h, mu, log_sigma):
        return loss_fn(x, h, Normal(mu, log_sigma.exp()))["loss"]

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    eager_fn = CapacityBetaVAELoss(gamma=10.0, c_min=0.0, c_max=5.0, n_steps=4, backend=backend)
    eager_fn = eager_fn.to(DEVICE)
    batch = _batch("normal")
    for i, value in enumerate(SCHEDULE):
        for fn in (loss_fn, eager_fn):
            fn.gamma = _beta(form, 10.0 + value)
            fn.c_max = _beta(form, 5.0 + value)
        got = compiled(*batch)
        want = eager_fn(batch[0], batch[1], Normal(batch[2], batch[3].exp()))["loss"]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"step {i}")
    assert counter.frame_count <= 2, counter.frame_count
