"""Bad input gets a clear error, and the same one on every path (issue 24, items 6 to 8).

Every path that reads a posterior scale σ (``beta_vae_loss``, ``kl_normal_loss``,
``capacity_beta_vae_loss``, ``beta_tcvae_loss``, ``kl_decomposition`` and the modules)
raises the same ``ValueError`` for σ ≤ 0 with validation on; every loss weight (β; α, γ;
the capacity C and its γ) is refused when it is negative or NaN (with validation on) and
when it is no number at all (always); ``dataset_size`` is any integral number below
2**63 (issue 31); the dataset size is compared with the *global* batch; a posterior that
broadcasts with z but not to z's shape is refused by name. Without validation the values
go through and give what the formulas give (NaN, inf, a negative weight's loss).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import DEVICE
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Normal

import betavae_triton.functional as functional_module
from betavae_triton import (
    BetaTCVAELoss,
    BetaVAELoss,
    CapacityBetaVAELoss,
    beta_tcvae_loss,
    beta_vae_loss,
    capacity_beta_vae_loss,
    kl_decomposition,
    kl_normal_loss,
)
from betavae_triton._checks import check_tcvae_inputs
from reference import reference_beta_tcvae_loss

BACKENDS = pytest.mark.parametrize("backend", ["eager", "triton"])
SCALE_ERROR = "q.scale must be positive"
N = 100


def _inputs(batch: int = 5, latent: int = 3, seed: int = 0):
    """x, p (normal data), z, μ, σ: float32 on the test device, σ in [0.3, 1.3)."""
    gen = torch.Generator().manual_seed(seed)
    x, p = torch.randn(batch, 4, generator=gen), torch.randn(batch, 4, generator=gen)
    mu = torch.randn(batch, latent, generator=gen)
    sigma = torch.rand(batch, latent, generator=gen) + 0.3
    z = mu + sigma * torch.randn(batch, latent, generator=gen)
    return [t.to(DEVICE) for t in (x, p, z, mu, sigma)]


def _scale_paths(backend: str, validate_args: bool | None):
    """Every public call that reads σ, as ``f(x, p, z, mu, sigma)``."""
    v = validate_args

    def module_q(mu, sigma):  # the Normal itself does not validate: the loss must
        return Normal(mu, sigma, validate_args=False)

    return {
        "beta_vae_loss": lambda x, p, z, mu, s: beta_vae_loss(
            x, p, mu, s, backend=backend, validate_args=v
        ),
        "kl_normal_loss": lambda x, p, z, mu, s: kl_normal_loss(mu, s, backend, validate_args=v),
        "capacity_beta_vae_loss": lambda x, p, z, mu, s: capacity_beta_vae_loss(
            x, p, mu, s, 5.0, backend=backend, validate_args=v
        ),
        "BetaVAELoss": lambda x, p, z, mu, s: BetaVAELoss(backend=backend, validate_args=v)(
            x, p, module_q(mu, s)
        ),
        "BetaVAELoss.kl_normal_loss": lambda x, p, z, mu, s: BetaVAELoss(
            backend=backend, validate_args=v
        ).kl_normal_loss(module_q(mu, s)),
        "CapacityBetaVAELoss": lambda x, p, z, mu, s: CapacityBetaVAELoss(
            backend=backend, validate_args=v
        ).to(DEVICE)(x, p, module_q(mu, s)),
        "beta_tcvae_loss": lambda x, p, z, mu, s: beta_tcvae_loss(
            x, p, z, mu, s, dataset_size=N, backend=backend, validate_args=v
        ),
        "kl_decomposition": lambda x, p, z, mu, s: kl_decomposition(
            z, mu, s, N, backend=backend, validate_args=v
        ),
        "BetaTCVAELoss": lambda x, p, z, mu, s: BetaTCVAELoss(
            dataset_size=N, backend=backend, validate_args=v
        )(x, p, module_q(mu, s), z),
    }


# ---- σ ≤ 0: the same ValueError on every path (item 6) -----------------------------------


@BACKENDS
@pytest.mark.parametrize("bad", ["negative", "zero"])
def test_non_positive_scale_is_the_same_error_on_every_path(backend, bad):
    """``beta_vae_loss(x, p, mu, -sigma)`` used to return NaN and σ = 0 inf, where
    β-TCVAE raised: now every path raises β-TCVAE's error."""
    x, p, z, mu, sigma = _inputs()
    sigma = -sigma if bad == "negative" else sigma.clone().fill_diagonal_(0.0)
    for name, call in _scale_paths(backend, validate_args=True).items():
        with pytest.raises(ValueError, match=SCALE_ERROR):
            call(x, p, z, mu, sigma)
            pytest.fail(f"{name} accepted a σ ≤ 0")


@BACKENDS
def test_without_validation_a_non_positive_scale_gives_the_formulas_value(backend):
    """Validation off: −σ gives NaN (log of a negative number), σ = 0 gives inf, as the
    float64 formulas do; no error."""
    x, p, z, mu, sigma = _inputs()
    loss, _, kl = beta_vae_loss(x, p, mu, -sigma, backend=backend, validate_args=False)
    assert kl.isnan() and loss.isnan()
    zero = sigma.clone()
    zero[0, 0] = 0.0
    _, _, kl = beta_vae_loss(x, p, mu, zero, backend=backend, validate_args=False)
    assert kl.isinf() and kl > 0
    for name, call in _scale_paths(backend, validate_args=False).items():
        out = call(x, p, z, mu, -sigma)
        value = out["loss"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out
        assert not bool(value.isfinite()), name


@BACKENDS
def test_a_negative_log_variance_is_no_bad_scale(backend):
    """With ``q_is_logvar`` the second tensor is log σ²: any real number, not checked."""
    x, p, z, mu, sigma = _inputs()
    logvar = -(sigma.log() * 2).abs() - 0.1  # every value negative
    values = beta_vae_loss(x, p, mu, logvar, backend=backend, q_is_logvar=True, validate_args=True)
    assert all(bool(v.isfinite()) for v in values)
    kl = kl_normal_loss(mu, logvar, backend, q_is_logvar=True, validate_args=True)
    assert bool(kl.isfinite())
    terms = kl_decomposition(
        z, mu, logvar, N, q_is_logvar=True, backend=backend, validate_args=True
    )
    assert all(bool(t.isfinite()) for t in terms)


# ---- loss weights (item 6) ------------------------------------------------------------------


def _weight_paths(value, validate_args: bool | None):
    """Every public way of passing a loss weight, with ``value`` as that weight (the
    modules built inside the call: a weight of a bad type is refused at construction)."""
    x, p, z, mu, sigma = _inputs()
    v = validate_args
    q = Normal(mu, sigma)

    def module(make, *extra):
        return lambda: make().to(DEVICE)(x, p, q, *extra)

    def tcvae_module(name):
        return module(lambda: BetaTCVAELoss(dataset_size=N, validate_args=v, **{name: value}), z)

    def tcvae_functional(name):
        return lambda: beta_tcvae_loss(
            x, p, z, mu, sigma, dataset_size=N, validate_args=v, **{name: value}
        )

    return {
        "beta_vae_loss beta": lambda: beta_vae_loss(x, p, mu, sigma, value, validate_args=v),
        "BetaVAELoss beta": module(lambda: BetaVAELoss(value, validate_args=v)),
        "capacity": lambda: capacity_beta_vae_loss(x, p, mu, sigma, value, validate_args=v),
        "capacity gamma": lambda: capacity_beta_vae_loss(
            x, p, mu, sigma, 1.0, value, validate_args=v
        ),
        "CapacityBetaVAELoss gamma": module(lambda: _capacity(v, gamma=value)),
        "CapacityBetaVAELoss c_max": module(lambda: _capacity(v, c_max=value)),
        "CapacityBetaVAELoss c_min": module(lambda: _capacity(v, c_min=value)),
        **{f"beta_tcvae_loss {n}": tcvae_functional(n) for n in ("alpha", "beta", "gamma")},
        **{f"BetaTCVAELoss {n}": tcvae_module(n) for n in ("alpha", "beta", "gamma")},
    }


def _capacity(validate_args, **weights) -> CapacityBetaVAELoss:
    """A CapacityBetaVAELoss whose weights are set after construction (as a schedule does:
    the construction's own check of γ is not what is tested)."""
    loss_fn = CapacityBetaVAELoss(validate_args=validate_args)
    for name, value in weights.items():
        setattr(loss_fn, name, value)
    return loss_fn


BAD_WEIGHTS = {
    "negative": -0.5,
    "nan": math.nan,
    "negative int": -1,
    "negative numpy": np.float32(-2.0),
    "negative cpu tensor": torch.tensor(-0.5),
    "nan cpu tensor": torch.tensor(math.nan, dtype=torch.float64),
}


@pytest.mark.parametrize("bad", sorted(BAD_WEIGHTS))
def test_negative_or_nan_weights_are_refused_with_validation(bad):
    """Numbers are checked in Python; 0-d tensors when they are on the CPU (reading one
    costs no host sync; a weight on a GPU is not read)."""
    for name, call in _weight_paths(BAD_WEIGHTS[bad], validate_args=True).items():
        with pytest.raises(ValueError, match="non-negative weight"):
            call()
            pytest.fail(f"{name} accepted {bad}")


def test_without_validation_a_negative_weight_weighs_as_a_number():
    """Validation off: β = −0.5 is the formula's loss, rec − 0.5·kl."""
    x, p, _, mu, sigma = _inputs()
    loss, rec, kl = beta_vae_loss(x, p, mu, sigma, -0.5, validate_args=False)
    torch.testing.assert_close(loss, rec - 0.5 * kl)
    for name, call in _weight_paths(-0.5, validate_args=False).items():
        out = call()
        value = out["loss"] if isinstance(out, dict) else out[0]
        assert bool(value.isfinite()), name


@pytest.mark.parametrize("weight", ["4", None, True, [4.0], torch.ones(2)])
def test_a_weight_of_another_type_names_the_accepted_types(weight):
    """``beta="4"`` used to raise an unrelated TypeError from deep inside; now every path
    says which types a weight may have, a module at construction (a tensor of two
    elements: a ValueError saying the same)."""
    error = ValueError if isinstance(weight, torch.Tensor) else TypeError
    for name, call in _weight_paths(weight, validate_args=False).items():
        with pytest.raises(error, match=r"real number \(int, float, a NumPy number\) or a one"):
            call()
            pytest.fail(f"{name} accepted {weight!r}")
    with pytest.raises(error, match="real number"):
        CapacityBetaVAELoss(gamma=weight)


@pytest.mark.parametrize("value", [0, 0.0, 2, np.float32(1.5), np.int64(3), 1e30])
def test_good_weights_pass_validation(value):
    for name, call in _weight_paths(value, validate_args=True).items():
        out = call()
        assert isinstance(out, dict | tuple), name


@pytest.mark.parametrize("form", ["float", "tensor"])
def test_validated_weights_compile_without_breaks_or_recompiles(form):
    """``validate_args=True`` under ``torch.compile(fullgraph=True)``: the weights' values
    are not read there (a number that dynamo makes an input would be specialised on, a
    tensor would need a sync), so a schedule of eight values over β-TCVAE and β-VAE
    compiles at most twice, with no graph break, and equals eager mode's loss."""
    x, p, z, mu, sigma = _inputs()

    def step(x, p, z, mu, sigma, alpha, beta, gamma):
        out = beta_tcvae_loss(
            x, p, z, mu, sigma, alpha, beta, gamma, N, backend="eager", validate_args=True
        )
        return out[0] + beta_vae_loss(x, p, mu, sigma, beta, validate_args=True)[0]

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for i in range(8):
        weights = [0.5 * i, 1.0 + i, 2.0 + 0.25 * i]
        if form == "tensor":
            weights = [torch.tensor(w) for w in weights]
        torch.testing.assert_close(
            compiled(x, p, z, mu, sigma, *weights), step(x, p, z, mu, sigma, *weights)
        )
    assert counter.frame_count <= 2, counter.frame_count
    torch._dynamo.reset()


# ---- dataset_size: any integral number (item 6) --------------------------------------------


@pytest.mark.parametrize("size", [np.int64(60), np.int32(60), torch.tensor(60)])
def test_dataset_size_is_any_integral_number(size):
    """``dataset_size=np.int64(60000)`` used to be refused; ``operator.index`` accepts
    every integral type, with the int's result."""
    x, p, z, mu, sigma = _inputs()
    want = beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=60)
    for got in (
        beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=size),
        tuple(BetaTCVAELoss(dataset_size=size)(x, p, Normal(mu, sigma), z).values())[:5],
    ):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert type(BetaTCVAELoss(dataset_size=size).dataset_size) is int
    assert len(kl_decomposition(z, mu, sigma, size)) == 3


@pytest.mark.parametrize("size", [60.0, "60", True, np.float64(60.0)])
def test_a_dataset_size_that_is_no_integer_is_a_type_error(size):
    x, p, z, mu, sigma = _inputs()
    with pytest.raises(TypeError, match="dataset_size must be an integer"):
        beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=size)
    with pytest.raises(TypeError, match="dataset_size must be an integer"):
        BetaTCVAELoss(dataset_size=size)


@pytest.mark.parametrize("size", [2**63, 10**20, np.uint64(2**63)])
def test_a_dataset_size_beyond_64_bits_is_a_value_error(size):
    """``dataset_size=10**20`` used to pass the checks and then fail in the operator with
    "Expected a value of type 'int' … found type 'int'"; it is refused by name on every
    path, and the largest 64-bit size still goes through."""
    x, p, z, mu, sigma = _inputs()
    for call in (
        lambda: beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=size),
        lambda: kl_decomposition(z, mu, sigma, size),
        lambda: BetaTCVAELoss(dataset_size=size),
    ):
        with pytest.raises(ValueError, match=r"dataset_size must be below 2\*\*63"):
            call()
    largest = beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=2**63 - 1)
    assert all(torch.isfinite(t).all() for t in largest)


def test_a_changing_dataset_size_compiles_at_most_twice():
    """An int N that changes between calls of a compiled step is a symbolic int there:
    accepting any integral type must not specialise it (``operator.index`` would)."""
    x, p, z, mu, sigma = _inputs()

    def step(x, p, z, mu, sigma, n):
        return beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=n, validate_args=True)[0]

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for n in (100, 200, 300, 400):
        torch.testing.assert_close(compiled(x, p, z, mu, sigma, n), step(x, p, z, mu, sigma, n))
    assert counter.frame_count <= 2, counter.frame_count
    torch._dynamo.reset()


# ---- the global batch (item 7) -------------------------------------------------------------


def test_dataset_size_is_compared_with_the_global_batch(monkeypatch):
    """With ``world_size`` ranks of B samples each, N must hold the global batch: an N
    between the local batch (5) and the global one (10) is refused, on the public path
    (the rank and world size as ``gather=True`` reads them) and in the check itself."""
    _, _, z, mu, sigma = _inputs()
    with pytest.raises(ValueError, match=r"dataset_size \(7\) is smaller than the batch \(10\)"):
        check_tcvae_inputs(z, mu, sigma, 7, "mss", False, True, world_size=2)
    assert check_tcvae_inputs(z, mu, sigma, 10, "mss", False, True, world_size=2) == 10
    monkeypatch.setattr(functional_module, "world", lambda gather, group: (1, 2))
    x, p = _inputs()[:2]
    for call in (
        lambda: beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=7, gather=True),
        lambda: kl_decomposition(z, mu, sigma, 7, gather=True),
        lambda: BetaTCVAELoss(dataset_size=7, gather=True)(x, p, Normal(mu, sigma), z),
    ):
        with pytest.raises(ValueError, match=r"smaller than the batch \(10\)"):
            call()


def test_the_minimum_batch_counts_the_global_batch_under_gather(monkeypatch):
    """Two ranks of one sample each hold a global batch of 2, enough for the estimators:
    the check passes it (and refuses the same batch of 1 on one process), and the public
    path gets past the check to the all-gather, which asks for a process group."""
    _, _, z, mu, sigma = _inputs()
    one = (z[:1], mu[:1], sigma[:1])
    assert check_tcvae_inputs(*one, 10, "mss", False, True, world_size=2) == 10
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        check_tcvae_inputs(*one, 10, "mss", False, True, world_size=1)
    monkeypatch.setattr(functional_module, "world", lambda gather, group: (1, 2))
    with pytest.raises(RuntimeError, match="init_process_group"):
        kl_decomposition(*one, 10, gather=True)


@BACKENDS
def test_beta_tcvae_reconstruction_honours_validate_args(backend, restore_validation):
    """The reconstruction term follows the call's ``validate_args``, not the global default:
    a Bernoulli target outside [0, 1] raises when asked to validate and gives NaN when
    asked not to, whichever way torch.distributions' default points."""
    x, p, z, mu, sigma = _inputs()
    x = x.abs().clamp(max=1.0)
    x[0, 0] = 1.5
    p = torch.sigmoid(p)
    args = (x, p, z, mu, sigma, 1.0, 6.0, 1.0, N, "bernoulli")
    torch.distributions.Distribution.set_default_validate_args(True)
    rec = beta_tcvae_loss(*args, backend=backend, validate_args=False)[1]
    assert torch.isnan(rec)
    torch.distributions.Distribution.set_default_validate_args(False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        beta_tcvae_loss(*args, backend=backend, validate_args=True)


# ---- a posterior that broadcasts with z, not to it (item 8) ---------------------------------


@pytest.mark.parametrize(
    ("z_shape", "mu_shape", "sigma_shape"),
    [
        ((5, 1), (5, 3), (5, 1)),  # μ widens z's latent dimension
        ((5, 1), (5, 1), (5, 3)),  # σ does
        ((5, 3), (2, 5, 3), (5, 3)),  # μ adds a leading dimension
        ((5, 3), (5, 3), (2, 1, 3)),  # σ does
    ],
)
def test_a_posterior_that_broadcasts_with_z_but_not_to_z_is_named(z_shape, mu_shape, sigma_shape):
    """Such a μ or σ used to reach a raw ``expand_as`` RuntimeError; every path now names
    it: "… does not broadcast to z"."""
    gen = torch.Generator().manual_seed(3)
    z, mu = torch.randn(z_shape, generator=gen), torch.randn(mu_shape, generator=gen)
    sigma = torch.rand(sigma_shape, generator=gen) + 0.5
    x, p = _inputs()[:2]
    for call in (
        lambda: beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=N),
        lambda: kl_decomposition(z, mu, sigma, N),
        lambda: BetaTCVAELoss(dataset_size=N)(x, p, Normal(mu, sigma), z),
    ):
        with pytest.raises(ValueError, match=r"does not broadcast to z \(5, [13]\)"):
            call()


def test_the_reference_agrees_that_good_inputs_pass():
    """The inputs the tests above spoil are good ones: the loss matches the float64 oracle
    on them (so that each error above comes from the spoiled argument alone)."""
    x, p, z, mu, sigma = (t.double() for t in _inputs())
    got = beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=N, validate_args=True)
    want = reference_beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=N, dist="normal")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
