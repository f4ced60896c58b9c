"""The backward pass of the fused β-VAE loss (the Triton backend's autograd).

The forward pass (``betavae_triton::loss_fwd``) already wrote every per-element
derivative; the backward pass only multiplies them by the factor that the incoming
gradients make, ``g_term + w·g_loss`` (:func:`grad_factor`; w is 1 for the
reconstruction and β for the KL), and shapes them like the inputs (:class:`SavedCall`).

One autograd, :func:`setup_context` and :func:`backward`, registered by :mod:`.ops` on
both forms of the operator (``loss_fwd`` and ``loss_fwd_cpu``): in eager mode, for the
package's calls (``in_place_backward``), it applies the factor in place through
``betavae_triton::rescale_grads_`` (one launch per buffer, no traffic at all when the
factor is 1); traced, or for a caller that keeps the buffers, out of place. It refuses
``create_graph=True`` (second derivatives) with an error that names the eager backend;
``torch.func`` transforms and forward-mode AD never reach it (the package runs the eager
backend under them: :func:`betavae_triton._dispatch.autograd_transform`).
"""

from __future__ import annotations

import torch

from .._constants import NO_P_SCALE, P_SCALE_PER_ELEMENT
from .._dispatch import backward_is_traced, create_graph_requested
from .call import (
    LaunchPlan,
    LossCall,
    LossOutputs,
    accumulation_dtype,
    call_gradients,
    grad_parts,
    plan_call,
)
from .layout import unflatten

Tensor = torch.Tensor


def grad_factor(
    g_term: Tensor | None, g_loss: Tensor | None, weight: float, dtype: torch.dtype
) -> Tensor | None:
    """``g_term + weight·g_loss`` in ``dtype`` (a scalar, or one value per sample), or
    None when no gradient reached the term."""
    if g_term is None and g_loss is None:
        return None
    if g_term is None:
        return weight * g_loss.to(dtype)
    if g_loss is None:
        return g_term.to(dtype)
    return g_term.to(dtype) + weight * g_loss.to(dtype)


def _rescaled(parts: list[Tensor], factor: Tensor | None, rows: int = 0) -> list[Tensor]:
    """Each gradient part times ``factor``, out of place, in the factor's dtype.

    With ``rows`` each part holds per-sample rows (``reduction="none"``): it is scaled row
    by row by its sample's factor (a factor of one element, for a posterior shared by the
    batch, scales every row).
    """
    if factor is None:
        return parts
    if rows:
        factor = factor.reshape(-1, 1)
        return [
            (part.to(factor.dtype).view(rows, -1) * factor).reshape(-1).to(part.dtype)
            for part in parts
        ]
    return [(part.to(factor.dtype) * factor).to(part.dtype) for part in parts]


class SavedCall:
    """What the backward pass needs of a call besides the saved tensors: its plan and its
    flags (a LossCall without tensors), and whether β itself needs a gradient."""

    def __init__(self, call: LossCall) -> None:
        self.plan: LaunchPlan = plan_call(call)
        self.flags: LossCall = call._replace(
            x=None, p=None, q_loc=None, q_scale=None, p_scale=None, beta_tensor=None
        )
        self.beta_needs_grad = call.beta_tensor is not None and call.beta_tensor.requires_grad

    def save(self, ctx, call: LossCall, out: LossOutputs) -> None:
        """Save the buffers, β's tensor and (when β needs a gradient) the KL term."""
        kl = out.kl if self.beta_needs_grad else None
        ctx.save_for_backward(out.rec_grads, out.kl_grads, out.p_scale_grads, call.beta_tensor, kl)
        ctx.saved = self

    def beta_grad(self, g_loss: Tensor | None, kl: Tensor | None) -> Tensor | None:
        """dL/dβ = Σ g_loss · kl (per sample, the shared KL counts once per sample)."""
        if not self.beta_needs_grad or g_loss is None:
            return None
        return (g_loss * kl).sum()

    def rows(self) -> tuple[int, int]:
        """Rows of the rec and KL buffers for per-sample scaling (0, 0 for the mean)."""
        return (self.plan.rec_rows, self.plan.kl_rows) if self.flags.per_sample else (0, 0)

    def factors(self, g_loss, g_rec, g_kl, weight, dtypes) -> tuple[Tensor | None, Tensor | None]:
        """The factors of the rec and KL buffers, in the given accumulation dtypes (``weight``
        is β: a number or a 0-d tensor)."""
        _, kl_rows = self.rows()
        g_loss_kl = g_loss
        if g_loss is not None and kl_rows and kl_rows != g_loss.numel():
            g_loss_kl = g_loss.sum().reshape(1)  # a posterior shared by every sample
        return (
            grad_factor(g_rec, g_loss, 1.0, dtypes[0]),
            grad_factor(g_kl, g_loss_kl, weight, dtypes[1]),
        )

    def parts(self, rec_grads: Tensor, kl_grads: Tensor) -> tuple[list, list]:
        """The gradient parts of the two buffers: [dℓ/dp, dℓ/dx] (those written) and
        [dKL/dq_loc, dKL/dq_scale] (when written)."""
        flags, plan = self.flags, self.plan
        n_rec = int(flags.need_grad_p) + int(flags.need_grad_x)
        n_kl = 2 if kl_grads.numel() else 0
        kl_parts = grad_parts(kl_grads, n_kl, plan.m, aligned=False)
        return grad_parts(rec_grads, n_rec, plan.n), kl_parts

    def rescaled(self, rec_grads, kl_grads, g_loss, g_rec, g_kl, weight) -> tuple[list, list]:
        """The gradient parts of both buffers times their factors, out of place."""
        rec_rows, kl_rows = self.rows()
        acc = accumulation_dtype(rec_grads.dtype), accumulation_dtype(kl_grads.dtype)
        rec_factor, kl_factor = self.factors(g_loss, g_rec, g_kl, weight, acc)
        rec_parts, kl_parts = self.parts(rec_grads, kl_grads)
        return _rescaled(rec_parts, rec_factor, rec_rows), _rescaled(kl_parts, kl_factor, kl_rows)

    def rescaled_p_scale_grads(self, p_scale_grads: Tensor, g_loss, g_rec) -> Tensor:
        """The decoder scale's buffer times its factor: per element like the
        reconstruction's, or, for a shared scale, Σ over rows of factor · row derivative."""
        if p_scale_grads.numel() == 0:
            return p_scale_grads
        if self.plan.p_scale_mode == P_SCALE_PER_ELEMENT:
            factor = grad_factor(g_rec, g_loss, 1.0, accumulation_dtype(p_scale_grads.dtype))
            return _rescaled([p_scale_grads], factor, self.rows()[0])[0]
        factor = grad_factor(g_rec, g_loss, 1.0, p_scale_grads.dtype)
        if factor is None:
            return p_scale_grads
        return (p_scale_grads * factor.reshape(-1)).sum().reshape(1)

    def input_grads(
        self,
        rec_parts: list[Tensor],
        kl_parts: list[Tensor],
        p_scale_grads: Tensor,
        rec_live: bool = True,
        kl_live: bool = True,
        beta_grad: Tensor | None = None,
    ) -> tuple[Tensor | None, ...]:
        """Views of the (rescaled) gradient parts shaped, laid out and typed like the inputs.

        ``rec_live`` / ``kl_live`` say whether any gradient reached the term at all; where
        none did, its inputs get None (zero), not the unscaled buffer.
        """
        plan, flags = self.plan, self.flags
        shape, order, dtypes = plan.x_shape, plan.rec_order, plan.dtypes
        need_p = flags.need_grad_p and rec_live and plan.has_rec
        need_x = flags.need_grad_x and rec_live and plan.has_rec
        grads: dict[str, Tensor] = {}
        if need_p:
            grads["p"] = unflatten(rec_parts[0], shape, order).to(dtypes["p"])
        if need_x:
            grads["x"] = unflatten(rec_parts[-1], shape, order).to(dtypes["x"])
        if flags.need_grad_q and kl_live and plan.has_kl:
            for name, part in zip(("q_loc", "q_scale"), kl_parts, strict=True):
                shape_of = plan.q_loc_shape if name == "q_loc" else plan.q_scale_shape
                grads[name] = part.view(plan.q_shape).sum_to_size(shape_of).to(dtypes[name])
        if flags.need_grad_p_scale and rec_live and plan.p_scale_mode != NO_P_SCALE:
            if plan.p_scale_mode == P_SCALE_PER_ELEMENT and plan.has_rec:
                full = unflatten(p_scale_grads, shape, order)
                grad = full.sum_to_size(plan.p_scale_shape)
            else:
                grad = p_scale_grads.sum().reshape(plan.p_scale_shape)
            grads["p_scale"] = grad.to(dtypes["p_scale"])
        if beta_grad is not None:
            grads["beta_tensor"] = beta_grad
        return call_gradients(**grads)


# ---- the operators' one autograd ----------------------------------------------------

BACKWARD_TWICE = (
    "betavae_triton's Triton backend writes the gradient during the forward pass and "
    "rescales it in place in the backward pass, so it cannot backpropagate through the "
    "same loss twice (retain_graph=True). Compute the loss again, or use backend='eager'."
)
SECOND_DERIVATIVES = (
    "betavae_triton's Triton backend does not compute second derivatives: its backward "
    "pass reuses the gradient that the forward pass wrote, which is not itself "
    "differentiable, so create_graph=True (a Hessian, a Hessian-vector product, a "
    "gradient penalty) would get zeros for the second-order terms. Use backend='eager' "
    "for this loss: plain PyTorch autograd, differentiable to any order."
)


UNWRITTEN_GRADIENT = (
    "a gradient of {name} is asked for, but this call of betavae_triton::loss_fwd was "
    "made with need_grad_{flag}=False, so its forward pass did not write it: a program "
    "exported (torch.export) with example inputs that did not require grad keeps that "
    "choice. Export with example inputs that require grad where the program will need "
    "their gradients."
)


def _check_written(ctx, flags: LossCall) -> None:
    """Raise where autograd asks for the gradient of an input whose ``need_grad_*`` flag
    was False (only a program traced with other requires_grad flags can: an export)."""
    # (Shorter than the fields where the dispatcher dropped trailing default arguments.)
    needs = dict(zip(LossCall._fields, ctx.needs_input_grad, strict=False))
    for name, flag in (
        ("x", "x"),
        ("p", "p"),
        ("q_loc", "q"),
        ("q_scale", "q"),
        ("p_scale", "p_scale"),
    ):
        if needs[name] and not getattr(flags, f"need_grad_{flag}"):
            raise RuntimeError(UNWRITTEN_GRADIENT.format(name=name, flag=flag))


def setup_context(ctx, inputs, output) -> None:
    """Save what :func:`backward` needs: the plan, the gradient buffers, β's tensor."""
    call, out = LossCall(*inputs), LossOutputs(*output)
    ctx.mark_non_differentiable(out.rec_grads, out.kl_grads, out.kl_per_dim, out.p_scale_grads)
    ctx.set_materialize_grads(False)  # a term no gradient reached: None, not zeros
    SavedCall(call).save(ctx, call, out)
    ctx.consumed = False


def backward(ctx, *grads: Tensor | None, rescale_in_place) -> tuple[Tensor | None, ...]:
    """The gradients of a ``loss_fwd`` call's inputs: the saved buffers times the factor
    the incoming gradients make, shaped like the inputs.

    In eager mode, for a call made with ``in_place_backward`` (the package's: it discards
    the buffers), the factor is applied in place by ``rescale_in_place`` (the
    ``rescale_grads_`` operator: one launch per buffer, no traffic when the factor is 1),
    so that backward runs once. Otherwise, traced (torch.compile, export) and for
    per-sample losses it is applied out of place (under compile inductor fuses it into
    whatever consumes the gradient next). ``create_graph=True`` is
    refused: the buffers are constants to autograd.
    """
    if ctx.consumed:
        raise RuntimeError(BACKWARD_TWICE)
    g, saved = LossOutputs(*grads), ctx.saved
    rec_grads, kl_grads, p_scale_grads, beta_tensor, kl = ctx.saved_tensors
    if create_graph_requested(rec_grads):
        raise RuntimeError(SECOND_DERIVATIVES)
    _check_written(ctx, saved.flags)
    weight = beta_tensor if beta_tensor is not None else saved.flags.beta
    p_scale_grads = saved.rescaled_p_scale_grads(p_scale_grads, g.loss, g.rec)
    in_place = saved.flags.in_place_backward and not saved.flags.per_sample
    if backward_is_traced(rec_grads) or not in_place:
        rec_parts, kl_parts = saved.rescaled(rec_grads, kl_grads, g.loss, g.rec, g.kl, weight)
    else:
        ctx.consumed = True
        rescale_in_place(rec_grads, kl_grads, g.rec, g.kl, g.loss, beta_tensor, saved.flags.beta)
        rec_parts, kl_parts = saved.parts(rec_grads, kl_grads)
    rec_live = g.rec is not None or g.loss is not None
    kl_live = g.kl is not None or g.loss is not None
    beta_grad = saved.beta_grad(g.loss, kl)
    return saved.input_grads(rec_parts, kl_parts, p_scale_grads, rec_live, kl_live, beta_grad)
