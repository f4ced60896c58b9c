"""Where a program's tiles lie: the row-and-tile addressing both reductions share.

A row's full tiles are read without a mask, so that the compiler can prove every access
of a tile contiguous and aligned and emit 128-bit loads and stores; the one partial tile
at the end of a row (if any) is read with a mask, by the program whose turn it is, in the
same order as before (so results do not depend on the split).
"""

import triton
import triton.language as tl


@triton.jit
def row_tile_offsets(
    row, tile, row_len, BLOCK: tl.constexpr, INT64: tl.constexpr, ONE_ROW: tl.constexpr
):
    """Flat offsets and in-bounds mask of tile ``tile`` of row ``row`` (rows of
    ``row_len`` elements laid end to end), in 64-bit arithmetic with ``INT64``. With
    ``ONE_ROW`` the row starts at 0, which the compiler then knows (an aligned start
    whatever ``row_len`` is)."""
    lanes = tl.arange(0, BLOCK)
    if INT64:
        in_row = tl.cast(tile, tl.int64) * BLOCK + lanes
        row_start = tl.cast(row, tl.int64) * row_len
    else:
        in_row = tile * BLOCK + lanes
        row_start = row * row_len
    if ONE_ROW:
        return in_row, in_row < row_len
    return row_start + in_row, in_row < row_len


@triton.jit
def tail_tile(row_len, pid, n_programs, BLOCK: tl.constexpr):
    """``(index of the row's partial tile, whether this program reads it)``: tiles go
    round-robin to the programs, so the partial one, after ``row_len // BLOCK`` full
    ones, belongs to program ``(row_len // BLOCK) % n_programs``."""
    n_full = row_len // BLOCK
    return n_full, (row_len % BLOCK != 0) & (pid == n_full % n_programs)


@triton.jit
def load_tile(ptr, offs, mask, other, MASKED: tl.constexpr):
    """A tile's values, masked (with ``other`` outside the row) only with ``MASKED``."""
    if MASKED:
        values = tl.load(ptr + offs, mask=mask, other=other)
    else:
        values = tl.load(ptr + offs)
    return values


@triton.jit
def store_tile(ptr, offs, values, mask, MASKED: tl.constexpr):
    """Store a tile in the pointer's dtype, masked only with ``MASKED``."""
    values = values.to(ptr.dtype.element_ty)
    if MASKED:
        tl.store(ptr + offs, values, mask=mask)
    else:
        tl.store(ptr + offs, values)


@triton.jit
def in_row(values, mask, MASKED: tl.constexpr):
    """``values`` with the lanes past the row's end zeroed (for sums), with ``MASKED``."""
    if MASKED:
        values = tl.where(mask, values, 0.0)
    return values
