"""Sum the per-program partials into the three results the loss returns: loss, rec, kl."""

import triton
import triton.language as tl


@triton.jit
def _finalize_loss(
    # inputs
    rec_partial_ptr,
    kl_partial_ptr,
    # outputs
    loss_ptr,
    rec_ptr,
    kl_ptr,
    # sizes
    n_rec_partials,
    n_kl_partials,
    kl_rows,
    rec_div,
    kl_div,
    beta_ptr,
    beta_hi,
    beta_lo,
    # what to compute
    BETA_FROM_PTR: tl.constexpr,
    ACC_FP64: tl.constexpr,
    MAX_PARTIALS: tl.constexpr,
):
    """Per row r: rec = Σ partials of row r / rec_div, kl = Σ partials of row r (or of
    the only row, when the posterior has one) / kl_div, loss = rec + β·kl.

    One program per row: one in all for ``reduction="mean"`` (the divisors are the batch
    sizes), one per sample for ``reduction="none"`` (the divisors are 1). The sums run over
    a fixed-size block in a fixed order (bitwise reproducible).

    Memory traffic: reads at most 2·MAX_PARTIALS accumulators per row (and β); writes 3
    scalars per row.
    """
    row = tl.program_id(0)
    kl_row = tl.where(kl_rows == 1, 0, row)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    idx = tl.arange(0, MAX_PARTIALS)
    rec_part = tl.load(
        rec_partial_ptr + row * n_rec_partials + idx, mask=idx < n_rec_partials, other=0.0
    )
    kl_part = tl.load(
        kl_partial_ptr + kl_row * n_kl_partials + idx, mask=idx < n_kl_partials, other=0.0
    )
    rec_sum = tl.sum(rec_part, 0)
    kl_sum = tl.sum(kl_part, 0)
    # Each term is averaged in its own accumulation dtype (that of its partials: float32 for
    # 16-bit data, float64 for float64), then rounded to its output dtype.
    rec = rec_sum / tl.full([], rec_div, rec_sum.dtype)
    kl = kl_sum / tl.full([], kl_div, kl_sum.dtype)
    if BETA_FROM_PTR:
        # A 0-d tensor read on the device: a β schedule changes no compiled graph.
        beta = tl.load(beta_ptr).to(acc_ty)
    else:
        # A number, as two float32 halves (hi + lo) so that float64 keeps all its digits.
        beta = tl.full([], beta_hi, acc_ty) + tl.full([], beta_lo, acc_ty)
    # Round each term to its output dtype first, as the reference adds the returned terms.
    rec_out = rec.to(rec_ptr.dtype.element_ty)
    kl_out = kl.to(kl_ptr.dtype.element_ty)
    tl.store(rec_ptr + row, rec_out)
    if row < kl_rows:
        tl.store(kl_ptr + row, kl_out)
    loss = rec_out.to(acc_ty) + beta * kl_out.to(acc_ty)
    tl.store(loss_ptr + row, loss.to(loss_ptr.dtype.element_ty))
