/* β-TCVAE's minibatch log-densities on a CPU as native torch kernels: the CPU kernels of
 * three operators of the betavae_triton namespace (their schemas are written out in
 * tcvae/call.py, their fake kernels in tcvae/ops.py),
 *
 *     tc_log_densities_c(z, mu, log_sigma, row_offset, estimator, own, strat, rest)
 *         -> (log q(z_i), log q(z_id), [mi, tc, dw_kl])
 *     tc_log_densities_c_backward(z, mu, log_sigma, log_qz, log_prod, g_qz?, g_prod?,
 *         g_terms?, row_offset, estimator, own, strat, rest) -> (dL/dz, dL/dμ, dL/dlog σ)
 *     tc_terms_and_gradients_c(z, mu, log_sigma, row_offset, estimator, own, strat, rest)
 *         -> ([mi, tc, dw_kl], d/dz (3, B_l, D), d/dμ (3, B, D), d/dlog σ (3, B, D))
 *
 * calling the C kernels of minibatch.c, so that a call costs torch's C++ dispatch (about
 * 2 µs) rather than a Python function's (20–30 µs through torch._library, 5–8 µs through
 * ctypes). The C kernels are compiled and loaded per dtype by tcvae/cpu.py, which hands
 * their addresses to betavae_triton_bind_kernels below: this file does not depend on
 * minibatch.c's build (its source, -march=native), only on torch's headers.
 *
 * The estimator's log-weights (own, strat, rest: tcvae/weights.py) are arguments; the
 * terms' incoming gradients g_terms (3 values, or none) become the C backward's constants
 * here: each term's share of log q(z_i) and log q(z_id), and of the samples' own parts.
 * No autograd: tcvae/ops.py applies these kernels inside its one autograd.
 *
 * Memory traffic: that of the C kernels (minibatch.c), plus the outputs and one workspace
 * allocated here per call. The rows are split into min(threads, rows) parts at torch's
 * intra-op thread count, as the C kernels' OpenMP loop runs them.
 */

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

namespace {

using at::Tensor;
using Outputs = std::tuple<Tensor, Tensor, Tensor>;

// The C functions of one dtype (minibatch.c with REAL = Real), as tcvae/cpu.py loaded them.
template <typename Real> struct Kernels {
    using Fwd = void (*)(const Real *, const Real *, const Real *, Real *, Real *, Real *, void *,
                         int, int64_t, int64_t, int64_t, int64_t, int, Real, Real, Real);
    using Bwd = void (*)(const Real *, const Real *, const Real *, const Real *, const Real *,
                         const Real *, const Real *, Real *, Real *, Real *, void *, int, int64_t,
                         int64_t, int64_t, int64_t, int, Real, Real, Real, Real, Real, Real,
                         Real);
    using FwdGrad = void (*)(const Real *, const Real *, const Real *, Real *, Real *, Real *,
                             Real *, void *, int, int64_t, int64_t, int64_t, int64_t, int, Real,
                             Real, Real);
    using Workspace = int64_t (*)(int, int64_t, int64_t);
    static inline Fwd fwd = nullptr;
    static inline Bwd bwd = nullptr;
    static inline FwdGrad fwd_grad = nullptr;
    static inline Workspace fwd_workspace = nullptr;
    static inline Workspace bwd_workspace = nullptr;
    static inline Workspace fwd_grad_workspace = nullptr;

    static void check_bound() {
        TORCH_CHECK(fwd != nullptr && bwd != nullptr && fwd_grad != nullptr &&
                        fwd_workspace != nullptr && bwd_workspace != nullptr &&
                        fwd_grad_workspace != nullptr,
                    "betavae_triton: the C kernels for this dtype are not loaded "
                    "(betavae_triton.tcvae_cpu_kernels(dtype) loads them, or says why not)");
    }
};

// Row ranges: one per torch thread (fewer for few rows).
int parts_for(int64_t rows) {
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows)));
}

void check_inputs(const Tensor &z, const Tensor &mu, const Tensor &log_sigma) {
    TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
                "tc_log_densities_c: float32 or float64, not ", z.scalar_type());
    for (const Tensor *t : {&z, &mu, &log_sigma}) {
        TORCH_CHECK(t->dim() == 2 && t->is_contiguous() && t->scalar_type() == z.scalar_type(),
                    "tc_log_densities_c: contiguous (rows, D) tensors of one dtype");
    }
    TORCH_CHECK(mu.sizes() == log_sigma.sizes() && mu.size(1) == z.size(1),
                "tc_log_densities_c: z (rows, D), mu and log_sigma (B, D)");
}

template <typename Real>
Outputs forward(const Tensor &z, const Tensor &mu, const Tensor &log_sigma, int64_t row_offset,
                int64_t estimator, double own, double strat, double rest) {
    Kernels<Real>::check_bound();
    const int64_t n_rows = z.size(0), latent = z.size(1), batch = mu.size(0);
    const int parts = parts_for(n_rows);
    Tensor log_qz = at::empty({n_rows}, z.options());
    Tensor log_prod = at::empty_like(z);
    Tensor terms = at::empty({3}, z.options());
    Tensor work = at::empty({Kernels<Real>::fwd_workspace(parts, batch, latent)},
                            z.options().dtype(at::kByte));
    Kernels<Real>::fwd(z.const_data_ptr<Real>(), mu.const_data_ptr<Real>(),
                       log_sigma.const_data_ptr<Real>(), log_qz.mutable_data_ptr<Real>(),
                       log_prod.mutable_data_ptr<Real>(), terms.mutable_data_ptr<Real>(),
                       work.mutable_data_ptr(), parts, n_rows, row_offset, batch, latent,
                       static_cast<int>(estimator), static_cast<Real>(own),
                       static_cast<Real>(strat), static_cast<Real>(rest));
    return {log_qz, log_prod, terms};
}

Outputs tc_log_densities_c(const Tensor &z, const Tensor &mu, const Tensor &log_sigma,
                                int64_t row_offset, int64_t estimator, double own, double strat,
                                double rest) {
    check_inputs(z, mu, log_sigma);
    if (z.scalar_type() == at::kDouble)
        return forward<double>(z, mu, log_sigma, row_offset, estimator, own, strat, rest);
    return forward<float>(z, mu, log_sigma, row_offset, estimator, own, strat, rest);
}

using TermOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor>;

template <typename Real>
TermOutputs terms_and_gradients(const Tensor &z, const Tensor &mu, const Tensor &log_sigma,
                                int64_t row_offset, int64_t estimator, double own, double strat,
                                double rest) {
    Kernels<Real>::check_bound();
    const int64_t n_rows = z.size(0), latent = z.size(1), batch = mu.size(0);
    const int parts = parts_for(n_rows);
    Tensor terms = at::empty({3}, z.options());
    Tensor grad_z = at::empty({3, n_rows, latent}, z.options());
    Tensor grad_mu = at::empty({3, batch, latent}, z.options());
    Tensor grad_log_sigma = at::empty({3, batch, latent}, z.options());
    Tensor work = at::empty({Kernels<Real>::fwd_grad_workspace(parts, batch, latent)},
                            z.options().dtype(at::kByte));
    Kernels<Real>::fwd_grad(z.const_data_ptr<Real>(), mu.const_data_ptr<Real>(),
                            log_sigma.const_data_ptr<Real>(), terms.mutable_data_ptr<Real>(),
                            grad_z.mutable_data_ptr<Real>(), grad_mu.mutable_data_ptr<Real>(),
                            grad_log_sigma.mutable_data_ptr<Real>(), work.mutable_data_ptr(),
                            parts, n_rows, row_offset, batch, latent, static_cast<int>(estimator),
                            static_cast<Real>(own), static_cast<Real>(strat),
                            static_cast<Real>(rest));
    return {terms, grad_z, grad_mu, grad_log_sigma};
}

TermOutputs tc_terms_and_gradients_c(const Tensor &z, const Tensor &mu, const Tensor &log_sigma,
                                     int64_t row_offset, int64_t estimator, double own,
                                     double strat, double rest) {
    check_inputs(z, mu, log_sigma);
    if (z.scalar_type() == at::kDouble)
        return terms_and_gradients<double>(z, mu, log_sigma, row_offset, estimator, own, strat,
                                           rest);
    return terms_and_gradients<float>(z, mu, log_sigma, row_offset, estimator, own, strat, rest);
}

template <typename Real> const Real *data_or_null(const std::optional<Tensor> &t) {
    return t.has_value() ? t->const_data_ptr<Real>() : nullptr;
}

// Term k's incoming gradient, read where autograd left it (3 values, float or double):
// no copy on the backward pass.
double term_gradient(const Tensor &g_terms, int64_t k) {
    TORCH_CHECK(g_terms.dim() == 1 && g_terms.size(0) == 3,
                "tc_log_densities_c_backward: g_terms holds the 3 terms' gradients");
    const int64_t at_k = k * g_terms.stride(0);
    if (g_terms.scalar_type() == at::kDouble) return g_terms.const_data_ptr<double>()[at_k];
    TORCH_CHECK(g_terms.scalar_type() == at::kFloat,
                "tc_log_densities_c_backward: g_terms in float32 or float64");
    return static_cast<double>(g_terms.const_data_ptr<float>()[at_k]);
}

template <typename Real>
Outputs backward(const Tensor &z, const Tensor &mu, const Tensor &log_sigma, const Tensor &log_qz,
                 const Tensor &log_prod, const std::optional<Tensor> &g_qz,
                 const std::optional<Tensor> &g_prod, const std::optional<Tensor> &g_terms,
                 int64_t row_offset, int64_t estimator, double own, double strat, double rest) {
    Kernels<Real>::check_bound();
    const int64_t n_rows = z.size(0), latent = z.size(1), batch = mu.size(0);
    // The terms are the means over the rows of log q(z_i|x_i) − log q(z_i) (mi),
    // log q(z_i) − Σ_d log q(z_id) (tc) and Σ_d log q(z_id) − log p(z_i) (dw_kl): their
    // incoming gradients, shared out over the rows.
    Real add_qz = 0, add_prod = 0, g_own = 0, g_pz = 0;
    if (g_terms.has_value()) {
        const double v[3] = {term_gradient(*g_terms, 0), term_gradient(*g_terms, 1),
                             term_gradient(*g_terms, 2)};
        const double n = static_cast<double>(n_rows);
        add_qz = static_cast<Real>(v[1] / n - v[0] / n);
        add_prod = static_cast<Real>(v[2] / n - v[1] / n);
        g_own = static_cast<Real>(v[0] / n);
        g_pz = static_cast<Real>(v[2] / n);
    }
    const int parts = parts_for(n_rows);
    Tensor grad_z = at::empty_like(z), grad_mu = at::empty_like(mu);
    Tensor grad_log_sigma = at::empty_like(log_sigma);
    Tensor work = at::empty({Kernels<Real>::bwd_workspace(parts, batch, latent)},
                            z.options().dtype(at::kByte));
    Kernels<Real>::bwd(z.const_data_ptr<Real>(), mu.const_data_ptr<Real>(),
                       log_sigma.const_data_ptr<Real>(), log_qz.const_data_ptr<Real>(),
                       log_prod.const_data_ptr<Real>(), data_or_null<Real>(g_qz),
                       data_or_null<Real>(g_prod), grad_z.mutable_data_ptr<Real>(),
                       grad_mu.mutable_data_ptr<Real>(), grad_log_sigma.mutable_data_ptr<Real>(),
                       work.mutable_data_ptr(), parts, n_rows, row_offset, batch, latent,
                       static_cast<int>(estimator), static_cast<Real>(own),
                       static_cast<Real>(strat), static_cast<Real>(rest), add_qz, add_prod,
                       g_own, g_pz);
    return {grad_z, grad_mu, grad_log_sigma};
}

Outputs tc_log_densities_c_backward(
    const Tensor &z, const Tensor &mu, const Tensor &log_sigma, const Tensor &log_qz,
    const Tensor &log_prod, const std::optional<Tensor> &g_qz,
    const std::optional<Tensor> &g_prod, const std::optional<Tensor> &g_terms,
    int64_t row_offset, int64_t estimator, double own, double strat, double rest) {
    check_inputs(z, mu, log_sigma);
    for (const std::optional<Tensor> &t : {std::optional<Tensor>(log_qz),
                                           std::optional<Tensor>(log_prod), g_qz, g_prod}) {
        TORCH_CHECK(!t.has_value() || (t->is_contiguous() && t->scalar_type() == z.scalar_type()),
                    "tc_log_densities_c_backward: contiguous saved values and gradients "
                    "of z's dtype");
    }
    if (z.scalar_type() == at::kDouble)
        return backward<double>(z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod, g_terms,
                                row_offset, estimator, own, strat, rest);
    return backward<float>(z, mu, log_sigma, log_qz, log_prod, g_qz, g_prod, g_terms, row_offset,
                           estimator, own, strat, rest);
}

template <typename Real>
void bind(void *fwd, void *bwd, void *fwd_workspace, void *bwd_workspace, void *fwd_grad,
          void *fwd_grad_workspace) {
    using Workspace = typename Kernels<Real>::Workspace;
    Kernels<Real>::fwd = reinterpret_cast<typename Kernels<Real>::Fwd>(fwd);
    Kernels<Real>::bwd = reinterpret_cast<typename Kernels<Real>::Bwd>(bwd);
    Kernels<Real>::fwd_grad = reinterpret_cast<typename Kernels<Real>::FwdGrad>(fwd_grad);
    Kernels<Real>::fwd_workspace = reinterpret_cast<Workspace>(fwd_workspace);
    Kernels<Real>::bwd_workspace = reinterpret_cast<Workspace>(bwd_workspace);
    Kernels<Real>::fwd_grad_workspace = reinterpret_cast<Workspace>(fwd_grad_workspace);
}

}  // namespace

// The C kernels of one dtype (is_double: float64, else float32), by their addresses in the
// library tcvae/cpu.py loaded: every later call of that dtype runs them.
extern "C" void betavae_triton_bind_kernels(int is_double, void *fwd, void *bwd,
                                            void *fwd_workspace, void *bwd_workspace,
                                            void *fwd_grad, void *fwd_grad_workspace) {
    if (is_double)
        bind<double>(fwd, bwd, fwd_workspace, bwd_workspace, fwd_grad, fwd_grad_workspace);
    else
        bind<float>(fwd, bwd, fwd_workspace, bwd_workspace, fwd_grad, fwd_grad_workspace);
}

TORCH_LIBRARY_IMPL(betavae_triton, CPU, m) {
    m.impl("tc_log_densities_c", &tc_log_densities_c);
    m.impl("tc_log_densities_c_backward", &tc_log_densities_c_backward);
    m.impl("tc_terms_and_gradients_c", &tc_terms_and_gradients_c);
}
