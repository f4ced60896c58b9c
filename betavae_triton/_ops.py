"""Custom-operator registration: the Triton backend as ``torch.library`` operators.

Two operators under the ``betavae_triton`` namespace carry the Triton backend:

``loss_fwd(x, p, q_loc, q_scale, p_scale, beta, dist, ...)``
    one argument per field of :class:`~betavae_triton._call.LossCall` (the schema is
    inferred from it); returns the fields of :class:`~betavae_triton._call.LossOutputs`:
    loss, rec and kl, plus the flat buffers of the gradients the backward pass will need,
    written in the same pass over memory as the loss (forward + backward reads p and x
    once).
``rescale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta)``
    the backward pass: multiplies those buffers in place by the factor the incoming
    gradients make, read on the device (no host sync; no memory traffic when it is 1).

Two more carry β-TCVAE's minibatch log-densities (:mod:`._tcvae_triton`):

``tc_log_densities(z, mu, log_sigma, row_offset, dataset_size, estimator)``
    ``(log q(z_i), log q(z_id))`` for the samples z (rows ``row_offset`` … of the batch)
    against every posterior (μ, log σ), by online log-sum-exps; O(B·D) memory.
``tc_log_densities_backward(z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod, ...)``
    the gradients to z, μ and log σ, recomputed from the saved log-sum-exps.

On CUDA both are ``torch.library.triton_op``\\ s whose kernels are launched through
``wrap_triton``, so inductor sees and schedules them. On the CPU they forward to opaque
``*_cpu`` operators (:mod:`._cpu_ops`). Autograd (:mod:`._autograd`) is registered with
``torch.library.register_autograd``; the fake implementation allocates the outputs.
"""

from __future__ import annotations

import torch
from torch.library import custom_op, register_autograd, triton_op, wrap_triton

from . import _cpu_ops, _launch, _tcvae_eager, _tcvae_triton
from ._autograd import op_backward, op_setup_context
from ._call import LossCall, flat_signature, plan_call
from ._cpu_ops import _direct
from ._dispatch import interpreter_enabled

Tensor = torch.Tensor


def _fake_loss_fwd(*flat):
    call = LossCall(*flat)
    return tuple(_launch.allocate_outputs(call, plan_call(call)))


@custom_op("betavae_triton::loss_fwd_cpu", mutates_args=())
@flat_signature
def _loss_fwd_cpu(*flat):
    return tuple(_cpu_ops.loss_fwd(LossCall(*flat)))


_loss_fwd_cpu.register_fake(_fake_loss_fwd)


@triton_op("betavae_triton::loss_fwd", mutates_args=())
@flat_signature
def loss_fwd(*flat):
    """The loss terms and the gradient buffers; see the module docstring."""
    call = LossCall(*flat)
    device = (call.x if call.x is not None else call.q_loc).device
    if device.type == "cpu":
        return tuple(torch.ops.betavae_triton.loss_fwd_cpu(*call))
    with torch.cuda.device(device):  # the tensors' device (and its current stream)
        return tuple(_launch.loss_fwd(wrap_triton, call))


@custom_op("betavae_triton::rescale_grads_cpu_", mutates_args=("rec_grads", "kl_grads"))
def _rescale_grads_cpu_(
    rec_grads: Tensor,
    kl_grads: Tensor,
    g_rec: Tensor | None,
    g_kl: Tensor | None,
    g_loss: Tensor | None,
    beta_tensor: Tensor | None,
    beta: float,
) -> None:
    _cpu_ops.rescale_grads_(rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta)


@_rescale_grads_cpu_.register_fake
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
        args = (rec_grads, kl_grads, g_rec, g_kl, g_loss, beta_tensor, beta)
        torch.ops.betavae_triton.rescale_grads_cpu_(*args)
        return
    weight = beta_tensor if beta_tensor is not None else beta
    with torch.cuda.device(rec_grads.device):  # the tensors' device (and its current stream)
        _launch.rescale_grad_(wrap_triton, rec_grads, g_rec, g_loss, 1.0)
        _launch.rescale_grad_(wrap_triton, kl_grads, g_kl, g_loss, weight)


register_autograd("betavae_triton::loss_fwd", op_backward, setup_context=op_setup_context)
register_autograd("betavae_triton::loss_fwd_cpu", op_backward, setup_context=op_setup_context)


@custom_op("betavae_triton::tc_log_densities_cpu", mutates_args=())
def _tc_log_densities_cpu(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor]:
    args = (z, mu, log_sigma, row_offset, dataset_size, estimator)
    if interpreter_enabled():
        return _tcvae_triton.log_densities_fwd(_direct, *args)
    return _tcvae_eager.log_densities_fwd(*args)


@_tc_log_densities_cpu.register_fake
def _fake_tc_log_densities(z, mu, log_sigma, row_offset, dataset_size, estimator):
    return z.new_empty(z.shape[:1]), torch.empty_like(z)


@triton_op("betavae_triton::tc_log_densities", mutates_args=())
def tc_log_densities(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor]:
    """β-TCVAE's ``(log q(z_i), log q(z_id))``; see the module docstring."""
    z, mu, log_sigma = (t.contiguous() for t in (z, mu, log_sigma))
    args = (z, mu, log_sigma, row_offset, dataset_size, estimator)
    if z.device.type == "cpu":
        return torch.ops.betavae_triton.tc_log_densities_cpu(*args)
    with torch.cuda.device(z.device):
        return _tcvae_triton.log_densities_fwd(wrap_triton, *args)


@custom_op("betavae_triton::tc_log_densities_backward_cpu", mutates_args=())
def _tc_log_densities_backward_cpu(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    log_qz: Tensor,
    log_prod: Tensor,
    g_qz: Tensor,
    g_prod: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor, Tensor]:
    args = (z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod, row_offset, dataset_size)
    if interpreter_enabled():
        return _tcvae_triton.log_densities_bwd(_direct, *args, estimator)
    return _tcvae_eager.log_densities_bwd(*args, estimator)


@_tc_log_densities_backward_cpu.register_fake
def _fake_tc_backward(z, mu, log_sigma, *rest):
    return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(log_sigma)


@triton_op("betavae_triton::tc_log_densities_backward", mutates_args=())
def tc_log_densities_backward(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    log_qz: Tensor,
    log_prod: Tensor,
    g_qz: Tensor,
    g_prod: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of :func:`tc_log_densities`' inputs; see the module docstring."""
    tensors = (t.contiguous() for t in (z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod))
    z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod = tensors
    args = (z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod, row_offset, dataset_size)
    if z.device.type == "cpu":
        return torch.ops.betavae_triton.tc_log_densities_backward_cpu(*args, estimator)
    with torch.cuda.device(z.device):
        return _tcvae_triton.log_densities_bwd(wrap_triton, *args, estimator)


_tc_backward = _tcvae_eager.backward_with(torch.ops.betavae_triton.tc_log_densities_backward)
for _name in ("tc_log_densities", "tc_log_densities_cpu"):
    register_autograd(
        f"betavae_triton::{_name}", _tc_backward, setup_context=_tcvae_eager.setup_context
    )
