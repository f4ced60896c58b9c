"""Host side of the Triton backend: layouts, launch configuration and kernel launches.

Every function here takes a ``launch`` callable that turns a ``@triton.jit`` kernel into
something to index with a grid: ``torch.library.wrap_triton`` on CUDA (so inductor sees
the kernels) and the identity on the CPU interpreter.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import triton

from .kernels.finalize import _finalize_loss
from .kernels.kl import _normal_kl_fwd_bwd
from .kernels.reconstruction import (
    BERNOULLI,
    BERNOULLI_LOGITS,
    LAPLACE,
    NO_SCALE,
    NORMAL,
    SCALE_PER_ELEMENT,
    SCALE_SHARED,
    _reconstruction_fwd_bwd,
)
from .kernels.scale import _scale_grad_inplace

# The reconstruction losses the kernels know; "bernoulli_logits" reads p as logits.
DIST_CODES = {
    "normal": NORMAL,
    "laplace": LAPLACE,
    "bernoulli": BERNOULLI,
    "bernoulli_logits": BERNOULLI_LOGITS,
}
# Upper bound on the programs of a reduction, hence on the partials the finalize sums.
MAX_PARTIALS = 1024
_INT32_LIMIT = 2**31 - 1
# Set by tests: fill every output with NaN before the kernels write it.
POISON_OUTPUTS = False

Launch = Callable[[Callable], Callable]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, float32 for everything narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def reduction_config(n: int, element_size: int, device: torch.device) -> tuple[int, int, int]:
    """``(BLOCK, num_warps, programs)`` for a reduction over ``n`` elements.

    On the GPU: 16 bytes per thread per load (a 128-bit vector) times 4 in flight, 8 warps,
    and a persistent grid of 4 programs per SM, which keeps the partials few and the
    finalize a single block. Under the interpreter: few large programs (each program is a
    Python call). The GPU issue tunes these on the H100.
    """
    if device.type == "cuda":
        block = 4096 if element_size <= 2 else 2048
        cap = min(MAX_PARTIALS, 4 * _sm_count(device.index or 0))
        return block, 8, max(1, min(triton.cdiv(n, block), cap))
    block = 1024
    return block, 4, max(1, min(triton.cdiv(n, block), 4))


def _split_fp64(value: float) -> tuple[float, float]:
    """value ≈ hi + lo with hi, lo float32: how a float64 scalar reaches a kernel intact."""
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


def _empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


# ---- layouts --------------------------------------------------------------------------


def memory_order(t: torch.Tensor) -> list[int] | None:
    """The permutation that makes a dense tensor contiguous, or None if it is not dense.

    ``t.permute(order)`` is contiguous, so its flat view walks ``t``'s memory in order:
    the identity for contiguous tensors, ``[0, 2, 3, 1]`` for channels_last, and so on.
    """
    if t.is_contiguous():
        return list(range(t.dim()))
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.size(d)))
    return order if t.permute(order).is_contiguous() else None


def shared_layout(p: torch.Tensor, x: torch.Tensor) -> list[int]:
    """The memory order in which the kernels walk p and x (see :func:`flat_pair`)."""
    order = memory_order(p)
    if order is None:
        order = memory_order(x)
    return order if order is not None else list(range(p.dim()))


def rec_layout(p: torch.Tensor, x: torch.Tensor, per_sample: bool) -> list[int]:
    """:func:`shared_layout`, made batch-outermost for per-sample sums (each sample then a
    contiguous row of the flat order; a batch-inner layout is copied into one)."""
    order = shared_layout(p, x)
    if per_sample and order and order[0] != 0:
        return list(range(p.dim()))
    return order


def flat_pair(
    p: torch.Tensor, x: torch.Tensor, order: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat views of p and x in the same element order, copying only what must be copied.

    Where p and x share a dense layout this is two views; otherwise the one that does
    not follow ``order`` is copied into it (the cheapest correct fallback).
    """

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.permute(order).contiguous().view(-1)

    return flat(p), flat(x)


def unflatten(flat: torch.Tensor, shape: Sequence[int], order: list[int]) -> torch.Tensor:
    """Inverse of :func:`flat_pair` for a gradient: a view with p's layout."""
    inverse = [0] * len(order)
    for position, dim in enumerate(order):
        inverse[dim] = position
    return flat.view([shape[d] for d in order]).permute(inverse)


# ---- outputs --------------------------------------------------------------------------


def scale_mode(p_scale: torch.Tensor) -> int:
    """How the kernels read the decoder's scale: not at all (an empty tensor), as one
    shared value, or per element."""
    if p_scale.numel() == 0:
        return NO_SCALE
    return SCALE_SHARED if p_scale.numel() == 1 else SCALE_PER_ELEMENT


def output_dtypes(
    x: torch.Tensor,
    p: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    p_scale: torch.Tensor | None = None,
) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """The dtypes of rec, kl and loss: what the reference returns."""
    rec_dtype = torch.promote_types(p.dtype, x.dtype)
    if p_scale is not None and p_scale.numel() > 0:
        rec_dtype = torch.promote_types(rec_dtype, p_scale.dtype)
    kl_dtype = torch.promote_types(loc.dtype, scale.dtype)
    return rec_dtype, kl_dtype, torch.promote_types(rec_dtype, kl_dtype)


def loss_rows(
    x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, per_sample: bool
) -> tuple[int, int, int]:
    """``(rows, rec_rows, kl_rows)``: programs of the finalize, and the rows each term is
    reduced into (1 each for the batch mean; B and Bq for per-sample sums; 0 for a term
    that is not computed)."""
    m = math.prod(torch.broadcast_shapes(loc.shape, scale.shape))
    if not per_sample:
        return 1, 1, 1
    rec_rows = x.shape[0] if x.numel() > 0 else 0
    kl_rows = torch.broadcast_shapes(loc.shape, scale.shape)[0] if m > 0 else 0
    rows = max(rec_rows, kl_rows)
    return rows, rec_rows, kl_rows


def allocate_outputs(
    x: torch.Tensor,
    p: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    need_grad_p: bool,
    need_grad_x: bool,
    need_grad_q: bool,
    per_sample: bool = False,
    kl_per_dim: bool = False,
    p_scale: torch.Tensor | None = None,
    need_grad_p_scale: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``rec, kl, loss``, the flat gradient buffers ``rec_grads, kl_grads``, ``kl_dims``
    and ``scale_grads``.

    ``rec, kl, loss`` are scalars, or with ``per_sample`` vectors of shape (B,), (Bq,) and
    (max(B, Bq),). ``rec_grads`` holds [dL/dp | dL/dx] (each present only when needed) in
    the memory order of :func:`rec_layout`; ``kl_grads`` holds [dL/dμ | dL/dσ] over the
    broadcast shape of (μ, σ); ``kl_dims`` the batch-mean KL of each latent dimension
    (shape of one posterior sample) with ``kl_per_dim``, else nothing; ``scale_grads``
    the derivatives in the decoder's scale ``p_scale`` when they are needed: per element
    (flat like ``rec_grads``) or, for a shared scale, one per reduction row in the
    accumulation dtype. The fake (meta) implementation of the operator is this function.
    """
    device = x.device
    rec_dtype, kl_dtype, loss_dtype = output_dtypes(x, p, loc, scale, p_scale)
    n = x.numel()
    shape = torch.broadcast_shapes(loc.shape, scale.shape)
    mode = scale_mode(p_scale) if p_scale is not None else NO_SCALE
    grads_shape, grads_dtype = (0,), rec_dtype
    if need_grad_p_scale and mode == SCALE_PER_ELEMENT:
        grads_shape = (n,)
    elif need_grad_p_scale and mode == SCALE_SHARED:
        grads_shape = (max(1, loss_rows(x, loc, scale, per_sample)[1]),)
        grads_dtype = accumulation_dtype(rec_dtype)
    m = math.prod(shape)
    if per_sample:
        rows, _, kl_rows = loss_rows(x, loc, scale, per_sample)
        shapes = ((rows,), (kl_rows or rows,), (rows,))
    else:
        shapes = ((), (), ())
    return (
        _empty(shapes[0], rec_dtype, device),
        _empty(shapes[1], kl_dtype, device),
        _empty(shapes[2], loss_dtype, device),
        _empty(((int(need_grad_p) + int(need_grad_x)) * n,), rec_dtype, device),
        _empty((2 * m if need_grad_q else 0,), kl_dtype, device),
        _empty(tuple(shape[1:]) if kl_per_dim else (0,), kl_dtype, device),
        _empty(grads_shape, grads_dtype, device),
    )


# ---- launches -------------------------------------------------------------------------


def loss_fwd(
    launch: Launch,
    x: torch.Tensor,
    p: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    beta: float,
    dist: str,
    q_logvar: bool,
    need_grad_p: bool,
    need_grad_x: bool,
    need_grad_q: bool,
    per_sample: bool = False,
    kl_per_dim: bool = False,
    p_scale: torch.Tensor | None = None,
    need_grad_p_scale: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Loss terms and the gradients they need, in at most three launches.

    Launches: the reconstruction reduction (skipped when x is empty), the KL reduction
    (skipped when the posterior is empty) and the finalize. ``dist`` is a key of
    ``DIST_CODES``; with ``q_logvar`` the ``scale`` argument holds log σ² (and the KL
    gradient buffer its gradient). With ``per_sample`` the terms are per-sample sums (the
    gradient buffers then hold the unscaled per-element derivatives); ``kl_per_dim`` adds
    one torch reduction of the KL elements the KL kernel writes. A non-empty ``p_scale``
    (normal and laplace) turns the reconstruction into the full negative log-likelihood
    with that decoder scale, shared (one element) or per element (broadcast to x); a
    shared scale's gradient costs one small torch sum of per-program partials.
    """
    if p_scale is None:
        p_scale = x.new_empty((0,))
    out = allocate_outputs(
        x,
        p,
        loc,
        scale,
        need_grad_p,
        need_grad_x,
        need_grad_q,
        per_sample,
        kl_per_dim,
        p_scale,
        need_grad_p_scale,
    )
    rec, kl, loss, rec_grads, kl_grads, kl_dims, scale_grads = out
    mode = scale_mode(p_scale)
    device = x.device
    rec_dtype, kl_dtype, loss_dtype = rec.dtype, kl.dtype, loss.dtype
    rows, rec_rows, kl_rows = loss_rows(x, loc, scale, per_sample)
    batch = max(x.shape[0], 1) if x.dim() > 0 else 1
    shape = torch.broadcast_shapes(loc.shape, scale.shape)
    q_batch = shape[0] if len(shape) > 0 and shape[0] > 0 else 1

    # Reconstruction: p and x in one memory order and one dtype.
    n = x.numel()
    rec_acc = accumulation_dtype(rec_dtype)
    n_rec_programs = 0
    rec_partials = torch.empty((2 * max(rec_rows, 1) * MAX_PARTIALS,), dtype=rec_acc, device=device)
    if n > 0:
        order = rec_layout(p, x, per_sample)
        p_flat, x_flat = flat_pair(p.to(rec_dtype), x.to(rec_dtype), order)
        if mode == SCALE_PER_ELEMENT:
            s_flat = p_scale.to(rec_dtype).expand(x.shape).permute(order).contiguous().view(-1)
        else:
            s_flat = p_scale.to(rec_dtype).reshape(-1) if mode == SCALE_SHARED else p_flat
        row_len = n // rec_rows
        block, warps, n_rec_programs = reduction_config(row_len, p_flat.element_size(), device)
        if per_sample:
            n_rec_programs = max(1, min(n_rec_programs, triton.cdiv(n_rec_programs, rec_rows)))
        grad_p = rec_grads[:n] if need_grad_p else p_flat
        grad_x = rec_grads[n * int(need_grad_p) :] if need_grad_x else p_flat
        write_grad_scale = need_grad_p_scale and mode != NO_SCALE
        launch(_reconstruction_fwd_bwd)[(rec_rows, n_rec_programs)](
            p_flat,
            x_flat,
            rec_partials,
            grad_p,
            grad_x,
            s_flat,
            scale_grads if mode == SCALE_PER_ELEMENT and write_grad_scale else p_flat,
            row_len,
            1 if per_sample else batch,
            DIST=DIST_CODES[dist],
            SCALE=mode,
            WRITE_GRAD_P=need_grad_p,
            WRITE_GRAD_X=need_grad_x,
            WRITE_GRAD_SCALE=write_grad_scale,
            ACC_FP64=rec_acc == torch.float64,
            INT64=n > _INT32_LIMIT - block,
            BLOCK=block,
            num_warps=warps,
        )
        if write_grad_scale and mode == SCALE_SHARED:
            start = rec_rows * n_rec_programs
            per_row = rec_partials[start : 2 * start].view(rec_rows, n_rec_programs).sum(1)
            scale_grads.copy_(per_row.div_(1 if per_sample else batch))
    elif scale_grads.numel() > 0:
        scale_grads.zero_()  # no data: the scale gets no gradient

    # KL: μ and σ broadcast to one contiguous shape (a copy only where they differ).
    m = math.prod(shape)
    kl_acc = accumulation_dtype(kl_dtype)
    n_kl_programs = 0
    kl_partials = torch.empty((max(kl_rows, 1) * MAX_PARTIALS,), dtype=kl_acc, device=device)
    if m > 0:
        mu = loc.to(kl_dtype).expand(shape).contiguous()
        sigma = scale.to(kl_dtype).expand(shape).contiguous()
        row_len = m // kl_rows
        block, warps, n_kl_programs = reduction_config(row_len, mu.element_size(), device)
        if per_sample:
            n_kl_programs = max(1, min(n_kl_programs, triton.cdiv(n_kl_programs, kl_rows)))
        kl_elements = torch.empty_like(mu) if kl_per_dim else mu
        launch(_normal_kl_fwd_bwd)[(kl_rows, n_kl_programs)](
            mu,
            sigma,
            kl_partials,
            kl_grads[:m] if need_grad_q else mu,
            kl_grads[m:] if need_grad_q else mu,
            kl_elements,
            row_len,
            1 if per_sample else q_batch,
            WRITE_GRAD=need_grad_q,
            WRITE_KL=kl_per_dim,
            LOGVAR=q_logvar,
            ACC_FP64=kl_acc == torch.float64,
            INT64=m > _INT32_LIMIT - block,
            BLOCK=block,
            num_warps=warps,
        )
        if kl_per_dim:
            kl_dims.copy_(kl_elements.to(kl_acc).sum(0).div_(q_batch))

    beta_hi, beta_lo = _split_fp64(beta)
    launch(_finalize_loss)[(rows,)](
        rec_partials,
        kl_partials,
        rec,
        kl,
        loss,
        n_rec_programs,
        n_kl_programs,
        kl_rows if kl_rows > 0 else rows,
        1 if per_sample else batch,
        1 if per_sample else q_batch,
        beta_hi,
        beta_lo,
        ACC_FP64=loss_dtype == torch.float64,
        MAX_PARTIALS=MAX_PARTIALS,
        num_warps=4,
    )
    return out


def scale_grad_(
    launch: Launch,
    grad: torch.Tensor,
    g_term: torch.Tensor | None,
    g_loss: torch.Tensor | None,
    loss_weight: float,
) -> None:
    """grad *= g_term + loss_weight·g_loss, in place, in one launch (no-op on the device
    when the factor is 1)."""
    n = grad.numel()
    if n == 0 or (g_term is None and g_loss is None):
        return
    block = 4096 if grad.device.type == "cuda" else 1024
    hi, lo = _split_fp64(loss_weight)
    launch(_scale_grad_inplace)[(triton.cdiv(n, block),)](
        grad,
        n,
        g_term if g_term is not None else grad,
        g_loss if g_loss is not None else grad,
        hi,
        lo,
        HAS_G_TERM=g_term is not None,
        HAS_G_LOSS=g_loss is not None,
        ACC_FP64=grad.dtype == torch.float64,
        INT64=n > _INT32_LIMIT - block,
        BLOCK=block,
        num_warps=8 if grad.device.type == "cuda" else 4,
    )
