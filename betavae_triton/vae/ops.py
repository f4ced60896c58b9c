"""The β-VAE loss's Triton backend as ``torch.library`` operators, and what calls them.

Three operators under the ``betavae_triton`` namespace, each with a written-out schema
(an exported program depends on it; ``tests/test_compile.py`` pins it):

``loss_fwd(x, p, q_loc, q_scale, p_scale, beta_tensor, beta, dist, ...)``
    one argument per field of :class:`~betavae_triton.vae.call.LossCall`, in order
    (:data:`~betavae_triton.vae.call.LOSS_FWD_SCHEMA`); returns the fields of
    :class:`~betavae_triton.vae.call.LossOutputs`: loss, rec and kl, plus the flat
    buffers of the gradients the backward pass will need, written in the same pass over
    memory as the loss (forward + backward reads p and x once). On CUDA a
    ``torch.library.triton_op``, whose kernels are launched through ``wrap_triton``
    (:mod:`.launch`), so that inductor sees and schedules them.
``loss_fwd_cpu``
    the same schema and outputs on CPU tensors (:mod:`.cpu`: the kernels under Triton's
    interpreter, else torch ops), opaque to ``torch.compile``. It exists because torch
    does not permit the simpler form: a CPU kernel registered on the ``triton_op``
    (``loss_fwd.register_kernel("cpu")``) runs in eager mode, but dynamo and inductor
    decompose a ``triton_op`` into its body whatever the device, and that body's
    ``wrap_triton`` launch then asks Triton for a GPU driver and fails on a CPU tensor.
    ``loss_fwd`` forwards CPU tensors to it.
``rescale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta)``
    the backward pass's work: multiplies those buffers in place by the factor the
    incoming gradients make, read on the device (no host sync; no memory traffic when it
    is 1); ``rescale_grads_cpu_`` on CPU tensors, for the same reason.

One autograd (:func:`.autograd.setup_context`, :func:`.autograd.backward`) is registered
on both forms of ``loss_fwd``, and the package calls the operator itself
(:func:`triton_terms`): no ``autograd.Function`` of its own. It refuses second
derivatives with a clear error; torch.func transforms and forward-mode AD run the eager
backend instead (the dispatcher sees to it). Importing this module registers the
operators (``betavae_triton.vae`` does on import).
"""

from __future__ import annotations

import functools

import torch
from torch.library import custom_op, register_autograd, triton_op, wrap_triton

from .autograd import backward, setup_context
from .call import LOSS_FWD_SCHEMA, LossCall, LossOutputs, plan_call
from .cpu import cpu_loss_fwd, cpu_rescale_grads_
from .launch import allocate_outputs, launch_loss_fwd, launch_rescale_grad_

Tensor = torch.Tensor


def _fake_loss_fwd(*flat):
    call = LossCall(*flat)
    return tuple(allocate_outputs(call, plan_call(call)))


@custom_op("betavae_triton::loss_fwd_cpu", mutates_args=(), schema=LOSS_FWD_SCHEMA)
def loss_fwd_cpu(*flat):
    """``loss_fwd`` on CPU tensors (opaque: its body is not traced)."""
    return tuple(cpu_loss_fwd(LossCall(*flat)))


loss_fwd_cpu.register_fake(_fake_loss_fwd)


# torch infers a triton_op's schema from its signature (it takes no schema= argument), so
# the parameters are written out here, in LossCall's order; the test of LOSS_FWD_SCHEMA
# checks that both forms of the operator have that schema.
@triton_op("betavae_triton::loss_fwd", mutates_args=())
def loss_fwd(
    x: Tensor | None,
    p: Tensor | None,
    q_loc: Tensor | None,
    q_scale: Tensor | None,
    p_scale: Tensor | None,
    beta_tensor: Tensor | None,
    beta: float,
    dist: str,
    q_is_logvar: bool,
    per_sample: bool,
    kl_per_dim: bool,
    need_grad_x: bool,
    need_grad_p: bool,
    need_grad_q: bool,
    need_grad_p_scale: bool,
    in_place_backward: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The loss terms and the gradient buffers; see the module docstring."""
    call = LossCall(
        x, p, q_loc, q_scale, p_scale, beta_tensor, beta, dist, q_is_logvar, per_sample,
        kl_per_dim, need_grad_x, need_grad_p, need_grad_q, need_grad_p_scale,
        in_place_backward,
    )  # fmt: skip
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


_backward = functools.partial(backward, rescale_in_place=rescale_grads_)
for _name in ("betavae_triton::loss_fwd", "betavae_triton::loss_fwd_cpu"):
    register_autograd(_name, _backward, setup_context=setup_context)


def triton_terms(call: LossCall) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(loss, rec, kl, kl_per_dim)`` of ``call`` on the Triton backend (``kl_per_dim``
    None unless asked for). Three launches forward, at most two backward."""
    out = LossOutputs(*loss_fwd(*call))
    return out.loss, out.rec, out.kl, out.kl_per_dim if call.kl_per_dim else None
