"""Per-element negative log-likelihoods and their derivatives, as ``@triton.jit`` helpers.

Each takes p and x already in the accumulation dtype and returns ``(loss, d/dp, d/dx)``.
"""

import triton
import triton.language as tl

from .constants import BCE_GRAD_EPS, BCE_LOG_FLOOR, HALF_LOG_2PI, LOG_2


@triton.jit
def squared_error(p, x):
    """(p − x)², 2(p − x), −2(p − x)."""
    d = p - x
    return d * d, 2.0 * d, -2.0 * d


@triton.jit
def absolute_error(p, x):
    """|p − x| and its subgradient sign(p − x), 0 where p == x (PyTorch's convention)."""
    d = p - x
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(d.dtype)
    return tl.abs(d), sign, -sign


@triton.jit
def normal_nll(mu, x, sigma):
    """−log N(x; μ, σ²) = ½((μ − x)/σ)² + log σ + ½ log 2π, and its derivatives in μ, x, σ:
    (μ − x)/σ², (x − μ)/σ², (1 − ((μ − x)/σ)²)/σ."""
    inv = 1.0 / sigma
    z = (mu - x) * inv
    loss = 0.5 * z * z + tl.log(sigma) + HALF_LOG_2PI
    d_mu = z * inv
    return loss, d_mu, -d_mu, (1.0 - z * z) * inv


@triton.jit
def laplace_nll(mu, x, b):
    """−log Laplace(x; μ, b) = |μ − x|/b + log b + log 2, and its derivatives in μ, x, b:
    sign(μ − x)/b (0 at a tie), its negative, (1 − |μ − x|/b)/b."""
    inv = 1.0 / b
    d = mu - x
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(d.dtype)
    a = tl.abs(d) * inv
    return a + tl.log(b) + LOG_2, sign * inv, -sign * inv, (1.0 - a) * inv


@triton.jit
def clamped_log(v):
    """max(log v, −100) with NaN kept (``tl.maximum`` does not promise to propagate NaN)."""
    lv = tl.log(v)
    return tl.where(lv < BCE_LOG_FLOOR, BCE_LOG_FLOOR, lv)


@triton.jit
def log1p_neg(p):
    """log(1 − p), accurate for small p (Goldberg: log1p(u) = log(1 + u)·u / ((1 + u) − 1))."""
    one_m = 1.0 - p
    return tl.where(one_m == 1.0, -p, tl.log(one_m) * (-p) / (one_m - 1.0))


@triton.jit
def bernoulli_nll(p, x):
    """−[x·max(log p, −100) + (1 − x)·max(log(1 − p), −100)] and its derivatives.

    d/dp = (p − x) / max(p(1 − p), 1e-12), as ``binary_cross_entropy``'s backward;
    d/dx = max(log(1 − p), −100) − max(log p, −100). A p outside [0, 1] gives NaN through
    the logs; an x outside [0, 1] is made NaN here (the README's "Bad input": NaN, not a number
    extrapolated from the formula).
    """
    log_p = clamped_log(p)
    l1 = log1p_neg(p)
    log_1mp = tl.where(l1 < BCE_LOG_FLOOR, BCE_LOG_FLOOR, l1)
    # (L − x·L) + x·log p, not L + x·(log p − L): exact for x = 0 and 1, where the
    # difference would lose log p next to L (p = 1 − 1e-16: 1e-16 beside 36.7).
    loss = -((log_1mp - x * log_1mp) + x * log_p)
    loss = tl.where((x < 0.0) | (x > 1.0), float("nan"), loss)
    denom = p * (1.0 - p)
    # ATen's 1e-12 floor is a float32 constant, in float64 too.
    denom = tl.where(denom < BCE_GRAD_EPS, BCE_GRAD_EPS, denom)
    return loss, (p - x) / denom, log_1mp - log_p


@triton.jit
def bernoulli_nll_logits(logit, x):
    """Binary cross-entropy from the logit l, exact for every finite l, and its derivatives.

    −[x·log σ(l) + (1 − x)·log(1 − σ(l))] = max(l, 0) − x·l + log(1 + e^−|l|), with
    d/dl = σ(l) − x and d/dx = −l. No clamp and no ``sigmoid(l)`` in memory; an x outside
    [0, 1] gives NaN, as for probabilities.
    """
    e = tl.exp(-tl.abs(logit))
    one_p = 1.0 + e
    # log1p(e) (Goldberg), exact where 1 + e rounds to 1.
    softplus_tail = tl.where(one_p == 1.0, e, tl.log(one_p) * e / (one_p - 1.0))
    loss = tl.maximum(logit, 0.0) - x * logit + softplus_tail
    loss = tl.where((x < 0.0) | (x > 1.0), float("nan"), loss)
    # σ(l) − x as (1 − x)·σ(l) − x·σ(−l): no cancellation where σ(l) rounds to 1.
    sigmoid_pos = tl.where(logit >= 0.0, 1.0 / one_p, e / one_p)
    sigmoid_neg = tl.where(logit >= 0.0, e / one_p, 1.0 / one_p)
    return loss, (1.0 - x) * sigmoid_pos - x * sigmoid_neg, -logit


@triton.jit
def normal_kl_logvar(mu, logvar):
    """½(μ² + e^v − 1 − v) for v = log σ², and its derivatives μ and ½(e^v − 1)."""
    var = tl.exp(logvar)
    return 0.5 * (mu * mu + var - 1.0 - logvar), mu, 0.5 * (var - 1.0)


@triton.jit
def normal_kl(mu, sigma):
    """½(μ² + σ² − 1) − log σ and its derivatives μ and σ − 1/σ."""
    return 0.5 * (mu * mu + sigma * sigma - 1.0) - tl.log(sigma), mu, sigma - 1.0 / sigma
