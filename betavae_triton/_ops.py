"""Custom-operator registration: the Triton backend as ``torch.library`` operators.

Two operators under the ``betavae_triton`` namespace carry the Triton backend:

``loss_fwd(x, p, loc, scale, beta, dist, q_logvar, need_grad_p, need_grad_x, need_grad_q,
per_sample, kl_per_dim)``
    rec, kl and loss, plus the flat buffers of the gradients the backward pass will need,
    written in the same pass over memory as the loss (forward+backward reads p and x once).
``scale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta)``
    the backward pass: scales those buffers in place by the incoming gradients, read on
    the device (no host sync; no memory traffic when the factor is 1).

On CUDA both are ``torch.library.triton_op``\\ s whose kernels are launched through
``wrap_triton``, so inductor sees and schedules them. On the CPU they forward to opaque
``*_cpu`` operators that run the same kernels under Triton's interpreter when
``TRITON_INTERPRET=1``, and the eager PyTorch path otherwise. Autograd is registered with
``torch.library.register_autograd``; the fake implementation allocates the outputs.
"""

from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor
from torch.library import custom_op, register_autograd, triton_op, wrap_triton

from . import _eager, _launch
from ._dispatch import interpreter_enabled

Tensor = torch.Tensor


def _direct(kernel):
    return kernel


# ---- the CPU implementations (opaque) -------------------------------------------------


def _eager_loss_fwd(
    x,
    p,
    loc,
    scale,
    beta,
    dist,
    q_logvar,
    need_grad_p,
    need_grad_x,
    need_grad_q,
    per_sample,
    kl_per_dim,
    p_scale,
    need_grad_p_scale,
):
    """The operator's semantics in eager PyTorch: gradients by autograd, packed as the
    kernels pack them (per-element derivatives, divided by B for the batch mean only)."""
    out = _launch.allocate_outputs(
        x,
        p,
        loc,
        scale,
        need_grad_p,
        need_grad_x,
        need_grad_q,
        per_sample,
        kl_per_dim,
        p_scale,
        need_grad_p_scale,
    )
    rec_out, kl_out, loss_out, rec_grads, kl_grads, kl_dims, scale_grads = out
    mode = _launch.scale_mode(p_scale)
    with torch.enable_grad():
        xs = x.detach().requires_grad_(need_grad_x)
        ps = p.detach().requires_grad_(need_grad_p)
        ss = p_scale.detach()
        if mode != _launch.NO_SCALE:
            ss = ss.reshape(()) if mode == _launch.SCALE_SHARED else ss.expand(x.shape)
        ss = ss.requires_grad_(need_grad_p_scale and mode != _launch.NO_SCALE)
        mus = loc.detach().requires_grad_(need_grad_q)
        sigmas = scale.detach().requires_grad_(need_grad_q)
        shape = torch.broadcast_shapes(loc.shape, scale.shape)
        n, m = x.numel(), math.prod(shape)
        rec_scale = ss if mode != _launch.NO_SCALE else None
        rec = (
            _eager.reconstruction_loss(ps, xs, dist, per_sample, rec_scale)
            if n > 0
            else x.new_zeros(rec_out.shape)
        )
        kl = (
            _eager.kl_normal_loss(mus, sigmas, q_logvar, per_sample)
            if m > 0
            else loc.new_zeros(kl_out.shape)
        )
        if n > 0 and (need_grad_p or need_grad_x):
            wrt = [t for t, need in ((ps, need_grad_p), (xs, need_grad_x)) if need]
            order = _launch.rec_layout(p, x, per_sample)
            # Summing the per-sample terms gives each element's own derivative.
            grads = torch.autograd.grad(rec.sum(), wrt)
            rec_grads.copy_(torch.cat([g.permute(order).reshape(-1) for g in grads]))
        if scale_grads.numel() > 0 and n > 0:
            if mode == _launch.SCALE_PER_ELEMENT:
                (g,) = torch.autograd.grad(rec.sum(), [ss])
                order = _launch.rec_layout(p, x, per_sample)
                scale_grads.copy_(g.permute(order).reshape(-1))
            else:
                rows = rec.reshape(-1)
                per_row = [torch.autograd.grad(r, [ss], retain_graph=True)[0] for r in rows]
                scale_grads.copy_(torch.stack(per_row))
        elif scale_grads.numel() > 0:
            scale_grads.zero_()
        if m > 0 and need_grad_q:
            mu_b, sigma_b = mus.expand(shape), sigmas.expand(shape)
            kl_b = _eager.kl_normal_loss(mu_b, sigma_b, q_logvar, per_sample)
            grads = torch.autograd.grad(kl_b.sum(), [mu_b, sigma_b])
            kl_grads.copy_(torch.cat([g.reshape(-1) for g in grads]))
    if kl_per_dim and m > 0:
        kl_dims.copy_(_eager.kl_per_dimension(loc, scale, q_logvar))
    rec_out.copy_(rec.detach())
    kl_out.copy_(kl.detach())
    loss_out.copy_(rec_out.to(loss_out.dtype) + beta * kl_out.to(loss_out.dtype))
    return out


@custom_op("betavae_triton::loss_fwd_cpu", mutates_args=())
def _loss_fwd_cpu(
    x: Tensor,
    p: Tensor,
    loc: Tensor,
    scale: Tensor,
    beta: float,
    dist: str,
    q_logvar: bool,
    need_grad_p: bool,
    need_grad_x: bool,
    need_grad_q: bool,
    per_sample: bool,
    kl_per_dim: bool,
    p_scale: Tensor,
    need_grad_p_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (x, p, loc, scale, beta, dist, q_logvar, need_grad_p, need_grad_x, need_grad_q)
    args = (*args, per_sample, kl_per_dim, p_scale, need_grad_p_scale)
    if interpreter_enabled():
        return _launch.loss_fwd(_direct, *args)
    return _eager_loss_fwd(*args)


@_loss_fwd_cpu.register_fake
def _(
    x,
    p,
    loc,
    scale,
    beta,
    dist,
    q_logvar,
    need_grad_p,
    need_grad_x,
    need_grad_q,
    per_sample,
    kl_per_dim,
    p_scale,
    need_grad_p_scale,
):
    return _launch.allocate_outputs(
        x,
        p,
        loc,
        scale,
        need_grad_p,
        need_grad_x,
        need_grad_q,
        per_sample,
        kl_per_dim,
        p_scale,
        need_grad_p_scale,
    )


@custom_op("betavae_triton::scale_grads_cpu_", mutates_args=("rec_grads", "kl_grads"))
def _scale_grads_cpu_(
    rec_grads: Tensor,
    kl_grads: Tensor,
    g_rec: Tensor | None,
    g_kl: Tensor | None,
    g_loss: Tensor | None,
    beta: float,
) -> None:
    if interpreter_enabled():
        _launch.scale_grad_(_direct, rec_grads, g_rec, g_loss, 1.0)
        _launch.scale_grad_(_direct, kl_grads, g_kl, g_loss, beta)
        return
    for grads, g_term, weight in ((rec_grads, g_rec, 1.0), (kl_grads, g_kl, beta)):
        if grads.numel() and (g_term is not None or g_loss is not None):
            s = torch.zeros((), dtype=torch.float64)
            if g_term is not None:
                s = s + g_term.double()
            if g_loss is not None:
                s = s + weight * g_loss.double()
            grads.mul_(s.to(grads.dtype))


@_scale_grads_cpu_.register_fake
def _(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta):
    return None


# ---- the device-generic operators -----------------------------------------------------


@triton_op("betavae_triton::loss_fwd", mutates_args=())
def loss_fwd(
    x: Tensor,
    p: Tensor,
    loc: Tensor,
    scale: Tensor,
    beta: float,
    dist: str,
    q_logvar: bool,
    need_grad_p: bool,
    need_grad_x: bool,
    need_grad_q: bool,
    per_sample: bool,
    kl_per_dim: bool,
    p_scale: Tensor,
    need_grad_p_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The loss terms and the gradient buffers; see the module docstring."""
    args = (x, p, loc, scale, beta, dist, q_logvar, need_grad_p, need_grad_x, need_grad_q)
    args = (*args, per_sample, kl_per_dim, p_scale, need_grad_p_scale)
    if loc.device.type == "cpu":
        return torch.ops.betavae_triton.loss_fwd_cpu(*args)
    return _launch.loss_fwd(wrap_triton, *args)


@triton_op("betavae_triton::scale_grads_", mutates_args=("rec_grads", "kl_grads"))
def scale_grads_(
    rec_grads: Tensor,
    kl_grads: Tensor,
    g_rec: Tensor | None,
    g_kl: Tensor | None,
    g_loss: Tensor | None,
    beta: float,
) -> None:
    """Scale the saved gradients in place by the incoming ones; see the module docstring."""
    if rec_grads.device.type == "cpu":
        torch.ops.betavae_triton.scale_grads_cpu_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta)
        return
    _launch.scale_grad_(wrap_triton, rec_grads, g_rec, g_loss, 1.0)
    _launch.scale_grad_(wrap_triton, kl_grads, g_kl, g_loss, beta)


# ---- autograd -------------------------------------------------------------------------


def _tracing(t: Tensor) -> bool:
    """Whether autograd's backward is being traced (torch.compile, export, opcheck)."""
    return (
        torch.compiler.is_compiling()
        or isinstance(t, FunctionalTensor)
        or isinstance(t, FakeTensor)
    )


def _factor(
    g_term: Tensor | None, g_loss: Tensor | None, weight: float, acc: torch.dtype
) -> Tensor | None:
    """g_term + weight·g_loss in ``acc`` (a scalar, or one value per sample), or None."""
    if g_term is None and g_loss is None:
        return None
    if g_term is None:
        return weight * g_loss.to(acc)
    if g_loss is None:
        return g_term.to(acc)
    return g_term.to(acc) + weight * g_loss.to(acc)


def _scaled(
    grads: Tensor,
    g_term: Tensor | None,
    g_loss: Tensor | None,
    weight: float,
    rows: int = 0,
    parts: int = 1,
) -> Tensor:
    """grads · (g_term + weight·g_loss), out of place, in the accumulation dtype.

    With ``rows`` the buffer holds per-sample rows (``reduction="none"``): each row is
    scaled by its sample's factor (an incoming gradient of shape (rows,), or of shape (1,)
    for a posterior shared by the batch, whose factor is then the sum over the batch).
    """
    acc = _launch.accumulation_dtype(grads.dtype)
    factor = _factor(g_term, g_loss, weight, acc)
    if grads.numel() == 0 or factor is None:
        return grads
    if rows:
        if factor.numel() != rows:
            factor = factor.sum().reshape(1)
        # [dL/dp | dL/dx] (or [dμ | dσ]): each part is a (rows, row_len) block.
        blocks = grads.to(acc).view(parts, rows, -1)
        return (blocks * factor.view(1, -1, 1)).reshape(-1).to(grads.dtype)
    return (grads.to(acc) * factor).to(grads.dtype)


def _save(ctx, inputs, rec_grads: Tensor, kl_grads: Tensor, scale_grads: Tensor) -> None:
    x, p, loc, scale, beta, _dist, _q_logvar, need_grad_p, need_grad_x, need_grad_q = inputs[:10]
    per_sample, _kl_per_dim, p_scale, need_grad_p_scale = inputs[10:14]
    ctx.save_for_backward(rec_grads, kl_grads, scale_grads)
    ctx.p_scale_meta = (
        _launch.scale_mode(p_scale),
        p_scale.shape,
        p_scale.dtype,
        need_grad_p_scale,
    )
    ctx.beta = beta
    ctx.need = (need_grad_p, need_grad_x, need_grad_q)
    ctx.per_sample = per_sample
    _rows, rec_rows, kl_rows = _launch.loss_rows(x, loc, scale, per_sample)
    ctx.rows = (rec_rows, kl_rows) if per_sample else (0, 0)
    layout = _launch.rec_layout(p, x, per_sample) if x.numel() else None
    ctx.rec_meta = (x.shape, x.numel(), layout)
    ctx.dtypes = (x.dtype, p.dtype, loc.dtype, scale.dtype)
    ctx.q_shapes = (loc.shape, scale.shape)


def _scale_decoder_scale_grads(ctx, scale_grads, g_rec, g_loss) -> Tensor:
    """The decoder scale's gradient buffer scaled out of place: per element like the
    reconstruction's, or, for a shared scale, Σ over rows of factor · row derivative."""
    mode = ctx.p_scale_meta[0]
    rec_rows = ctx.rows[0]
    if scale_grads.numel() == 0:
        return scale_grads
    if mode == _launch.SCALE_PER_ELEMENT:
        return _scaled(scale_grads, g_rec, g_loss, 1.0, rec_rows, 1)
    factor = _factor(g_rec, g_loss, 1.0, scale_grads.dtype)
    if factor is None:
        return scale_grads
    return (scale_grads * factor.reshape(-1)).sum().reshape(1)


def _scale_both(ctx, rec_grads, kl_grads, g_rec, g_kl, g_loss) -> tuple[Tensor, Tensor]:
    """Both buffers scaled out of place (per sample for ``reduction="none"``)."""
    rec_rows, kl_rows = ctx.rows
    g_loss_kl = g_loss
    if g_loss is not None and kl_rows and kl_rows != g_loss.numel():
        g_loss_kl = g_loss.sum().reshape(1)  # a posterior shared by every sample
    need_grad_p, need_grad_x, _ = ctx.need
    rec_grads = _scaled(rec_grads, g_rec, g_loss, 1.0, rec_rows, need_grad_p + need_grad_x)
    kl_grads = _scaled(kl_grads, g_kl, g_loss_kl, ctx.beta, kl_rows, 2)
    return rec_grads, kl_grads


def _input_grads(
    ctx,
    rec_grads: Tensor,
    kl_grads: Tensor,
    scale_grads: Tensor,
    rec_live: bool = True,
    kl_live: bool = True,
) -> tuple:
    """Views of the (scaled) flat buffers shaped, laid out and typed like the inputs.

    ``rec_live`` / ``kl_live`` say whether any gradient reached the term at all; where
    none did, its inputs get None (zero), not the unscaled buffer.
    """
    need_grad_p, need_grad_x, need_grad_q = ctx.need
    need_grad_p, need_grad_x = need_grad_p and rec_live, need_grad_x and rec_live
    need_grad_q = need_grad_q and kl_live
    x_dtype, p_dtype, loc_dtype, scale_dtype = ctx.dtypes
    shape, n, order = ctx.rec_meta
    grad_x = grad_p = grad_loc = grad_scale = None
    if n > 0 and need_grad_p:
        grad_p = _launch.unflatten(rec_grads[:n], shape, order).to(p_dtype)
    if n > 0 and need_grad_x:
        start = n if need_grad_p else 0
        grad_x = _launch.unflatten(rec_grads[start : start + n], shape, order).to(x_dtype)
    if need_grad_q and kl_grads.numel() > 0:
        loc_shape, scale_shape = ctx.q_shapes
        bshape = torch.broadcast_shapes(loc_shape, scale_shape)
        m = kl_grads.numel() // 2
        grad_loc = kl_grads[:m].view(bshape).sum_to_size(loc_shape).to(loc_dtype)
        grad_scale = kl_grads[m:].view(bshape).sum_to_size(scale_shape).to(scale_dtype)
    mode, p_scale_shape, p_scale_dtype, need_grad_p_scale = ctx.p_scale_meta
    grad_p_scale = None
    if need_grad_p_scale and rec_live and mode != _launch.NO_SCALE:
        if mode == _launch.SCALE_PER_ELEMENT and n > 0:
            full = _launch.unflatten(scale_grads, shape, order)
            grad_p_scale = full.sum_to_size(p_scale_shape).to(p_scale_dtype)
        else:
            grad_p_scale = scale_grads.sum().reshape(p_scale_shape).to(p_scale_dtype)
    return (grad_x, grad_p, grad_loc, grad_scale, *([None] * 8), grad_p_scale, None)


# The operators' own autograd formula, for anyone who calls them directly: the gradient
# buffers are outputs the caller can see, so the backward scales them out of place.


def _op_setup_context(ctx, inputs, output) -> None:
    _rec, _kl, _loss, rec_grads, kl_grads, kl_dims, scale_grads = output
    ctx.mark_non_differentiable(rec_grads, kl_grads, kl_dims, scale_grads)
    _save(ctx, inputs, rec_grads, kl_grads, scale_grads)


def _op_backward(ctx, g_rec, g_kl, g_loss, _g_rec_grads, _g_kl_grads, _g_kl_dims, _g_sg):
    rec_grads, kl_grads, scale_grads = ctx.saved_tensors
    scale_grads = _scale_decoder_scale_grads(ctx, scale_grads, g_rec, g_loss)
    rec_grads, kl_grads = _scale_both(ctx, rec_grads, kl_grads, g_rec, g_kl, g_loss)
    return _input_grads(ctx, rec_grads, kl_grads, scale_grads)


register_autograd("betavae_triton::loss_fwd", _op_backward, setup_context=_op_setup_context)
register_autograd("betavae_triton::loss_fwd_cpu", _op_backward, setup_context=_op_setup_context)


class _FusedBetaVAELoss(torch.autograd.Function):
    """What the package itself calls: the buffers never leave this function, so the
    eager backward may scale them in place (one launch, no traffic when the factor is 1).
    Returns ``rec, kl, loss, kl_dims`` (the last one not differentiable).
    """

    @staticmethod
    def forward(ctx, *inputs):
        outputs = torch.ops.betavae_triton.loss_fwd(*inputs)
        rec, kl, loss, rec_grads, kl_grads, kl_dims, scale_grads = outputs
        _save(ctx, inputs, rec_grads, kl_grads, scale_grads)
        ctx.mark_non_differentiable(kl_dims)
        ctx.set_materialize_grads(False)
        ctx.consumed = False
        return rec, kl, loss, kl_dims

    @staticmethod
    def backward(ctx, g_rec, g_kl, g_loss, _g_kl_dims):
        if ctx.consumed:
            raise RuntimeError(
                "betavae_triton's Triton backend writes the gradient during the forward pass "
                "and scales it in place in the backward pass, so it cannot backpropagate "
                "through the same loss twice (retain_graph=True). Compute the loss again, "
                "or use backend='eager'."
            )
        rec_grads, kl_grads, scale_grads = ctx.saved_tensors
        scale_grads = _scale_decoder_scale_grads(ctx, scale_grads, g_rec, g_loss)
        if _tracing(rec_grads) or ctx.per_sample:
            # Under torch.compile / export (and for per-sample losses): out of place, so
            # that inductor fuses the scaling into whatever consumes the gradient next.
            rec_grads, kl_grads = _scale_both(ctx, rec_grads, kl_grads, g_rec, g_kl, g_loss)
        else:
            ctx.consumed = True
            torch.ops.betavae_triton.scale_grads_(
                rec_grads, kl_grads, g_rec, g_kl, g_loss, ctx.beta
            )
        rec_live = g_rec is not None or g_loss is not None
        kl_live = g_kl is not None or g_loss is not None
        return _input_grads(ctx, rec_grads, kl_grads, scale_grads, rec_live, kl_live)


# ---- entry points used by the functional API ------------------------------------------


def _needs(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def triton_beta_vae_loss(
    x: Tensor,
    p: Tensor,
    loc: Tensor,
    scale: Tensor,
    beta: float,
    dist: str,
    q_logvar: bool = False,
    per_sample: bool = False,
    kl_per_dim: bool = False,
    p_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, rec, kl, kl_dims)`` on the Triton backend (``kl_dims`` empty unless
    ``kl_per_dim``; ``p_scale`` the decoder's scale for the full likelihood, or None)."""
    if p_scale is None:
        p_scale = x.new_empty((0,))
    rec, kl, loss, kl_dims = _FusedBetaVAELoss.apply(
        x,
        p,
        loc,
        scale,
        beta,
        dist,
        q_logvar,
        _needs(p),
        _needs(x),
        _needs(loc, scale),
        per_sample,
        kl_per_dim,
        p_scale,
        _needs(p_scale),
    )
    return loss, rec, kl, kl_dims


def triton_reconstruction_loss(
    p: Tensor, x: Tensor, dist: str, per_sample: bool = False, p_scale: Tensor | None = None
) -> Tensor:
    """The reconstruction term alone on the Triton backend (no KL launch)."""
    none = x.new_empty((0,))
    p_scale = none if p_scale is None else p_scale
    rec, _, _, _ = _FusedBetaVAELoss.apply(
        x,
        p,
        none,
        none,
        0.0,
        dist,
        False,
        _needs(p),
        _needs(x),
        False,
        per_sample,
        False,
        p_scale,
        _needs(p_scale),
    )
    return rec


def triton_kl_normal_loss(
    loc: Tensor, scale: Tensor, q_logvar: bool = False, per_sample: bool = False
) -> Tensor:
    """The KL term alone on the Triton backend (no reconstruction launch)."""
    none = loc.new_empty((0,), dtype=torch.promote_types(loc.dtype, scale.dtype))
    _, kl, _, _ = _FusedBetaVAELoss.apply(
        none,
        none,
        loc,
        scale,
        0.0,
        "normal",
        q_logvar,
        False,
        False,
        _needs(loc, scale),
        per_sample,
        False,
        none,
        False,
    )
    return kl
