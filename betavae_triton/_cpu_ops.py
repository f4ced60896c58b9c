"""What the operators do on CPU tensors.

Under Triton's interpreter (``TRITON_INTERPRET=1``) they run the kernels themselves, as on a
GPU; otherwise they compute the same outputs with eager PyTorch (gradients by autograd,
packed as the kernels pack them), so that a program exported or compiled with the
operators still runs on a machine without the interpreter.
"""

from __future__ import annotations

import torch

from . import _eager, _launch
from ._call import LaunchPlan, LossCall, LossOutputs, plan_call
from ._constants import NO_P_SCALE, P_SCALE_PER_ELEMENT, P_SCALE_SHARED
from ._dispatch import interpreter_enabled
from ._layout import flatten


def _direct(kernel):
    """The interpreter's launch: the kernel itself, indexed by its grid."""
    return kernel


def loss_fwd(call: LossCall) -> LossOutputs:
    """``betavae_triton::loss_fwd`` on CPU tensors."""
    if interpreter_enabled():
        return _launch.loss_fwd(_direct, call)
    return eager_loss_fwd(call)


def rescale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta: float) -> None:
    """``betavae_triton::rescale_grads_`` on CPU tensors."""
    if interpreter_enabled():
        _launch.rescale_grad_(_direct, rec_grads, g_rec, g_loss, 1.0)
        _launch.rescale_grad_(_direct, kl_grads, g_kl, g_loss, beta)
        return
    from ._autograd import grad_factor

    for grads, g_term, weight in ((rec_grads, g_rec, 1.0), (kl_grads, g_kl, beta)):
        factor = grad_factor(g_term, g_loss, weight, torch.float64)
        if grads.numel() and factor is not None:
            grads.mul_(factor.to(grads.dtype))


def _rec_grads(call: LossCall, plan: LaunchPlan, out: LossOutputs, rec, leaves) -> None:
    """The per-element derivatives of the reconstruction term, flat in the plan's order."""
    p, x, p_scale = leaves
    wrt = [t for t, need in ((p, call.need_grad_p), (x, call.need_grad_x)) if need]
    if wrt:
        # Summing the per-sample terms gives each element's own derivative.
        grads = torch.autograd.grad(rec.sum(), wrt, retain_graph=True)
        out.rec_grads.copy_(torch.cat([flatten(g, plan.rec_order) for g in grads]))
    if not out.p_scale_grads.numel():
        return
    if plan.p_scale_mode == P_SCALE_PER_ELEMENT:
        (g,) = torch.autograd.grad(rec.sum(), [p_scale])
        out.p_scale_grads.copy_(flatten(g, plan.rec_order))
    else:
        rows = rec.reshape(-1)
        per_row = [torch.autograd.grad(r, [p_scale], retain_graph=True)[0] for r in rows]
        out.p_scale_grads.copy_(torch.stack(per_row))


def eager_loss_fwd(call: LossCall) -> LossOutputs:
    """The operator's semantics in eager PyTorch: gradients by autograd, packed as the
    kernels pack them (per-element derivatives, divided by B for the batch mean only)."""
    plan = plan_call(call)
    out = _launch.allocate_outputs(call, plan)
    rec = kl = None
    with torch.enable_grad():
        if plan.has_rec:
            x = call.x.detach().requires_grad_(call.need_grad_x)
            p = call.p.detach().requires_grad_(call.need_grad_p)
            p_scale = None
            if plan.p_scale_mode != NO_P_SCALE:
                p_scale = call.p_scale.detach()
                shared = plan.p_scale_mode == P_SCALE_SHARED
                p_scale = p_scale.reshape(()) if shared else p_scale.expand(plan.x_shape)
                p_scale.requires_grad_(call.need_grad_p_scale)
            rec = _eager.reconstruction_loss(p, x, call.dist, call.per_sample, p_scale)
            _rec_grads(call, plan, out, rec, (p, x, p_scale))
        elif out.p_scale_grads.numel():
            out.p_scale_grads.zero_()
        if plan.has_kl:
            q_loc = call.q_loc.detach().expand(plan.q_shape).requires_grad_(call.need_grad_q)
            q_scale = call.q_scale.detach().expand(plan.q_shape).requires_grad_(call.need_grad_q)
            kl = _eager.kl_normal_loss(q_loc, q_scale, call.q_is_logvar, call.per_sample)
            if call.need_grad_q:
                grads = torch.autograd.grad(kl.sum(), [q_loc, q_scale])
                out.kl_grads.copy_(torch.cat([g.reshape(-1) for g in grads]))
            if call.kl_per_dim:
                out.kl_per_dim.copy_(
                    _eager.kl_per_dimension(call.q_loc, call.q_scale, call.q_is_logvar)
                )
    out.rec.copy_(rec.detach() if rec is not None else out.rec.new_zeros(()))
    out.kl.copy_(kl.detach() if kl is not None else out.kl.new_zeros(()))
    out.loss.copy_(out.rec.to(plan.loss_dtype) + call.beta * out.kl.to(plan.loss_dtype))
    return out
