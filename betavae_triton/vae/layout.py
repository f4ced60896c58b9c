"""Memory layouts: the order in which the kernels walk p and x, and back to p's layout.

The kernels read flat arrays. A dense tensor in any memory order (contiguous,
channels_last, permuted) is walked as it lies in memory, as a view; only tensors that are
not dense, or whose order differs from the other operand's, are copied once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def memory_order(t: torch.Tensor) -> tuple[int, ...] | None:
    """The permutation that makes a dense tensor contiguous, or None if it is not dense.

    ``t.permute(order)`` is contiguous, so its flat view walks ``t``'s memory in order:
    the identity for contiguous tensors, ``(0, 2, 3, 1)`` for channels_last, and so on.
    """
    if t.is_contiguous():
        return tuple(range(t.dim()))
    order = tuple(sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.size(d))))
    return order if t.permute(order).is_contiguous() else None


def reconstruction_order(p: torch.Tensor, x: torch.Tensor, per_sample: bool) -> tuple[int, ...]:
    """The memory order in which the kernels walk p and x: p's if it is dense, else x's,
    else the identity; made batch-outermost for per-sample sums (each sample then a
    contiguous row of the flat order; a batch-inner layout is copied into one)."""
    order = memory_order(p)
    if order is None:
        order = memory_order(x)
    if order is None or (per_sample and order and order[0] != 0):
        return tuple(range(p.dim()))
    return order


def flatten(t: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """``t``'s elements as a flat array in ``order``: a view where ``t`` already lies in
    that order, one copy otherwise (the cheapest correct fallback)."""
    return t.permute(tuple(order)).contiguous().view(-1)


def unflatten(flat: torch.Tensor, shape: Sequence[int], order: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`flatten` for a gradient: a view with the layout of ``order``."""
    inverse = [0] * len(order)
    for position, dim in enumerate(order):
        inverse[dim] = position
    return flat.view([shape[d] for d in order]).permute(inverse)
