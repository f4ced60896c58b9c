"""One call of the fused β-VAE loss, described once: what the API asks for and how to launch it.

- :class:`LossCall`: the tensors and options of one call, immutable, built once where the
  public API meets the backends. Its fields, in order, are the arguments of the
  ``betavae_triton::loss_fwd`` operator, whose schema :data:`LOSS_FWD_SCHEMA` writes out
  (a Python-side bundle; the schema is the operator's stable contract).
- :class:`LossOutputs`: what that operator returns.
- :class:`LaunchPlan`: every size, memory order, mode and dtype that follows from a call,
  computed once by :func:`plan_call`; the launches, the output allocation and the
  backward pass all read it.

A term that a call does not compute is absent in one way only: its tensors are None
(``x``, ``p`` for the KL alone; ``q_loc``, ``q_scale`` for the reconstruction alone;
``p_scale`` for nidl's squared / absolute error), and the plan says ``has_rec`` /
``has_kl`` / ``p_scale_mode``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import broadcast_shapes
from .._constants import NO_P_SCALE, P_SCALE_PER_ELEMENT, P_SCALE_SHARED
from .layout import reconstruction_order

Tensor = torch.Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, float32 for everything narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class LossCall(NamedTuple):
    """The inputs and options of one call of the fused loss.

    β is ``beta_tensor`` (a 0-d tensor on the data's device, read by the kernels there:
    a schedule that changes it every step changes no graph) or, when that is None, the
    number ``beta``. ``dist`` is the reconstruction loss the kernels compute: ``"normal"``,
    ``"laplace"``, ``"bernoulli"`` or ``"bernoulli_logits"`` (p holds logits).
    ``q_scale`` holds σ, or log σ² with ``q_is_logvar``. ``p_scale`` is the decoder's scale
    of the full likelihood (shared or broadcast to x). ``per_sample`` is
    ``reduction="none"``; ``kl_per_dim`` adds the batch-mean KL of each latent. The
    ``need_grad_*`` flags say which gradients the forward pass writes.
    """

    x: Tensor | None
    p: Tensor | None
    q_loc: Tensor | None
    q_scale: Tensor | None
    p_scale: Tensor | None
    beta_tensor: Tensor | None
    beta: float
    dist: str
    q_is_logvar: bool
    per_sample: bool
    kl_per_dim: bool
    need_grad_x: bool
    need_grad_p: bool
    need_grad_q: bool
    need_grad_p_scale: bool
    in_place_backward: bool = False

    @property
    def weight(self) -> Tensor | float:
        """β as the call holds it: the tensor, or the number."""
        return self.beta_tensor if self.beta_tensor is not None else self.beta


class LossOutputs(NamedTuple):
    """The outputs of ``betavae_triton::loss_fwd``.

    ``loss, rec, kl`` are scalars, or with ``per_sample`` vectors of shape (rows,), (kl
    rows,) and (rows,). ``rec_grads`` holds [dℓ/dp | dℓ/dx] (each present only when
    needed) in the plan's ``rec_order``; ``kl_grads`` holds [dKL/dq_loc | dKL/dq_scale] over
    the broadcast posterior shape (the layout of both: :func:`grad_parts`);
    ``kl_per_dim`` the batch-mean KL of each latent with ``kl_per_dim``;
    ``p_scale_grads`` the derivatives in the decoder's scale when needed:
    per element (flat like ``rec_grads``) or, for a shared scale, one per reduction row in
    the accumulation dtype. A buffer that is not needed is empty. The gradients are not yet
    multiplied by the incoming gradient (the backward pass does that).
    """

    loss: Tensor
    rec: Tensor
    kl: Tensor
    rec_grads: Tensor
    kl_grads: Tensor
    kl_per_dim: Tensor
    p_scale_grads: Tensor


# The schema of ``betavae_triton::loss_fwd`` (and ``loss_fwd_cpu``), written out: an
# exported program names these arguments, so a change here is a change of the operator
# (tests/test_compile.py pins the string and checks it against the two bundles).
LOSS_FWD_SCHEMA = (
    "(Tensor? x, Tensor? p, Tensor? q_loc, Tensor? q_scale, Tensor? p_scale, "
    "Tensor? beta_tensor, float beta, str dist, bool q_is_logvar, bool per_sample, "
    "bool kl_per_dim, bool need_grad_x, bool need_grad_p, bool need_grad_q, "
    "bool need_grad_p_scale, bool in_place_backward=False) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def call_gradients(**grads: Tensor | None) -> tuple[Tensor | None, ...]:
    """A backward pass's result for a :class:`LossCall`: the given input gradients in the
    fields' places, None everywhere else (the flags)."""
    return tuple(grads.get(name) for name in LossCall._fields)


def grad_parts(buffer: Tensor, count: int, n: int, aligned: bool = True) -> list[Tensor]:
    """The ``count`` gradients of ``n`` elements that a flat buffer holds one after the
    other: ``rec_grads`` holds [dℓ/dp | dℓ/dx], each starting at a multiple of 16 elements
    (a 16-byte-aligned address, for the kernels' 128-bit stores); ``kl_grads`` holds
    [dKL/dq_loc | dKL/dq_scale] packed (``aligned=False``: B·D elements, too few for the
    vector width to matter, and a gap would cost a launch to define)."""
    stride = part_stride(n, aligned)
    return [buffer[i * stride : i * stride + n] for i in range(count)]


def part_stride(n: int, aligned: bool = True) -> int:
    """Elements from one gradient part to the next: ``n``, rounded up to 16 if aligned."""
    return (n + 15) // 16 * 16 if aligned else n


class LaunchPlan(NamedTuple):
    """Everything the launches and the backward pass derive from a :class:`LossCall`.

    Reconstruction: ``n`` elements of x (0: no such term) of shape ``x_shape``, walked in
    memory order ``rec_order``, reduced into ``rec_rows`` rows (1 for the batch mean, B per
    sample), gradients divided by ``rec_div`` (B for the mean, 1 per sample); the decoder
    scale read as ``p_scale_mode``. KL: ``m`` elements of the broadcast posterior
    ``q_shape`` (0: no such term), ``kl_rows`` rows, divisor ``kl_div``. The finalize runs
    ``rows`` programs. ``dtypes`` are those of the inputs, for the gradients; the kernels
    read each input in its own dtype (no cast copies) and write the reconstruction's
    gradients in ``rec_grads_dtype``.
    """

    device: torch.device
    n: int
    x_shape: tuple[int, ...]
    rec_order: tuple[int, ...]
    rec_rows: int
    rec_div: int
    p_scale_mode: int
    p_scale_shape: tuple[int, ...]
    m: int
    q_shape: tuple[int, ...]
    q_loc_shape: tuple[int, ...]
    q_scale_shape: tuple[int, ...]
    kl_rows: int
    kl_div: int
    rows: int
    rec_dtype: torch.dtype
    rec_grads_dtype: torch.dtype
    kl_dtype: torch.dtype
    loss_dtype: torch.dtype
    dtypes: dict[str, torch.dtype]

    @property
    def has_rec(self) -> bool:
        return self.n > 0

    @property
    def has_kl(self) -> bool:
        return self.m > 0


def p_scale_mode(p_scale: Tensor | None) -> int:
    """How the kernels read the decoder's scale: not at all, shared, or per element."""
    if p_scale is None:
        return NO_P_SCALE
    return P_SCALE_SHARED if p_scale.numel() == 1 else P_SCALE_PER_ELEMENT


def _rec_grads_dtype(call: LossCall, rec_dtype: torch.dtype) -> torch.dtype:
    """The dtype the reconstruction's gradients are written in: the one input's own dtype
    when only p (or only x) needs a gradient, so that a 16-bit decoder output beside
    float32 data gets its gradient without a cast; their promotion when both do."""
    if call.need_grad_p and not call.need_grad_x:
        return call.p.dtype
    if call.need_grad_x and not call.need_grad_p:
        return call.x.dtype
    return rec_dtype


def plan_call(call: LossCall) -> LaunchPlan:
    """The :class:`LaunchPlan` of ``call`` (reads metadata only: shapes, strides, dtypes)."""
    x, p, q_loc, q_scale, p_scale = call.x, call.p, call.q_loc, call.q_scale, call.p_scale
    has_rec, has_kl = x is not None, q_loc is not None
    any_input = x if has_rec else q_loc
    dtypes = {
        name: t.dtype
        for name, t in (("x", x), ("p", p), ("q_loc", q_loc), ("q_scale", q_scale))
        if t is not None
    }
    if p_scale is not None:
        dtypes["p_scale"] = p_scale.dtype
    # The dtypes of the results: what the reference returns (a term that is absent takes
    # the other's dtype).
    kl_dtype = torch.promote_types(q_loc.dtype, q_scale.dtype) if has_kl else None
    rec_dtype = torch.promote_types(p.dtype, x.dtype) if has_rec else kl_dtype
    if p_scale is not None:
        rec_dtype = torch.promote_types(rec_dtype, p_scale.dtype)
    kl_dtype = kl_dtype or rec_dtype

    x_shape = tuple(x.shape) if has_rec else ()
    n = math.prod(x_shape) if has_rec else 0
    q_shape = tuple(broadcast_shapes(q_loc.shape, q_scale.shape)) if has_kl else ()
    m = math.prod(q_shape) if has_kl else 0
    batch = x_shape[0] if has_rec else 1
    q_batch = q_shape[0] if has_kl else 1
    if call.per_sample:
        rec_rows, kl_rows = (batch if n else 0), (q_batch if m else 0)
        rows, rec_div, kl_div = max(rec_rows, kl_rows), 1, 1
    else:
        rec_rows = kl_rows = rows = 1
        rec_div, kl_div = max(batch, 1), max(q_batch, 1)
    return LaunchPlan(
        device=any_input.device,
        n=n,
        x_shape=x_shape,
        rec_order=reconstruction_order(p, x, call.per_sample) if n else (),
        rec_rows=rec_rows,
        rec_div=rec_div,
        p_scale_mode=p_scale_mode(p_scale),
        p_scale_shape=tuple(p_scale.shape) if p_scale is not None else (),
        m=m,
        q_shape=q_shape,
        q_loc_shape=tuple(q_loc.shape) if has_kl else (),
        q_scale_shape=tuple(q_scale.shape) if has_kl else (),
        kl_rows=kl_rows,
        kl_div=kl_div,
        rows=rows,
        rec_dtype=rec_dtype,
        rec_grads_dtype=_rec_grads_dtype(call, rec_dtype),
        kl_dtype=kl_dtype,
        loss_dtype=torch.promote_types(rec_dtype, kl_dtype),
        dtypes=dtypes,
    )
