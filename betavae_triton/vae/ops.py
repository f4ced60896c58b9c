"""The β-VAE loss's Triton backend as ``torch.library`` operators, and what calls them.

Two operators under the ``betavae_triton`` namespace:

``loss_fwd(x, p, q_loc, q_scale, p_scale, beta, dist, ...)``
    one argument per field of :class:`~betavae_triton.vae.call.LossCall` (the schema is
    inferred from it); returns the fields of :class:`~betavae_triton.vae.call.LossOutputs`:
    loss, rec and kl, plus the flat buffers of the gradients the backward pass will need,
    written in the same pass over memory as the loss (forward + backward reads p and x
    once).
``rescale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta)``
    the backward pass: multiplies those buffers in place by the factor the incoming
    gradients make, read on the device (no host sync; no memory traffic when it is 1).

On CUDA both are ``torch.library.triton_op``\\ s whose kernels are launched through
``wrap_triton`` (:mod:`.launch`), so inductor sees and schedules them. On the CPU they
forward to opaque ``*_cpu`` operators (:mod:`.cpu`). Their autograd
(:func:`~.autograd.op_backward`) is registered here, and so is the fake implementation.

:func:`triton_terms` is the backend's entry point: it calls ``loss_fwd`` through
:class:`FusedBetaVAELoss`, whose backward rescales the buffers in place. Importing this
module registers the operators (``betavae_triton.vae`` does on import).
"""

from __future__ import annotations

import torch
from torch.library import custom_op, register_autograd, triton_op, wrap_triton

from .autograd import SavedCall, backward_is_traced, op_backward, op_setup_context
from .call import LossCall, LossOutputs, flat_signature, plan_call
from .cpu import cpu_loss_fwd, cpu_rescale_grads_
from .launch import allocate_outputs, launch_loss_fwd, launch_rescale_grad_

Tensor = torch.Tensor


def _fake_loss_fwd(*flat):
    call = LossCall(*flat)
    return tuple(allocate_outputs(call, plan_call(call)))


@custom_op("betavae_triton::loss_fwd_cpu", mutates_args=())
@flat_signature
def loss_fwd_cpu(*flat):
    """``loss_fwd`` on CPU tensors (opaque: its body is not traced)."""
    return tuple(cpu_loss_fwd(LossCall(*flat)))


loss_fwd_cpu.register_fake(_fake_loss_fwd)


@triton_op("betavae_triton::loss_fwd", mutates_args=())
@flat_signature
def loss_fwd(*flat):
    """The loss terms and the gradient buffers; see the module docstring."""
    call = LossCall(*flat)
    device = (call.x if call.x is not None else call.q_loc).device
    if device.type == "cpu":
        return tuple(loss_fwd_cpu(*call))
    with torch.cuda.device(device):  # the tensors' device (and its current stream)
        return tuple(launch_loss_fwd(wrap_triton, call))


@custom_op("betavae_triton::rescale_grads_cpu_", mutates_args=("rec_grads", "kl_grads"))
def rescale_grads_cpu_(
    rec_grads: Tensor,
    kl_grads: Tensor,
    g_rec: Tensor | None,
    g_kl: Tensor | None,
    g_loss: Tensor | None,
    beta_tensor: Tensor | None,
    beta: float,
) -> None:
    """``rescale_grads_`` on CPU tensors."""
    cpu_rescale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta)


@rescale_grads_cpu_.register_fake
def _(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta):
    return None


@triton_op("betavae_triton::rescale_grads_", mutates_args=("rec_grads", "kl_grads"))
def rescale_grads_(
    rec_grads: Tensor,
    kl_grads: Tensor,
    g_rec: Tensor | None,
    g_kl: Tensor | None,
    g_loss: Tensor | None,
    beta_tensor: Tensor | None,
    beta: float,
) -> None:
    """Multiply the saved gradients in place by the incoming ones' factor; see above."""
    if rec_grads.device.type == "cpu":
        rescale_grads_cpu_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta)
        return
    weight = beta_tensor if beta_tensor is not None else beta
    with torch.cuda.device(rec_grads.device):  # the tensors' device (and its current stream)
        launch_rescale_grad_(wrap_triton, rec_grads, g_rec, g_loss, 1.0)
        launch_rescale_grad_(wrap_triton, kl_grads, g_kl, g_loss, weight)


register_autograd("betavae_triton::loss_fwd", op_backward, setup_context=op_setup_context)
register_autograd("betavae_triton::loss_fwd_cpu", op_backward, setup_context=op_setup_context)


class FusedBetaVAELoss(torch.autograd.Function):
    """``FusedBetaVAELoss.apply(*call)`` for a :class:`~betavae_triton.vae.call.LossCall`:
    ``loss, rec, kl, kl_per_dim`` (the last one not differentiable).

    The gradient buffers never leave this function, so the eager backward may rescale
    them in place (one launch, no traffic when the factor is 1).
    """

    @staticmethod
    def forward(ctx, *flat):
        call = LossCall(*flat)
        out = LossOutputs(*loss_fwd(*flat))
        SavedCall(call).save(ctx, call, out)
        ctx.mark_non_differentiable(out.kl_per_dim)
        ctx.set_materialize_grads(False)
        ctx.consumed = False
        return out.loss, out.rec, out.kl, out.kl_per_dim

    @staticmethod
    def backward(ctx, g_loss, g_rec, g_kl, _g_kl_per_dim):
        if ctx.consumed:
            raise RuntimeError(
                "betavae_triton's Triton backend writes the gradient during the forward pass "
                "and rescales it in place in the backward pass, so it cannot backpropagate "
                "through the same loss twice (retain_graph=True). Compute the loss again, "
                "or use backend='eager'."
            )
        saved: SavedCall = ctx.saved
        rec_grads, kl_grads, p_scale_grads, beta_tensor, kl = ctx.saved_tensors
        weight = beta_tensor if beta_tensor is not None else saved.flags.beta
        p_scale_grads = saved.rescaled_p_scale_grads(p_scale_grads, g_loss, g_rec)
        if backward_is_traced(rec_grads) or saved.flags.per_sample:
            # Under torch.compile / export (and for per-sample losses): out of place, so
            # that inductor fuses the rescaling into whatever consumes the gradient next.
            rec_parts, kl_parts = saved.rescaled(rec_grads, kl_grads, g_loss, g_rec, g_kl, weight)
        else:
            ctx.consumed = True
            rescale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, saved.flags.beta)
            rec_parts, kl_parts = saved.parts(rec_grads, kl_grads)
        rec_live = g_rec is not None or g_loss is not None
        kl_live = g_kl is not None or g_loss is not None
        beta_grad = saved.beta_grad(g_loss, kl)
        return saved.input_grads(rec_parts, kl_parts, p_scale_grads, rec_live, kl_live, beta_grad)


def triton_terms(call: LossCall) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(loss, rec, kl, kl_per_dim)`` of ``call`` on the Triton backend (``kl_per_dim``
    None unless asked for). Three launches forward, at most two backward."""
    loss, rec, kl, kl_per_dim = FusedBetaVAELoss.apply(*call)
    return loss, rec, kl, kl_per_dim if call.kl_per_dim else None
