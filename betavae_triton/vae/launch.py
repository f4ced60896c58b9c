"""Host side of the β-VAE loss's Triton backend: one launcher per kernel, and the forward.

Every launcher takes a ``launch`` callable that turns a ``@triton.jit`` kernel into
something to index with a grid: ``torch.library.wrap_triton`` on CUDA (so inductor sees
the kernels) and :func:`~betavae_triton._dispatch.interpreter_launch` on the CPU
interpreter. Launchers read the call's :class:`~betavae_triton.vae.call.LaunchPlan`, size
their grids for a :class:`~betavae_triton._device.GPU` (the tensors' own, or one described
by :mod:`betavae_triton.tools`) and pass kernel arguments by keyword.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

import torch
import triton

from .._constants import DIST_CODES, NO_P_SCALE, P_SCALE_PER_ELEMENT, P_SCALE_SHARED
from .._device import GPU, gpu_of, measured_resident, note_compiled
from ..kernels.finalize import _finalize_loss
from ..kernels.kl import _normal_kl_fwd_bwd
from ..kernels.reconstruction import _reconstruction_fwd_bwd
from ..kernels.rescale import _rescale_grad_inplace
from .call import (
    LaunchPlan,
    LossCall,
    LossOutputs,
    accumulation_dtype,
    grad_parts,
    part_stride,
    plan_call,
)
from .layout import flatten

# Upper bound on the programs of a reduction, hence on the partials the finalize sums.
MAX_PARTIALS = 1024
_INT32_LIMIT = 2**31 - 1

Launch = Callable[[Callable], Callable]


# The GPU launch configuration per element size: (BLOCK, num_warps, programs per SM).
# 8 elements a thread for 16- and 32-bit data (one or two 128-bit accesses per tensor and
# tile), 4 for float64; programs per SM that the compiled kernels' registers allow, so the
# persistent grid is one wave (checked ahead of time by ``perf/codegen.py`` and
# ``tests/test_codegen.py`` against the registers of every specialization).
GPU_CONFIG = {2: (2048, 8, 4), 4: (2048, 8, 4), 8: (1024, 8, 2)}


def gpu_reduction_config(
    n: int, element_size: int, sm_count: int, resident: int | None = None
) -> tuple[int, int, int]:
    """``(BLOCK, num_warps, programs)`` on a GPU of ``sm_count`` SMs: a persistent grid of
    at most one wave (:data:`GPU_CONFIG`, or fewer programs per SM where the compiled
    kernel allows fewer, ``resident``), fewer programs for small inputs."""
    block, warps, per_sm = GPU_CONFIG[element_size]
    if resident:
        per_sm = min(per_sm, resident)
    cap = min(MAX_PARTIALS, per_sm * sm_count)
    return block, warps, max(1, min(triton.cdiv(n, block), cap))


def reduction_config(
    n: int, element_size: int, gpu: GPU | None, key: tuple = ()
) -> tuple[int, int, int]:
    """``(BLOCK, num_warps, programs)`` for a reduction (or the rescaling) of ``n``
    elements: :func:`gpu_reduction_config` on a GPU (with what the kernel ``key`` compiled
    to, once it has run there); under the interpreter (``gpu`` None) few large programs
    (each program is a Python call)."""
    if gpu is not None:
        resident = measured_resident(gpu, (element_size, *key))
        return gpu_reduction_config(n, element_size, gpu.sm_count, resident)
    block = 1024
    return block, 4, max(1, min(triton.cdiv(n, block), 4))


def _row_programs(
    row_len: int, rows: int, element_size: int, gpu: GPU | None, key: tuple
) -> tuple[int, int, int]:
    """``(BLOCK, num_warps, programs per row)``: the reduction's grid spread over rows."""
    block, warps, programs = reduction_config(row_len, element_size, gpu, key)
    if rows > 1:
        programs = max(1, min(programs, triton.cdiv(programs, rows)))
    return block, warps, programs


def _to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (±inf beyond its range, NaN kept)."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def _split_fp64(value: float) -> tuple[float, float]:
    """value ≈ hi + lo with hi, lo float32: how a float64 scalar reaches a kernel intact."""
    hi = _to_float32(value)
    return hi, _to_float32(value - hi) if math.isfinite(hi) else 0.0


def _empty(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device, poison: bool = False
) -> torch.Tensor:
    """An output buffer, unwritten; filled with NaN where ``poison`` (so that an element
    no kernel writes shows)."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _grad_buffer(
    parts: int,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    aligned: bool = True,
    poison: bool = False,
) -> torch.Tensor:
    """A flat buffer for ``parts`` gradients of ``n`` elements, laid out as
    :func:`~betavae_triton.vae.call.grad_parts` says; the few elements of a gap between
    aligned parts are zeroed (every output element is defined), which costs a launch only
    when there are two parts and ``n`` is not a multiple of 16 (zeroing an empty slice
    launches nothing)."""
    if parts == 0:
        return _empty((0,), dtype, device, poison)
    stride = part_stride(n, aligned)
    buffer = _empty((stride * (parts - 1) + n,), dtype, device, poison)
    for part in range(parts - 1):  # no branch on n: no guard under dynamic shapes
        buffer[part * stride + n : (part + 1) * stride].zero_()
    return buffer


def allocate_outputs(call: LossCall, plan: LaunchPlan, poison: bool = False) -> LossOutputs:
    """The operator's outputs, unwritten (see :class:`~betavae_triton.vae.call.LossOutputs`);
    filled with NaN where ``poison``. The fake (meta) implementation of the operator is this
    function."""
    device, n, m = plan.device, plan.n, plan.m
    p_scale_grads_shape, p_scale_grads_dtype = (0,), plan.rec_dtype
    if call.need_grad_p_scale and plan.p_scale_mode == P_SCALE_PER_ELEMENT:
        p_scale_grads_shape, p_scale_grads_dtype = (n,), plan.dtypes["p_scale"]
    elif call.need_grad_p_scale and plan.p_scale_mode == P_SCALE_SHARED:
        p_scale_grads_shape = (max(1, plan.rec_rows),)
        p_scale_grads_dtype = accumulation_dtype(plan.rec_dtype)
    if call.per_sample:
        shapes = ((plan.rows,), (plan.rows,), (plan.kl_rows or plan.rows,))
    else:
        shapes = ((), (), ())
    rec_parts = int(call.need_grad_p) + int(call.need_grad_x)
    kl_parts = 2 if call.need_grad_q else 0
    kl_per_dim_shape = plan.q_shape[1:] if call.kl_per_dim else (0,)
    return LossOutputs(
        loss=_empty(shapes[0], plan.loss_dtype, device, poison),
        rec=_empty(shapes[1], plan.rec_dtype, device, poison),
        kl=_empty(shapes[2], plan.kl_dtype, device, poison),
        rec_grads=_grad_buffer(rec_parts, n, plan.rec_grads_dtype, device, True, poison),
        kl_grads=_grad_buffer(kl_parts, m, plan.kl_dtype, device, False, poison),
        kl_per_dim=_empty(kl_per_dim_shape, plan.kl_dtype, device, poison),
        p_scale_grads=_empty(p_scale_grads_shape, p_scale_grads_dtype, device, poison),
    )


def launch_reconstruction(
    launch: Launch, call: LossCall, plan: LaunchPlan, out: LossOutputs, gpu: GPU | None
) -> tuple[torch.Tensor, int]:
    """``_reconstruction_fwd_bwd`` over p and x, and a shared scale's gradient from its
    partials. Returns ``(partials, programs per row)``.

    Moves: p and x once, each in its own dtype (a layout copy only where they differ in
    memory order), the per-element scale once, each requested gradient written once.
    """
    acc = accumulation_dtype(plan.rec_dtype)
    if not plan.has_rec:
        if out.p_scale_grads.numel():
            out.p_scale_grads.zero_()  # no data: the scale gets no gradient
        return torch.empty((1,), dtype=acc, device=plan.device), 0  # never read
    n, order, mode = plan.n, plan.rec_order, plan.p_scale_mode
    # Each in its own dtype: the kernel upcasts in registers (no cast copy).
    p_flat, x_flat = flatten(call.p, order), flatten(call.x, order)
    if mode == P_SCALE_PER_ELEMENT:
        p_scale_flat = flatten(call.p_scale.expand(plan.x_shape), order)
    elif mode == P_SCALE_SHARED:
        p_scale_flat = call.p_scale.reshape(-1)
    else:
        p_scale_flat = p_flat  # not read
    row_len = n // plan.rec_rows
    key = ("reconstruction", call.dist, mode, call.need_grad_x, call.need_grad_p_scale)
    element_size = p_flat.element_size()
    block, warps, programs = _row_programs(row_len, plan.rec_rows, element_size, gpu, key)
    # One partial per program and row (twice, with a shared scale's gradient).
    partials = torch.empty((2 * plan.rec_rows * programs,), dtype=acc, device=plan.device)
    write_grad_p_scale = call.need_grad_p_scale and mode != NO_P_SCALE
    rec_parts = grad_parts(out.rec_grads, int(call.need_grad_p) + int(call.need_grad_x), n)
    # An output the kernel does not write gets a harmless valid pointer.
    per_element_grad = write_grad_p_scale and mode == P_SCALE_PER_ELEMENT
    compiled = launch(_reconstruction_fwd_bwd)[(plan.rec_rows, programs)](
        p_ptr=p_flat,
        x_ptr=x_flat,
        p_scale_ptr=p_scale_flat,
        partial_ptr=partials,
        grad_p_ptr=rec_parts[0] if call.need_grad_p else p_flat,
        grad_x_ptr=rec_parts[-1] if call.need_grad_x else p_flat,
        grad_p_scale_ptr=out.p_scale_grads if per_element_grad else p_flat,
        row_len=row_len,
        grad_div=plan.rec_div,
        DIST=DIST_CODES[call.dist],
        P_SCALE=mode,
        WRITE_GRAD_P=call.need_grad_p,
        WRITE_GRAD_X=call.need_grad_x,
        WRITE_GRAD_P_SCALE=write_grad_p_scale,
        ACC_FP64=acc == torch.float64,
        INT64=n > _INT32_LIMIT - block,
        ONE_ROW=plan.rec_rows == 1,
        BLOCK=block,
        num_warps=warps,
    )
    note_compiled(compiled, gpu, (element_size, *key))
    if write_grad_p_scale and mode == P_SCALE_SHARED:
        start = plan.rec_rows * programs
        per_row = partials[start : 2 * start].view(plan.rec_rows, programs).sum(1)
        out.p_scale_grads.copy_(per_row.div_(plan.rec_div))
    return partials, programs


def launch_kl(
    launch: Launch, call: LossCall, plan: LaunchPlan, out: LossOutputs, gpu: GPU | None
) -> tuple[torch.Tensor, int]:
    """``_normal_kl_fwd_bwd`` over the posterior, broadcast to one contiguous shape (a
    copy only where q_loc or q_scale is broadcast or not contiguous), each read in its own
    dtype, and the per-dimension KL from the elements it writes. Returns ``(partials,
    programs per row)``."""
    acc = accumulation_dtype(plan.kl_dtype)
    if not plan.has_kl:
        return torch.empty((1,), dtype=acc, device=plan.device), 0  # never read
    m = plan.m
    q_loc = call.q_loc.expand(plan.q_shape).contiguous()
    q_scale = call.q_scale.expand(plan.q_shape).contiguous()
    row_len = m // plan.kl_rows
    key = ("kl", call.q_is_logvar, call.kl_per_dim)
    element_size = q_loc.element_size()
    block, warps, programs = _row_programs(row_len, plan.kl_rows, element_size, gpu, key)
    partials = torch.empty((plan.kl_rows * programs,), dtype=acc, device=plan.device)
    kl_parts = grad_parts(out.kl_grads, 2 if call.need_grad_q else 0, m, aligned=False)
    kl_elements = q_loc
    if call.kl_per_dim:
        kl_elements = torch.empty(plan.q_shape, dtype=plan.kl_dtype, device=plan.device)
    compiled = launch(_normal_kl_fwd_bwd)[(plan.kl_rows, programs)](
        q_loc_ptr=q_loc,
        q_scale_ptr=q_scale,
        partial_ptr=partials,
        grad_q_loc_ptr=kl_parts[0] if call.need_grad_q else q_loc,
        grad_q_scale_ptr=kl_parts[1] if call.need_grad_q else q_loc,
        kl_elements_ptr=kl_elements,
        row_len=row_len,
        grad_div=plan.kl_div,
        WRITE_GRAD=call.need_grad_q,
        WRITE_KL_ELEMENTS=call.kl_per_dim,
        Q_IS_LOGVAR=call.q_is_logvar,
        ACC_FP64=acc == torch.float64,
        INT64=m > _INT32_LIMIT - block,
        ONE_ROW=plan.kl_rows == 1,
        BLOCK=block,
        num_warps=warps,
    )
    note_compiled(compiled, gpu, (element_size, *key))
    if call.kl_per_dim:
        out.kl_per_dim.copy_(kl_elements.to(acc).sum(0).div_(plan.q_shape[0]))
    return partials, programs


def launch_finalize(
    launch: Launch,
    call: LossCall,
    plan: LaunchPlan,
    out: LossOutputs,
    rec: tuple[torch.Tensor, int],
    kl: tuple[torch.Tensor, int],
) -> None:
    """``_finalize_loss``: the partials of both reductions into loss, rec and kl, one
    program per row. Moves a few kilobytes."""
    (rec_partials, rec_programs), (kl_partials, kl_programs) = rec, kl
    beta_hi, beta_lo = _split_fp64(call.beta)
    beta_from_ptr = call.beta_tensor is not None
    launch(_finalize_loss)[(plan.rows,)](
        rec_partial_ptr=rec_partials,
        kl_partial_ptr=kl_partials,
        loss_ptr=out.loss,
        rec_ptr=out.rec,
        kl_ptr=out.kl,
        n_rec_partials=rec_programs,
        n_kl_partials=kl_programs,
        kl_rows=plan.kl_rows if plan.kl_rows > 0 else plan.rows,
        rec_div=plan.rec_div,
        kl_div=plan.kl_div,
        beta_ptr=call.beta_tensor if beta_from_ptr else out.loss,
        beta_hi=beta_hi,
        beta_lo=beta_lo,
        BETA_FROM_PTR=beta_from_ptr,
        ACC_FP64=plan.loss_dtype == torch.float64,
        MAX_PARTIALS=MAX_PARTIALS,
        num_warps=4,
    )


def launch_loss_fwd(
    launch: Launch, call: LossCall, gpu: GPU | None = None, *, poison: bool = False
) -> LossOutputs:
    """The loss terms and the gradient buffers of ``call``, in at most three launches:
    the reconstruction reduction, the KL reduction (each skipped when its term is absent)
    and the finalize. Forward + backward reads p and x once and writes each gradient once.
    Grids are sized for ``gpu`` (default: the GPU the tensors are on; none under the
    interpreter). With ``poison``, every output starts as NaN (the tests' check that the
    kernels write every element)."""
    plan = plan_call(call)
    gpu = gpu if gpu is not None else gpu_of(plan.device)
    out = allocate_outputs(call, plan, poison)
    rec = launch_reconstruction(launch, call, plan, out, gpu)
    kl = launch_kl(launch, call, plan, out, gpu)
    launch_finalize(launch, call, plan, out, rec, kl)
    return out


def launch_rescale_grad_(
    launch: Launch,
    grad: torch.Tensor,
    g_term: torch.Tensor | None,
    g_loss: torch.Tensor | None,
    loss_weight: float | torch.Tensor,
    gpu: GPU | None = None,
) -> None:
    """``_rescale_grad_inplace``: grad *= g_term + loss_weight·g_loss, in one launch
    (``loss_weight`` a number, or a 0-d tensor read on the device). Moves nothing when that
    factor is 1 (decided on the device), 2·N elements otherwise."""
    n = grad.numel()
    if n == 0 or (g_term is None and g_loss is None):
        return
    gpu = gpu if gpu is not None else gpu_of(grad.device)
    block, warps, programs = reduction_config(n, grad.element_size(), gpu, ("rescale",))
    from_ptr = isinstance(loss_weight, torch.Tensor)
    weight_hi, weight_lo = _split_fp64(0.0 if from_ptr else loss_weight)
    compiled = launch(_rescale_grad_inplace)[(programs,)](
        grad_ptr=grad,
        n_elements=n,
        g_term_ptr=g_term if g_term is not None else grad,
        g_loss_ptr=g_loss if g_loss is not None else grad,
        weight_ptr=loss_weight if from_ptr else grad,
        weight_hi=weight_hi,
        weight_lo=weight_lo,
        WEIGHT_FROM_PTR=from_ptr,
        HAS_G_TERM=g_term is not None,
        HAS_G_LOSS=g_loss is not None,
        ACC_FP64=grad.dtype == torch.float64,
        INT64=n > _INT32_LIMIT - block,
        BLOCK=block,
        num_warps=warps,
    )
    note_compiled(compiled, gpu, (grad.element_size(), "rescale"))
