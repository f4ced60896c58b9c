"""The backward pass: rescale the gradients saved by the forward pass by the incoming one."""

import triton
import triton.language as tl


@triton.jit
def _rescale_grad_inplace(
    grad_ptr,
    n_elements,
    g_term_ptr,
    g_loss_ptr,
    weight_ptr,
    weight_hi,
    weight_lo,
    WEIGHT_FROM_PTR: tl.constexpr,
    HAS_G_TERM: tl.constexpr,
    HAS_G_LOSS: tl.constexpr,
    ACC_FP64: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad *= f, where the factor f = g_term + w·g_loss is read on the device.

    ``g_term`` is the incoming gradient of the term (rec_loss or kl_loss), ``g_loss`` that
    of ``loss = rec + β·kl``, and w (1 or β) its weight: a 0-d tensor read on the device
    with ``WEIGHT_FROM_PTR``, else a number passed as float32 hi + lo halves.
    When f == 1, the usual case of ``out["loss"].backward()``, every program returns at
    once: the forward pass already wrote the final gradient, and no host synchronisation
    was needed to learn it.

    Memory traffic: reads two scalars; when f != 1, reads and writes the gradient once
    (2·N·s bytes); when f == 1, nothing (every program of the one-wave grid returns).
    """
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    factor = tl.zeros([], acc_ty)
    if HAS_G_TERM:
        factor += tl.load(g_term_ptr).to(acc_ty)
    if HAS_G_LOSS:
        if WEIGHT_FROM_PTR:
            w = tl.load(weight_ptr).to(acc_ty)
        else:
            w = tl.full([], weight_hi, acc_ty) + tl.full([], weight_lo, acc_ty)
        factor += w * tl.load(g_loss_ptr).to(acc_ty)
    if factor != 1.0:
        # A grid of at most one wave: each program strides over the blocks, full ones
        # unmasked (128-bit accesses), the partial last one masked.
        pid = tl.program_id(0)
        n_programs = tl.num_programs(0)
        lanes = tl.arange(0, BLOCK)
        n_full = n_elements // BLOCK
        for block in range(pid, n_full, n_programs):
            if INT64:
                offs = tl.cast(block, tl.int64) * BLOCK + lanes
            else:
                offs = block * BLOCK + lanes
            g = tl.load(grad_ptr + offs).to(acc_ty)
            tl.store(grad_ptr + offs, (g * factor).to(grad_ptr.dtype.element_ty))
        if (n_elements % BLOCK != 0) & (pid == n_full % n_programs):
            if INT64:
                offs = tl.cast(n_full, tl.int64) * BLOCK + lanes
            else:
                offs = n_full * BLOCK + lanes
            mask = offs < n_elements
            g = tl.load(grad_ptr + offs, mask=mask).to(acc_ty)
            tl.store(grad_ptr + offs, (g * factor).to(grad_ptr.dtype.element_ty), mask=mask)
