"""Where a program's tiles lie: the row-and-tile addressing both reductions share."""

import triton
import triton.language as tl


@triton.jit
def row_tile_offsets(row, tile, row_len, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """Flat offsets and in-bounds mask of tile ``tile`` of row ``row`` (rows of
    ``row_len`` elements laid end to end), in 64-bit arithmetic with ``INT64``."""
    lanes = tl.arange(0, BLOCK)
    if INT64:
        in_row = tl.cast(tile, tl.int64) * BLOCK + lanes
        row_start = tl.cast(row, tl.int64) * row_len
    else:
        in_row = tile * BLOCK + lanes
        row_start = row * row_len
    return row_start + in_row, in_row < row_len
