"""The reconstruction term: one pass over p and x for the loss and its gradient."""

import triton
import triton.language as tl

from .constants import (
    BERNOULLI,
    LAPLACE,
    NO_P_SCALE,
    NORMAL,
    P_SCALE_PER_ELEMENT,
    P_SCALE_SHARED,
)
from .elementwise import (
    absolute_error,
    bernoulli_nll,
    bernoulli_nll_logits,
    laplace_nll,
    normal_nll,
    squared_error,
)
from .tiling import in_row, load_tile, row_tile_offsets, store_tile, tail_tile


@triton.jit
def _reconstruction_tile(
    p_ptr,
    x_ptr,
    p_scale_ptr,
    grad_p_ptr,
    grad_x_ptr,
    grad_p_scale_ptr,
    offs,
    mask,
    inv_div,
    shared_p_scale,
    acc,
    acc_p_scale,
    DIST: tl.constexpr,
    P_SCALE: tl.constexpr,
    WRITE_GRAD_P: tl.constexpr,
    WRITE_GRAD_X: tl.constexpr,
    WRITE_GRAD_P_SCALE: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One tile of ``_reconstruction_fwd_bwd``: loads, the loss and its derivatives, the
    gradient stores; returns the updated accumulators. Without ``MASKED`` no access is
    masked (a full tile: 128-bit loads and stores where the addresses are aligned)."""
    acc_ty = acc.dtype
    p = load_tile(p_ptr, offs, mask, 0.5, MASKED).to(acc_ty)
    x = load_tile(x_ptr, offs, mask, 0.5, MASKED).to(acc_ty)
    if P_SCALE == P_SCALE_PER_ELEMENT:
        s = load_tile(p_scale_ptr, offs, mask, 1.0, MASKED).to(acc_ty)
    elif P_SCALE == P_SCALE_SHARED:
        s = shared_p_scale
    if DIST == NORMAL and P_SCALE != NO_P_SCALE:
        loss, d_p, d_x, d_s = normal_nll(p, x, s)
    elif DIST == LAPLACE and P_SCALE != NO_P_SCALE:
        loss, d_p, d_x, d_s = laplace_nll(p, x, s)
    elif DIST == NORMAL:
        loss, d_p, d_x = squared_error(p, x)
    elif DIST == LAPLACE:
        loss, d_p, d_x = absolute_error(p, x)
    elif DIST == BERNOULLI:
        loss, d_p, d_x = bernoulli_nll(p, x)
    else:
        loss, d_p, d_x = bernoulli_nll_logits(p, x)
    acc += in_row(loss, mask, MASKED)
    if WRITE_GRAD_P:
        store_tile(grad_p_ptr, offs, d_p * inv_div, mask, MASKED)
    if WRITE_GRAD_X:
        store_tile(grad_x_ptr, offs, d_x * inv_div, mask, MASKED)
    if WRITE_GRAD_P_SCALE and P_SCALE == P_SCALE_PER_ELEMENT:
        store_tile(grad_p_scale_ptr, offs, d_s * inv_div, mask, MASKED)
    elif WRITE_GRAD_P_SCALE:
        acc_p_scale += in_row(d_s, mask, MASKED)
    return acc, acc_p_scale


@triton.jit
def _reconstruction_fwd_bwd(
    # data
    p_ptr,
    x_ptr,
    p_scale_ptr,
    # outputs
    partial_ptr,
    grad_p_ptr,
    grad_x_ptr,
    grad_p_scale_ptr,
    # sizes
    row_len,
    grad_div,
    # what to compute
    DIST: tl.constexpr,
    P_SCALE: tl.constexpr,
    WRITE_GRAD_P: tl.constexpr,
    WRITE_GRAD_X: tl.constexpr,
    WRITE_GRAD_P_SCALE: tl.constexpr,
    ACC_FP64: tl.constexpr,
    INT64: tl.constexpr,
    ONE_ROW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Partial sums Σ ℓ(p, x) per row and program, and optionally dℓ/dp and dℓ/dx / div.

    ``DIST`` picks ℓ: squared error, absolute error, binary cross-entropy from
    probabilities, or from logits (p is then the logit). With ``P_SCALE`` the normal and
    laplace losses become the full negative log-likelihoods with the decoder's scale s,
    per element (flat like p) or shared (one value); dℓ/ds goes to ``grad_p_scale`` per
    element, or, shared, into per-program partial sums stored after the loss partials.
    Each input is read in its own dtype and upcast in registers.

    The grid is (rows, G): program (r, g) sums tiles g, g + G, g + 2G, ... of row r (the
    flat range [r·row_len, (r + 1)·row_len)) into ``partial[r·G + g]``; full tiles are
    read unmasked, the row's partial last tile masked (``ONE_ROW``: a single row, from
    offset 0). One row covering everything gives the batch total (``reduction="mean"``);
    B rows of one sample each give per-sample sums (``reduction="none"``). A fixed order
    either way, so the result is bitwise reproducible (no atomics).

    Memory traffic: reads p and x once (2·N·s bytes for s-byte elements), and the scale
    once (N·s) per element; writes the gradient of p (N·s) when ``WRITE_GRAD_P``, of x
    (N·s) when ``WRITE_GRAD_X``, of a per-element scale (N·s) when ``WRITE_GRAD_P_SCALE``;
    rows·G partials of 4 or 8 bytes (twice that with a shared scale's gradient).
    """
    row = tl.program_id(0)
    pid = tl.program_id(1)
    n_programs = tl.num_programs(1)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    inv_div = 1.0 / tl.full([], grad_div, acc_ty)
    acc = tl.zeros([BLOCK], dtype=acc_ty)
    acc_p_scale = tl.zeros([BLOCK], dtype=acc_ty)
    shared_p_scale = tl.full([], 1.0, acc_ty)
    if P_SCALE == P_SCALE_SHARED:
        shared_p_scale = tl.load(p_scale_ptr).to(acc_ty)
    n_full, has_tail = tail_tile(row_len, pid, n_programs, BLOCK)
    for tile in range(pid, n_full, n_programs):
        offs, mask = row_tile_offsets(row, tile, row_len, BLOCK, INT64, ONE_ROW)
        acc, acc_p_scale = _reconstruction_tile(
            p_ptr, x_ptr, p_scale_ptr, grad_p_ptr, grad_x_ptr, grad_p_scale_ptr,
            offs, mask, inv_div, shared_p_scale, acc, acc_p_scale,
            DIST, P_SCALE, WRITE_GRAD_P, WRITE_GRAD_X, WRITE_GRAD_P_SCALE, False,
        )  # fmt: skip
    if has_tail:
        offs, mask = row_tile_offsets(row, n_full, row_len, BLOCK, INT64, ONE_ROW)
        acc, acc_p_scale = _reconstruction_tile(
            p_ptr, x_ptr, p_scale_ptr, grad_p_ptr, grad_x_ptr, grad_p_scale_ptr,
            offs, mask, inv_div, shared_p_scale, acc, acc_p_scale,
            DIST, P_SCALE, WRITE_GRAD_P, WRITE_GRAD_X, WRITE_GRAD_P_SCALE, True,
        )  # fmt: skip
    tl.store(partial_ptr + row * n_programs + pid, tl.sum(acc, axis=0))
    if WRITE_GRAD_P_SCALE and P_SCALE == P_SCALE_SHARED:
        n_rows = tl.num_programs(0)
        slot = n_rows * n_programs + row * n_programs + pid
        tl.store(partial_ptr + slot, tl.sum(acc_p_scale, axis=0))
