"""What the β-VAE operators do on CPU tensors.

Under Triton's interpreter (``TRITON_INTERPRET=1``) they run the kernels themselves, as on a
GPU; otherwise they compute the same outputs with eager PyTorch, formula for formula as
the kernels compute them (derivatives written out, no autograd), so that a program
exported or compiled with the operators still runs on a machine without the interpreter.
"""

from __future__ import annotations

import torch

from .._constants import (
    BCE_GRAD_EPS,
    BCE_LOG_FLOOR,
    HALF_LOG_2PI,
    LOG_2,
    P_SCALE_PER_ELEMENT,
    P_SCALE_SHARED,
)
from .._dispatch import interpreter_enabled, interpreter_launch
from .autograd import grad_factor
from .call import (
    LaunchPlan,
    LossCall,
    LossOutputs,
    accumulation_dtype,
    grad_parts,
    plan_call,
)
from .launch import allocate_outputs, launch_loss_fwd, launch_rescale_grad_
from .layout import flatten


def cpu_loss_fwd(call: LossCall) -> LossOutputs:
    """``betavae_triton::loss_fwd`` on CPU tensors: the kernels under the interpreter,
    else :func:`torch_ops_loss_fwd`."""
    if interpreter_enabled():
        return launch_loss_fwd(interpreter_launch, call)
    return torch_ops_loss_fwd(call)


def cpu_rescale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta: float) -> None:
    """``betavae_triton::rescale_grads_`` on CPU tensors."""
    beta = beta_tensor if beta_tensor is not None else beta
    if interpreter_enabled():
        launch_rescale_grad_(interpreter_launch, rec_grads, g_rec, g_loss, 1.0)
        launch_rescale_grad_(interpreter_launch, kl_grads, g_kl, g_loss, beta)
        return
    for grads, g_term, weight in ((rec_grads, g_rec, 1.0), (kl_grads, g_kl, beta)):
        factor = grad_factor(g_term, g_loss, weight, torch.float64)
        if grads.numel() and factor is not None:
            grads.mul_(factor.to(grads.dtype))


def _sign(d: torch.Tensor) -> torch.Tensor:
    return torch.sign(d).nan_to_num_(0.0)


def _reconstruction_elements(p, x, s, dist: str) -> tuple[torch.Tensor, ...]:
    """Per element ``(ℓ, dℓ/dp, dℓ/dx, dℓ/ds)`` in the accumulation dtype: the kernels'
    ``kernels/elementwise.py`` in torch ops (``dℓ/ds`` None without a decoder scale)."""
    d = p - x
    if dist == "normal" and s is not None:
        z = d / s
        return 0.5 * z * z + torch.log(s) + HALF_LOG_2PI, z / s, -z / s, (1 - z * z) / s
    if dist == "laplace" and s is not None:
        a = d.abs() / s
        return a + torch.log(s) + LOG_2, _sign(d) / s, -_sign(d) / s, (1 - a) / s
    if dist == "normal":
        return d * d, 2 * d, -2 * d, None
    if dist == "laplace":
        return d.abs(), _sign(d), -_sign(d), None
    outside = (x < 0) | (x > 1)
    if dist == "bernoulli_logits":
        e = torch.exp(-p.abs())
        loss = p.clamp_min(0) - x * p + torch.log1p(e)
        d_p = (1 - x) * torch.sigmoid(p) - x * torch.sigmoid(-p)
        return loss.masked_fill(outside, torch.nan), d_p, -p, None
    log_p = torch.log(p).clamp_min(BCE_LOG_FLOOR)
    log_1mp = torch.log1p(-p).clamp_min(BCE_LOG_FLOOR)
    # (L − x·L) + x·log p, not L + x·(log p − L): exact for x = 0 and 1, where the
    # difference would lose log p next to L (p = 1 − 1e-16: 1e-16 beside 36.7).
    loss = -((log_1mp - x * log_1mp) + x * log_p)
    d_p = d / (p * (1 - p)).clamp_min(BCE_GRAD_EPS)
    return loss.masked_fill(outside, torch.nan), d_p, log_1mp - log_p, None


def _kl_elements(q_loc, q_scale, q_is_logvar: bool) -> tuple[torch.Tensor, ...]:
    """Per element ``(KL, dKL/dq_loc, dKL/dq_scale)``: ``kernels/elementwise.py``'s."""
    if q_is_logvar:
        var = torch.exp(q_scale)
        return 0.5 * (q_loc * q_loc + var - 1 - q_scale), q_loc, 0.5 * (var - 1)
    kl = 0.5 * (q_loc * q_loc + q_scale * q_scale - 1) - torch.log(q_scale)
    return kl, q_loc, q_scale - 1 / q_scale


def _reconstruction(call: LossCall, plan: LaunchPlan, out: LossOutputs) -> torch.Tensor:
    """The reconstruction rows, and the derivatives written into ``out`` as the kernel
    writes them: per element flat in the plan's order, a shared scale's per row."""
    acc = accumulation_dtype(plan.rec_dtype)
    order, rows = plan.rec_order, plan.rec_rows
    p = flatten(call.p, order).to(acc).view(rows, -1)
    x = flatten(call.x, order).to(acc).view(rows, -1)
    s = None
    if plan.p_scale_mode == P_SCALE_PER_ELEMENT:
        s = flatten(call.p_scale.expand(plan.x_shape), order).to(acc)
        s = s.view(rows, -1)
    elif plan.p_scale_mode == P_SCALE_SHARED:
        s = call.p_scale.to(acc).reshape(())
    loss, d_p, d_x, d_s = _reconstruction_elements(p, x, s, call.dist)
    wanted = [g for g, need in ((d_p, call.need_grad_p), (d_x, call.need_grad_x)) if need]
    for part, g in zip(grad_parts(out.rec_grads, len(wanted), plan.n), wanted, strict=True):
        part.copy_((g / plan.rec_div).reshape(-1))
    if out.p_scale_grads.numel() and plan.p_scale_mode == P_SCALE_PER_ELEMENT:
        out.p_scale_grads.copy_((d_s / plan.rec_div).reshape(-1))
    elif out.p_scale_grads.numel():
        out.p_scale_grads.copy_(d_s.sum(1) / plan.rec_div)
    return loss.sum(1) / plan.rec_div


def _kl(call: LossCall, plan: LaunchPlan, out: LossOutputs) -> torch.Tensor:
    """The KL rows, and the derivatives over the broadcast posterior written into ``out``."""
    acc = accumulation_dtype(plan.kl_dtype)
    q_loc = call.q_loc.to(acc).expand(plan.q_shape)
    q_scale = call.q_scale.to(acc).expand(plan.q_shape)
    kl, d_loc, d_scale = _kl_elements(q_loc, q_scale, call.q_is_logvar)
    if call.need_grad_q:
        parts = grad_parts(out.kl_grads, 2, plan.m, aligned=False)
        parts[0].copy_((d_loc / plan.kl_div).reshape(-1))
        parts[1].copy_((d_scale / plan.kl_div).reshape(-1))
    if call.kl_per_dim:
        out.kl_per_dim.copy_(kl.sum(0) / plan.q_shape[0])
    return kl.reshape(plan.kl_rows, -1).sum(1) / plan.kl_div


def torch_ops_loss_fwd(call: LossCall) -> LossOutputs:
    """The operator's outputs computed as the kernels compute them, in torch ops on the
    CPU: per-element derivatives (divided by B for the batch mean only), row sums, and
    each term rounded to its dtype before the loss adds them. No autograd: inside an
    operator the autograd dispatch key is excluded."""
    plan = plan_call(call)
    out = allocate_outputs(call, plan)
    rec = _reconstruction(call, plan, out) if plan.has_rec else None
    kl = _kl(call, plan, out) if plan.has_kl else None
    if not plan.has_rec and out.p_scale_grads.numel():
        out.p_scale_grads.zero_()
    out.rec.copy_(_rows(rec, out.rec))
    out.kl.copy_(_rows(kl, out.kl))
    out.loss.copy_(out.rec.to(plan.loss_dtype) + call.weight * _rows(out.kl, out.loss))
    return out


def _rows(values: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per row) shaped like an output: a scalar for the batch mean, a row
    shared by all (a posterior of batch 1) repeated, or zeros for a term not computed."""
    if values is None:
        return torch.zeros_like(like)
    return values.to(like.dtype).reshape(-1).expand(like.numel()).reshape(like.shape)
