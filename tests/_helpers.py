"""Shared test helpers: Hypothesis strategies for loss inputs, and checks against the oracle.

Everything is compared with ``reference/`` run in float64, never with the code under test.
The strategies keep tensors small (a few thousand elements at most, a few hundred in half
precision) because the same tests run the Triton kernels under the CPU interpreter.

Tolerances
----------
A result is compared with the float64 reference *rounded to the result's dtype* (the
exact answer as that dtype can hold it: an overflow to inf in float16 is then expected),
and the allowed error is ``rtol * magnitude + floor`` where ``magnitude`` is the size of
the sum of the absolute values of the terms that make the quantity (not of the quantity
itself, which may cancel: the KL term ½(σ² − 1) − log σ near σ = 1, say):

==========  ========  ======================================================
dtype       rtol      why
==========  ========  ======================================================
float64     1e-10     float64 accumulation; only summation-order error
float32     1e-5      float32 accumulation over ≤ a few thousand terms
float16     4u + 1e-5 float32 inside (1e-5), then at most four roundings to
bfloat16    4u + 1e-5 the dtype, each ≤ u = 2^-11 (float16) or 2^-8 (bfloat16)
==========  ========  ======================================================

The four roundings of a 16-bit result: each term rounded to its dtype, the loss adding the
rounded terms and rounding again (≤ 2u of the magnitude), the backward pass rescaling a
gradient the forward pass already rounded (2u), and Triton's CPU interpreter, which rounds
float32 to bfloat16 by truncation (≤ 2u where compiled kernels round to nearest even, u).
A float16 or bfloat16 *accumulation* would be off by far more than 4u on the sums the
strategies draw, so these tolerances catch it.

``floor`` is two units of the dtype's smallest subnormal: the rounding of a result that is
(nearly) zero. A gradient that the Triton backend stores in the input's dtype during the
forward pass and then multiplies by the incoming factor (and sums over broadcast rows)
carries those roundings times the factor and the rows: its floor is scaled by them
(``floor_scale``; found by ``make fuzz`` in float16, where μ/Bq = −2.5e-6 is subnormal).
Gradients are checked element by element the same way, with per-element magnitudes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Laplace, Normal

from betavae_triton import BetaVAELoss, beta_vae_loss
from reference import reference_beta_vae_loss

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DISTS = ("normal", "laplace", "bernoulli")
BACKENDS = ("eager", "triton")
FULL_DTYPES = (torch.float64, torch.float32)
HALF_DTYPES = (torch.float16, torch.bfloat16)
FLOAT_DTYPES = FULL_DTYPES + HALF_DTYPES
# How the loss is called: the tensor-level function, the module with p as a tensor of
# `default_dist`, the module with p as a distribution object (and another default_dist).
FORMS = ("functional", "module_tensor", "module_dist")
# Weights (w_loss, w_rec, w_kl) of the scalar that is differentiated.
GRAD_WEIGHTS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, -2.0, 3.0))
BETAS = (0.0, 0.5, 1.0, 4.0, 250.0)
DIST_CLASSES = {"normal": Normal, "laplace": Laplace, "bernoulli": Bernoulli}


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    floor: float


def _subnormal(dtype: torch.dtype) -> float:
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps


def _half_rtol(dtype: torch.dtype) -> float:
    """Four roundings to ``dtype`` (unit roundoff u = eps / 2) after float32 arithmetic."""
    return 4 * torch.finfo(dtype).eps / 2 + 1e-5


TOLERANCES = {
    torch.float64: Tolerance(1e-10, 2 * _subnormal(torch.float64)),
    torch.float32: Tolerance(1e-5, 2 * _subnormal(torch.float32)),
    torch.float16: Tolerance(_half_rtol(torch.float16), 2 * _subnormal(torch.float16)),
    torch.bfloat16: Tolerance(_half_rtol(torch.bfloat16), 2 * _subnormal(torch.bfloat16)),
}


# ---- inputs ------------------------------------------------------------------------------


# Memory layouts of the data and the decoder output: dense in another order (channels last,
# features reversed, the batch innermost) or not dense at all (every other element of a
# wider buffer). The kernels walk dense layouts in place and copy the others.
DATA_LAYOUTS = ("contiguous", "channels_last", "permuted", "batch_inner", "sliced")
# Memory layouts of the posterior: its own tensors, or the two halves of one encoder output
# (``h.chunk(2, dim=1)``, the usual VAE head: strided views of one buffer).
POSTERIOR_LAYOUTS = ("contiguous", "chunk")


def apply_layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t``'s values in the memory layout ``kind`` (one of :data:`DATA_LAYOUTS`)."""
    if kind == "contiguous" or t.dim() < 2:
        return t.contiguous()
    if kind == "channels_last":
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    if kind == "permuted":
        order = (0, *reversed(range(1, t.dim())))
        return t.permute(order).contiguous().permute(order)
    if kind == "batch_inner":
        return t.movedim(0, -1).contiguous().movedim(-1, 0)
    if kind == "sliced":
        wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), 7.0, dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    raise ValueError(kind)


def chunked_posterior(loc: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(loc, scale)`` as the two halves of one tensor along dim 1 (same shapes)."""
    return tuple(torch.cat([loc, scale], dim=1).chunk(2, dim=1))


@dataclass(frozen=True)
class LossInputs:
    """One set of arguments of the loss: data, decoder output and posterior parameters."""

    dist: str
    x: torch.Tensor
    p: torch.Tensor
    q_loc: torch.Tensor
    q_scale: torch.Tensor
    # p holds bernoulli logits; q_scale holds log σ² (the issue-8 parametrisations).
    p_is_logits: bool = False
    q_is_logvar: bool = False
    # Memory layouts of x, p (DATA_LAYOUTS) and the posterior (POSTERIOR_LAYOUTS).
    layouts: tuple[str, str, str] = ("contiguous", "contiguous", "contiguous")

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, p, q_loc, q_scale)``."""
        return self.x, self.p, self.q_loc, self.q_scale

    def leaves(self) -> list[torch.Tensor]:
        """Fresh leaf copies of ``(x, p, q_loc, q_scale)``, all requiring grad, in the
        same memory layouts."""
        x_layout, p_layout, q_layout = self.layouts
        x = apply_layout(self.x.detach().clone(), x_layout)
        p = apply_layout(self.p.detach().clone(), p_layout)
        loc, scale = self.q_loc.detach().clone(), self.q_scale.detach().clone()
        if q_layout == "chunk":
            loc, scale = chunked_posterior(loc, scale)
        return [t.requires_grad_() for t in (x, p, loc, scale)]

    def to(self, dtype: torch.dtype) -> LossInputs:
        x, p, loc, scale = (t.to(dtype) for t in self.tensors)
        return replace(self, x=x, p=p, q_loc=loc, q_scale=scale, layouts=("contiguous",) * 3)

    def describe(self) -> str:
        shapes = ", ".join(
            f"{n}{tuple(t.shape)}"
            for n, t in zip(("x", "p", "q_loc", "q_scale"), self.tensors, strict=True)
        )
        flags = " logits" * self.p_is_logits + " logvar" * self.q_is_logvar
        layouts = "" if set(self.layouts) == {"contiguous"} else f" layouts={self.layouts}"
        return f"dist={self.dist}{flags} dtype={self.x.dtype} {shapes}{layouts}"


def max_elements(dtype: torch.dtype) -> int:
    """Bound on the elements of x: small for the interpreter, smaller still in half
    precision so that sums stay far from float16's overflow at 65504."""
    return 256 if dtype in HALF_DTYPES else 2048


@st.composite
def shapes(draw, batch: int, budget: int, min_dims: int = 1, max_dims: int = 4):
    """``(batch, d1, ..., dk)`` with ``min_dims <= k <= max_dims`` and at most ``budget``
    elements in all."""
    ndim = draw(st.integers(min_dims, max_dims))
    sizes: list[int] = []
    room = max(1, budget // batch)
    for i in range(ndim):
        cap = 64 if i == ndim - 1 else 12
        size = draw(st.integers(1, max(1, min(cap, room))))
        sizes.append(size)
        room //= size
    return (batch, *sizes)


def _randn(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).clamp(-3.0, 3.0)


def _inject(draw, t: torch.Tensor, values: Sequence[float], max_count: int = 4) -> None:
    """Overwrite a few elements of ``t`` (in place) with values drawn from ``values``."""
    flat = t.view(-1)
    count = draw(st.integers(0, min(max_count, flat.numel())))
    for _ in range(count):
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(values))


@st.composite
def decoder_values(
    draw, dist: str, shape: tuple[int, ...], dtype: torch.dtype, gen, logits: bool = False
):
    """``(x, p)`` in float64, valid for ``dist`` once rounded to ``dtype`` (``p`` as
    bernoulli logits with ``logits``)."""
    if dist == "bernoulli" and logits:
        x = torch.rand(shape, generator=gen, dtype=torch.float64)
        if draw(st.sampled_from(["binary", "soft"])) == "binary":
            x = x.round()
        p = _randn(shape, gen) * draw(st.sampled_from([1.0, 5.0, 20.0]))
        # Exact 0, logits where σ saturates in float32 (±20, ±200) and beyond nidl's −100
        # clamp; ±1e4 where the dtype holds it.
        big = [1e4, -1e4] if dtype in FULL_DTYPES else [3e3, -3e3]
        _inject(draw, p, [0.0, 20.0, -20.0, 200.0, -200.0, *big])
        _inject(draw, x, [0.0, 1.0])
        return x, p
    if dist == "bernoulli":
        x = torch.rand(shape, generator=gen, dtype=torch.float64)
        if draw(st.sampled_from(["binary", "soft"])) == "binary":
            x = x.round()
        p = torch.rand(shape, generator=gen, dtype=torch.float64)
        p_mode = draw(st.sampled_from(["uniform", "near_0", "near_1"]))
        if p_mode == "near_0":
            p = p**8
        elif p_mode == "near_1":
            p = 1 - p**8
        info = torch.finfo(dtype)
        # Exact 0 and 1, the smallest normal number, the largest number below 1.
        _inject(draw, p, [0.0, 1.0, info.smallest_normal, 1.0 - info.eps / 2])
        _inject(draw, x, [0.0, 1.0])
        return x, p
    spread = draw(st.sampled_from([1e-2, 1.0, 2.0] if dtype in HALF_DTYPES else [1e-2, 1.0, 3.0]))
    x = _randn(shape, gen) * spread
    mode = draw(st.sampled_from(["independent", "close", "ties"]))
    if mode == "close":
        p = x + 1e-2 * spread * _randn(shape, gen)
    else:
        p = _randn(shape, gen) * spread
    if mode == "ties":
        # Exact ties p == x, where the L1 subgradient is 0.
        tie = torch.rand(shape, generator=gen) < 0.4
        p = torch.where(tie, x, p)
    return x, p


# How the posterior's loc and scale broadcast: both (Bq, ...); a 0-dim scale; an all-ones
# scale shape; a scale shared by the batch, (1, ...); a loc shared by the batch.
Q_LAYOUTS = ("same", "scalar_scale", "ones_scale", "batch1_scale", "batch1_loc")


@st.composite
def posterior_values(
    draw, batch: int, dtype: torch.dtype, gen, layout: str | None = None, logvar: bool = False
):
    """``(q_loc, q_scale)`` in float64, scale strictly positive, in a broadcast layout
    (``q_scale`` as log σ² with ``logvar``)."""
    latent = draw(shapes(batch, 32 if dtype in HALF_DTYPES else 64, min_dims=1, max_dims=2))
    layout = layout or draw(st.sampled_from(Q_LAYOUTS))
    loc_shape, scale_shape = latent, latent
    if layout == "scalar_scale":
        scale_shape = ()
    elif layout == "ones_scale":
        scale_shape = (1,) * len(latent)
    elif layout == "batch1_scale":
        scale_shape = (1, *latent[1:])
    elif layout == "batch1_loc":
        loc_shape = (1, *latent[1:])
    mode = draw(st.sampled_from(["typical", "near_prior"]))
    if mode == "near_prior":
        # μ ≈ 0, σ ≈ 1: the KL terms cancel almost entirely.
        loc = 1e-3 * _randn(loc_shape, gen)
        scale = 1 + 1e-3 * _randn(scale_shape, gen)
    else:
        loc = _randn(loc_shape, gen) * draw(st.sampled_from([0.1, 1.0, 2.0]))
        log_scale = torch.rand(scale_shape, generator=gen, dtype=torch.float64) * 4.5 - 2.5
        scale = log_scale.exp()
    if logvar:
        return loc, 2.0 * scale.log()
    return loc, scale


@st.composite
def loss_inputs(
    draw,
    dist: str | None = None,
    dtype: torch.dtype | None = None,
    *,
    q_layout: str | None = None,
    same_q_batch: bool = False,
    device: torch.device = DEVICE,
    logits: bool = False,
    logvar: bool = False,
) -> LossInputs:
    """A :class:`LossInputs` for ``dist`` and ``dtype`` (drawn when None).

    Shapes: B in [1, 6], 1 to 4 feature dimensions, at most :func:`max_elements` elements;
    a posterior of 1 or 2 latent dimensions whose batch is usually B (sometimes another,
    unless ``same_q_batch``), in one of :data:`Q_LAYOUTS`. Memory layouts: x and p each in
    one of :data:`DATA_LAYOUTS`, the posterior in one of :data:`POSTERIOR_LAYOUTS`.
    Values: generated from a drawn seed, with exact 0 and 1 injected for bernoulli and
    exact ties for normal/laplace.
    ``logits`` (bernoulli only) draws p as logits, ``logvar`` q_scale as log σ².
    """
    dist = dist or draw(st.sampled_from(DISTS))
    dtype = dtype or draw(st.sampled_from(FULL_DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, 6))
    shape = draw(shapes(batch, max_elements(dtype)))
    logits = logits and dist == "bernoulli"
    x, p = draw(decoder_values(dist, shape, dtype, gen, logits))
    q_batch = batch if same_q_batch else draw(st.one_of(st.just(batch), st.integers(1, 6)))
    loc, scale = draw(posterior_values(q_batch, dtype, gen, q_layout, logvar))
    x, p, loc, scale = (t.to(device=device, dtype=dtype) for t in (x, p, loc, scale))
    x_layout, p_layout = draw(st.sampled_from(DATA_LAYOUTS)), draw(st.sampled_from(DATA_LAYOUTS))
    x, p = apply_layout(x, x_layout), apply_layout(p, p_layout)
    q_memory = "contiguous"
    if (
        loc.shape == scale.shape
        and loc.dim() > 1
        and draw(st.sampled_from(POSTERIOR_LAYOUTS)) == "chunk"
    ):
        q_memory = "chunk"
        loc, scale = chunked_posterior(loc, scale)
    return LossInputs(dist, x, p, loc, scale, logits, logvar, (x_layout, p_layout, q_memory))


# ---- running the loss --------------------------------------------------------------------


def other_dist(dist: str) -> str:
    """A distribution other than ``dist`` (to show that p's type, not the default, wins)."""
    return DISTS[(DISTS.index(dist) + 1) % len(DISTS)]


def as_distribution(p: torch.Tensor, dist: str, logits: bool = False):
    """The torch.distributions object that a decoder returns for parameter ``p``."""
    if dist == "bernoulli":
        return Bernoulli(logits=p) if logits else Bernoulli(probs=p)
    return DIST_CLASSES[dist](p, torch.ones_like(p))


def call_loss(
    leaves: Sequence[torch.Tensor],
    dist: str,
    beta: float,
    backend: str,
    form: str = "functional",
    logits: bool = False,
    logvar: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, rec, kl)`` of the package, called in the given ``form`` (see FORMS).

    With ``logits`` the module forms get ``Bernoulli(logits=p)`` (a tensor p means
    probabilities to the module); with ``logvar`` they get ``Normal(loc, exp(v / 2))``.
    """
    x, p, loc, scale = leaves
    if form == "functional":
        return beta_vae_loss(
            x,
            p,
            loc,
            scale,
            beta=beta,
            dist=dist,
            backend=backend,
            p_is_logits=logits,
            q_is_logvar=logvar,
        )
    q = posterior(loc, scale, logvar)
    if form == "module_tensor" and not logits:
        out = BetaVAELoss(beta=beta, default_dist=dist, backend=backend)(x, p, q)
    elif form in ("module_dist", "module_tensor"):
        module = BetaVAELoss(beta=beta, default_dist=other_dist(dist), backend=backend)
        out = module(x, as_distribution(p, dist, logits), q)
    else:
        raise ValueError(form)
    assert set(out) == {"loss", "rec_loss", "kl_loss"}
    return out["loss"], out["rec_loss"], out["kl_loss"]


def posterior(loc: torch.Tensor, scale: torch.Tensor, logvar: bool) -> Normal:
    """``Normal(loc, scale)``, or with ``logvar`` ``Normal(loc, exp(v / 2))`` with exp(v / 2)
    taken in float32 at least: autograd's own half-precision chain through it (grad ·
    exp(v / 2), then · ½) overflows before the ½ where the answer does not."""
    if not logvar:
        return Normal(loc, scale)
    wide = torch.promote_types(scale.dtype, torch.float32)
    return Normal(loc, torch.exp(0.5 * scale.to(wide)).to(scale.dtype))


def objective(values: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor | float:
    """``w_loss·loss + w_rec·rec + w_kl·kl``, leaving out the terms of weight 0."""
    return sum(w * v for w, v in zip(weights, values, strict=True) if w != 0)


def grads_of(
    values: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor], weights: Sequence[float]
) -> tuple[torch.Tensor, ...]:
    """Gradients of :func:`objective` w.r.t. ``leaves`` (zeros for unused leaves)."""
    return torch.autograd.grad(
        objective(values, weights), leaves, allow_unused=True, materialize_grads=True
    )


def reference_results(
    inputs: LossInputs, beta: float, weights: Sequence[float] | None = (1.0, 0.0, 0.0)
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """The oracle: float64 ``(loss, rec, kl)`` and float64 gradients (or None)."""
    leaves = [t.detach().cpu().double().requires_grad_() for t in inputs.tensors]
    values = reference_beta_vae_loss(
        *leaves, beta, inputs.dist, inputs.p_is_logits, inputs.q_is_logvar
    )
    grads = None if weights is None else grads_of(values, leaves, weights)
    return tuple(v.detach() for v in values), grads


# ---- magnitudes and comparison -----------------------------------------------------------


def _clamped_logs(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.log(p).clamp_min(-100.0), torch.log1p(-p).clamp_min(-100.0)


def value_magnitudes(inputs: LossInputs, beta: float) -> tuple[float, float, float]:
    """Sizes of ``(loss, rec, kl)`` as sums of absolute terms, for tolerances."""
    x, p, loc, scale = (t.detach().cpu().double() for t in inputs.tensors)
    if inputs.p_is_logits:
        rec = (p.clamp_min(0) + (x * p).abs() + torch.log1p(torch.exp(-p.abs()))).sum()
    elif inputs.dist == "normal":
        rec = (p - x).square().sum()
    elif inputs.dist == "laplace":
        rec = (p - x).abs().sum()
    else:
        # Only the term that x weighs: a magnitude that counted both logs whatever x is
        # would hide a 1 % error where x = 0 or 1.
        log_p, log_1mp = _clamped_logs(p)
        rec = ((x * log_p).abs() + ((1 - x) * log_1mp).abs()).sum()
    rec = float(rec) / x.shape[0]
    mu, s = torch.broadcast_tensors(loc, scale)
    if inputs.q_is_logvar:
        kl = 0.5 * (mu.square() + s.exp() + 1 + s.abs())
    else:
        kl = 0.5 * (mu.square() + s.square() + 1) + s.log().abs()
    kl = float(kl.sum()) / mu.shape[0]
    return rec + abs(beta) * kl, rec, kl


def grad_magnitudes(
    inputs: LossInputs, beta: float, weights: Sequence[float]
) -> tuple[torch.Tensor, ...]:
    """Per-element sizes of the gradients w.r.t. ``(x, p, q_loc, q_scale)``."""
    x, p, loc, scale = (t.detach().cpu().double() for t in inputs.tensors)
    w_loss, w_rec, w_kl = weights
    rec_w = (abs(w_loss) + abs(w_rec)) / x.shape[0]
    if inputs.p_is_logits:
        g_p = 1 + x.abs()
        g_x = p.abs()
    elif inputs.dist == "normal":
        g_p = 2 * (p - x).abs()
        g_x = g_p
    elif inputs.dist == "laplace":
        g_p = torch.ones_like(p)
        g_x = g_p
    else:
        g_p = (p.abs() + x.abs()) / (p * (1 - p)).clamp_min(1e-12)
        log_p, log_1mp = _clamped_logs(p)
        g_x = log_p.abs() + log_1mp.abs()
    mu, s = torch.broadcast_tensors(loc, scale)
    kl_w = (abs(w_loss * beta) + abs(w_kl)) / mu.shape[0]
    g_mu = (kl_w * mu.abs()).sum_to_size(loc.shape)
    g_s = 0.5 * (s.exp() + 1) if inputs.q_is_logvar else s + 1 / s
    g_sigma = (kl_w * g_s).sum_to_size(scale.shape)
    return rec_w * g_x, rec_w * g_p, g_mu, g_sigma


def assert_close_to_reference(
    actual: torch.Tensor,
    expected: torch.Tensor,
    magnitude: torch.Tensor | float,
    name: str = "",
    context: str = "",
    tol_dtype: torch.dtype | None = None,
    floor_scale: float = 1.0,
) -> None:
    """``actual`` equals the float64 ``expected`` rounded to ``actual.dtype``, within
    ``rtol * magnitude + floor * floor_scale`` element by element (see the module
    docstring), with the tolerance of ``tol_dtype`` (default: ``actual.dtype``; pass the
    coarsest dtype that went into the result when it mixes dtypes)."""
    tol = TOLERANCES[tol_dtype or actual.dtype]
    rounded = expected.detach().to(actual.dtype).cpu().double()
    got = actual.detach().cpu().double()
    magnitude = torch.as_tensor(magnitude, dtype=torch.float64)
    bound = tol.rtol * magnitude + tol.floor * floor_scale

    def message(generated: str) -> str:
        err = (got - rounded).abs()
        worst = int(torch.nan_to_num(err / bound, nan=math.inf).argmax()) if err.numel() else 0
        g, e = got.reshape(-1)[worst].item(), rounded.reshape(-1)[worst].item()
        b = bound.expand_as(got).reshape(-1)[worst].item()
        return (
            f"{name} differs from the float64 reference ({context}); error over "
            f"rtol*magnitude+floor with rtol={tol.rtol}, floor={tol.floor:g}:\n{generated}\n"
            f"worst element {worst}: got {g!r}, expected {e!r}, bound {b!r}"
        )

    torch.testing.assert_close(got / bound, rounded / bound, rtol=0.0, atol=1.0, msg=message)


def result_dtypes(inputs: LossInputs) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """The dtypes of ``(loss, rec, kl)`` that nidl's code returns for these inputs."""
    rec = torch.promote_types(inputs.p.dtype, inputs.x.dtype)
    kl = torch.promote_types(inputs.q_loc.dtype, inputs.q_scale.dtype)
    return torch.promote_types(rec, kl), rec, kl


def assert_values_match(
    values: Sequence[torch.Tensor], inputs: LossInputs, beta: float, context: str = ""
) -> None:
    """``(loss, rec, kl)`` match the reference in value and dtype, and are scalars."""
    ref_values, _ = reference_results(inputs, beta, weights=None)
    mags = value_magnitudes(inputs, beta)
    context = context or inputs.describe()
    dtypes = result_dtypes(inputs)
    # The loss adds rec and kl already rounded to their own dtypes: the coarser of the two
    # sets its tolerance.
    coarsest = max(dtypes[1:], key=lambda d: TOLERANCES[d].rtol)
    for name, got, ref, mag, dtype, tol_dtype in zip(
        ("loss", "rec_loss", "kl_loss"),
        values,
        ref_values,
        mags,
        dtypes,
        (coarsest, *dtypes[1:]),
        strict=True,
    ):
        assert got.shape == (), f"{name} has shape {tuple(got.shape)}, not a scalar"
        assert got.dtype == dtype, f"{name} is {got.dtype}, expected {dtype} ({context})"
        assert got.device.type == inputs.x.device.type
        assert_close_to_reference(got, ref, mag, name, context, tol_dtype)


def assert_grads_match(
    grads: Sequence[torch.Tensor],
    inputs: LossInputs,
    beta: float,
    weights: Sequence[float] = (1.0, 0.0, 0.0),
    context: str = "",
) -> None:
    """Gradients w.r.t. ``(x, p, q_loc, q_scale)`` match the reference's, element-wise."""
    _, ref_grads = reference_results(inputs, beta, weights)
    mags = grad_magnitudes(inputs, beta, weights)
    context = context or f"{inputs.describe()} beta={beta} weights={tuple(weights)}"
    scale = grad_floor_scale(inputs, beta, weights)
    for name, got, ref, mag, t in zip(
        ("x", "p", "q_loc", "q_scale"), grads, ref_grads, mags, inputs.tensors, strict=True
    ):
        assert got.shape == t.shape, f"grad {name}: shape {tuple(got.shape)} != {tuple(t.shape)}"
        assert got.dtype == t.dtype, f"grad {name}: dtype {got.dtype} != {t.dtype}"
        assert_close_to_reference(got, ref, mag, f"grad {name}", context, floor_scale=scale)


def grad_floor_scale(inputs: LossInputs, beta: float, weights: Sequence[float]) -> float:
    """How many stored roundings a gradient element may sum: the largest incoming factor
    (|w_loss|·max(1, |β|) + |w_rec| + |w_kl|) times the rows a broadcast sums over."""
    w_loss, w_rec, w_kl = (abs(w) for w in weights)
    rows = max(inputs.x.shape[0], *(t.shape[0] if t.dim() else 1 for t in inputs.tensors[2:]))
    return max(1.0, (w_loss * max(1.0, abs(beta)) + w_rec + w_kl) * rows)


def check_against_reference(
    inputs: LossInputs,
    beta: float,
    backend: str,
    form: str = "functional",
    weights: Sequence[float] = (1.0, 0.0, 0.0),
) -> tuple[torch.Tensor, ...]:
    """Run the package on ``inputs`` and check values, dtypes and all four gradients
    against the float64 reference. Returns ``(loss, rec, kl)``."""
    leaves = inputs.leaves()
    values = call_loss(
        leaves, inputs.dist, beta, backend, form, inputs.p_is_logits, inputs.q_is_logvar
    )
    context = f"{inputs.describe()} beta={beta} backend={backend} form={form} weights={weights}"
    assert_values_match(values, inputs, beta, context)
    assert_grads_match(grads_of(values, leaves, weights), inputs, beta, weights, context)
    return tuple(v.detach() for v in values)


def permute_batch(inputs: LossInputs, perm: torch.Tensor) -> LossInputs:
    """``inputs`` with the batch reordered by ``perm`` (posterior tensors whose dim 0 has
    size 1 or no dim 0 stay as they are)."""

    def take(t: torch.Tensor) -> torch.Tensor:
        return t[perm.to(t.device)] if t.dim() and t.shape[0] == perm.numel() > 1 else t

    x, p, loc, scale = (take(t) for t in inputs.tensors)
    return replace(inputs, x=x, p=p, q_loc=loc, q_scale=scale)


def guard_tree(fn) -> str:
    """Dynamo's text of the guard tree of ``fn``'s one compiled cache entry: what every
    later call of the compiled function checks first."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    (entry,) = _debug_get_cache_entry_list(fn.__code__)
    return str(entry.guard_manager)
