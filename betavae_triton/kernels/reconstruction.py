"""The reconstruction term: one pass over p and x for the loss and its gradient."""

import triton
import triton.language as tl

from .elementwise import absolute_error, bernoulli_nll, bernoulli_nll_logits, squared_error

# The values of the DIST constexpr.
NORMAL, LAPLACE, BERNOULLI, BERNOULLI_LOGITS = 0, 1, 2, 3


@triton.jit
def _reconstruction_fwd_bwd(
    p_ptr,
    x_ptr,
    partial_ptr,
    grad_p_ptr,
    grad_x_ptr,
    n_elements,
    batch,
    DIST: tl.constexpr,
    WRITE_GRAD_P: tl.constexpr,
    WRITE_GRAD_X: tl.constexpr,
    ACC_FP64: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per-program partial Σ ℓ(p, x) and, optionally, dℓ/dp / B and dℓ/dx / B.

    ``DIST`` picks ℓ: squared error, absolute error, binary cross-entropy from
    probabilities, or from logits (p is then the logit).

    p and x are flat views in the same memory order. Program ``pid`` of ``G`` sums tiles
    pid, pid + G, pid + 2G, ... into ``partial[pid]``: a fixed order, so the result is
    bitwise reproducible (no atomics).

    Memory traffic: reads p and x once (2·N·s bytes for s-byte elements); writes the
    gradient of p (N·s) when ``WRITE_GRAD_P`` and of x (N·s) when ``WRITE_GRAD_X``;
    G partials of 4 or 8 bytes.
    """
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    inv_batch = 1.0 / tl.full([], batch, acc_ty)
    lanes = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=acc_ty)
    n_tiles = tl.cdiv(n_elements, BLOCK)
    for tile in range(pid, n_tiles, n_programs):
        if INT64:
            offs = tl.cast(tile, tl.int64) * BLOCK + lanes
        else:
            offs = tile * BLOCK + lanes
        mask = offs < n_elements
        p = tl.load(p_ptr + offs, mask=mask, other=0.5).to(acc_ty)
        x = tl.load(x_ptr + offs, mask=mask, other=0.5).to(acc_ty)
        if DIST == 0:
            loss, d_p, d_x = squared_error(p, x)
        elif DIST == 1:
            loss, d_p, d_x = absolute_error(p, x)
        elif DIST == 2:
            loss, d_p, d_x = bernoulli_nll(p, x)
        else:
            loss, d_p, d_x = bernoulli_nll_logits(p, x)
        acc += tl.where(mask, loss, 0.0)
        if WRITE_GRAD_P:
            g = d_p * inv_batch
            tl.store(grad_p_ptr + offs, g.to(grad_p_ptr.dtype.element_ty), mask=mask)
        if WRITE_GRAD_X:
            g = d_x * inv_batch
            tl.store(grad_x_ptr + offs, g.to(grad_x_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))
