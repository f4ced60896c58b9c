/* β-TCVAE's minibatch log-densities on a CPU: the algorithm of the Triton kernels
 * (kernels/total_correlation.py), written for one core's vector unit.
 *
 * For samples z_i (rows row_offset … of the batch) and posteriors (μ_j, σ_j), j < B:
 *
 *     M_ijd = log N(z_id; μ_jd, σ_jd) = −½ t² + c_jd,  t = (z_id − μ_jd) / σ_jd,
 *     c_jd  = −½ log 2π − log σ_jd,
 *     log q(z_i)    = LSE_j [Σ_d M_ijd + log w_ij]
 *     log q(z_id)   = LSE_j [M_ijd + log w_ij]
 *
 * and the backward pass, recomputing M from the saved log-sum-exps:
 *
 *     G_ijd = g_q,i · e^{S_ij − log q(z_i)} + g_p,id · e^{M_ijd + log w_ij − log q(z_id)}
 *     dL/dz_id      = −Σ_j G_ijd t / σ_jd
 *     dL/dμ_jd      =  Σ_i G_ijd t / σ_jd      (this file returns Σ_i G t; the caller
 *     dL/dlog σ_jd  =  Σ_i G_ijd (t² − 1)       multiplies by 1/σ once per (j, d))
 *
 * With the samples' own posteriors (j = row_offset + i) the forward also sums, over its
 * rows, the per-sample parts of β-TCVAE's three terms (betavae_triton/tcvae/
 * decomposition.py): log q(z_i|x_i) − log q(z_i), log q(z_i) − Σ_d log q(z_id) and
 * Σ_d log q(z_id) − log p(z_i), in double; the backward adds the gradients of the first
 * and last (g_own at j = own in G, g_pz · z to dL/dz) and takes the incoming gradients of
 * the log-sum-exps as arrays (or none) plus a constant each (a term's share).
 *
 * A third entry, for a step that will differentiate the terms (a compiled one), runs the
 * forward and keeps each row's t and exponentials, then takes from them the gradients of
 * Σ_i log q(z_i) (G = e^{S_ij − log q(z_i)}) and of Σ_i Σ_d log q(z_id) (G = e^{M_ijd +
 * log w_ij − log q(z_id)}) apart, and combines them into the pairwise parts of the
 * gradients of each of the three terms: no second pass over the posteriors.
 *
 * The posteriors are transposed here, (D, B) with j contiguous (posteriors_t), so that
 * every inner loop runs over j with unit stride and vectorises; each function handles the rows
 * [row_begin, row_end) and needs B values of scratch per array it names. No B×B (and no
 * B×B×D) array exists. Sums over j use LANES independent accumulators summed in a fixed
 * order at the end, by halves (vectorised without reassociating: the result does not depend
 * on the compiler's choices), so that every result is the same bit for bit run after run.
 *
 * The forward's log q(z_id) is one pass over j, not two (a maximum, then the sum): it
 * shifts by a bound that holds for every row, b_d = max_j c_jd + max log w (M_ijd ≤ c_jd),
 * computed once per call, so that every exponent is ≤ 0. Where the bound's sum is below
 * e^−50 (z_id more than about 10 of every posterior's σ away from its μ; every term the
 * exponential flushes to 0, below e^−87 in float and e^−708 in double, is then less than
 * B·e^−37 of the sum) or b_d is not finite, that (i, d) is summed again by the two passes: the result is the two passes'
 * within rounding either way.
 *
 * Memory traffic per row: z_i once, the posteriors (3·D·B values) from the cache; the
 * backward also reads and writes the caller's (D, B) partial sums once per row.
 *
 * Compiled at first use by betavae_triton/tcvae/cpu.py (gcc or cc, -O3, no fast-math:
 * contractions off, so that M is rounded as the float64 oracle rounds it; the exponential's
 * polynomial is written with fma, which rounds once where a multiply and an add round twice),
 * once for float (SUFFIX f32) and once for double (SUFFIX f64). The logarithms of the
 * forward's D sums per row and the posteriors' 1/σ are this file's own log_pos and exp_of
 * (within one unit in the last place: 0.86 and 0.87 at worst over every float, 0.86 and
 * 0.90 over 10^8 doubles), which vectorise where libm's are a call per value (logf was 18%
 * of the three entries' samples at 32 × 16); the rows' log-sum-exps keep libm's log.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef REAL_IS_DOUBLE
#define REAL_IS_DOUBLE 0
#endif
#if REAL_IS_DOUBLE
#define REAL double
#define SUFFIX f64
#else
#define REAL float
#define SUFFIX f32
#endif

#define CONCAT_(a, b) a##_##b
#define CONCAT(a, b) CONCAT_(a, b)
#define NAME(f) CONCAT(f, SUFFIX)

#define LANES 16
#if REAL_IS_DOUBLE
#define LOG log
#else
#define LOG logf
#endif
/* p·r + q for the exponential's polynomial: one rounding where the target has fused
 * multiply-add (-march=native on x86-64 since Haswell, every AArch64), else two (fma()
 * without the instruction is a slow libm call). */
#if defined(__FMA__) || defined(__aarch64__)
#if REAL_IS_DOUBLE
#define MULADD(p, r, q) fma((p), (r), (q))
#else
#define MULADD(p, r, q) fmaf((p), (r), (q))
#endif
#else
#define MULADD(p, r, q) ((p) * (r) + (q))
#endif
#define SUM_FLOOR ((REAL)1.9287498479639178e-22) /* e^-50 */
#define HALF_LOG_2PI ((REAL)0.91893853320467274178)

/* The estimators (betavae_triton/_constants.py). */
#define MWS 0
#define MSS 1
#define MSS_REFERENCE 2
#define MSS_BANK 3 /* MSS's layout, with strat = rest */

/* e^r for the reduction x = k·ln 2 + r, |r| ≤ ½ ln 2, of a finite x: Cody–Waite, k =
 * round(x / ln 2) (by adding and subtracting 1.5·2^52, or 1.5·2^23 in float: vectorises, as
 * floor does not without fast-math; NaN stays NaN), and a Taylor polynomial of r whose
 * error is below one unit in the last place (degree 13 for double, 7 for float); k in *k.
 * Plain arithmetic, so that the compiler vectorises the loops that call it. */
static inline __attribute__((always_inline)) REAL NAME(exp_reduced)(REAL x, REAL *k) {
#if REAL_IS_DOUBLE
    const double log2e = 1.4426950408889634;
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double kk = (x * log2e + 6755399441055744.0) - 6755399441055744.0;
    const double r = (x - kk * ln2_hi) - kk * ln2_lo;
    double p = 1.0 / 6227020800.0;
    p = MULADD(p, r, 1.0 / 479001600.0);
    p = MULADD(p, r, 1.0 / 39916800.0);
    p = MULADD(p, r, 1.0 / 3628800.0);
    p = MULADD(p, r, 1.0 / 362880.0);
    p = MULADD(p, r, 1.0 / 40320.0);
    p = MULADD(p, r, 1.0 / 5040.0);
    p = MULADD(p, r, 1.0 / 720.0);
    p = MULADD(p, r, 1.0 / 120.0);
    p = MULADD(p, r, 1.0 / 24.0);
    p = MULADD(p, r, 1.0 / 6.0);
    p = MULADD(p, r, 0.5);
    p = MULADD(p, r, 1.0);
    p = MULADD(p, r, 1.0);
#else
    const float log2e = 1.44269504f;
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187045e-06f;
    const float kk = (x * log2e + 12582912.0f) - 12582912.0f;
    const float r = (x - kk * ln2_hi) - kk * ln2_lo;
    float p = 1.0f / 40320.0f;
    p = MULADD(p, r, 1.0f / 5040.0f);
    p = MULADD(p, r, 1.0f / 720.0f);
    p = MULADD(p, r, 1.0f / 120.0f);
    p = MULADD(p, r, 1.0f / 24.0f);
    p = MULADD(p, r, 1.0f / 6.0f);
    p = MULADD(p, r, 0.5f);
    p = MULADD(p, r, 1.0f);
    p = MULADD(p, r, 1.0f);
#endif
    *k = kk;
    return p;
}

/* 2^k for an integral k of the exponent range of a normal number (as REAL). */
static inline REAL NAME(two_to)(REAL k) {
#if REAL_IS_DOUBLE
    const int64_t bits = (int64_t)((int32_t)k + 1023) << 52;
#else
    const int32_t bits = ((int32_t)k + 127) << 23;
#endif
    REAL scale;
    memcpy(&scale, &bits, sizeof scale);
    return scale;
}

/* e^x for x ≤ 0 (and a little above: the callers subtract a maximum, a bound or a
 * log-sum-exp), NaN for NaN, 0 for −inf and below the smallest normal number
 * (exp_reduced's e^r times 2^k). */
static inline REAL NAME(exp_nonpos)(REAL x) {
#if REAL_IS_DOUBLE
    const REAL lo_limit = -708.0;
#else
    const REAL lo_limit = -87.0f;
#endif
    const REAL xc = x < lo_limit ? lo_limit : x; /* NaN stays NaN */
    REAL k;
    const REAL p = NAME(exp_reduced)(xc, &k);
    const REAL y = p * NAME(two_to)(k);
    return x < lo_limit ? 0 : y;
}

/* e^x for every x, by exp_reduced, with 2^k applied in two halves (2^⌊k/2⌋ ·
 * 2^(k − ⌊k/2⌋), each a normal number) so that the result may be above 1, or below the
 * smallest normal number (rounded once, by the second product): 0 below −104 (float) or
 * −746 (double), +inf above 89 or 710, NaN for NaN. For 1/σ = e^{−log σ}, once per
 * posterior: plain arithmetic, so that the loop that calls it vectorises. */
static inline REAL NAME(exp_of)(REAL x) {
#if REAL_IS_DOUBLE
    const REAL lo_limit = -746.0, hi_limit = 710.0;
#else
    const REAL lo_limit = -104.0f, hi_limit = 89.0f;
#endif
    REAL xc = x < lo_limit ? lo_limit : x;
    xc = xc > hi_limit ? hi_limit : xc; /* NaN stays NaN */
    REAL k;
    const REAL p = NAME(exp_reduced)(xc, &k);
    const REAL k1 = (REAL)((int32_t)k >> 1), k2 = k - k1;
    const REAL y = (p * NAME(two_to)(k1)) * NAME(two_to)(k2);
    return x < lo_limit ? 0 : y;
}

/* log x for a positive, finite, normal x (what else it returns is not used): x = 2^k·m with
 * m in [√½, √2), f = m − 1, s = f / (2 + f), and log m = log(1 + f) = 2 atanh s =
 * f − ½f² + s·(½f² + R) with R = Σ_n 2 s^{2n} / (2n + 1), the series cut where its next term
 * is below half a unit in the last place (|s| ≤ 0.1716: through s^8 for float, s^20 for
 * double); k·ln 2 is added in two parts. Plain arithmetic, so that the compiler vectorises
 * the loops that call it (libm's log is a call per value). */
static inline REAL NAME(log_pos)(REAL x) {
#if REAL_IS_DOUBLE
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    int64_t bits;
    memcpy(&bits, &x, sizeof bits);
    const int64_t k = (bits - INT64_C(0x3fe6a09e667f3bcd)) >> 52; /* m ≥ √½ */
    const int64_t m_bits = bits - (k << 52);
    double m;
    memcpy(&m, &m_bits, sizeof m);
    const double f = m - 1.0, s = f / (2.0 + f), z = s * s;
    double r = 2.0 / 21;
    r = MULADD(r, z, 2.0 / 19);
    r = MULADD(r, z, 2.0 / 17);
    r = MULADD(r, z, 2.0 / 15);
    r = MULADD(r, z, 2.0 / 13);
    r = MULADD(r, z, 2.0 / 11);
    r = MULADD(r, z, 2.0 / 9);
    r = MULADD(r, z, 2.0 / 7);
    r = MULADD(r, z, 2.0 / 5);
    r = MULADD(r, z, 2.0 / 3);
    r *= z;
    const double hfsq = 0.5 * f * f, kd = (double)k;
#else
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187045e-06f;
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const int32_t k = (bits - 0x3f3504f3) >> 23; /* m ≥ √½ */
    const int32_t m_bits = bits - (k << 23);
    float m;
    memcpy(&m, &m_bits, sizeof m);
    const float f = m - 1.0f, s = f / (2.0f + f), z = s * s;
    float r = 2.0f / 9;
    r = MULADD(r, z, 2.0f / 7);
    r = MULADD(r, z, 2.0f / 5);
    r = MULADD(r, z, 2.0f / 3);
    r *= z;
    const float hfsq = 0.5f * f * f, kd = (float)k;
#endif
    return kd * ln2_hi - ((hfsq - (s * (hfsq + r) + kd * ln2_lo)) - f);
}

/* log w_ij for the row of global index i and every column j < B (the estimator's
 * constants own, strat, rest): what kernels/total_correlation.py's log_weight computes. */
static void NAME(log_weight_row)(REAL *lw, int64_t i, int64_t batch, int estimator,
                                 REAL own, REAL strat, REAL rest) {
    if (estimator == MWS) {
        for (int64_t j = 0; j < batch; ++j) lw[j] = own;
        return;
    }
    for (int64_t j = 0; j < batch; ++j) lw[j] = rest;
    if (estimator == MSS || estimator == MSS_BANK) {
        lw[(i + 1) % batch] = strat;
        lw[i] = own;
    } else {
        lw[1] = strat;
        lw[0] = (i == batch - 2) ? strat : own;
    }
}

/* S_ij = Σ_d M_ijd + log w_ij for one row, over every column j: the joint's terms. */
static void NAME(joint_row)(REAL *restrict s, const REAL *restrict z_row,
                            const REAL *restrict mu_t, const REAL *restrict inv_t,
                            const REAL *restrict c_t, const REAL *restrict lw, int64_t batch,
                            int64_t latent) {
    for (int64_t j = 0; j < batch; ++j) s[j] = 0;
    for (int64_t d = 0; d < latent; ++d) {
        const REAL zd = z_row[d];
        const REAL *restrict mu = mu_t + d * batch, *restrict inv = inv_t + d * batch;
        const REAL *restrict c = c_t + d * batch;
        for (int64_t j = 0; j < batch; ++j) {
            REAL t = (zd - mu[j]) * inv[j];
            s[j] += (t * t) * (REAL)-0.5 + c[j];
        }
    }
    for (int64_t j = 0; j < batch; ++j) s[j] += lw[j];
}

/* The larger of a and b; a NaN b is passed over (it reaches the result through the sum
 * of exponentials that follows every maximum here: e^{NaN − m} is NaN). */
static inline REAL NAME(larger)(REAL a, REAL b) {
    return b > a ? b : a;
}

/* Σ_l acc[l] over the LANES accumulators, by halves (lane l plus lane l + 8, then l + 4,
 * l + 2, l + 1): a fixed order, so a fixed result, in four dependent steps rather than 16,
 * each one add of two vectors (GCC's and Clang's vector types, loaded by memcpy from the
 * halves: the compiler takes them from the register that holds acc, where a loop over a
 * stack array cost a store and reloads, some 10% of the kernels at B = 32). */
#if LANES != 16
#error "sum_lanes and max_of_lanes halve 16 lanes"
#endif
typedef REAL NAME(half_t) __attribute__((vector_size(8 * sizeof(REAL))));
typedef REAL NAME(quarter_t) __attribute__((vector_size(4 * sizeof(REAL))));
typedef REAL NAME(eighth_t) __attribute__((vector_size(2 * sizeof(REAL))));
static inline REAL NAME(sum_lanes)(const REAL *restrict acc) {
    NAME(half_t) lo, hi;
    memcpy(&lo, acc, sizeof lo);
    memcpy(&hi, acc + 8, sizeof hi);
    const NAME(half_t) h = lo + hi;
    NAME(quarter_t) q0, q1;
    memcpy(&q0, &h, sizeof q0);
    memcpy(&q1, (const REAL *)&h + 4, sizeof q1);
    const NAME(quarter_t) q = q0 + q1;
    NAME(eighth_t) e0, e1;
    memcpy(&e0, &q, sizeof e0);
    memcpy(&e1, (const REAL *)&q + 2, sizeof e1);
    const NAME(eighth_t) e = e0 + e1;
    return e[0] + e[1];
}

/* max_l acc[l] over the LANES accumulators, by halves as sum_lanes (NaNs passed over). */
static inline REAL NAME(max_of_lanes)(const REAL *restrict acc) {
    REAL h[8], q[4], e[2];
    for (int l = 0; l < 8; ++l) h[l] = NAME(larger)(acc[l], acc[l + 8]);
    for (int l = 0; l < 4; ++l) q[l] = NAME(larger)(h[l], h[l + 4]);
    for (int l = 0; l < 2; ++l) e[l] = NAME(larger)(q[l], q[l + 2]);
    return NAME(larger)(e[0], e[1]);
}

/* max_j x_j over LANES accumulators (−inf for no values but −inf; NaNs passed over). */
static REAL NAME(max_of)(const REAL *restrict x, int64_t n) {
    REAL acc[LANES];
    for (int l = 0; l < LANES; ++l) acc[l] = -INFINITY;
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; ++l) acc[l] = NAME(larger)(acc[l], x[j + l]);
    for (int l = 0; j < n; ++j, ++l) acc[l] = NAME(larger)(acc[l], x[j]);
    return NAME(max_of_lanes)(acc);
}

/* m + log Σ_j e^{x_j − m} for m = max_j x_j (the log-sum-exp; −inf when every x_j is −inf,
 * NaN when one is NaN), with the exponentials summed over LANES accumulators. */
static REAL NAME(log_sum_exp_from)(const REAL *restrict x, int64_t n, REAL m) {
    REAL shift = (m == -INFINITY) ? 0 : m;
    REAL acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; ++l) acc[l] += NAME(exp_nonpos)(x[j + l] - shift);
    for (int l = 0; j < n; ++j, ++l) acc[l] += NAME(exp_nonpos)(x[j] - shift);
    const REAL total = NAME(sum_lanes)(acc);
    return shift + LOG(total);
}

/* μ, 1/σ and c = −½ log 2π − log σ of every posterior, transposed to (D, B), from μ and
 * log σ (B, D) row-major: what every row reads. */
static void NAME(posteriors_t)(const REAL *restrict mu, const REAL *restrict log_sigma,
                               REAL *restrict mu_t, REAL *restrict inv_t, REAL *restrict c_t,
                               int64_t batch, int64_t latent) {
    for (int64_t j = 0; j < batch; ++j)
        for (int64_t d = 0; d < latent; ++d) {
            const REAL ls = log_sigma[j * latent + d];
            mu_t[d * batch + j] = mu[j * latent + d];
            inv_t[d * batch + j] = NAME(exp_of)(-ls);
            c_t[d * batch + j] = -HALF_LOG_2PI - ls;
        }
}

/* log q(z_id) by the two passes (the maximum, then the sum): where the bound's sum is too
 * small to be exact, or the bound is not finite. Scratch x: B values. */
static REAL NAME(log_prod_exact)(REAL zd, const REAL *restrict mu, const REAL *restrict inv,
                                 const REAL *restrict c, const REAL *restrict lw,
                                 REAL *restrict x, int64_t batch) {
    for (int64_t j = 0; j < batch; ++j) {
        REAL t = (zd - mu[j]) * inv[j];
        x[j] = ((t * t) * (REAL)-0.5 + c[j]) + lw[j];
    }
    return NAME(log_sum_exp_from)(x, batch, NAME(max_of)(x, batch));
}

/* One row's forward: log q(z_id) into lp (D values) and S_ij = Σ_d M_ijd + log w_ij into s
 * (B values, from the log-weights lw); returns log q(z_i). With keep_t and keep_e (D × B
 * each, or NULL) it also keeps t_ijd and e_ijd = e^{M_ijd + log w_ij − b_d} for the
 * gradients, and, per d, 1 / Σ_j e_ijd in scale (0 where that d was summed again by the
 * two passes). Always inlined: each caller gets its own copy, without the stores or with.
 * Scratch x: B values. */
static inline __attribute__((always_inline)) REAL NAME(row_fwd)(
    const REAL *restrict z_row, const REAL *restrict mu_t, const REAL *restrict inv_t,
    const REAL *restrict c_t, const REAL *restrict shift, const REAL *restrict lw,
    REAL *restrict s, REAL *restrict x, REAL *restrict lp, REAL *restrict keep_t,
    REAL *restrict keep_e, REAL *restrict scale, int64_t batch, int64_t latent) {
    for (int64_t j = 0; j < batch; ++j) s[j] = 0;
    for (int64_t d = 0; d < latent; ++d) {
        const REAL zd = z_row[d], sh = shift[d];
        const REAL *restrict mu = mu_t + d * batch, *restrict inv = inv_t + d * batch;
        const REAL *restrict c = c_t + d * batch;
        REAL *restrict t_d = keep_t ? keep_t + d * batch : NULL;
        REAL *restrict e_d = keep_e ? keep_e + d * batch : NULL;
        REAL acc[LANES] = {0};
        int64_t j = 0;
        for (; j + LANES <= batch; j += LANES)
#pragma GCC ivdep
            for (int l = 0; l < LANES; ++l) {
                REAL t = (zd - mu[j + l]) * inv[j + l];
                REAL pair = (t * t) * (REAL)-0.5 + c[j + l];
                s[j + l] += pair;
                REAL e = NAME(exp_nonpos)((pair + lw[j + l]) - sh);
                acc[l] += e;
                if (keep_t) {
                    t_d[j + l] = t;
                    e_d[j + l] = e;
                }
            }
        for (int l = 0; j < batch; ++j, ++l) {
            REAL t = (zd - mu[j]) * inv[j];
            REAL pair = (t * t) * (REAL)-0.5 + c[j];
            s[j] += pair;
            REAL e = NAME(exp_nonpos)((pair + lw[j]) - sh);
            acc[l] += e;
            if (keep_t) {
                t_d[j] = t;
                e_d[j] = e;
            }
        }
        lp[d] = NAME(sum_lanes)(acc); /* Σ_j e_ijd, its log below */
    }
    /* the logs (and reciprocals) of the D sums in one vectorised pass; NaN marks a d whose
     * sum is too small to be exact, or whose bound is not finite, summed again below */
    for (int64_t d = 0; d < latent; ++d) {
        const REAL total = lp[d], sh = shift[d];
        const int one_pass = total >= SUM_FLOOR && sh - sh == 0;
        if (keep_t) scale[d] = one_pass ? (REAL)1 / total : 0;
        lp[d] = one_pass ? sh + NAME(log_pos)(total) : (REAL)NAN;
    }
    for (int64_t d = 0; d < latent; ++d)
        if (lp[d] != lp[d])
            lp[d] = NAME(log_prod_exact)(z_row[d], mu_t + d * batch, inv_t + d * batch,
                                         c_t + d * batch, lw, x, batch);
    for (int64_t j = 0; j < batch; ++j) s[j] += lw[j];
    return NAME(log_sum_exp_from)(s, batch, NAME(max_of)(s, batch));
}

/* Add one row's per-sample parts of the three terms to sums[0..2] (in double):
 * log q(z_i|x_i) − log q(z_i), log q(z_i) − Σ_d log q(z_id), Σ_d log q(z_id) − log p(z_i),
 * for the sample's own posterior own_j. */
static void NAME(row_terms)(const REAL *restrict z_row, const REAL *restrict mu_t,
                            const REAL *restrict inv_t, const REAL *restrict c_t, int64_t own_j,
                            REAL lq, const REAL *restrict lp, double *restrict sums,
                            int64_t batch, int64_t latent) {
    REAL log_qz_x = 0, log_pz = 0, log_prod_sum = 0;
    for (int64_t d = 0; d < latent; ++d) {
        const REAL t = (z_row[d] - mu_t[d * batch + own_j]) * inv_t[d * batch + own_j];
        log_qz_x += c_t[d * batch + own_j] - (REAL)0.5 * t * t;
        log_pz += -HALF_LOG_2PI - (REAL)0.5 * z_row[d] * z_row[d];
        log_prod_sum += lp[d];
    }
    sums[0] += (double)log_qz_x - (double)lq;
    sums[1] += (double)lq - (double)log_prod_sum;
    sums[2] += (double)log_prod_sum - (double)log_pz;
}

/* Forward: log q(z_i) and log q(z_id) for the rows [row_begin, row_end), and the sums of
 * the three terms' per-sample parts over them into terms[0..2]; shift: the bounds b_d (D).
 * Scratch: lw, s, x of B values each. */
static void NAME(fwd_rows)(
    const REAL *restrict z, const REAL *restrict mu_t, const REAL *restrict inv_t,
    const REAL *restrict c_t, const REAL *restrict shift, REAL *restrict log_qz,
    REAL *restrict log_prod, double *restrict terms, REAL *restrict lw, REAL *restrict s,
    REAL *restrict x,
    int64_t row_begin, int64_t row_end, int64_t row_offset, int64_t batch, int64_t latent,
    int estimator, REAL own, REAL strat, REAL rest) {
    double sums[3] = {0, 0, 0};
    for (int64_t i = row_begin; i < row_end; ++i) {
        const REAL *z_row = z + i * latent;
        REAL *lp = log_prod + i * latent;
        NAME(log_weight_row)(lw, i + row_offset, batch, estimator, own, strat, rest);
        log_qz[i] = NAME(row_fwd)(z_row, mu_t, inv_t, c_t, shift, lw, s, x, lp, NULL, NULL, NULL,
                                  batch, latent);
        NAME(row_terms)(z_row, mu_t, inv_t, c_t, i + row_offset, log_qz[i], lp, sums, batch,
                        latent);
    }
    terms[0] = sums[0];
    terms[1] = sums[1];
    terms[2] = sums[2];
}

/* One row's share of the gradients of A = Σ_i log q(z_i) and P = Σ_i Σ_d log q(z_id), from
 * row_fwd's kept t and e: with p_j = e^{S_ij − log q(z_i)} and r_jd = e^{M_ijd + log w_ij −
 * log q(z_id)} = e_jd · scale_d, dA/dz_id = −Σ_j p_j t/σ_jd and dP/dz_id = −Σ_j r_jd t/σ_jd
 * into gz_a, gz_p (D each), and added into the part's (D, B) sums: Σ_i p t, Σ_i p (t² − 1),
 * Σ_i r t, Σ_i r (t² − 1) (sums: 4 × D × B). s (S_ij) is overwritten by p; where a d was
 * summed by the two passes (scale 0), its r is recomputed from t into keep_e. */
static void NAME(row_grad)(const REAL *restrict inv_t, const REAL *restrict c_t,
                           const REAL *restrict lw, REAL *restrict s, REAL lq,
                           const REAL *restrict lp, const REAL *restrict keep_t,
                           REAL *restrict keep_e, const REAL *restrict scale, REAL *restrict gz_a,
                           REAL *restrict gz_p, REAL *restrict sums, int64_t batch,
                           int64_t latent) {
    for (int64_t j = 0; j < batch; ++j) s[j] = NAME(exp_nonpos)(s[j] - lq);
    const int64_t size = latent * batch;
    for (int64_t d = 0; d < latent; ++d) {
        const REAL *restrict t_d = keep_t + d * batch, *restrict inv = inv_t + d * batch;
        REAL *restrict e_d = keep_e + d * batch;
        REAL *restrict pt = sums + d * batch, *restrict ptt = pt + size;
        REAL *restrict rt = pt + 2 * size, *restrict rtt = pt + 3 * size;
        REAL sc = scale[d];
        if (!(sc > 0)) {
            const REAL *restrict c = c_t + d * batch;
            for (int64_t j = 0; j < batch; ++j) {
                const REAL t = t_d[j];
                e_d[j] = NAME(exp_nonpos)((((t * t) * (REAL)-0.5 + c[j]) + lw[j]) - lp[d]);
            }
            sc = 1;
        }
        REAL acc_p[LANES] = {0}, acc_r[LANES] = {0};
        int64_t j = 0;
        /* ivdep: the eight arrays are disjoint parts of the workspace, which GCC does not
         * prove of pointers into one buffer; without it, it checks their overlap at every d
         * and spills pointers (the forward with gradients 18.8 → 15.2 µs at 32 × 16, 63.7 →
         * 46.5 at 64 × 16, one thread; the same bits). */
        for (; j + LANES <= batch; j += LANES)
#pragma GCC ivdep
            for (int l = 0; l < LANES; ++l) {
                const int64_t k = j + l;
                const REAL t = t_d[k], p = s[k], r = e_d[k] * sc, tt = t * t - 1;
                const REAL p_t = p * t, r_t = r * t;
                acc_p[l] += p_t * inv[k];
                acc_r[l] += r_t * inv[k];
                pt[k] += p_t;
                ptt[k] += p * tt;
                rt[k] += r_t;
                rtt[k] += r * tt;
            }
        for (int l = 0; j < batch; ++j, ++l) {
            const REAL t = t_d[j], p = s[j], r = e_d[j] * sc, tt = t * t - 1;
            const REAL p_t = p * t, r_t = r * t;
            acc_p[l] += p_t * inv[j];
            acc_r[l] += r_t * inv[j];
            pt[j] += p_t;
            ptt[j] += p * tt;
            rt[j] += r_t;
            rtt[j] += r * tt;
        }
        gz_a[d] = -NAME(sum_lanes)(acc_p);
        gz_p[d] = -NAME(sum_lanes)(acc_r);
    }
}

/* Backward: dL/dz for the rows [row_begin, row_end), and, added into the caller's (D, B)
 * partial sums, Σ_i G t (→ dL/dμ once multiplied by 1/σ) and Σ_i G (t² − 1) (dL/dlog σ).
 * Scratch: lw, s of B values each. */
static void NAME(bwd_rows)(
    const REAL *restrict z, const REAL *restrict mu_t, const REAL *restrict inv_t,
    const REAL *restrict c_t, const REAL *restrict log_qz, const REAL *restrict log_prod,
    const REAL *restrict g_qz, const REAL *restrict g_prod, REAL *restrict grad_z,
    REAL *restrict sum_gt, REAL *restrict sum_gtt, REAL *restrict lw, REAL *restrict s,
    int64_t row_begin, int64_t row_end, int64_t row_offset, int64_t batch, int64_t latent,
    int estimator, REAL own, REAL strat, REAL rest, REAL add_qz, REAL add_prod, REAL g_own,
    REAL g_pz) {
    for (int64_t i = row_begin; i < row_end; ++i) {
        const REAL *z_row = z + i * latent;
        NAME(log_weight_row)(lw, i + row_offset, batch, estimator, own, strat, rest);
        NAME(joint_row)(s, z_row, mu_t, inv_t, c_t, lw, batch, latent);
        const REAL lq = log_qz[i], gq = (g_qz ? g_qz[i] : 0) + add_qz;
        for (int64_t j = 0; j < batch; ++j) s[j] = gq * NAME(exp_nonpos)(s[j] - lq);
        s[i + row_offset] += g_own; /* log q(z_i|x_i): its own posterior's share of G */
        for (int64_t d = 0; d < latent; ++d) {
            const REAL zd = z_row[d], lp = log_prod[i * latent + d];
            const REAL gp = (g_prod ? g_prod[i * latent + d] : 0) + add_prod;
            const REAL *restrict mu = mu_t + d * batch, *restrict inv = inv_t + d * batch;
        const REAL *restrict c = c_t + d * batch;
            REAL *restrict gt_d = sum_gt + d * batch, *restrict gtt_d = sum_gtt + d * batch;
            REAL acc[LANES] = {0};
            int64_t j = 0;
            for (; j + LANES <= batch; j += LANES)
                for (int l = 0; l < LANES; ++l) {
                    int64_t k = j + l;
                    REAL t = (zd - mu[k]) * inv[k];
                    REAL m = (t * t) * (REAL)-0.5 + c[k];
                    REAL g = s[k] + gp * NAME(exp_nonpos)((m + lw[k]) - lp);
                    REAL gt = g * t;
                    acc[l] += gt * inv[k];
                    gt_d[k] += gt;
                    gtt_d[k] += g * (t * t - 1);
                }
            for (int l = 0; j < batch; ++j, ++l) {
                REAL t = (zd - mu[j]) * inv[j];
                REAL m = (t * t) * (REAL)-0.5 + c[j];
                REAL g = s[j] + gp * NAME(exp_nonpos)((m + lw[j]) - lp);
                REAL gt = g * t;
                acc[l] += gt * inv[j];
                gt_d[j] += gt;
                gtt_d[j] += g * (t * t - 1);
            }
            const REAL total = NAME(sum_lanes)(acc);
            grad_z[i * latent + d] = g_pz * zd - total; /* log p(z_i): −z_id per unit */
        }
    }
}

/* The rows [0, n_rows) split into `parts` contiguous ranges, one after the other over the
 * OpenMP threads (torch's own pool: the library links the libgomp that torch loaded), each
 * range with its own scratch (and, backward, its own partial sums: `parts` fixes the order
 * in which the caller adds them, whatever the threads). Without OpenMP, one thread. */
#ifdef _OPENMP
#define FOR_EACH_PART(k, parts)                                                           \
    _Pragma("omp parallel num_threads(parts)")                                            \
    for (int k = omp_get_thread_num(); k < (parts); k += omp_get_num_threads())
#else
#define FOR_EACH_PART(k, parts) for (int k = 0; k < (parts); ++k)
#endif

/* Bytes before the REAL arrays of the forward's workspace: `parts` × 3 doubles, rounded up
 * to a cache line so that the posteriors' transposes start aligned. */
static int64_t NAME(terms_bytes)(int parts) { return ((int64_t)parts * 3 * 8 + 63) / 64 * 64; }

/* Forward over every row: the posteriors transposed (3 × D × B: μ, 1/σ, c) and the bounds
 * b_d, then the rows by parts, part k summing its rows' terms; then the parts' sums added
 * in part order and written as the means over the rows into terms (3). The workspace `work`
 * (the caller's, uninitialised) holds the parts' sums, the transposes, parts × 3 × B
 * scratch values and the D bounds: minibatch_log_densities_fwd_workspace bytes. */
int64_t NAME(minibatch_log_densities_fwd_workspace)(int parts, int64_t batch, int64_t latent) {
    return NAME(terms_bytes)(parts) +
           (int64_t)sizeof(REAL) * ((3 * latent + parts * 3) * batch + latent);
}

void NAME(minibatch_log_densities_fwd)(
    const REAL *z, const REAL *mu, const REAL *log_sigma, REAL *log_qz, REAL *log_prod,
    REAL *terms, void *work, int parts, int64_t n_rows, int64_t row_offset, int64_t batch,
    int64_t latent, int estimator, REAL own, REAL strat, REAL rest) {
    double *part_terms = (double *)work;
    REAL *mu_t = (REAL *)((char *)work + NAME(terms_bytes)(parts));
    REAL *inv_t = mu_t + latent * batch, *c_t = mu_t + 2 * latent * batch;
    REAL *scratch = mu_t + 3 * latent * batch;
    REAL *shift = scratch + (int64_t)parts * 3 * batch;
    NAME(posteriors_t)(mu, log_sigma, mu_t, inv_t, c_t, batch, latent);
    const REAL w_max = NAME(larger)(NAME(larger)(own, strat), rest);
    for (int64_t d = 0; d < latent; ++d) shift[d] = NAME(max_of)(c_t + d * batch, batch) + w_max;
    FOR_EACH_PART(k, parts) {
        REAL *lw = scratch + (int64_t)k * 3 * batch;
        NAME(fwd_rows)(z, mu_t, inv_t, c_t, shift, log_qz, log_prod, part_terms + 3 * k, lw,
                       lw + batch, lw + 2 * batch, n_rows * k / parts,
                       n_rows * (k + 1) / parts, row_offset, batch, latent, estimator, own,
                       strat, rest);
    }
    for (int t = 0; t < 3; ++t) {
        double total = part_terms[t];
        for (int k = 1; k < parts; ++k) total += part_terms[3 * k + t]; /* in part order */
        terms[t] = (REAL)(total / (double)n_rows);
    }
}

/* The forward with the gradients of the three terms, for a step that will need them: what
 * minibatch_log_densities_fwd computes (without writing log q(z_i) and log q(z_id)), and,
 * from the same pass's t and exponentials (no second pass over the posteriors to
 * recompute them), the pairwise parts of the gradients of mi, tc and dw_kl (the means
 * over the rows) with respect to z, μ and log σ: grad_z (3 × n_rows × D), grad_mu and
 * grad_log_sigma (3 × B × D), term by term. A backward pass is then these weighed by the
 * terms' incoming gradients, plus the samples' own parts. The rows run by parts as the forward's; part k keeps each row's t and e
 * (2 × D × B) and adds into its own partial sums (4 × D × B: Σ p t, Σ p (t² − 1), Σ r t,
 * Σ r (t² − 1)), which are added in part order. The workspace `work` (the caller's,
 * uninitialised) holds the parts' sums of the terms, the transposes, the bounds and per
 * part 3 × B + 2 × D + 6 × D × B values: minibatch_log_densities_fwd_grad_workspace bytes.
 * Memory traffic per row: z_i once, the posteriors from the cache, the kept t and e
 * written once and read once, the partial sums read and written once. */
static int64_t NAME(fwd_grad_part)(int64_t batch, int64_t latent) {
    return 3 * batch + 2 * latent + 6 * latent * batch;
}

int64_t NAME(minibatch_log_densities_fwd_grad_workspace)(int parts, int64_t batch,
                                                         int64_t latent) {
    return NAME(terms_bytes)(parts) +
           (int64_t)sizeof(REAL) *
               (3 * latent * batch + latent + parts * NAME(fwd_grad_part)(batch, latent));
}

void NAME(minibatch_log_densities_fwd_grad)(
    const REAL *z, const REAL *mu, const REAL *log_sigma, REAL *terms, REAL *grad_z,
    REAL *grad_mu, REAL *grad_log_sigma, void *work, int parts, int64_t n_rows,
    int64_t row_offset, int64_t batch, int64_t latent, int estimator, REAL own, REAL strat,
    REAL rest) {
    double *part_terms = (double *)work;
    REAL *mu_t = (REAL *)((char *)work + NAME(terms_bytes)(parts));
    REAL *inv_t = mu_t + latent * batch, *c_t = mu_t + 2 * latent * batch;
    REAL *shift = mu_t + 3 * latent * batch, *parts_start = shift + latent;
    const int64_t size = latent * batch, per_part = NAME(fwd_grad_part)(batch, latent);
    const int64_t rows_size = n_rows * latent;
    NAME(posteriors_t)(mu, log_sigma, mu_t, inv_t, c_t, batch, latent);
    const REAL w_max = NAME(larger)(NAME(larger)(own, strat), rest);
    for (int64_t d = 0; d < latent; ++d) shift[d] = NAME(max_of)(c_t + d * batch, batch) + w_max;
    FOR_EACH_PART(k, parts) {
        REAL *lw = parts_start + (int64_t)k * per_part, *s = lw + batch, *x = s + batch;
        REAL *lp = x + batch, *scale = lp + latent, *keep_t = scale + latent;
        REAL *keep_e = keep_t + size, *sums = keep_e + size;
        double row_sums[3] = {0, 0, 0};
        memset(sums, 0, sizeof(REAL) * (size_t)(4 * size));
        for (int64_t i = n_rows * k / parts; i < n_rows * (k + 1) / parts; ++i) {
            const REAL *z_row = z + i * latent;
            NAME(log_weight_row)(lw, i + row_offset, batch, estimator, own, strat, rest);
            const REAL lq = NAME(row_fwd)(z_row, mu_t, inv_t, c_t, shift, lw, s, x, lp, keep_t,
                                          keep_e, scale, batch, latent);
            NAME(row_terms)(z_row, mu_t, inv_t, c_t, i + row_offset, lq, lp, row_sums, batch,
                            latent);
            /* dA/dz and dP/dz in the first two of grad_z's three, combined below */
            NAME(row_grad)(inv_t, c_t, lw, s, lq, lp, keep_t, keep_e, scale,
                           grad_z + i * latent, grad_z + rows_size + i * latent, sums, batch,
                           latent);
        }
        for (int t = 0; t < 3; ++t) part_terms[3 * k + t] = row_sums[t];
    }
    for (int t = 0; t < 3; ++t) {
        double total = part_terms[t];
        for (int k = 1; k < parts; ++k) total += part_terms[3 * k + t]; /* in part order */
        terms[t] = (REAL)(total / (double)n_rows);
    }
    REAL *sums = parts_start + 3 * batch + 2 * latent + 2 * size; /* part 0's */
    for (int k = 1; k < parts; ++k) /* in part order */
        for (int64_t e = 0; e < 4 * size; ++e) sums[e] += sums[k * per_part + e];
    /* The pairwise parts of the terms' gradients: mi = (X − A)/n, tc = (A − P)/n and
     * dw_kl = (P − Z)/n for X = Σ_i log q(z_i|x_i) and Z = Σ_i log p(z_i), whose
     * gradients (the samples' own parts) the caller adds (tcvae/decomposition.py). */
    const REAL inv_n = (REAL)(1.0 / (double)n_rows);
    for (int64_t j = 0; j < batch; ++j)
        for (int64_t d = 0; d < latent; ++d) {
            const int64_t at = d * batch + j, out = j * latent + d;
            const REAL a_mu = sums[at] * inv_t[at], a_ls = sums[size + at];
            const REAL p_mu = sums[2 * size + at] * inv_t[at], p_ls = sums[3 * size + at];
            grad_mu[out] = -a_mu * inv_n;
            grad_mu[size + out] = (a_mu - p_mu) * inv_n;
            grad_mu[2 * size + out] = p_mu * inv_n;
            grad_log_sigma[out] = -a_ls * inv_n;
            grad_log_sigma[size + out] = (a_ls - p_ls) * inv_n;
            grad_log_sigma[2 * size + out] = p_ls * inv_n;
        }
    for (int64_t k = 0; k < rows_size; ++k) {
        const REAL a = grad_z[k], p = grad_z[rows_size + k];
        grad_z[k] = -a * inv_n;
        grad_z[rows_size + k] = (a - p) * inv_n;
        grad_z[2 * rows_size + k] = p * inv_n;
    }
}

/* Backward over every row; part k adds into its partial sums (2 × D × B: Σ G t, then
 * Σ G (t² − 1)), zeroed here; then the parts' sums are added in part order and written as
 * dL/dμ = Σ G t / σ and dL/dlog σ into grad_mu, grad_log_sigma (B, D).
 * g_qz, g_prod may be NULL (no such incoming gradient); add_qz, add_prod are added to
 * every one of theirs; g_own weighs each sample's own log q(z_i|x_i), g_pz its log p(z_i).
 * The workspace `work` (the caller's, uninitialised) holds the partial sums, the
 * posteriors' transposes and parts × 2 × B scratch values:
 * minibatch_log_densities_bwd_workspace bytes. */
int64_t NAME(minibatch_log_densities_bwd_workspace)(int parts, int64_t batch, int64_t latent) {
    return (int64_t)sizeof(REAL) * (parts * 2 * latent + 3 * latent + parts * 2) * batch;
}

void NAME(minibatch_log_densities_bwd)(
    const REAL *z, const REAL *mu, const REAL *log_sigma, const REAL *log_qz,
    const REAL *log_prod, const REAL *g_qz, const REAL *g_prod, REAL *grad_z, REAL *grad_mu,
    REAL *grad_log_sigma, void *work, int parts, int64_t n_rows, int64_t row_offset,
    int64_t batch, int64_t latent, int estimator, REAL own, REAL strat, REAL rest,
    REAL add_qz, REAL add_prod, REAL g_own, REAL g_pz) {
    const int64_t size = 2 * latent * batch;
    REAL *sums = (REAL *)work, *mu_t = sums + parts * size;
    REAL *inv_t = mu_t + latent * batch, *c_t = mu_t + 2 * latent * batch;
    REAL *scratch = mu_t + 3 * latent * batch;
    memset(sums, 0, sizeof(REAL) * (size_t)(parts * size));
    NAME(posteriors_t)(mu, log_sigma, mu_t, inv_t, c_t, batch, latent);
    FOR_EACH_PART(k, parts) {
        REAL *lw = scratch + (int64_t)k * 2 * batch;
        REAL *gt = sums + (int64_t)k * 2 * latent * batch;
        NAME(bwd_rows)(z, mu_t, inv_t, c_t, log_qz, log_prod, g_qz, g_prod, grad_z, gt,
                       gt + latent * batch, lw, lw + batch, n_rows * k / parts,
                       n_rows * (k + 1) / parts, row_offset, batch, latent, estimator, own,
                       strat, rest, add_qz, add_prod, g_own, g_pz);
    }
    for (int k = 1; k < parts; ++k) /* in part order */
        for (int64_t e = 0; e < size; ++e) sums[e] += sums[k * size + e];
    for (int64_t j = 0; j < batch; ++j)
        for (int64_t d = 0; d < latent; ++d) {
            grad_mu[j * latent + d] = sums[d * batch + j] * inv_t[d * batch + j];
            grad_log_sigma[j * latent + d] = sums[latent * batch + d * batch + j];
        }
}

/* The elementary functions of the kernels applied to n values, for the tests' checks of
 * their accuracy (tests/test_tcvae_eager.py): y = log x by log_pos (x positive, finite,
 * normal), y = e^x by exp_of. */
void NAME(minibatch_log_pos)(const REAL *x, REAL *y, int64_t n) {
    for (int64_t k = 0; k < n; ++k) y[k] = NAME(log_pos)(x[k]);
}

void NAME(minibatch_exp_of)(const REAL *x, REAL *y, int64_t n) {
    for (int64_t k = 0; k < n; ++k) y[k] = NAME(exp_of)(x[k]);
}
