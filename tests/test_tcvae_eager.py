"""β-TCVAE's minibatch terms against the B×B×D float64 oracle, on each implementation:
the eager backend's C kernels on the CPU (``betavae_triton/tcvae/minibatch.c``) and its
chunked torch ops (``betavae_triton/tcvae/eager.py``: where no C compiler works, and on
other devices), and the Triton operators (``kernels/total_correlation.py``, interpreted on
CPU); values and gradients, every estimator, any chunk size, a rank's share of a gathered
batch, and the memory bound that is the point of the algorithm."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from betavae_triton.tcvae import cpu as _tcvae_cpu
from betavae_triton.tcvae import eager as _tcvae_eager
from betavae_triton.tcvae import terms as _tcvae
from reference.beta_tcvae import ESTIMATORS, reference_beta_tcvae_terms, reference_log_densities


def _inputs(batch, latent, seed, logvar=False, spread=1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    log_sigma = (torch.rand(batch, latent, generator=gen, dtype=torch.float64) * 2 - 1.5) * spread
    z = mu + log_sigma.exp() * torch.randn(batch, latent, generator=gen, dtype=torch.float64)
    second = 2 * log_sigma if logvar else log_sigma.exp()
    return [t.to(dtype) for t in (z, mu, second)]


@pytest.fixture(params=["eager", "eager-torch", "triton"])
def kernels(request, monkeypatch):
    """The implementation under test: ``"eager"`` (the eager backend on the CPU: its C
    kernels), ``"eager-torch"`` (the same backend with the C kernels switched off: the
    chunked torch algorithm), ``"triton"`` (the Triton operators, interpreted). True for
    the Triton operators, as the tests' ``kernels`` flag."""
    if request.param == "eager-torch":
        monkeypatch.setenv(_tcvae_cpu.ENV_SWITCH, "0")
    return request.param == "triton"


# Every test that takes ``kernels`` runs on the three implementations (the fixture's params).
PATHS = pytest.mark.usefixtures("kernels")


def _terms(z, mu, second, n, estimator, logvar=False, kernels=False):
    """``(mi, tc, dw_kl)`` on the eager backend or the Triton operators."""
    backend = "triton" if kernels else "eager"
    return _tcvae.minibatch_terms(z, mu, second, n, estimator, logvar, backend)


def _check(z, mu, second, n, estimator, logvar, rtol, atol, kernels=False):
    """The terms and their gradients against the oracle's."""
    leaves = [t.clone().requires_grad_() for t in (z, mu, second)]
    terms = _terms(*leaves, n, estimator, logvar, kernels)
    ref_leaves = [t.detach().double().requires_grad_() for t in (z, mu, second)]
    ref = reference_beta_tcvae_terms(*ref_leaves, n, estimator, logvar)
    weights = (0.7, 6.0, -1.5)  # α, β, γ-like weights of mi, tc, dw_kl
    for got, want in zip(terms, ref, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)
    grads = torch.autograd.grad(sum(w * t for w, t in zip(weights, terms, strict=True)), leaves)
    ref_grads = torch.autograd.grad(
        sum(w * t for w, t in zip(weights, ref, strict=True)), ref_leaves
    )
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == z.dtype
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)


@PATHS
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # set once per test
@given(
    batch=st.integers(2, 24),
    latent=st.integers(1, 8),
    estimator=st.sampled_from(ESTIMATORS),
    logvar=st.booleans(),
    spread=st.sampled_from([0.1, 1.0, 4.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_the_oracle_in_float64(kernels, batch, latent, estimator, logvar, spread, seed):
    """Values and the gradients w.r.t. z, μ and σ (or log σ²); log-variances up to ±12."""
    z, mu, second = _inputs(batch, latent, seed, logvar, spread)
    _check(z, mu, second, 10_000, estimator, logvar, 1e-9, 1e-9, kernels)


@given(
    batch=st.integers(2, 24),
    latent=st.integers(1, 8),
    estimator=st.sampled_from(ESTIMATORS),
    chunk=st.sampled_from([1, 3, 7, 64]),
    spread=st.sampled_from([0.1, 1.0, 4.0]),
    seed=st.integers(0, 2**16),
)
def test_the_chunked_algorithm_matches_the_oracle_in_any_chunks(
    batch, latent, estimator, chunk, spread, seed
):
    """The chunked torch algorithm (``tcvae/eager.py``) called with a chunk of its caller's
    choosing (1 posterior, 3, 7, more than the batch): log q(z_i), log q(z_id) and their
    gradients w.r.t. z, μ and log σ for incoming gradients of both signs, against the
    oracle's (the public path takes the default chunk: :func:`chunk_size`)."""
    z, mu, sigma = _inputs(batch, latent, seed, spread=spread)
    log_sigma = sigma.log()
    options = (0, 10_000, estimator)
    values = _tcvae_eager.log_densities_fwd(z, mu, log_sigma, *options, chunk=chunk)
    incoming = (
        torch.linspace(-1.0, 2.0, batch, dtype=z.dtype),
        torch.linspace(1.5, -0.5, batch * latent, dtype=z.dtype).view(batch, latent),
    )
    grads = _tcvae_eager.log_densities_bwd(
        z, mu, log_sigma, *values, *incoming, *options, chunk=chunk
    )
    leaves = [t.clone().requires_grad_() for t in (z, mu, log_sigma)]
    want = reference_log_densities(*leaves, 10_000, estimator)
    want_grads = torch.autograd.grad(want, leaves, incoming)
    for got, expected in zip((*values, *grads), (*want, *want_grads), strict=True):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-9, atol=1e-9)


def test_the_default_chunk_bounds_the_pairwise_blocks():
    """:func:`chunk_size`: blocks of (B_l, D, chunk) within ``BLOCK_ELEMENTS`` values (at
    least one posterior a step, at most the batch)."""
    limit = _tcvae_eager.BLOCK_ELEMENTS
    assert _tcvae_eager.chunk_size(40, 40, 4) == 40
    assert _tcvae_eager.chunk_size(4096, 4096, 128) == 2
    assert _tcvae_eager.chunk_size(4096, 4096, 4096) == 1
    for n_rows, latent in ((4096, 128), (1000, 7), (13, 13107)):
        assert n_rows * latent * _tcvae_eager.chunk_size(n_rows, 10**6, latent) <= limit


@PATHS
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_matches_the_oracle_in_float32(kernels, estimator):
    z, mu, second = _inputs(12, 5, seed=7, dtype=torch.float32)
    _check(z, mu, second, 500, estimator, False, 1e-4, 1e-4, kernels)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_c_kernels_in_float64_agree_with_the_oracle_to_1e_12(estimator):
    """The C kernels' float64 exponential is accurate to about an ulp (minibatch.c): the
    terms and gradients agree with the oracle to 1e-12, a thousand times tighter than the
    property test's 1e-9, at log-densities spread over ±20 nats (spread 4)."""
    built = _tcvae_cpu.kernels(torch.float64) is not None
    assert built, f"no C kernels here: {_tcvae_cpu.unavailable_reason(torch.float64)}"
    z, mu, sigma = _inputs(48, 6, seed=11, spread=4.0)
    _check(z, mu, sigma, 10_000, estimator, False, 1e-12, 1e-12)


def _elementary(name, x):
    """The C kernels' ``minibatch_<name>`` (log_pos or exp_of) applied to ``x``."""
    import ctypes

    native = _tcvae_cpu.kernels(x.dtype)
    assert native is not None, f"no C kernels here: {_tcvae_cpu.unavailable_reason(x.dtype)}"
    suffix = "f64" if x.dtype == torch.float64 else "f32"
    y = torch.full_like(x, 12345.0)  # poisoned
    fn = getattr(native.library, f"minibatch_{name}_{suffix}")
    fn(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(x.numel()))
    return y


def _ulps(y, exact):
    """|y − exact| in units in the last place of ``exact`` rounded to y's dtype (exact:
    float64 for float32 y; for float64 y, a pair (hi, lo) of float64 whose sum is the
    value to about 2^−106)."""
    if y.dtype == torch.float32:
        rounded = exact.to(torch.float32)
        ulp = (torch.nextafter(rounded.abs(), torch.tensor(float("inf"))) - rounded.abs()).double()
        return (y.double() - exact).abs() / ulp
    hi, lo = exact
    ulp = torch.nextafter(hi.abs(), torch.tensor(float("inf"), dtype=torch.float64)) - hi.abs()
    return ((y - hi) - lo).abs() / ulp


def _exact(fn, x):
    """fn (math's name: "log", "exp") of every float64 x to about 106 bits, by mpmath
    (torch's dependency sympy's), as (hi, lo) float64 pairs."""
    import mpmath

    hi, lo = [], []
    with mpmath.workprec(120):
        for v in x.tolist():
            e = getattr(mpmath, fn)(mpmath.mpf(v))
            h = float(e)
            hi.append(h)
            lo.append(float(e - h))
    return torch.tensor(hi, dtype=torch.float64), torch.tensor(lo, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_kernels_log_is_within_an_ulp_in_every_binade(dtype):
    """The kernels' own logarithm (minibatch.c's log_pos, vectorised where libm's is a call
    per value) over positive normal numbers from every binade, the ends of the range and
    the ends of its reduction (√½, √2) included: within one unit in the last place (it is
    within 0.86 over every float)."""
    gen = torch.Generator().manual_seed(3)
    info = torch.finfo(dtype)
    low, high = torch.tensor([info.tiny, info.max], dtype=dtype).double().log2()
    exponents = torch.linspace(float(low), float(high) - 1, 4000, dtype=torch.float64)
    mantissas = 1 + torch.rand(4000, generator=gen, dtype=torch.float64)
    edges = [info.tiny, info.max, 1.0, 2.0, 0.5, 0.7071067811865476, 1.4142135623730951]
    x = torch.cat((exponents.exp2() * mantissas, torch.tensor(edges, dtype=torch.float64)))
    x = x.to(dtype)
    x = x[torch.isfinite(x) & (x >= info.tiny)]
    near_one = 1 + (torch.rand(2000, generator=gen, dtype=torch.float64) - 0.5) * 1e-3
    x = torch.cat((x, near_one.to(dtype)))  # log x near 0: the relative error of f − ½f²
    exact = x.double().log() if dtype == torch.float32 else _exact("log", x)
    assert _ulps(_elementary("log_pos", x), exact).max() <= 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_kernels_exponential_is_within_an_ulp_and_exact_at_its_limits(dtype):
    """The kernels' 1/σ = e^{−log σ} (minibatch.c's exp_of, vectorised where libm's is a
    call per value), from below its underflow to above its overflow: within one unit in
    the last place where the result is normal; 0 below the underflow, +inf above the
    overflow, NaN for NaN, 1 at 0, as libm's exp."""
    gen = torch.Generator().manual_seed(4)
    top = 88.7 if dtype == torch.float32 else 709.7
    bottom = -87.3 if dtype == torch.float32 else -708.3
    x = bottom + (top - bottom) * torch.rand(20000, generator=gen, dtype=torch.float64)
    x = torch.cat((x, (torch.rand(2000, generator=gen, dtype=torch.float64) - 0.5) * 1e-6))
    x = x.to(dtype)
    exact = x.double().exp() if dtype == torch.float32 else _exact("exp", x)
    assert _ulps(_elementary("exp_of", x), exact).max() <= 1.0
    inf, nan = float("inf"), float("nan")
    limits = 104.0 if dtype == torch.float32 else 746.0
    specials = torch.tensor([nan, inf, -inf, 0.0, limits, -limits - 1, 1e6, -1e6], dtype=dtype)
    got = _elementary("exp_of", specials)
    want = torch.tensor([nan, inf, 0.0, 1.0, inf, 0.0, inf, 0.0], dtype=dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    below_normal = torch.tensor([-100.0 if dtype == torch.float32 else -740.0], dtype=dtype)
    torch.testing.assert_close(
        _elementary("exp_of", below_normal), below_normal.exp(), rtol=0, atol=0
    )  # a subnormal result, rounded once as libm's


@PATHS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_far_from_every_posterior_match_the_oracle(kernels, dtype):
    """Coordinates tens of σ from every posterior's μ (log-densities near −4500 and −50):
    the C forward's one-pass sum, shifted by a bound that holds for every row, is then
    below its floor (or flushed to 0) and those (i, d) are summed by the two passes; the
    terms and gradients are the oracle's (in float32 to 1e-3: t near 100 leaves the
    gradients about 4 significant digits)."""
    z, mu, sigma = _inputs(20, 4, seed=5, dtype=dtype)
    z[3, 1] = 60.0  # ½t² in the thousands: every term's exponential flushes to 0
    z[7, 2] = mu[:, 2].max() + 12.0  # ½t² near 50 to 200: the bound's sum under e^−50
    rtol = 1e-9 if dtype == torch.float64 else 1e-3
    _check(z, mu, sigma, 1000, "mss", False, rtol, rtol, kernels)


def _terms_and_jacobians(z, mu, sigma, n, estimator, row_offset=0):
    """The C forward with the terms' gradients on ``z`` (rows ``row_offset`` … of the batch)
    against the posteriors (μ, σ), the samples' own parts added as the compiled backward
    adds them: ``([mi, tc, dw_kl], d/dz, d/dμ, d/dlog σ)``, term by term."""
    from betavae_triton.tcvae import decomposition
    from betavae_triton.tcvae.call import PairwiseCall
    from betavae_triton.tcvae.weights import estimator_weights

    built = _tcvae_cpu.kernels(z.dtype) is not None
    assert built, f"no C kernels here: {_tcvae_cpu.unavailable_reason(z.dtype)}"
    call = PairwiseCall(z, mu, sigma.log(), row_offset, n, estimator).contiguous()
    weights = estimator_weights(mu.shape[0], n, estimator)
    terms, *pairwise = _tcvae_cpu.terms_and_gradients(*call[:4], weights)
    for k in range(3):  # term k's gradients: a unit incoming gradient on it alone
        g_terms = torch.zeros(3, dtype=z.dtype)
        g_terms[k] = 1
        decomposition.add_own_gradients(*call[:4], g_terms, *(g[k] for g in pairwise))
    return terms, *pairwise


def _oracle_jacobians(z, mu, sigma, n, estimator):
    """The float64 oracle's terms and, term by term, their gradients with respect to z, μ
    and log σ, stacked as the C forward stacks them: (3,), (3, B, D) × 3."""
    leaves = [t.detach().double().requires_grad_() for t in (z, mu, sigma.log())]
    terms = reference_beta_tcvae_terms(leaves[0], leaves[1], leaves[2].exp(), n, estimator)
    rows = [torch.autograd.grad(t, leaves, retain_graph=True) for t in terms]
    jacobians = [torch.stack([row[k] for row in rows]) for k in range(3)]
    return torch.stack(terms).detach(), jacobians


@settings(deadline=None)
@given(
    batch=st.integers(2, 40),
    latent=st.integers(1, 8),
    estimator=st.sampled_from(ESTIMATORS),
    spread=st.sampled_from([0.1, 1.0, 4.0]),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_the_c_forward_with_gradients_matches_the_oracle_in_float64(
    batch, latent, estimator, spread, threads, seed
):
    """The C kernels' forward that computes the terms' gradients in the same pass (what a
    compiled step that differentiates them calls: ``tc_terms_and_gradients_c``): the three
    terms and, term by term, their gradients with respect to z, μ and log σ (its pairwise
    parts and the samples' own parts) are the float64 oracle's to 1e-9, over one range of
    rows or two (partial sums added in order)."""
    z, mu, sigma = _inputs(batch, latent, seed, spread=spread)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        terms, *jacobians = _terms_and_jacobians(z, mu, sigma, 10_000, estimator)
    finally:
        torch.set_num_threads(previous)
    want_terms, want_jacobians = _oracle_jacobians(z, mu, sigma, 10_000, estimator)
    torch.testing.assert_close(terms, want_terms, rtol=1e-9, atol=1e-9)
    for got, want in zip(jacobians, want_jacobians, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_forward_with_gradients_far_from_every_posterior(dtype):
    """Coordinates tens of σ from every posterior (as the test above for the forward): the
    (i, d) summed by the two passes have no one-pass scale, and the gradients recompute
    their exponentials from the kept t; the terms' gradients are the oracle's (in float32
    to 1e-3 of each gradient's largest value: tc's gradient is the difference of two that
    nearly cancel at the far rows, as in the backward kernel's)."""
    z, mu, sigma = _inputs(20, 4, seed=5, dtype=dtype)
    z[3, 1] = 60.0
    z[7, 2] = mu[:, 2].max() + 12.0
    rtol = 1e-9 if dtype == torch.float64 else 1e-3
    terms, *jacobians = _terms_and_jacobians(z, mu, sigma, 1000, "mss")
    want_terms, want_jacobians = _oracle_jacobians(z, mu, sigma, 1000, "mss")
    torch.testing.assert_close(terms.double(), want_terms, rtol=rtol, atol=rtol)
    for got, want in zip(jacobians, want_jacobians, strict=True):
        assert got.dtype == dtype
        for got_term, want_term in zip(got, want, strict=True):
            atol = rtol * want_term.abs().max().item()
            torch.testing.assert_close(got_term.double(), want_term, rtol=rtol, atol=atol)


def test_the_c_forward_with_gradients_of_a_ranks_rows():
    """A rank's rows (``row_offset``): the gradients of its own posteriors' shares are at
    its rows, and two ranks' terms and gradients, weighed by their rows, are the whole
    batch's."""
    z, mu, sigma = _inputs(11, 3, seed=21)
    whole, *whole_grads = _terms_and_jacobians(z, mu, sigma, 500, "mss")
    first, *first_grads = _terms_and_jacobians(z[:4], mu, sigma, 500, "mss", row_offset=0)
    second, *second_grads = _terms_and_jacobians(z[4:], mu, sigma, 500, "mss", row_offset=4)
    torch.testing.assert_close((4 * first + 7 * second) / 11, whole, rtol=1e-12, atol=1e-12)
    grad_z = torch.cat((4 * first_grads[0], 7 * second_grads[0]), dim=1) / 11
    torch.testing.assert_close(grad_z, whole_grads[0], rtol=1e-12, atol=1e-12)
    for k in (1, 2):  # μ and log σ: every rank's share of every posterior
        shares = (4 * first_grads[k] + 7 * second_grads[k]) / 11
        torch.testing.assert_close(shares, whole_grads[k], rtol=1e-12, atol=1e-12)


def test_the_reason_the_c_kernels_are_off_is_that_of_the_latest_call(monkeypatch):
    """Switched off, then on again: the reason goes with the switch (it once stayed, and
    a test that read it after the "eager-torch" runs failed)."""
    monkeypatch.setenv(_tcvae_cpu.ENV_SWITCH, "0")
    assert _tcvae_cpu.kernels(torch.float32) is None
    assert _tcvae_cpu.unavailable_reason(torch.float32) == f"{_tcvae_cpu.ENV_SWITCH}=0"
    monkeypatch.delenv(_tcvae_cpu.ENV_SWITCH)
    assert _tcvae_cpu.kernels(torch.float32) is not None
    assert _tcvae_cpu.unavailable_reason(torch.float32) is None


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_log_weights_by_blocks_are_the_oracles_matrix(estimator):
    from reference.beta_tcvae import log_importance_weights

    weights = _tcvae_eager.LogWeights(9, 40, estimator)
    cols = [weights.block(s, min(s + 4, 9), torch.float64, "cpu") for s in range(0, 9, 4)]
    blocks = torch.cat(cols, 1)
    torch.testing.assert_close(blocks, log_importance_weights(9, 40, estimator), rtol=1e-14, atol=0)


@PATHS
def test_ties_between_samples(kernels):
    """Identical samples and posteriors (ties in every log-sum-exp)."""
    z, mu, sigma = _inputs(6, 3, seed=8)
    z[3], mu[3], sigma[3] = z[1], mu[1], sigma[1]
    _check(z, mu, sigma, 100, "mss", False, 1e-10, 1e-10, kernels)


def test_kernels_are_bitwise_deterministic():
    """Every sum of the kernels runs in one program in a fixed order (no atomics)."""
    z, mu, sigma = _inputs(37, 6, seed=10, dtype=torch.float32)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
        terms = _terms(*leaves, 1000, "mss", kernels=True)
        runs.append((*terms, *torch.autograd.grad(sum(terms), leaves)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_never_holds_a_batch_by_batch_by_latent_tensor(monkeypatch):
    """Every pairwise block the chunked torch algorithm's forward and backward passes
    build holds B·chunk·D values at most (B = 40, chunk = 8: a fifth of B×B×D)."""
    sizes = []
    inner = _tcvae_eager._pair_log_density

    def spy(z, mu_t, log_sigma_t):
        pair, t = inner(z, mu_t, log_sigma_t)
        sizes.append(pair.numel())
        return pair, t

    monkeypatch.setattr(_tcvae_eager, "_pair_log_density", spy)
    z, mu, sigma = _inputs(40, 4, seed=9)
    log_sigma = sigma.log()
    options = (0, 1000, "mss")
    values = _tcvae_eager.log_densities_fwd(z, mu, log_sigma, *options, chunk=8)
    incoming = (torch.ones(40, dtype=z.dtype), torch.ones(40, 4, dtype=z.dtype))
    _tcvae_eager.log_densities_bwd(z, mu, log_sigma, *values, *incoming, *options, chunk=8)
    assert sizes and max(sizes) == 40 * 8 * 4
    assert len(sizes) == 2 * 5  # five chunks, forward and backward


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_log_weights_of_a_ranks_rows_are_the_oracles_rows(estimator):
    """Rows 5 … 7 of a batch of 9 (one rank's share): the oracle's rows 5 … 7."""
    from reference.beta_tcvae import log_importance_weights

    weights = _tcvae_eager.LogWeights(9, 40, estimator, row_offset=5, n_rows=3)
    want = log_importance_weights(9, 40, estimator)[5:8]
    torch.testing.assert_close(weights.block(0, 9, torch.float64, "cpu"), want, rtol=0, atol=0)


@PATHS
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_ranks_rows_against_the_whole_batch(kernels, estimator):
    """The log-densities of rows 7 … 12 scored against all 13 posteriors (what a rank
    computes under ``gather=True``) are rows 7 … 12 of the single-process ones, and their
    gradients (for incoming gradients on those rows only) are the single-process ones."""
    z, mu, second = _inputs(13, 4, seed=11)
    log_sigma = second.log()
    ops = torch.ops.betavae_triton
    op = ops.tc_log_densities if kernels else ops.tc_log_densities_eager

    def run(rows, offset):
        leaves = [t.clone().requires_grad_() for t in (z, mu, log_sigma)]
        log_qz, log_prod, _ = op(leaves[0][rows], leaves[1], leaves[2], offset, 50, estimator)
        g_qz = torch.linspace(-1, 2, 13, dtype=torch.float64)[rows]
        g_prod = torch.linspace(0.5, -3, 13 * 4, dtype=torch.float64).view(13, 4)[rows]
        grads = torch.autograd.grad((log_qz * g_qz).sum() + (log_prod * g_prod).sum(), leaves)
        return log_qz, log_prod, grads

    whole = run(slice(0, 13), 0)
    part = run(slice(7, 13), 7)
    torch.testing.assert_close(part[0], whole[0][7:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(part[1], whole[1][7:], rtol=1e-12, atol=1e-12)
    # The whole batch's gradients with incoming gradients zero outside rows 7 … 12:
    masked = [t.clone().requires_grad_() for t in (z, mu, log_sigma)]
    log_qz, log_prod, _ = op(*masked, 0, 50, estimator)
    keep = (torch.arange(13) >= 7).double()
    g_qz = torch.linspace(-1, 2, 13, dtype=torch.float64) * keep
    g_prod = torch.linspace(0.5, -3, 13 * 4, dtype=torch.float64).view(13, 4) * keep[:, None]
    want = torch.autograd.grad((log_qz * g_qz).sum() + (log_prod * g_prod).sum(), masked)
    for got, expected in zip(part[2], want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_the_c_kernels_build_wherever_a_compiler_is_found():
    """The eager backend's C kernels are what runs on a CPU with a C compiler (every Linux
    CI machine): a silent fallback to the slower torch algorithm would pass every other
    test."""
    import shutil

    compiler = any(shutil.which(name) for name in ("gcc", "cc"))
    for dtype in (torch.float32, torch.float64):
        built = _tcvae_cpu.kernels(dtype) is not None
        assert built == compiler, _tcvae_cpu.unavailable_reason(dtype)


def test_the_c_kernels_hold_o_b_d_memory():
    """Forward + backward of the C kernels at B = 512, D = 16: the peak extra memory
    (every allocation by torch's allocator, summed in time order) is a few (B, D) arrays
    per thread, far from one B×B×D array (32 MiB in float64)."""
    from perf.memory import peak_extra_bytes

    z, mu, sigma = _inputs(512, 16, seed=3)
    leaves = [t.requires_grad_() for t in (z, mu, sigma)]

    def step():
        terms = _terms(*leaves, 10_000, "mss")
        torch.autograd.grad(sum(terms), leaves)

    step()
    peak = peak_extra_bytes(step, torch.device("cpu"))
    bd = 512 * 16 * 8
    assert peak < (16 + 4 * torch.get_num_threads()) * bd, (peak, bd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_c_kernels_are_bitwise_deterministic(dtype):
    """Row ranges per thread and partial sums added in thread order: the same bits run
    after run."""
    z, mu, sigma = _inputs(45, 7, seed=12, dtype=dtype)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
        terms = _terms(*leaves, 1000, "mss")
        runs.append((*terms, *torch.autograd.grad(sum(terms), leaves)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_samples_propagate_as_in_the_oracle(kernels, value):
    """A NaN or infinite coordinate of one sample: the terms are NaN where the float64
    oracle's are, and that sample's gradient is not finite."""
    z, mu, sigma = _inputs(9, 3, seed=13)
    z[4, 1] = value
    leaves = [t.clone().requires_grad_() for t in (z, mu, sigma)]
    terms = _terms(*leaves, 100, "mss", kernels=kernels)
    ref = reference_beta_tcvae_terms(z, mu, sigma, 100, "mss")
    for got, want in zip(terms, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, equal_nan=True)
    grad_z = torch.autograd.grad(sum(terms), leaves[0], allow_unused=True)[0]
    assert not torch.isfinite(grad_z[4]).all()
