"""β-TCVAE's minibatch log-densities as ``torch.library`` operators, with one autograd.

Three operators under the ``betavae_triton`` namespace compute

    (log q(z_i), log q(z_id)) = tc_log_densities(z, mu, log_sigma, row_offset,
                                                  dataset_size, estimator)

for the samples z (rows ``row_offset`` … of the batch) against every posterior (μ, log σ),
by online log-sum-exps in O(B·D) memory, and each has a ``*_backward`` operator that
recomputes the gradients to z, μ and log σ from the saved log-sum-exps:

``tc_log_densities``
    the Triton backend: a ``torch.library.triton_op`` whose kernels (:mod:`.launch`) are
    launched through ``wrap_triton`` on CUDA, so inductor sees them; on CPU tensors it
    forwards to ``tc_log_densities_cpu``;
``tc_log_densities_cpu``
    the kernels under Triton's interpreter, else the eager algorithm (opaque);
``tc_log_densities_eager``
    the eager backend: the chunked algorithm of :mod:`.eager` on any device, opaque to
    ``torch.compile`` (which would otherwise unroll its walk over the chunks).

All three share one autograd (:func:`_setup_context`, :func:`_backward_with`). Importing
this module registers them (``betavae_triton.tcvae`` does on import); the Triton ones run
only where Triton is importable.
"""

from __future__ import annotations

import torch
from torch.library import custom_op, register_autograd, triton_op, wrap_triton

from .._dispatch import interpreter_enabled, interpreter_launch, triton_available
from . import cpu, eager

if triton_available():
    from .launch import launch_log_densities_bwd, launch_log_densities_fwd

Tensor = torch.Tensor


def _fake_log_densities(z, mu, log_sigma, row_offset, dataset_size, estimator):
    return z.new_empty(z.shape[:1]), torch.empty_like(z)


def _fake_backward(z, mu, log_sigma, *rest):
    return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(log_sigma)


# ---- the eager backend -------------------------------------------------------------------


def _native(z: Tensor):
    """The C kernels of :mod:`.cpu` for CPU tensors, where they build; else None."""
    return cpu.kernels(z.dtype) if z.device.type == "cpu" else None


def _eager_fwd(z, mu, log_sigma, row_offset, dataset_size, estimator):
    """The eager backend's forward: the C kernels on a CPU, the chunked torch algorithm
    elsewhere (and where no C compiler works)."""
    args = (z.contiguous(), mu.contiguous(), log_sigma.contiguous())
    native = _native(z)
    if native is not None:
        return cpu.log_densities_fwd(native[0], *args, row_offset, dataset_size, estimator)
    return eager.log_densities_fwd(*args, row_offset, dataset_size, estimator)


def _eager_bwd(z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod, *options):
    """The eager backend's backward, on the same implementation as :func:`_eager_fwd`."""
    tensors = (z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod)
    args = tuple(t.contiguous() for t in tensors)
    native = _native(z)
    if native is not None:
        return cpu.log_densities_bwd(native[1], *args, *options)
    return eager.log_densities_bwd(*args, *options)


@custom_op("betavae_triton::tc_log_densities_eager", mutates_args=())
def tc_log_densities_eager(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log q(z_id))`` on any device: :func:`_eager_fwd`."""
    return _eager_fwd(z, mu, log_sigma, row_offset, dataset_size, estimator)


@custom_op("betavae_triton::tc_log_densities_eager_backward", mutates_args=())
def tc_log_densities_eager_backward(
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
    """The gradients of :func:`tc_log_densities_eager`'s inputs, recomputed."""
    args = (z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod, row_offset, dataset_size)
    return _eager_bwd(*args, estimator)


# ---- the Triton backend on CPU tensors (the interpreter, or the eager algorithm) ---------


@custom_op("betavae_triton::tc_log_densities_cpu", mutates_args=())
def tc_log_densities_cpu(
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor]:
    """:func:`tc_log_densities` on CPU tensors."""
    args = (z, mu, log_sigma, row_offset, dataset_size, estimator)
    if interpreter_enabled():
        return launch_log_densities_fwd(interpreter_launch, *args)
    return _eager_fwd(*args)


@custom_op("betavae_triton::tc_log_densities_backward_cpu", mutates_args=())
def tc_log_densities_backward_cpu(
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
    """:func:`tc_log_densities_backward` on CPU tensors."""
    args = (z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod, row_offset, dataset_size)
    if interpreter_enabled():
        return launch_log_densities_bwd(interpreter_launch, *args, estimator)
    return _eager_bwd(*args, estimator)


# ---- the Triton backend ------------------------------------------------------------------


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
        return tc_log_densities_cpu(*args)
    with torch.cuda.device(z.device):
        return launch_log_densities_fwd(wrap_triton, *args)


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
        return tc_log_densities_backward_cpu(*args, estimator)
    with torch.cuda.device(z.device):
        return launch_log_densities_bwd(wrap_triton, *args, estimator)


# ---- one autograd for all three ----------------------------------------------------------


def _setup_context(ctx, inputs, output) -> None:
    """Save the inputs and the log-sum-exps; the options are the operator's last three
    arguments."""
    z, mu, log_sigma, *options = inputs
    ctx.save_for_backward(z, mu, log_sigma, *output)
    ctx.options = options


def _backward_with(backward_op):
    """The autograd backward of a pairwise operator whose gradients ``backward_op``
    recomputes (incoming gradients that autograd left undefined count as zeros)."""

    def backward(ctx, g_qz, g_prod):
        z, mu, log_sigma, log_qz, log_prod = ctx.saved_tensors
        g_qz = torch.zeros_like(log_qz) if g_qz is None else g_qz.contiguous()
        g_prod = torch.zeros_like(log_prod) if g_prod is None else g_prod.contiguous()
        saved = (z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod)
        return (*backward_op(*saved, *ctx.options), None, None, None)

    return backward


# The custom operators' outputs for fake tensors (a triton_op's own body serves as its).
for _forward, _backward in (
    (tc_log_densities_eager, tc_log_densities_eager_backward),
    (tc_log_densities_cpu, tc_log_densities_backward_cpu),
):
    _forward.register_fake(_fake_log_densities)
    _backward.register_fake(_fake_backward)

for _forward, _backward in (
    (tc_log_densities_eager, tc_log_densities_eager_backward),
    (tc_log_densities_cpu, tc_log_densities_backward_cpu),
    (tc_log_densities, tc_log_densities_backward),
):
    register_autograd(_forward, _backward_with(_backward), setup_context=_setup_context)
