"""β-TCVAE through the public API (``beta_tcvae_loss``, ``BetaTCVAELoss``) on both backends
(the Triton kernels interpreted on CPU), against ``reference/beta_tcvae.py`` in float64.

Tolerances. The values are differences of log-densities (mi = log q(z|x) − log q(z), …)
that may cancel: a sample 16 000 σ from a posterior has log-densities near −1.3e8 whose
difference is 0.69, known to float64 only within ~1e-8. So a value's allowed error is
``rtol`` times the magnitude of what it is made of: 1 + |rec| + Σ|weights| · the batch
mean of Σ_d (|log N(z_id; μ_id, σ_id)| + |log N(z_id; 0, 1)|) (every pairwise
log-density of the log-sum-exps is within that of the largest one, up to log B). ``rtol``:
1e-12 in float64 (sums and log-sum-exps over ≤ 64 × 16 terms: summation order only),
2e-5 for float32 and 16-bit inputs (upcast to float32 before any arithmetic and compared
with the oracle on the same rounded inputs: float32 rounding, ~64 · 6e-8, twice). A
gradient's allowed error is ``rtol_grad`` of the largest absolute value of the reference's
gradient of that tensor (at least 1): 1e-9 float64, 1e-4 float32, 2⁻⁷ for a gradient
stored in bfloat16 or float16 (two roundings of 2⁻⁸ at most).
"""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Normal

from betavae_triton import (
    BetaTCVAELoss,
    BetaVAELoss,
    beta_tcvae_loss,
    beta_vae_loss,
    kl_normal_loss,
)
from reference import reference_reconstruction_loss
from reference.beta_tcvae import (
    ESTIMATORS,
    reference_beta_tcvae_loss,
    reference_beta_tcvae_terms,
)

BACKENDS = pytest.mark.parametrize("backend", ["eager", "triton"])
TERMS = ("mi", "tc", "dw_kl")


RTOL = {torch.float64: (1e-12, 1e-9), torch.float32: (2e-5, 1e-4)}
RTOL_16 = (2e-5, 2**-7)


def _close(got, want, rtol, magnitude=None):
    if magnitude is None:
        magnitude = max(1.0, float(want.detach().abs().max()))
    torch.testing.assert_close(got.double(), want.detach(), rtol=0, atol=rtol * magnitude)


def _magnitude(rec, z, mu, second, weights, logvar):
    """What the five values are made of (see the module docstring)."""
    z, mu, second = (t.detach().double() for t in (z, mu, second))
    sigma = (0.5 * second).exp() if logvar else second
    log_q = Normal(mu, sigma).log_prob(z).abs()
    log_p = Normal(0.0, 1.0).log_prob(z).abs()
    return (
        1 + abs(float(rec.detach())) + sum(map(abs, weights)) * float((log_q + log_p).sum(1).mean())
    )


def _latents(batch, latent, seed, dtype=torch.float64, log_var_range=2.0, logvar=False):
    """z, μ and σ (or log σ²): log σ² uniform in ±``log_var_range``, z drawn from q."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    log_var = torch.rand(batch, latent, generator=gen, dtype=torch.float64) * 2 - 1
    log_var = log_var * log_var_range
    z = mu + (0.5 * log_var).exp() * torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    second = log_var if logvar else (0.5 * log_var).exp()
    return [t.to(dtype) for t in (z, mu, second)]


def _images(batch, dist, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 2, 3, generator=gen, dtype=torch.float64)
    p = torch.rand(batch, 2, 3, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    if dist == "bernoulli":
        x = x.round()
    return x.to(dtype), p.to(dtype)


def _check_loss(x, p, z, mu, second, weights, n, dist, estimator, backend, **options):
    """Values of the five results and gradients of p, z, μ and σ against the oracle (with
    validation off: some weights are negative, to show each one's sign in the gradients)."""
    rtol_value, rtol_grad = RTOL.get(z.dtype, RTOL_16)
    logits, logvar = options.get("p_is_logits", False), options.get("q_is_logvar", False)
    leaves = [t.clone().requires_grad_() for t in (p, z, mu, second)]
    got = beta_tcvae_loss(
        x, leaves[0], *leaves[1:], *weights, n, dist, estimator, backend=backend,
        validate_args=False, **options,
    )  # fmt: skip
    ref_leaves = [t.detach().double().requires_grad_() for t in (p, z, mu, second)]
    want = reference_beta_tcvae_loss(
        x.double(), *ref_leaves, *weights, n, dist, estimator, logvar, logits
    )
    magnitude = _magnitude(want[1], z, mu, second, weights, logvar)
    for g, w in zip(got, want, strict=True):
        _close(g, w, rtol_value, magnitude)
    grads = torch.autograd.grad(got[0], leaves)
    ref_grads = torch.autograd.grad(want[0], ref_leaves)
    rtol_grad = max(rtol_grad, _softmax_rtol(z, mu, second, logvar))
    for leaf, g, w in zip(leaves, grads, ref_grads, strict=True):
        assert g.dtype == leaf.dtype
        _close(g, w, rtol_grad if leaf is not leaves[0] else RTOL.get(p.dtype, RTOL_16)[1])


def _softmax_rtol(z, mu, second, logvar):
    """The relative error that rounding alone puts into the gradients: they are weighted by
    softmaxes exp(S_ij − LSE_i) of the pairwise log-densities S (summed over d or not), and
    S rounded to the working precision (float32 below float64) is off by eps·|S|, which
    moves every weight by that much, relatively. At log-variances of ±12 |S| reaches 1e8,
    and eps·|S| exceeds float64's 1e-9 of RTOL: the oracle only agrees more closely with an
    implementation that rounds in its order."""
    eps = torch.finfo(torch.float64 if z.dtype == torch.float64 else torch.float32).eps
    z, mu, second = (t.detach().double() for t in (z, mu, second))
    sigma = (0.5 * second).exp() if logvar else second
    pair = Normal(mu[None, :, :], sigma[None, :, :]).log_prob(z[:, None, :])
    return 16 * eps * float(pair.sum(2).abs().max().clamp(min=pair.abs().max()))


@BACKENDS
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("dist", ["normal", "laplace", "bernoulli", "logits"])
def test_loss_and_gradients_match_the_reference(backend, estimator, dist):
    x, p = _images(9, "bernoulli" if dist == "logits" else dist, seed=3)
    options = {}
    if dist == "logits":
        dist, options["p_is_logits"] = "bernoulli", True
        p = torch.logit(p)
    z, mu, sigma = _latents(9, 4, seed=3)
    _check_loss(x, p, z, mu, sigma, (0.7, 6.0, -1.5), 120, dist, estimator, backend, **options)


@BACKENDS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lower_precision_inputs(backend, dtype):
    """Inputs read in their dtype, upcast to float32; the terms are float32 and each
    gradient has its input's dtype."""
    x, p = _images(12, "normal", seed=4, dtype=dtype)
    z, mu, sigma = _latents(12, 5, seed=4, dtype=dtype)
    _check_loss(x, p, z, mu, sigma, (1.0, 6.0, 1.0), 500, "normal", "mss", backend)
    terms = beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=500, dist="normal", backend=backend)
    assert [t.dtype for t in terms[2:]] == [torch.float32] * 3


@BACKENDS
@given(
    batch=st.integers(2, 64),
    latent=st.integers(1, 16),
    estimator=st.sampled_from(ESTIMATORS),
    logvar=st.booleans(),
    log_var_range=st.sampled_from([0.1, 2.0, 12.0]),
    ties=st.integers(0, 3),
    broadcast=st.booleans(),
    data=st.data(),
)
def test_terms_match_the_reference(
    backend, batch, latent, estimator, logvar, log_var_range, ties, broadcast, data
):
    """B from 2 to 64, D from 1 to 16, log-variances up to ±12, tied samples (a row copied
    onto others: ties in every log-sum-exp), a posterior shared by the batch; values and the
    gradients of z, μ and σ (or log σ²)."""
    seed = data.draw(st.integers(0, 2**16), label="seed")
    z, mu, second = _latents(batch, latent, seed, log_var_range=log_var_range, logvar=logvar)
    for _ in range(ties):
        i, j = data.draw(st.tuples(st.integers(0, batch - 1), st.integers(0, batch - 1)))
        z[j], mu[j], second[j] = z[i], mu[i], second[i]
    if broadcast:
        mu, second = mu[:1], second[:1]
    n = data.draw(st.integers(batch, 10 * batch), label="dataset_size")
    x, p = _images(batch, "normal", seed)
    _check_loss(
        x, p, z, mu, second, (0.7, 6.0, -1.5), n, "normal", estimator, backend,
        q_is_logvar=logvar,
    )  # fmt: skip


def _terms(z, mu, sigma, n, estimator, backend):
    x, p = _images(z.shape[0], "normal", 0)
    return torch.stack(
        beta_tcvae_loss(x, p, z, mu, sigma, 1.0, 1.0, 1.0, n, "normal", estimator, backend=backend)[
            2:
        ]
    )


@BACKENDS
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_terms_add_up_to_the_one_sample_kl_estimate(backend, estimator):
    """mi + tc + dw_kl is the batch mean of log q(z|x) − log p(z), whatever the estimator
    (the weights cancel), and its average over draws of z is the KL of q from N(0, 1)."""
    z, mu, sigma = _latents(16, 3, seed=5)
    total = _terms(z, mu, sigma, 100, estimator, backend).sum()
    q = Normal(mu, sigma)
    want = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(1).mean()
    torch.testing.assert_close(total, want, rtol=1e-12, atol=1e-12)
    if estimator != "mss":
        return  # the average over draws is the same sum again
    gen = torch.Generator().manual_seed(6)
    draws = torch.stack(
        [
            _terms(mu + sigma * torch.randn(mu.shape, generator=gen, dtype=mu.dtype),
                   mu, sigma, 100, estimator, backend).sum()
            for _ in range(64)
        ]
    )  # fmt: skip
    kl = kl_normal_loss(mu, sigma)
    assert abs(float(draws.mean() - kl)) < 5 * float(draws.std()) / math.sqrt(64)


@BACKENDS
def test_dataset_size_shifts_the_mws_terms_by_known_logs(backend):
    """With MWS, log q(z) moves by −log r and log Π q(z) by −D log r when N grows r times:
    mi by +log r, tc by (D − 1) log r, dw_kl by −D log r."""
    z, mu, sigma = _latents(10, 4, seed=7)
    small, large = (_terms(z, mu, sigma, n, "mws", backend) for n in (50, 5000))
    log_r = math.log(100)
    shift = torch.tensor([log_r, 3 * log_r, -4 * log_r], dtype=torch.float64)
    torch.testing.assert_close(large - small, shift, rtol=1e-12, atol=1e-10)


@BACKENDS
def test_stratified_weights_are_invariant_under_a_cyclic_shift_of_the_batch(backend):
    """The paper's MSS weights depend on j − i mod B: rolling the batch changes nothing,
    while the published matrix (column 0 special) does change."""
    z, mu, sigma = _latents(11, 3, seed=8)
    rolled = [t.roll(4, dims=0) for t in (z, mu, sigma)]
    torch.testing.assert_close(
        _terms(*rolled, 60, "mss", backend), _terms(z, mu, sigma, 60, "mss", backend),
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    moved = _terms(*rolled, 60, "mss-reference", backend)
    assert not torch.allclose(moved, _terms(z, mu, sigma, 60, "mss-reference", backend))


@BACKENDS
def test_identical_posteriors_carry_no_information(backend):
    """Every posterior the same: under MSS (each row of weights sums to 1) q(z) is that
    posterior, so mi = tc = 0 and dw_kl is the whole KL estimate; one latent: tc = 0."""
    z, mu, sigma = _latents(7, 3, seed=9)
    mu, sigma = mu[:1].expand(7, 3), sigma[:1].expand(7, 3)
    mi, tc, _ = _terms(z, mu, sigma, 40, "mss", backend)
    assert abs(float(mi)) < 1e-12 and abs(float(tc)) < 1e-12
    z, mu, sigma = _latents(7, 1, seed=10)
    for estimator in ESTIMATORS:
        assert abs(float(_terms(z, mu, sigma, 40, estimator, backend)[1])) < 1e-12


@BACKENDS
def test_module_outputs_and_weights(backend):
    """The module's six results; the plain KL is ``kl_normal_loss``; α, β, γ as 0-d tensors
    give the numbers' loss and leave the dtypes alone."""
    x, p = _images(8, "bernoulli", seed=11, dtype=torch.float32)
    z, mu, sigma = _latents(8, 4, seed=11, dtype=torch.float32)
    loss_fn = BetaTCVAELoss(
        0.5, 4.0, 2.0, dataset_size=80, default_dist="bernoulli", backend=backend
    )
    out = loss_fn(x, p, Normal(mu, sigma), z)
    assert sorted(out) == ["dw_kl_loss", "kl_loss", "loss", "mi_loss", "rec_loss", "tc_loss"]
    want = reference_beta_tcvae_loss(x, p, z, mu, sigma, 0.5, 4.0, 2.0, 80, "bernoulli", "mss")
    magnitude = _magnitude(want[1], z, mu, sigma, (0.5, 4.0, 2.0), False)
    for key, w in zip(("loss", "rec_loss", "mi_loss", "tc_loss", "dw_kl_loss"), want, strict=True):
        _close(out[key], w, RTOL[torch.float32][0], magnitude)
    torch.testing.assert_close(out["kl_loss"], kl_normal_loss(mu, sigma, backend))
    loss_fn.alpha, loss_fn.beta = torch.tensor(0.5, dtype=torch.float64), torch.tensor(4.0)
    loss_fn.gamma = torch.tensor(2.0)
    tensor_out = loss_fn(x, p, Normal(mu, sigma), z)
    assert tensor_out["loss"].dtype == torch.float32
    torch.testing.assert_close(tensor_out["loss"], out["loss"])
    assert "estimator='mss'" in repr(loss_fn) and "dataset_size=80" in repr(loss_fn)


def test_the_two_backends_agree_with_the_published_code_weights():
    """ "mss-reference" is the matrix of the authors' code: the oracle's, on both backends."""
    z, mu, sigma = _latents(6, 2, seed=12)
    want = torch.stack(reference_beta_tcvae_terms(z, mu, sigma, 30, "mss-reference"))
    for backend in ("eager", "triton"):
        torch.testing.assert_close(_terms(z, mu, sigma, 30, "mss-reference", backend), want)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(z=torch.randn(1, 3)), ValueError, "at least 2"),
        (dict(dataset_size=4), ValueError, "smaller than the batch"),
        (dict(z=torch.randn(5, 3, 1)), ValueError, r"shape \(B, D\)"),
        (dict(mu=torch.randn(5, 2)), ValueError, "does not broadcast"),
        (dict(sigma=torch.rand(4, 3) + 0.1), ValueError, "does not broadcast"),
        (dict(z=torch.randn(5, 1), sigma=torch.rand(5, 1) + 0.1), ValueError, "broadcast to z"),
        (dict(mu=torch.randn(2, 5, 3)), ValueError, "does not broadcast to z"),
        (dict(sigma=torch.zeros(5, 3)), ValueError, "must be positive"),
        (dict(estimator="mss2"), ValueError, "estimator"),
        (dict(dataset_size=None), TypeError, "dataset_size"),
        (dict(dataset_size=100.0), TypeError, "dataset_size"),
        (dict(dataset_size="100"), TypeError, "must be an integer"),
        (dict(z=torch.randint(0, 2, (5, 3))), TypeError, "floating-point"),
    ],
)
def test_bad_input_gets_a_clear_error(change, error, match):
    args = dict(
        z=torch.randn(5, 3), mu=torch.randn(5, 3), sigma=torch.rand(5, 3) + 0.1,
        dataset_size=100, estimator="mss",
    )  # fmt: skip
    args.update(change)
    x, p = _images(5, "bernoulli", 0, torch.float32)
    with pytest.raises(error, match=match):
        beta_tcvae_loss(
            x, p, args["z"], args["mu"], args["sigma"], dataset_size=args["dataset_size"],
            estimator=args["estimator"], validate_args=True,
        )  # fmt: skip


PROCESS_WIDE_DEFAULT = """
import torch
from betavae_triton import beta_tcvae_loss
z, mu, sigma = torch.randn(5, 3), torch.randn(5, 3), torch.zeros(5, 3)
x = p = torch.rand(5, 4)

def raises(**kw):
    try:
        beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=100, **kw)
    except ValueError as err:
        return "must be positive" in str(err)
    return False

print(raises(), end=" ")
torch.compile(lambda t: t + 1, backend="eager")(torch.ones(2))
print(raises(), raises(validate_args=True))
"""


def test_validation_follows_the_global_default_which_torch_compile_turns_off():
    """``validate_args=None`` follows ``Distribution``'s global default; the process's
    first ``torch.compile`` sets that default to False (``torch._dynamo``'s
    ``TorchPatcher``), so after it only ``validate_args=True`` still checks. In a fresh
    process: this suite's own compiles have long run."""
    done = subprocess.run(
        [sys.executable, "-c", PROCESS_WIDE_DEFAULT],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False", "True"]


def test_validation_off_lets_a_non_positive_scale_through():
    x, p = _images(5, "bernoulli", 0, torch.float32)
    z, mu = torch.randn(5, 3), torch.randn(5, 3)
    sigma = torch.rand(5, 3) + 0.1
    sigma[2, 1] = -1.0
    loss = beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=100, validate_args=False)[0]
    assert torch.isnan(loss)


def test_module_rejects_bad_options():
    with pytest.raises(TypeError, match="dataset_size"):
        BetaTCVAELoss()
    with pytest.raises(ValueError, match="estimator"):
        BetaTCVAELoss(dataset_size=10, estimator="MSS")


@BACKENDS
def test_default_decoder_distribution_is_the_beta_vaes(backend):
    """``BetaTCVAELoss`` and ``beta_tcvae_loss`` read a tensor p as ``BetaVAELoss`` and nidl
    do: the mean of a Normal (their default used to be "bernoulli", so that swapping one
    class for the other raised on Gaussian data and silently turned MSE into cross-entropy
    on [0, 1] data). Both data: the β-TCVAE's rec_loss is the β-VAE's, the float64 MSE."""
    assert BetaTCVAELoss(dataset_size=10).default_dist == BetaVAELoss().default_dist == "normal"
    dist_default = inspect.signature(beta_tcvae_loss).parameters["dist"].default
    assert dist_default == inspect.signature(beta_vae_loss).parameters["dist"].default
    z, mu, sigma = _latents(6, 3, seed=13)
    q = Normal(mu, sigma)
    gaussian = torch.randn(6, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for x, p in (_images(6, "bernoulli", seed=13), (gaussian, gaussian.flip(0))):
        want = reference_reconstruction_loss(p, x, "normal")
        tcvae = BetaTCVAELoss(dataset_size=60, backend=backend)(x, p, q, z)["rec_loss"]
        vae = BetaVAELoss(backend=backend)(x, p, q)["rec_loss"]
        functional = beta_tcvae_loss(x, p, z, mu, sigma, dataset_size=60, backend=backend)[1]
        for got in (tcvae, vae, functional):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
