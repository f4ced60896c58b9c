"""β-TCVAE's minibatch log-densities: online log-sum-exps over the batch, never B×B×D.

For samples z_i and posteriors (μ_j, σ_j), M_ijd = log N(z_id; μ_jd, σ_jd) = c_jd − ½t²
with t = (z_id − μ_jd)/σ_jd and c_jd = −½ log 2π − log σ_jd, and the estimator's
log-weights log w_ij (:func:`log_weight`, computed in registers):

- log q(z_i) = LSE_j [Σ_d M_ijd + log w_ij]
- log Π_d q(z_id) = Σ_d LSE_j [M_ijd + log w_ij]   (stored per d; summed on the host)

The samples z_i are ``n_rows`` rows whose batch indices start at ``row_offset`` (a rank's
share of a batch gathered across ranks; 0 and ``batch`` on one process); the posteriors
are the whole batch of ``batch``, and log w_ij is that of the global indices.

The walk over the batch is split so that the grid fills the GPU whatever B: each program
takes a block of rows and one *split* of the other index (a range of ``span`` posteriors j
forward and for dL/dz; a range of ``span`` samples i for dL/dμ and dL/d log σ), and writes
partial results per split, which a second kernel (forward: :func:`_merge_split_log_sum_exps`)
or a sum over the splits (backward) combines in a fixed order: deterministic, no atomics,
O(splits·B·D) extra memory. The pairwise kernels read each posterior as the C kernels of
``tcvae/minibatch.c`` do: μ, 1/σ and c, the last two computed once per call by
:func:`_posterior_constants` (no exponential per pair for σ). Kernels:

- :func:`_posterior_constants`: 1/σ and c from log σ, elementwise;
- :func:`_minibatch_log_densities_fwd`: per row block and split of j, the online
  log-sum-exps (maximum and rescaled sum) of the joint and of each marginal;
- :func:`_merge_split_log_sum_exps`: per row block, those partials merged over the splits;
- :func:`_minibatch_grad_z`: per row block and split of j, its share of dL/dz;
- :func:`_minibatch_grad_posterior`: per column block and split of i, its shares of dL/dμ
  and dL/d log σ.

The backward kernels recompute M from the saved log-sum-exps.

Rows of D values (z, the posteriors, the saved log-sum-exps and gradients) start at
multiples of ``ROW_ALIGN`` elements, the largest power of two dividing D up to one 128-bit
access: the launcher passes it, and :func:`_tile_offsets`, :func:`_row_offsets` and
:func:`_dims_in` tell the compiler (whose own specialization knows only whether D is a
multiple of 16), so that row loads are as wide as D and the tile's layout allow.
"""

import triton
import triton.language as tl

from .constants import HALF_LOG_2PI, MSS, MSS_BANK, MWS


@triton.jit
def log_weight(i, j, batch, own, strat, rest, ESTIMATOR: tl.constexpr):
    """log w_ij for broadcastable index tensors i, j (constants from
    :func:`estimator_constants`): MWS ``own`` (−log BN) everywhere;
    MSS (and MSS with a bank, whose ``strat`` is ``rest``) ``own`` on the diagonal,
    ``strat`` at j = i + 1 mod B, ``rest`` elsewhere; MSS-reference (the authors'
    matrix) ``own`` in column 0 (``strat`` at row B − 2), ``strat`` in column 1, ``rest``
    elsewhere."""
    if ESTIMATOR == MWS:
        w = tl.where(i == j, own, own)
    elif ESTIMATOR == MSS or ESTIMATOR == MSS_BANK:
        w = tl.where(j == i, own, tl.where(j == (i + 1) % batch, strat, rest))
    else:
        col0 = tl.where(i == batch - 2, strat, own)
        w = tl.where(j == 0, col0, tl.where(j == 1, strat, rest))
    return w


@triton.jit
def estimator_constants(batch, dataset_size, ESTIMATOR: tl.constexpr, ACC_FP64: tl.constexpr):
    """``(own, strat, rest)`` log-weights, computed in the accumulation dtype from the
    integer sizes (a float argument would reach the kernel in float32): −log N,
    log (N − B + 1)/(N(B − 1)) and −log (B − 1); all three −log(B·N) for MWS; −log N
    and twice log (N − 1)/(N(B − 1)) for MSS with a bank (B: the batch and the bank)."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    n = tl.full([], dataset_size, acc_ty)
    b = tl.full([], batch, acc_ty)
    m = b - 1.0
    if ESTIMATOR == MWS:
        own = -tl.log(b * n)
        strat = own
        rest = own
    elif ESTIMATOR == MSS_BANK:
        own = -tl.log(n)
        strat = tl.log((n - 1.0) / (n * m))
        rest = strat
    else:
        own = -tl.log(n)
        strat = tl.log((n - m) / (n * m))
        rest = -tl.log(m)
    return own, strat, rest


@triton.jit
def _tile_offsets(rows, dims, latent, ROW_ALIGN: tl.constexpr):
    """Offsets of ``rows`` × ``dims`` in a row-major (·, D) array, each row starting at a
    multiple of ``ROW_ALIGN`` elements (the launcher's promise: D is a multiple of it),
    which the compiler is told."""
    return tl.multiple_of(rows[:, None] * latent + dims[None, :], [1, ROW_ALIGN])


@triton.jit
def _row_offsets(row, dims, latent, ROW_ALIGN: tl.constexpr):
    """Offsets of one row's ``dims`` in a row-major (·, D) array, as :func:`_tile_offsets`."""
    return tl.multiple_of(row * latent + dims, ROW_ALIGN)


@triton.jit
def _dims_in(dims, latent, ROW_ALIGN: tl.constexpr):
    """``dims < latent``, constant over aligned runs of ``ROW_ALIGN`` (D is a multiple of
    it): a mask that lets the loads it guards stay vectors."""
    return tl.max_constancy(dims < latent, ROW_ALIGN)


@triton.jit
def _pair(z, mu, inv_sigma, c):
    """``(M, t)`` elementwise: M = log N(z; μ, σ) = c − ½t² and t = (z − μ)/σ, from the
    posterior's 1/σ and c = −½ log 2π − log σ, in the float64 oracle's order (t, its
    square, c minus half of it)."""
    t = (z - mu) * inv_sigma
    return c - 0.5 * t * t, t


@triton.jit
def _online_log_sum_exp(run_max, run_sum, x):
    """One step of an online log-sum-exp, LSE = run_max + log run_sum, with one exponential
    per element (the other factor is exp(0) = 1): for d = x − run_max, a new maximum
    (d > 0) rescales the sum by e^−d and adds 1; otherwise the sum gains e^d. The
    exponentials are what bounds these kernels on a GPU (the special-function units), so
    this halves the forward pass's."""
    d = x - run_max
    e = tl.exp(-tl.abs(d))
    grow = d > 0
    return tl.where(grow, x, run_max), tl.where(grow, run_sum * e + 1.0, run_sum + e)


@triton.jit
def _gradient_weights(pair, lw, dim_ok, log_qz, g_qz, log_prod, g_prod):
    """G = g_qz · softmax_j(Σ_d M + log w) + g_prod · softmax_j(M + log w), recomputed from
    the saved log-sum-exps (``log_qz``, ``g_qz`` broadcast against the rows of ``pair``;
    ``log_prod``, ``g_prod`` against ``pair`` itself)."""
    joint = tl.sum(tl.where(dim_ok[None, :], pair, 0.0), axis=1) + lw
    soft_q = tl.exp(joint - log_qz)
    weighted_q = g_qz * soft_q
    marginal = pair + lw[:, None]
    soft_p = tl.exp(marginal - log_prod)
    return weighted_q[:, None] + g_prod * soft_p


@triton.jit
def _posterior_constants(log_sigma_ptr, inv_sigma_ptr, c_ptr, n_elements, BLOCK: tl.constexpr):
    """1/σ = e^(−log σ) and c = −½ log 2π − log σ of every posterior element (flat, in
    log σ's dtype, the accumulation dtype): what the pairwise kernels read instead of
    log σ, so that none takes an exponential per pair for σ.

    Grid: cdiv(n_elements, BLOCK). Memory traffic: reads log σ once (B·D values), writes
    1/σ and c once (2·B·D values).
    """
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < n_elements
    log_sigma = tl.load(log_sigma_ptr + offsets, mask=ok, other=0.0)
    tl.store(inv_sigma_ptr + offsets, tl.exp(-log_sigma), mask=ok)
    tl.store(c_ptr + offsets, -log_sigma - HALF_LOG_2PI, mask=ok)


@triton.jit
def _minibatch_log_densities_fwd(
    z_ptr,
    mu_ptr,
    inv_sigma_ptr,
    c_ptr,
    part_max_ptr,
    part_sum_ptr,
    n_rows,
    row_offset,
    batch,
    latent,
    dataset_size,
    span,
    ESTIMATOR: tl.constexpr,
    ACC_FP64: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The online log-sum-exps of the joint and of each marginal for a block of rows i
    over one split of the posteriors, j in [split·span, (split + 1)·span) ∩ [0, B).

    Grid: (cdiv(n_rows, BLOCK_I), splits). Writes, at [split, i, :], the running maximum
    and rescaled sum of each marginal d < D and, in column D, of the joint: partials of
    shape (splits, n_rows, D + 1); an empty split writes (−inf, 0). Memory traffic: reads
    the block's z once and the split's posteriors (μ, 1/σ, c) once (from the cache);
    writes 2·BLOCK_I·(D + 1) values.
    """
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    own, strat, rest = estimator_constants(batch, dataset_size, ESTIMATOR, ACC_FP64)
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    dims = tl.arange(0, BLOCK_D)
    row_ok, dim_ok = rows < n_rows, _dims_in(dims, latent, ROW_ALIGN)
    tile = _tile_offsets(rows, dims, latent, ROW_ALIGN)
    z = tl.load(z_ptr + tile, mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(acc_ty)
    max_q = tl.full([BLOCK_I], float("-inf"), acc_ty)
    sum_q = tl.zeros([BLOCK_I], acc_ty)
    max_p = tl.full([BLOCK_I, BLOCK_D], float("-inf"), acc_ty)
    sum_p = tl.zeros([BLOCK_I, BLOCK_D], acc_ty)
    for j in range(split * span, tl.minimum(split * span + span, batch)):
        post = _row_offsets(j, dims, latent, ROW_ALIGN)
        mu = tl.load(mu_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)
        inv_sigma = tl.load(inv_sigma_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)
        c = tl.load(c_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)
        pair, _ = _pair(z, mu[None, :], inv_sigma[None, :], c[None, :])
        lw = log_weight(rows + row_offset, j, batch, own, strat, rest, ESTIMATOR).to(acc_ty)
        joint = tl.sum(tl.where(dim_ok[None, :], pair, 0.0), axis=1) + lw
        max_q, sum_q = _online_log_sum_exp(max_q, sum_q, joint)
        max_p, sum_p = _online_log_sum_exp(max_p, sum_p, pair + lw[:, None])
    width = latent + 1
    out = split * n_rows * width + rows[:, None] * width + dims[None, :]
    out_ok = row_ok[:, None] & dim_ok[None, :]
    tl.store(part_max_ptr + out, max_p, mask=out_ok)
    tl.store(part_sum_ptr + out, sum_p, mask=out_ok)
    joint_out = split * n_rows * width + rows * width + latent
    tl.store(part_max_ptr + joint_out, max_q, mask=row_ok)
    tl.store(part_sum_ptr + joint_out, sum_q, mask=row_ok)


@triton.jit
def _merge_split_log_sum_exps(
    part_max_ptr,
    part_sum_ptr,
    log_qz_ptr,
    log_prod_ptr,
    n_rows,
    latent,
    splits,
    BLOCK_S: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """log q(z_i) and log q(z_id) from the forward's partials (splits, n_rows, D + 1),
    merged over the splits, BLOCK_S at a time in split order: per tile, M = max_s m_s and
    Σ_s s_s·e^{m_s − M}, folded into the running (maximum, sum) as an online log-sum-exp.
    An empty or all −inf split adds nothing; −inf when every split is; NaN propagates.

    Grid: cdiv(n_rows·(D + 1), BLOCK_N). Memory traffic: reads the partials once
    (2·splits·n_rows·(D + 1) values), writes n_rows·(1 + D) values.
    """
    acc_ty = part_sum_ptr.dtype.element_ty
    flat = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    width = latent + 1
    size = n_rows * width
    flat_ok = flat < size
    top = tl.full([BLOCK_N], float("-inf"), acc_ty)
    total = tl.zeros([BLOCK_N], acc_ty)
    for first in range(0, splits, BLOCK_S):
        split = first + tl.arange(0, BLOCK_S)
        ok = (split < splits)[:, None] & flat_ok[None, :]
        tile = split[:, None] * size + flat[None, :]
        m = tl.load(part_max_ptr + tile, mask=ok, other=float("-inf"))
        s = tl.load(part_sum_ptr + tile, mask=ok, other=0.0)
        new_top = tl.maximum(top, tl.max(m, axis=0), propagate_nan=tl.PropagateNan.ALL)
        # Shift by 0 while every split so far is −inf: e^(−inf − 0) = 0, where
        # (−inf) − (−inf) would be NaN.
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)
        total = total * tl.exp(top - shift) + tl.sum(s * tl.exp(m - shift[None, :]), axis=0)
        top = new_top
    lse = top + tl.log(total)  # −inf + log 0 = −inf where every split is −inf
    row, col = flat // width, flat % width
    tl.store(log_qz_ptr + row, lse, mask=flat_ok & (col == latent))
    tl.store(log_prod_ptr + row * latent + col, lse, mask=flat_ok & (col < latent))


@triton.jit
def _minibatch_grad_z(
    z_ptr,
    mu_ptr,
    inv_sigma_ptr,
    c_ptr,
    log_qz_ptr,
    log_prod_ptr,
    g_qz_ptr,
    g_prod_ptr,
    part_grad_z_ptr,
    n_rows,
    row_offset,
    batch,
    latent,
    dataset_size,
    span,
    ESTIMATOR: tl.constexpr,
    ACC_FP64: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One split's share of dL/dz for a block of rows i: Σ_j G_ijd · ∂M_ijd/∂z_id =
    −Σ_j G_ijd t_ijd / σ_jd over the split's posteriors j, with G_ijd = g_qz_i ·
    softmax_j(joint) + g_prod_id · softmax_j(marginal), recomputed.

    Grid: (cdiv(n_rows, BLOCK_I), splits). Writes the share at [split, i, :] of partials
    (splits, n_rows, D), which the caller sums over the splits in order. Memory traffic:
    as the forward pass, plus the block's saved log-sum-exps and incoming gradients;
    writes BLOCK_I·D values.
    """
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    own, strat, rest = estimator_constants(batch, dataset_size, ESTIMATOR, ACC_FP64)
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    dims = tl.arange(0, BLOCK_D)
    row_ok, dim_ok = rows < n_rows, _dims_in(dims, latent, ROW_ALIGN)
    tile = _tile_offsets(rows, dims, latent, ROW_ALIGN)
    tile_ok = row_ok[:, None] & dim_ok[None, :]
    z = tl.load(z_ptr + tile, mask=tile_ok, other=0.0).to(acc_ty)
    log_qz = tl.load(log_qz_ptr + rows, mask=row_ok, other=0.0).to(acc_ty)
    log_prod = tl.load(log_prod_ptr + tile, mask=tile_ok, other=0.0).to(acc_ty)
    g_qz = tl.load(g_qz_ptr + rows, mask=row_ok, other=0.0).to(acc_ty)
    g_prod = tl.load(g_prod_ptr + tile, mask=tile_ok, other=0.0).to(acc_ty)
    grad = tl.zeros([BLOCK_I, BLOCK_D], acc_ty)
    for j in range(split * span, tl.minimum(split * span + span, batch)):
        post = _row_offsets(j, dims, latent, ROW_ALIGN)
        mu = tl.load(mu_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)
        inv_sigma = tl.load(inv_sigma_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)
        c = tl.load(c_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)
        pair, t = _pair(z, mu[None, :], inv_sigma[None, :], c[None, :])
        lw = log_weight(rows + row_offset, j, batch, own, strat, rest, ESTIMATOR).to(acc_ty)
        g = _gradient_weights(pair, lw, dim_ok, log_qz, g_qz, log_prod, g_prod)
        grad -= g * t * inv_sigma[None, :]
    out = split * n_rows * latent + tile
    tl.store(part_grad_z_ptr + out, grad.to(part_grad_z_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _minibatch_grad_posterior(
    z_ptr,
    mu_ptr,
    inv_sigma_ptr,
    c_ptr,
    log_qz_ptr,
    log_prod_ptr,
    g_qz_ptr,
    g_prod_ptr,
    part_grad_mu_ptr,
    part_grad_log_sigma_ptr,
    n_rows,
    row_offset,
    batch,
    latent,
    dataset_size,
    span,
    ESTIMATOR: tl.constexpr,
    ACC_FP64: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One split's shares of dL/dμ = Σ_i G_ijd t_ijd / σ_jd and dL/d log σ =
    Σ_i G_ijd (t_ijd² − 1) for a block of posteriors j, over the split's samples i (rows
    of this rank, in [split·span, (split + 1)·span)), recomputed; Σ_i G t is multiplied
    by 1/σ once at the end.

    Grid: (cdiv(B, BLOCK_J), splits). Writes the shares at [split, j, :] of partials
    (splits, B, D), which the caller sums over the splits in order. Memory traffic: reads
    the block's posteriors (μ, 1/σ, c) once and the split's samples with their saved
    log-sum-exps and incoming gradients once (span·(2 + 3D) values, from the cache);
    writes 2·BLOCK_J·D values.
    """
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    own, strat, rest = estimator_constants(batch, dataset_size, ESTIMATOR, ACC_FP64)
    split = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    dims = tl.arange(0, BLOCK_D)
    col_ok, dim_ok = cols < batch, _dims_in(dims, latent, ROW_ALIGN)
    tile = _tile_offsets(cols, dims, latent, ROW_ALIGN)
    tile_ok = col_ok[:, None] & dim_ok[None, :]
    mu = tl.load(mu_ptr + tile, mask=tile_ok, other=0.0).to(acc_ty)
    inv_sigma = tl.load(inv_sigma_ptr + tile, mask=tile_ok, other=0.0).to(acc_ty)
    c = tl.load(c_ptr + tile, mask=tile_ok, other=0.0).to(acc_ty)
    sum_gt = tl.zeros([BLOCK_J, BLOCK_D], acc_ty)
    grad_log_sigma = tl.zeros([BLOCK_J, BLOCK_D], acc_ty)
    for i in range(split * span, tl.minimum(split * span + span, n_rows)):
        row = _row_offsets(i, dims, latent, ROW_ALIGN)
        z = tl.load(z_ptr + row, mask=dim_ok, other=0.0).to(acc_ty)
        log_prod = tl.load(log_prod_ptr + row, mask=dim_ok, other=0.0).to(acc_ty)
        g_prod = tl.load(g_prod_ptr + row, mask=dim_ok, other=0.0).to(acc_ty)
        log_qz = tl.load(log_qz_ptr + i).to(acc_ty)
        g_qz = tl.load(g_qz_ptr + i).to(acc_ty)
        pair, t = _pair(z[None, :], mu, inv_sigma, c)
        lw = log_weight(i + row_offset, cols, batch, own, strat, rest, ESTIMATOR).to(acc_ty)
        g = _gradient_weights(pair, lw, dim_ok, log_qz, g_qz, log_prod[None, :], g_prod[None, :])
        sum_gt += g * t
        grad_log_sigma += g * (t * t - 1.0)
    out = split * batch * latent + tile
    grad_ty = part_grad_mu_ptr.dtype.element_ty
    tl.store(part_grad_mu_ptr + out, (sum_gt * inv_sigma).to(grad_ty), mask=tile_ok)
    tl.store(part_grad_log_sigma_ptr + out, grad_log_sigma.to(grad_ty), mask=tile_ok)
