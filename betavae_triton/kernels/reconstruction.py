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
    row_len,
    grad_div,
    DIST: tl.constexpr,
    WRITE_GRAD_P: tl.constexpr,
    WRITE_GRAD_X: tl.constexpr,
    ACC_FP64: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Partial sums Σ ℓ(p, x) per row and program, and optionally dℓ/dp and dℓ/dx / div.

    ``DIST`` picks ℓ: squared error, absolute error, binary cross-entropy from
    probabilities, or from logits (p is then the logit).

    The grid is (rows, G): program (r, g) sums tiles g, g + G, g + 2G, ... of row r (the
    flat range [r·row_len, (r + 1)·row_len)) into ``partial[r·G + g]``. One row covering
    everything gives the batch total (``reduction="mean"``); B rows of one sample each
    give per-sample sums (``reduction="none"``). A fixed order either way, so the result
    is bitwise reproducible (no atomics).

    Memory traffic: reads p and x once (2·N·s bytes for s-byte elements); writes the
    gradient of p (N·s) when ``WRITE_GRAD_P`` and of x (N·s) when ``WRITE_GRAD_X``;
    rows·G partials of 4 or 8 bytes.
    """
    row = tl.program_id(0)
    pid = tl.program_id(1)
    n_programs = tl.num_programs(1)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    inv_div = 1.0 / tl.full([], grad_div, acc_ty)
    lanes = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=acc_ty)
    if INT64:
        row_start = tl.cast(row, tl.int64) * row_len
    else:
        row_start = row * row_len
    n_tiles = tl.cdiv(row_len, BLOCK)
    for tile in range(pid, n_tiles, n_programs):
        if INT64:
            in_row = tl.cast(tile, tl.int64) * BLOCK + lanes
        else:
            in_row = tile * BLOCK + lanes
        mask = in_row < row_len
        offs = row_start + in_row
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
            g = d_p * inv_div
            tl.store(grad_p_ptr + offs, g.to(grad_p_ptr.dtype.element_ty), mask=mask)
        if WRITE_GRAD_X:
            g = d_x * inv_div
            tl.store(grad_x_ptr + offs, g.to(grad_x_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + row * n_programs + pid, tl.sum(acc, axis=0))
