"""Plant plausible one-line bugs in a copy of the package and watch the tests named for
them fail: ``python tests/mutants.py [--only ID ...]`` (not part of CI; about a minute a
mutant).

Each mutant replaces one exact line fragment of one file with a plausible mistake, in a
temporary copy of the repository, and runs the tests named for that mistake there. A
mutant is *caught* when those tests fail. The script first runs every named test on the
unmutated copy (they must pass), then prints one table row per mutant: its id, what it
breaks, caught or not, and the first test that failed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Mutant(NamedTuple):
    id: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


EX = "tests/test_examples.py::"
PROP = "tests/test_properties.py::"
TB = "tests/test_triton_backend.py::"
TC = "tests/test_tcvae_api.py::"
WG = "tests/test_weight_gradients.py::"
BAD = "tests/test_bad_input.py::"
AM = "tests/test_autograd_modes.py::"
STUDY = "tests/test_study.py::"
MIG = "tests/test_mig.py::"
MUTANTS = (
    Mutant(
        "capacity-c-min",
        "CapacityBetaVAELoss passes c_min instead of the current capacity",
        "betavae_triton/loss.py",
        "            capacity,\n            self.gamma,",
        "            self.c_min,\n            self.gamma,",
        (
            "tests/test_extensions.py::test_capacity_module_is_rec_plus_gamma_distance_to_the_scheduled_capacity",
        ),
    ),
    Mutant(
        "capacity-fixed-gamma",
        "CapacityBetaVAELoss uses a fixed γ instead of self.gamma",
        "betavae_triton/loss.py",
        "            capacity,\n            self.gamma,",
        "            capacity,\n            1000.0,",
        (
            "tests/test_extensions.py::test_capacity_module_is_rec_plus_gamma_distance_to_the_scheduled_capacity",
        ),
    ),
    Mutant(
        "per-sample-batch-inner",
        "reduction='none' walks batch-inner memory without the batch-outermost copy",
        "betavae_triton/vae/layout.py",
        "if order is None or (per_sample and order and order[0] != 0):",
        "if order is None:",
        (EX + "test_per_sample_losses_with_the_batch_innermost_in_memory",),
    ),
    Mutant(
        "p-scale-memory-order",
        "a per-element decoder scale read in its own order, not p's",
        "betavae_triton/vae/launch.py",
        "flatten(call.p_scale.expand(plan.x_shape), order)",
        "call.p_scale.expand(plan.x_shape).reshape(-1)",
        (EX + "test_per_element_decoder_scale_follows_the_memory_order_of_p",),
    ),
    Mutant(
        "int64-off",
        "64-bit offsets switched off in the reconstruction kernel",
        "betavae_triton/vae/launch.py",
        "ACC_FP64=acc == torch.float64,\n        INT64=n > _INT32_LIMIT - block,",
        "ACC_FP64=acc == torch.float64,\n        INT64=False,",
        (TB + "test_64_bit_offsets_path",),
    ),
    Mutant(
        "l1-tie-plus-one",
        "L1 subgradient +1 at p == x (PyTorch's is 0)",
        "betavae_triton/kernels/elementwise.py",
        "tl.where(d < 0, -1.0, 0.0)).to(d.dtype)\n    return tl.abs(d)",
        "tl.where(d < 0, -1.0, 1.0)).to(d.dtype)\n    return tl.abs(d)",
        (EX + "test_l1_subgradient_is_zero_at_ties",),
    ),
    Mutant(
        "shared-posterior-mean-factor",
        "per-sample backward averages a shared posterior's factors instead of summing",
        "betavae_triton/vae/autograd.py",
        "g_loss_kl = g_loss.sum().reshape(1)",
        "g_loss_kl = g_loss.mean().reshape(1)",
        (EX + "test_per_sample_losses_with_a_posterior_shared_by_the_batch",),
    ),
    Mutant(
        "cpu-op-2-beta",
        "the CPU operator's eager implementation adds 2β·kl",
        "betavae_triton/vae/cpu.py",
        "out.loss.copy_(out.rec.to(plan.loss_dtype) + call.weight *",
        "out.loss.copy_(out.rec.to(plan.loss_dtype) + 2 * call.weight *",
        ("tests/test_cpu_operator.py",),
    ),
    Mutant(
        "cpu-op-rescale",
        "the CPU rescaling fallback ignores g_loss's weight",
        "betavae_triton/vae/cpu.py",
        "factor = grad_factor(g_term, g_loss, weight, torch.float64)",
        "factor = grad_factor(g_term, g_loss, 1.0, torch.float64)",
        ("tests/test_cpu_operator.py",),
    ),
    Mutant(
        "half-accumulation",
        "16-bit inputs accumulated in their own dtype (a bfloat16/float16 accumulation)",
        "betavae_triton/kernels/reconstruction.py",
        "    acc += in_row(loss, mask, MASKED)",
        "    acc = (acc + in_row(loss, mask, MASKED)).to(p_ptr.dtype.element_ty).to(acc_ty)",
        (EX + "test_half_precision_accumulates_in_float32",),
    ),
    Mutant(
        "kl-over-data-batch",
        "the KL divided by the data batch instead of the posterior's",
        "betavae_triton/vae/call.py",
        "rec_div, kl_div = max(batch, 1), max(q_batch, 1)",
        "rec_div, kl_div = max(batch, 1), max(batch, 1)",
        (PROP + "test_matches_reference", TB + "test_posterior_broadcasting"),
    ),
    Mutant(
        "bce-clamp-dropped-kernel",
        "the −100 clamp of log p dropped in the kernel",
        "betavae_triton/kernels/elementwise.py",
        "    return tl.where(lv < BCE_LOG_FLOOR, BCE_LOG_FLOOR, lv)",
        "    return lv",
        (TB + "test_bernoulli_at_exactly_zero_and_one",),
    ),
    Mutant(
        "bce-clamp-dropped-eager",
        "the −100 clamp of log p dropped in the eager path",
        "betavae_triton/vae/eager.py",
        "log_p = torch.log(p).clamp_min_(BCE_LOG_FLOOR)",
        "log_p = torch.log(p)",
        (PROP + "test_matches_reference",),
    ),
    Mutant(
        "logits-eager-aten",
        "eager logits loss back to ATen's float32 binary_cross_entropy_with_logits",
        "betavae_triton/vae/eager.py",
        "        return _nan_outside_unit_interval(logits_nll.apply(p, x).sum(), x)",
        "        return F.binary_cross_entropy_with_logits(p, x, reduction='sum')",
        (EX + "test_confident_logits_are_exact_in_float32",),
    ),
    Mutant(
        "logits-grad-cancels",
        "the kernel's logit gradient as σ(l) − x (cancels where σ(l) rounds to 1)",
        "betavae_triton/kernels/elementwise.py",
        "    return loss, (1.0 - x) * sigmoid_pos - x * sigmoid_neg, -logit",
        "    return loss, sigmoid_pos - x, -logit",
        (EX + "test_confident_logits_are_exact_in_float32",),
    ),
    Mutant(
        "logvar-grad",
        "the log-variance gradient without its ½",
        "betavae_triton/kernels/elementwise.py",
        "return 0.5 * (mu * mu + var - 1.0 - logvar), mu, 0.5 * (var - 1.0)",
        "return 0.5 * (mu * mu + var - 1.0 - logvar), mu, (var - 1.0)",
        (PROP + "test_logits_and_logvar_match_reference",),
    ),
    Mutant(
        "finalize-kl-row",
        "the finalize reads KL row r even for a posterior shared by the batch",
        "betavae_triton/kernels/finalize.py",
        "kl_row = tl.where(kl_rows == 1, 0, row)",
        "kl_row = row",
        (EX + "test_per_sample_losses_with_a_posterior_shared_by_the_batch",),
    ),
    Mutant(
        "rescale-skip-wrong",
        "the backward skips rescaling whenever the factor is positive",
        "betavae_triton/kernels/rescale.py",
        "    if factor != 1.0:",
        "    if factor < 0.0:",
        (TB + "test_incoming_gradients_are_routed_to_each_term",),
    ),
    Mutant(
        "tail-tile-dropped",
        "the partial last tile of a row never read",
        "betavae_triton/kernels/tiling.py",
        "return n_full, (row_len % BLOCK != 0) & (pid == n_full % n_programs)",
        "return n_full, (row_len % BLOCK != 0) & (pid < 0)",
        (TB + "test_sizes_not_multiple_of_the_block",),
    ),
    Mutant(
        "beta-tensor-ignored",
        "a β given as a tensor read as 1 by the finalize",
        "betavae_triton/kernels/finalize.py",
        "        beta = tl.load(beta_ptr).to(acc_ty)",
        "        beta = tl.full([], 1.0, acc_ty)",
        ("tests/test_compile.py::test_beta_schedule_compiles_at_most_twice",),
    ),
    Mutant(
        "mixed-dtype-grad-cast",
        "p's gradient written in the promoted dtype, not p's own (a cast copy back)",
        "betavae_triton/vae/call.py",
        "    if call.need_grad_p and not call.need_grad_x:\n        return call.p.dtype",
        "    if call.need_grad_p and not call.need_grad_x:\n        return rec_dtype",
        (TB + "test_mixed_dtypes_are_read_in_place_without_casts",),
    ),
    Mutant(
        "bce-eps-dropped",
        "BCE gradient without ATen's 1e-12 floor of p(1 − p)",
        "betavae_triton/kernels/elementwise.py",
        "    denom = tl.where(denom < BCE_GRAD_EPS, BCE_GRAD_EPS, denom)",
        "    denom = denom",
        (TB + "test_bernoulli_at_exactly_zero_and_one",),
    ),
    # β-TCVAE (issue 15)
    Mutant(
        "tc-own-weight-column-0",
        "the paper's MSS weights put the own sample's 1/N in column 0 (the published code's bug)",
        "betavae_triton/kernels/total_correlation.py",
        "w = tl.where(j == i, own, tl.where(j == (i + 1) % batch, strat, rest))",
        "w = tl.where(j == 0, own, tl.where(j == (i + 1) % batch, strat, rest))",
        (TC + "test_stratified_weights_are_invariant_under_a_cyclic_shift_of_the_batch",),
    ),
    Mutant(
        "tc-strat-previous-sample",
        "the eager path's stratum weight on j = i − 1 instead of i + 1",
        "betavae_triton/tcvae/eager.py",
        "w = torch.where(cols == (rows + 1) % self.batch, self.strat, w)",
        "w = torch.where(cols == (rows - 1) % self.batch, self.strat, w)",
        # (the chunked torch path: on a CPU with a C compiler the eager backend runs
        # tcvae/minibatch.c, so the API tests no longer reach this file there)
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-torch-mss]",),
    ),
    Mutant(
        "tc-row-offset-ignored",
        "the forward kernel weighs a rank's rows as if they were rows 0 … of the batch",
        "betavae_triton/kernels/total_correlation.py",
        "pair, _ = _pair(z, mu[None, :], inv_sigma[None, :], c[None, :])\n"
        "        lw = log_weight(rows + row_offset,",
        "pair, _ = _pair(z, mu[None, :], inv_sigma[None, :], c[None, :])\n"
        "        lw = log_weight(rows,",
        ("tests/test_tcvae_eager.py::test_a_ranks_rows_against_the_whole_batch",),
    ),
    Mutant(
        "tc-gather-offset-zero",
        "gather=True scores every rank's rows as rows 0 … of the global batch",
        "betavae_triton/tcvae/terms.py",
        "row_offset = rank * z.shape[0]",
        "row_offset = 0",
        ("tests/test_tcvae_gather.py::test_two_ranks_equal_one_process_on_the_concatenated_batch",),
    ),
    Mutant(
        "tc-online-lse-no-rescale",
        "the online log-sum-exp forgets to rescale its sum when a new maximum arrives",
        "betavae_triton/kernels/total_correlation.py",
        "tl.where(grow, run_sum * e + 1.0, run_sum + e)",
        "tl.where(grow, run_sum + 1.0, run_sum + e)",
        (TC + "test_terms_match_the_reference[triton]",),
    ),
    Mutant(
        "tc-logvar-as-log-sigma",
        "a log-variance read as log σ (the ½ dropped), on every route",
        "betavae_triton/tcvae/ops.py",
        "    return second * 0.5 if q_is_logvar else second.log()",
        "    return second if q_is_logvar else second.log()",
        (
            TC + "test_terms_match_the_reference[triton]",
            TC + "test_terms_match_the_reference[eager]",
        ),
    ),
    Mutant(
        "tc-log-sigma-grad-sign",
        "the kernel's d log N/d log σ as (z − μ)²/σ² + 1 instead of − 1",
        "betavae_triton/kernels/total_correlation.py",
        "grad_log_sigma += g * (t * t - 1.0)",
        "grad_log_sigma += g * (t * t + 1.0)",
        (TC + "test_loss_and_gradients_match_the_reference",),
    ),
    Mutant(
        "tc-eager-grad-last-chunk",
        "the eager backward keeps only the last chunk's contribution to dL/dz",
        "betavae_triton/tcvae/eager.py",
        "grad_z -= (g_t * inv_sigma[None, :, :]).sum(2)",
        "grad_z = -(g_t * inv_sigma[None, :, :]).sum(2)",
        ("tests/test_tcvae_eager.py::test_the_chunked_algorithm_matches_the_oracle_in_any_chunks",),
    ),
    Mutant(
        "tc-mws-without-batch",
        "the kernels' MWS weight −log N instead of −log(B·N)",
        "betavae_triton/kernels/total_correlation.py",
        "own = -tl.log(b * n)",
        "own = -tl.log(n)",
        (TC + "test_terms_match_the_reference[triton]",),
    ),
    Mutant(
        "tc-gamma-weighs-tc",
        "the loss weighs the total correlation by γ instead of β",
        "betavae_triton/functional.py",
        "_weigh(beta, tc)",
        "_weigh(gamma, tc)",
        (TC + "test_loss_and_gradients_match_the_reference",),
    ),
    Mutant(
        "tc-tensor-weight-promotes",
        "a 0-d float64 tensor weight promotes the float32 loss to float64",
        "betavae_triton/functional.py",
        "    return (tensor * term).to(term.dtype)",
        "    return tensor * term",
        (TC + "test_module_outputs_and_weights",),
    ),
    Mutant(
        "tc-zero-scale-accepted",
        "validation lets σ = 0 through",
        "betavae_triton/_checks.py",
        "if bool((q_scale <= 0).any()):",
        "if bool((q_scale < 0).any()):",
        (TC + "test_bad_input_gets_a_clear_error",),
    ),
    # Paths no test reached, and bad input (issue 24)
    Mutant(
        "op-backward-beta-number",
        "the operator's own backward weighs the KL by the number β, ignoring the tensor β",
        "betavae_triton/vae/autograd.py",
        "    weight = beta_tensor if beta_tensor is not None else saved.flags.beta",
        "    weight = saved.flags.beta",
        (WG + "test_operator_gradients_with_a_tensor_beta_match_the_reference",),
    ),
    Mutant(
        "tc-weight-as-number",
        "β-TCVAE weighs a term by float(tensor): the weight's gradient is lost",
        "betavae_triton/functional.py",
        "    return (tensor * term).to(term.dtype)",
        "    return (float(tensor) * term).to(term.dtype)",
        (WG + "test_tcvae_weight_gradients_are_their_terms",),
    ),
    Mutant(
        "vae-eager-weight-as-number",
        "the β-VAE eager path weighs the KL by float(β): a tensor β's gradient is lost",
        "betavae_triton/vae/eager.py",
        "        weighted = call.weight * kl",
        "        weighted = float(call.weight) * kl",
        (WG + "test_beta_vae_beta_gradient_is_the_kl",),
    ),
    Mutant(
        "vae-op-beta-grad-dropped",
        "the Triton backend's backward never gives a tensor β its gradient",
        "betavae_triton/vae/autograd.py",
        "self.beta_needs_grad = call.beta_tensor is not None and call.beta_tensor.requires_grad",
        "self.beta_needs_grad = False",
        (WG + "test_beta_vae_beta_gradient_is_the_kl",),
    ),
    Mutant(
        "vae-scale-unchecked",
        "the β-VAE loss lets σ ≤ 0 through with validation on (NaN or inf, as before)",
        "betavae_triton/_checks.py",
        "        check_positive_scale(q_scale, q_is_logvar, validate_args)\n"
        "    check_bernoulli_values(",
        "    check_bernoulli_values(",
        (BAD + "test_non_positive_scale_is_the_same_error_on_every_path",),
    ),
    Mutant(
        "weight-sign-unchecked",
        "validation lets a negative weight through",
        "betavae_triton/_checks.py",
        "    if math.isnan(value) or value < 0:",
        "    if math.isnan(value):",
        (BAD + "test_negative_or_nan_weights_are_refused_with_validation",),
    ),
    Mutant(
        "weight-type-unchecked",
        "a weight of another type (beta='4') goes on to an unrelated error",
        "betavae_triton/_checks.py",
        '    else:\n        raise TypeError(\n            f"{name} must be {WEIGHT_TYPES}',
        '    elif False:\n        raise TypeError(\n            f"{name} must be {WEIGHT_TYPES}',
        (BAD + "test_a_weight_of_another_type_names_the_accepted_types",),
    ),
    Mutant(
        "dataset-size-int-only",
        "dataset_size must be a Python int (np.int64 refused)",
        "betavae_triton/_checks.py",
        "            size = operator.index(dataset_size)",
        "            if not isinstance(dataset_size, int):\n"
        "                raise TypeError\n"
        "            size = dataset_size",
        (BAD + "test_dataset_size_is_any_integral_number",),
    ),
    Mutant(
        "tc-local-batch",
        "dataset_size compared with the local batch, not the global one",
        "betavae_triton/_checks.py",
        "    batch = z.shape[0] * world_size",
        "    batch = z.shape[0]",
        (BAD + "test_dataset_size_is_compared_with_the_global_batch",),
    ),
    Mutant(
        "tc-broadcast-with-z",
        "μ and σ checked to broadcast with z, not to z's shape",
        "betavae_triton/_checks.py",
        "        if shape != z.shape:",
        "        if shape is None:",
        (BAD + "test_a_posterior_that_broadcasts_with_z_but_not_to_z_is_named",),
    ),
    Mutant(
        "tc-default-bernoulli",
        "BetaTCVAELoss reads a tensor p as Bernoulli probabilities by default",
        "betavae_triton/loss.py",
        '        default_dist: str = "normal",\n        estimator: str = "mss",',
        '        default_dist: str = "bernoulli",\n        estimator: str = "mss",',
        (TC + "test_default_decoder_distribution_is_the_beta_vaes",),
    ),
    Mutant(
        "core-imports-numpy",
        "the launcher imports numpy, which the package does not declare",
        "betavae_triton/vae/launch.py",
        "import math\nimport struct\n",
        "import math\nimport struct\n\nimport numpy as np  # noqa: F401\n",
        (
            "tests/test_packaging.py::test_core_package_imports_and_runs_with_its_declared_dependencies_alone",
        ),
    ),
    Mutant(
        "codegen-help-prog",
        "perf.codegen's usage line names codegen.py, not the command",
        "perf/codegen.py",
        '    return cli.parse("python -m perf.codegen", __doc__',
        "    return cli.parse(None, __doc__",
        ("tests/test_cli.py::test_help_exits_0_and_names_the_command",),
    ),
    Mutant(
        "tc-c-stratum-previous",
        "the C kernels' stratum weight on j = i − 1 instead of i + 1",
        "betavae_triton/tcvae/minibatch.c",
        "        lw[(i + 1) % batch] = strat;",
        "        lw[(i + batch - 1) % batch] = strat;",
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-mss]",),
    ),
    Mutant(
        "tc-c-grad-z-sign",
        "the C backward writes +Σ G t/σ for dL/dz",
        "betavae_triton/tcvae/minibatch.c",
        "            grad_z[i * latent + d] = g_pz * zd - total;",
        "            grad_z[i * latent + d] = g_pz * zd + total;",
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-mss]",),
    ),
    Mutant(
        "tc-c-exp-short-polynomial",
        "the C kernels' float64 exponential stops at degree 10 (a 1e-11 error, not an ulp)",
        "betavae_triton/tcvae/minibatch.c",
        "    double p = 1.0 / 6227020800.0;\n    p = MULADD(p, r, 1.0 / 479001600.0);\n"
        "    p = MULADD(p, r, 1.0 / 39916800.0);\n    p = MULADD(p, r, 1.0 / 3628800.0);",
        "    double p = 1.0 / 3628800.0;",
        ("tests/test_tcvae_eager.py::test_c_kernels_in_float64_agree_with_the_oracle_to_1e_12",),
    ),
    Mutant(
        "c-bound-no-floor",
        "the C forward keeps its one-pass sum under the bound where it underflows",
        "betavae_triton/tcvae/minibatch.c",
        "        const int one_pass = total >= SUM_FLOOR && sh - sh == 0;",
        "        const int one_pass = sh - sh == 0;",
        ("tests/test_tcvae_eager.py::test_samples_far_from_every_posterior_match_the_oracle",),
    ),
    Mutant(
        "c-sum-lanes-half",
        "the C kernels' lane sums leave out lanes 8 to 15",
        "betavae_triton/tcvae/minibatch.c",
        "    const NAME(half_t) h = lo + hi;",
        "    const NAME(half_t) h = lo;",
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-mss]",),
    ),
    Mutant(
        "dispatch-backend-variable-read-inline",
        "the default backend's variable is read inline by the traced call (guards on os.environ)",
        "betavae_triton/_dispatch.py",
        "@torch.compiler.assume_constant_result\ndef _backend_variable() -> str:",
        "def _backend_variable() -> str:",
        (
            "tests/test_compile.py::"
            "test_a_compiled_call_guards_on_no_environment_variable[beta_vae_loss]",
        ),
    ),
    Mutant(
        "cpu-kernels-ready-read-inline",
        "the C kernels' switch is read inline by the traced call (guards on os.environ)",
        "betavae_triton/tcvae/cpu.py",
        "@torch.compiler.assume_constant_result\ndef kernels_ready(",
        "def kernels_ready(",
        (
            "tests/test_compile.py::"
            "test_a_compiled_call_guards_on_no_environment_variable[kl_decomposition]",
        ),
    ),
    Mutant(
        "c-log-pos-reduction-unbalanced",
        "the C kernels' logarithm reduces x to a mantissa in [1, 2), not [√½, √2)",
        "betavae_triton/tcvae/minibatch.c",
        "    const int32_t k = (bits - 0x3f3504f3) >> 23; /* m ≥ √½ */",
        "    const int32_t k = (bits - 0x3f800000) >> 23; /* m ≥ √½ */",
        (
            "tests/test_tcvae_eager.py::"
            "test_the_c_kernels_log_is_within_an_ulp_in_every_binade[dtype0]",
        ),
    ),
    Mutant(
        "c-exp-of-one-half-of-the-scale",
        "the C kernels' e^x applies half of 2^k",
        "betavae_triton/tcvae/minibatch.c",
        "    const REAL y = (p * NAME(two_to)(k1)) * NAME(two_to)(k2);",
        "    const REAL y = p * NAME(two_to)(k1);",
        (
            "tests/test_tcvae_eager.py::"
            "test_the_c_kernels_exponential_is_within_an_ulp_and_exact_at_its_limits[dtype0]",
        ),
    ),
    Mutant(
        "c-log-pass-never-exact",
        "the C forward takes the one pass's log where its sum is below the floor",
        "betavae_triton/tcvae/minibatch.c",
        "        lp[d] = one_pass ? sh + NAME(log_pos)(total) : (REAL)NAN;",
        "        lp[d] = sh + NAME(log_pos)(total);",
        (
            "tests/test_tcvae_eager.py::"
            "test_samples_far_from_every_posterior_match_the_oracle[eager-dtype0]",
        ),
    ),
    Mutant(
        "tc-c-first-range-only",
        "the posteriors' gradients keep the first thread range's partial sums only",
        "betavae_triton/tcvae/minibatch.c",
        "    for (int k = 1; k < parts; ++k) /* in part order */\n"
        "        for (int64_t e = 0; e < size; ++e) sums[e] += sums[k * size + e];",
        "    for (int k = 1; k < 1; ++k) /* in part order */\n"
        "        for (int64_t e = 0; e < size; ++e) sums[e] += sums[k * size + e];",
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-mss]",),
    ),
    Mutant(
        "tc-split-merge-no-rescale",
        "the split merge adds a later tile's sums without rescaling the earlier ones",
        "betavae_triton/kernels/total_correlation.py",
        "total = total * tl.exp(top - shift) + ",
        "total = total + ",
        ("tests/test_tcvae_splits.py::test_split_plans_match_the_oracle",),
    ),
    Mutant(
        "tc-split-skips-a-column",
        "each forward split starts one posterior late",
        "betavae_triton/kernels/total_correlation.py",
        "    for j in range(split * span, tl.minimum(split * span + span, batch)):\n"
        "        post = _row_offsets(j, dims, latent, ROW_ALIGN)\n"
        "        mu = tl.load(mu_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)\n"
        "        inv_sigma = tl.load(inv_sigma_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)\n"
        "        c = tl.load(c_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)\n"
        "        pair, _ = _pair(",
        "    for j in range(split * span + 1, tl.minimum(split * span + span, batch)):\n"
        "        post = _row_offsets(j, dims, latent, ROW_ALIGN)\n"
        "        mu = tl.load(mu_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)\n"
        "        inv_sigma = tl.load(inv_sigma_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)\n"
        "        c = tl.load(c_ptr + post, mask=dim_ok, other=0.0).to(acc_ty)\n"
        "        pair, _ = _pair(",
        ("tests/test_tcvae_splits.py::test_split_plans_match_the_oracle",),
    ),
    Mutant(
        "tc-split-nan-hidden",
        "the split merge reports −inf where every split's maximum is −inf, NaN sums or not",
        "betavae_triton/kernels/total_correlation.py",
        "    lse = top + tl.log(total)",
        '    lse = tl.where(top == float("-inf"), top, top + tl.log(total))',
        ("tests/test_tcvae_splits.py::test_a_nan_or_infinite_sample_in_one_split",),
    ),
    Mutant(
        "tc-fake-log-qz-shape",
        "the fake implementation gives log q(z) the shape of z",
        "betavae_triton/tcvae/ops.py",
        "return z.new_empty(z.shape[:1]), torch.empty_like(z)",
        "return torch.empty_like(z), torch.empty_like(z)",
        ("tests/test_tcvae_compile.py::test_cpu_operators_pass_opcheck",),
    ),
    Mutant(
        "c-lse-minus-inf-max",
        "the C kernels' log-sum-exp shifts by a row's running maximum when it is −inf",
        "betavae_triton/tcvae/minibatch.c",
        "REAL shift = (m == -INFINITY) ? 0 : m;",
        "REAL shift = m;",
        (
            "tests/test_native_build.py::"
            "test_c_log_sum_exp_where_every_pair_of_a_dimension_is_minus_inf",
        ),
    ),
    Mutant(
        "tc-c-op-tc-share-swapped",
        "the C kernels' operator shares tc's gradient to log q(z_i) with the sign of mi's",
        "betavae_triton/tcvae/minibatch_ops.cpp",
        "        add_qz = static_cast<Real>(v[1] / n - v[0] / n);",
        "        add_qz = static_cast<Real>(v[0] / n - v[1] / n);",
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-mss]",),
    ),
    Mutant(
        "ops-key-no-torch-version",
        "the operators' cache key leaves out torch's version (a library built against "
        "another torch's headers)",
        "betavae_triton/tcvae/cpu.py",
        "                torch.__version__,\n",
        "",
        (
            "tests/test_native_build.py::"
            "test_the_operators_cache_key_covers_the_source_the_compiler_and_torch[torch]",
        ),
    ),
    Mutant(
        "tc-compiled-keeps-the-eager-operator",
        "a compiled graph calls the eager operator (torch._library's Python), not the C "
        "kernels' operators",
        "betavae_triton/tcvae/ops.py",
        "    return torch.compiler.is_compiling() and not exporting and _c_kernels(z)",
        "    return False",
        (
            "tests/test_tcvae_compile.py::"
            "test_compiled_eager_path_keeps_the_walk_over_the_batch_out_of_the_graph[1]",
        ),
    ),
    Mutant(
        "tc-exported-c-kernels",
        "torch.export puts the C kernels' operators in the program",
        "betavae_triton/tcvae/ops.py",
        "    return torch.compiler.is_compiling() and not exporting and _c_kernels(z)",
        "    return torch.compiler.is_compiling() and _c_kernels(z)",
        (
            "tests/test_tcvae_compile.py::"
            "test_exported_programs_name_the_eager_operator_not_the_c_kernels",
        ),
    ),
    Mutant(
        "tc-compiled-fused-below-2-16-always",
        "inside torch.compile the formula at every size up to 2^16 values, C kernels or not",
        "betavae_triton/tcvae/terms.py",
        "    return call.mu.shape[0] <= FUSED_BATCH and not gradients_ahead(call)",
        "    return True",
        (
            "tests/test_tcvae_compile.py::"
            "test_compiled_eager_backend_routes_each_call_to_its_cheapest_form[64-6-no_grad]",
        ),
    ),
    Mutant(
        "native-key-no-source",
        "the native cache key no longer covers the kernel source (a stale library after an "
        "upgrade)",
        "betavae_triton/tcvae/cpu.py",
        "                SOURCE.read_text(),\n",
        "",
        ("tests/test_native_build.py::test_the_cache_key_covers_the_kernel_source",),
    ),
    # The study's protocol, the MIG, the demo's extra and dataset_size (issue 31)
    Mutant(
        "study-choice-scored-on-all-seeds",
        "the choice scores each grid point by its median MIG over every seed, held-out too",
        "betavae_triton/demo/study_choice.py",
        '            score = row["mig"]["median"]',
        '            score = float(np.median([r["mig"] for r in runs_of(study, point, '
        "(*study.seeds_select, *study.seeds_heldout), records)]))",
        (STUDY + "test_heldout_records_never_change_the_choice",),
    ),
    Mutant(
        "study-select-by-label",
        "the selection takes every record of a grid point by its label, held-out seeds' too",
        "betavae_triton/demo/study_choice.py",
        "        runs = runs_of(study, point, study.seeds_select, records)",
        '        runs = [r for k, r in records.items() if k.startswith(point.label() + "_s")]',
        (STUDY + "test_heldout_records_never_change_the_choice",),
    ),
    Mutant(
        "study-figure-all-seeds",
        "mig_vs_batch.png's selection curves take the held-out seeds' MIGs too",
        "betavae_triton/demo/study_report.py",
        '            migs = [r["mig"] for r in runs_of(study, p, study.seeds_select, records)]',
        '            migs = [r["mig"] for r in runs_of(study, p, (*study.seeds_select, '
        "*study.seeds_heldout), records)]",
        (STUDY + "test_heldout_records_enter_no_selection_figure_or_table",),
    ),
    Mutant(
        "study-staleness-unpaired",
        "the bank's staleness taken against the full estimate, not against the re-encoded bank",
        "betavae_triton/demo/study_choice.py",
        '                late["staleness"].extend([m["bank"] - m["fresh"]] * after)',
        '                late["staleness"].extend([m["bank"] - m["full"]] * after)',
        (STUDY + "test_a_bank_study_tracks_the_tc_bias_during_training_and_reports_it",),
    ),
    Mutant(
        "study-heldout-images-nominal",
        "the held-out table gives the budget's images, not those its runs saw",
        "betavae_triton/demo/study_choice.py",
        '        "images_seen": study.budget.steps(point.batch_size) * point.batch_size,',
        '        "images_seen": study.budget.images,',
        (STUDY + "test_heldout_runs_see_as_many_images_as_their_points_selection_runs",),
    ),
    Mutant(
        "study-steps-rounded",
        "a run's steps rounded to the nearest, so that it may see more images than the budget",
        "betavae_triton/demo/study_grid.py",
        "        return max(1, self.images // batch_size)",
        "        return max(1, round(self.images / batch_size))",
        (STUDY + "test_heldout_runs_see_as_many_images_as_their_points_selection_runs",),
    ),
    Mutant(
        "mig-entropy-empty-levels",
        "the factor entropy sums over empty levels too (0 · log 0 = NaN drops the factor)",
        "betavae_triton/demo/mig.py",
        "    p = counts[counts > 0] / counts.sum()",
        "    p = counts / counts.sum()",
        (MIG + "test_a_factor_with_empty_levels_has_the_entropy_of_its_observed_levels",),
    ),
    Mutant(
        "mig-normalised-by-levels",
        "the MIG divides a factor's gap by the log of its number of levels, empty ones too",
        "betavae_triton/demo/mig.py",
        "        h = entropy(factors[:, k])",
        "        h = float(np.log(factors[:, k].max() + 1))",
        (MIG + "test_a_factor_with_empty_levels_has_the_entropy_of_its_observed_levels",),
    ),
    Mutant(
        "demo-extra-without-numpy",
        "the demo's commands forget that numpy is an extra (a raw traceback without it)",
        "betavae_triton/demo/_extras.py",
        'DEMO_EXTRAS = ("matplotlib", "numpy", "tqdm")',
        'DEMO_EXTRAS = ("matplotlib", "tqdm")',
        ("tests/test_cli.py::test_without_the_demo_extra_the_commands_exit_naming_it",),
    ),
    Mutant(
        "dataset-size-beyond-int64",
        "dataset_size = 2**63 let through to the operator's 64-bit argument",
        "betavae_triton/_checks.py",
        "    if size >= DATASET_SIZE_LIMIT:",
        "    if size > DATASET_SIZE_LIMIT:",
        (BAD + "test_a_dataset_size_beyond_64_bits_is_a_value_error",),
    ),
    # Every derivative a user can ask for, and the idioms around it (issue 31)
    Mutant(
        "triton-second-derivative-silent",
        "the Triton backend's backward answers create_graph=True (zeros for the second order)",
        "betavae_triton/vae/autograd.py",
        "    if create_graph_requested(rec_grads):\n        raise RuntimeError(SECOND_DERIVATIVES)",
        "    if False:\n        raise RuntimeError(SECOND_DERIVATIVES)",
        (AM + "test_triton_second_derivatives_are_refused_not_zero",),
    ),
    Mutant(
        "tc-double-backward-first-order",
        "β-TCVAE's backward ignores create_graph=True (no graph through the pairwise terms)",
        "betavae_triton/tcvae/ops.py",
        "    if create_graph_requested(call.z):",
        "    if False:",
        (AM + "test_beta_tcvae_second_derivatives_match_reference",),
    ),
    Mutant(
        "transform-unseen",
        "forward-mode AD is not detected: the operators' outputs are constants to it",
        "betavae_triton/_dispatch.py",
        "    if fwAD._current_level >= 0 and any(",
        "    if fwAD._current_level >= 99 and any(",
        (AM + "test_beta_tcvae_forward_mode_matches_reference",),
    ),
    Mutant(
        "unwritten-gradient-silent",
        "an exported call asked for a gradient it did not write returns None",
        "betavae_triton/vae/autograd.py",
        "    _check_written(ctx, saved.flags)\n",
        "\n",
        (AM + "test_exported_triton_call_without_the_gradient_it_was_traced_for_refuses_clearly",),
    ),
    Mutant(
        "logits-nll-in-place",
        "the eager logits cross-entropy writes in place on exp's output (export's backward fails)",
        "betavae_triton/vae/eager.py",
        "        tail = torch.log1p(torch.exp(-torch.abs(logits)))",
        "        tail = torch.abs(logits).neg_().exp_().log1p_()",
        (AM + "test_export_save_load_and_backward",),
    ),
    Mutant(
        "in-place-backward-for-direct-callers",
        "the backward rescales in place the buffers a direct caller of the operator keeps",
        "betavae_triton/vae/autograd.py",
        "    in_place = saved.flags.in_place_backward and not saved.flags.per_sample",
        "    in_place = not saved.flags.per_sample",
        ("tests/test_compile.py::test_opcheck[dtype0-normal]",),
    ),
    Mutant(
        "gather-minimum-batch-local",
        "β-TCVAE's minimum batch is checked on the rank's batch, not the global one",
        "betavae_triton/_checks.py",
        "    batch = z.shape[0] * world_size",
        "    batch = z.shape[0]",
        (BAD + "test_the_minimum_batch_counts_the_global_batch_under_gather",),
    ),
    Mutant(
        "tc-reconstruction-validation-default",
        "β-TCVAE's reconstruction follows the global validation default, not validate_args",
        "betavae_triton/functional.py",
        "        x, p, None, None, dist=dist, p_is_logits=p_is_logits, p_scale=p_scale,\n"
        "        validate_args=validate_args,\n    )",
        "        x, p, None, None, dist=dist, p_is_logits=p_is_logits, p_scale=p_scale,\n    )",
        (BAD + "test_beta_tcvae_reconstruction_honours_validate_args",),
    ),
    # One operator call per β-TCVAE step: the terms inside the operators (issue 30)
    Mutant(
        "tc-c-own-share-dropped",
        "the C backward leaves out the gradient of each sample's own log q(z_i|x_i)",
        "betavae_triton/tcvae/minibatch.c",
        "        s[i + row_offset] += g_own;",
        "        (void)g_own;",
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-mss]",),
    ),
    Mutant(
        "tc-c-own-posterior-row",
        "the C forward takes a rank's own posteriors from the batch's first rows",
        "betavae_triton/tcvae/minibatch.c",
        "NAME(row_terms)(z_row, mu_t, inv_t, c_t, i + row_offset, log_qz[i], lp, sums,",
        "NAME(row_terms)(z_row, mu_t, inv_t, c_t, i, log_qz[i], lp, sums,",
        ("tests/test_tcvae_gather.py::test_two_ranks_equal_one_process_on_the_concatenated_batch",),
    ),
    Mutant(
        "tc-terms-own-rows",
        "the terms read a rank's own posteriors from the batch's first rows (torch, Triton)",
        "betavae_triton/tcvae/decomposition.py",
        "    rows = slice(call.row_offset, call.row_offset + call.z.shape[0])\n    return",
        "    rows = slice(0, call.z.shape[0])\n    return",
        ("tests/test_tcvae_gather.py::test_two_ranks_equal_one_process_on_the_concatenated_batch",),
    ),
    Mutant(
        "tc-terms-logvar-chain",
        "the one-node eager β-TCVAE path carries the gradient of log σ to log σ² as 2×, not ½×",
        "betavae_triton/tcvae/ops.py",
        "grad_log_sigma.mul_(0.5)",
        "grad_log_sigma.mul_(2.0)",
        (f"{TC}test_terms_match_the_reference",),
    ),
    Mutant(
        "tc-terms-sigma-chain",
        "the one-node eager β-TCVAE path returns the gradient of log σ as σ's",
        "betavae_triton/tcvae/ops.py",
        "grad_log_sigma.div_(second)",
        "grad_log_sigma",
        (
            "tests/test_tcvae_compile.py::"
            "test_untraced_eager_calls_skip_the_dispatcher_and_traced_ones_keep_the_operator",
        ),
    ),
    Mutant(
        "tc-terms-second-order-detached",
        "the one-node eager path's second derivative loses log σ's dependence on σ",
        "betavae_triton/tcvae/ops.py",
        "    with torch.set_grad_enabled(graph):",
        "    with torch.set_grad_enabled(False):",
        (f"{AM}test_beta_tcvae_second_derivatives_match_reference",),
    ),
    Mutant(
        "tc-terms-logvar-second-order",
        "the one-node eager path's second derivative through log σ² forgets the ½",
        "betavae_triton/tcvae/ops.py",
        "grad_log_sigma * 0.5 if graph",
        "grad_log_sigma if graph",
        (f"{AM}test_beta_tcvae_second_derivatives_match_reference",),
    ),
    Mutant(
        "tc-terms-one-node-ignores-the-bank",
        "an untraced eager call with a bank takes the one-node path, which has no bank",
        "betavae_triton/tcvae/terms.py",
        "triton or gather or bank is not None or transform",
        "triton or gather or transform",
        (
            "tests/test_tcvae_bank.py::test_batch_and_bank_holding_the_data_set_give_the_exact_terms",
        ),
    ),
    Mutant(
        "tc-untraced-under-a-mode",
        "the eager β-TCVAE call skips its operator under a dispatch mode (make_fx, export)",
        "betavae_triton/tcvae/ops.py",
        "        and torch._C._len_torch_dispatch_stack() == 0\n",
        "",
        (
            "tests/test_tcvae_compile.py::"
            "test_untraced_eager_calls_skip_the_dispatcher_and_traced_ones_keep_the_operator",
        ),
    ),
    Mutant(
        "tc-compiled-never-fused",
        "inside torch.compile the eager backend calls its operator at every size",
        "betavae_triton/tcvae/terms.py",
        "    if call.z.shape[0] * call.mu.numel() > FUSED:",
        "    if call.z.shape[0] * call.mu.numel() > 0:",
        (
            "tests/test_tcvae_compile.py::"
            "test_compiled_eager_backend_routes_each_call_to_its_cheapest_form[16-4-no_grad]",
        ),
    ),
    Mutant(
        "tc-compiled-outputs-views",
        "the compiled terms are views of one tensor (AOTAutograd regenerates them per call)",
        "betavae_triton/tcvae/terms.py",
        "        return tuple(t.clone() for t in terms.unbind())",
        "        return tuple(terms.unbind())",
        (
            "tests/test_tcvae_compile.py::"
            "test_compiled_eager_backend_routes_each_call_to_its_cheapest_form[64-520-step]",
        ),
    ),
    # The C forward with the terms' gradients (a compiled step's one operator call)
    Mutant(
        "tc-compiled-fused-ignores-gradients",
        "inside torch.compile a small batch is the formula even for a step that differentiates",
        "betavae_triton/tcvae/terms.py",
        "    return call.mu.shape[0] <= FUSED_BATCH and not gradients_ahead(call)",
        "    return call.mu.shape[0] <= FUSED_BATCH",
        (
            "tests/test_tcvae_compile.py::"
            "test_a_step_the_plan_declines_takes_the_same_route_traced[16-4]",
        ),
    ),
    Mutant(
        "tc-compiled-no-gradients-ahead",
        "a compiled step calls the C forward and backward operators, not the forward with "
        "gradients",
        "betavae_triton/tcvae/terms.py",
        "    if not triton and call.mu.numel() <= GRADIENTS_AHEAD and gradients_ahead(call):",
        "    if False:",
        (
            "tests/test_tcvae_compile.py::"
            "test_a_step_the_plan_declines_takes_the_same_route_traced[64-6]",
        ),
    ),
    Mutant(
        "tc-compiled-gradients-ahead-every-size",
        "a compiled step calls the C forward with gradients at every size",
        "betavae_triton/tcvae/terms.py",
        "    if not triton and call.mu.numel() <= GRADIENTS_AHEAD and gradients_ahead(call):",
        "    if not triton and gradients_ahead(call):",
        (
            "tests/test_tcvae_compile.py::"
            "test_compiled_eager_backend_routes_each_call_to_its_cheapest_form[64-520-step]",
        ),
    ),
    Mutant(
        "tc-plan-never",
        "a compiled call is never planned: its checks and route are traced (more guards)",
        "betavae_triton/tcvae/terms.py",
        "    if not _is_compiling():\n        return None\n    if not (isinstance(z, Tensor)",
        "    if True:\n        return None\n    if not (isinstance(z, Tensor)",
        (
            "tests/test_tcvae_compile.py::"
            "test_a_compiled_step_on_the_c_kernels_is_checked_and_routed_once_per_trace",
        ),
    ),
    Mutant(
        "tc-plan-unchecked",
        "kl_decomposition's plan skips the checks",
        "betavae_triton/functional.py",
        "z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, backend, check=True",
        "z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, backend, check=False",
        (
            "tests/test_tcvae_compile.py::"
            "test_a_compiled_call_the_plan_refuses_raises_the_checks_error"
            "[dataset-smaller-than-the-batch]",
        ),
    ),
    Mutant(
        "tc-plan-raises-at-trace-time",
        "the plan lets the checks' error out (dynamo wraps it), not the traced path",
        "betavae_triton/tcvae/terms.py",
        "        try:\n"
        "            check_tcvae_inputs(*meta, dataset_size, estimator, q_is_logvar, False)\n"
        "        except (TypeError, ValueError, RuntimeError):\n            return None\n",
        "        check_tcvae_inputs(*meta, dataset_size, estimator, q_is_logvar, False)\n",
        (
            "tests/test_tcvae_compile.py::"
            "test_a_compiled_call_the_plan_refuses_raises_the_checks_error[unknown-estimator]",
        ),
    ),
    Mutant(
        "tc-plan-weights-of-mss",
        "the plan's weights are always \"mss\"'s",
        "betavae_triton/tcvae/terms.py",
        "    return tuple(estimator_weights(batch, dataset_size, estimator))",
        '    return tuple(estimator_weights(batch, dataset_size, "mss"))',
        (
            "tests/test_tcvae_compile.py::"
            "test_a_planned_step_recompiles_for_another_dataset_size_or_estimator[mws]",
        ),
    ),
    Mutant(
        "tc-plan-symbolic-sizes",
        "the plan is handed symbolic sizes (not made plain ints)",
        "betavae_triton/tcvae/terms.py",
        "        index(batch), index(latent), z.dtype, index(dataset_size), estimator, "
        "q_is_logvar, check",
        "        batch, latent, z.dtype, dataset_size, estimator, q_is_logvar, check",
        ("tests/test_tcvae_compile.py::test_a_planned_step_with_dynamic_sizes_has_no_graph_break",),
    ),
    Mutant(
        "tc-plan-any-size",
        "the plan takes the forward with gradients at every size",
        "betavae_triton/tcvae/terms.py",
        "    if batch * latent > GRADIENTS_AHEAD or not isinstance(dataset_size, int):",
        "    if not isinstance(dataset_size, int):",
        (
            "tests/test_tcvae_compile.py::"
            "test_compiled_eager_backend_routes_each_call_to_its_cheapest_form[64-520-step]",
        ),
    ),
    Mutant(
        "tc-plan-ignores-grad-mode",
        "the plan takes the forward with gradients for a no_grad call too",
        "betavae_triton/tcvae/terms.py",
        "    if not (_grad_enabled() and (z.requires_grad or q_loc.requires_grad or "
        "q_scale.requires_grad)):",
        "    if False:",
        (
            "tests/test_tcvae_compile.py::"
            "test_compiled_eager_backend_routes_each_call_to_its_cheapest_form[64-6-no_grad]",
        ),
    ),
    Mutant(
        "tc-with-gradients-own-parts-dropped",
        "the compiled backward of the C forward with gradients leaves out the own parts",
        "betavae_triton/tcvae/ops.py",
        "        add_own_gradients(z, mu, log_sigma, ctx.row_offset, g_terms, *grads)\n"
        "        return (*grads,",
        "        return (*grads,",
        (
            "tests/test_tcvae_compile.py::"
            "test_a_compiled_step_refuses_second_derivatives_by_name[16-4]",
        ),
    ),
    Mutant(
        "c-grad-combination-sign",
        "the C forward with gradients gives tc the gradient P − A, not A − P",
        "betavae_triton/tcvae/minibatch.c",
        "        grad_z[rows_size + k] = (a - p) * inv_n;",
        "        grad_z[rows_size + k] = (p - a) * inv_n;",
        (
            "tests/test_tcvae_eager.py::"
            "test_the_c_forward_with_gradients_matches_the_oracle_in_float64",
        ),
    ),
    Mutant(
        "c-grad-unscaled",
        "the C forward with gradients takes e^(M + log w - b) for e^(M + log w - log q(z_id))",
        "betavae_triton/tcvae/minibatch.c",
        "const REAL t = t_d[k], p = s[k], r = e_d[k] * sc, tt = t * t - 1;",
        "const REAL t = t_d[k], p = s[k], r = e_d[k], tt = t * t - 1;",
        (
            "tests/test_tcvae_eager.py::test_the_c_forward_with_gradients_matches_the_oracle_in_float64",
        ),
    ),
    Mutant(
        "c-grad-two-pass-not-recomputed",
        "the C forward with gradients scales by 0 where log q(z_id) came from the two passes",
        "betavae_triton/tcvae/minibatch.c",
        "        if (!(sc > 0)) {",
        "        if (0) {",
        (
            "tests/test_tcvae_eager.py::"
            "test_the_c_forward_with_gradients_far_from_every_posterior[dtype0]",
        ),
    ),
    Mutant(
        "c-grad-first-part-only",
        "the C forward with gradients keeps the first range of rows' partial sums (threads > 1)",
        "betavae_triton/tcvae/minibatch.c",
        "        for (int64_t e = 0; e < 4 * size; ++e) sums[e] += sums[k * per_part + e];",
        "        for (int64_t e = 0; e < 4 * size; ++e) sums[e] += 0 * sums[k * per_part + e];",
        (
            "tests/test_tcvae_eager.py::test_the_c_forward_with_gradients_matches_the_oracle_in_float64",
        ),
    ),
    Mutant(
        "c-terms-sums-not-means",
        "the C forward returns the terms' sums over the rows, not their means",
        "betavae_triton/tcvae/minibatch.c",
        "        terms[t] = (REAL)(total / (double)n_rows);\n    }\n}\n",
        "        terms[t] = (REAL)total;\n    }\n}\n",
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-mss]",),
    ),
    Mutant(
        "c-terms-first-part-only",
        "the C forward keeps the first range of rows' sums (threads > 1)",
        "betavae_triton/tcvae/minibatch.c",
        "total += part_terms[3 * k + t]; /* in part order */\n"
        "        terms[t] = (REAL)(total / (double)n_rows);\n    }\n}\n",
        "total += 0 * part_terms[3 * k + t]; /* in part order */\n"
        "        terms[t] = (REAL)(total / (double)n_rows);\n    }\n}\n",
        ("tests/test_tcvae_eager.py::test_matches_the_oracle_in_float32[eager-mss]",),
    ),
    Mutant(
        "bank-weights-paper-rest",
        "with a bank, the others' weight is the paper's 1/(T − 1), not (N − 1)/(N(T − 1))",
        "betavae_triton/tcvae/weights.py",
        "        other = log((n - 1) / (n * m))",
        "        other = -log(m)",
        (
            "tests/test_tcvae_bank.py::test_batch_and_bank_holding_the_data_set_give_the_exact_terms[eager-c]",
        ),
    ),
    Mutant(
        "bank-weights-triton",
        "the Triton kernels' bank weight for the others is −log(T − 1)",
        "betavae_triton/kernels/total_correlation.py",
        "        strat = tl.log((n - 1.0) / (n * m))",
        "        strat = -tl.log(m)",
        (
            "tests/test_tcvae_bank.py::test_batch_and_bank_holding_the_data_set_give_the_exact_terms[triton]",
        ),
    ),
    Mutant(
        "bank-c-layout",
        "the C kernels lay a bank's weights out as the authors' matrix",
        "betavae_triton/tcvae/minibatch.c",
        "    if (estimator == MSS || estimator == MSS_BANK) {",
        "    if (estimator == MSS) {",
        # (not the exactness test: with T = N, own and rest are both 1/N)
        (
            "tests/test_tcvae_bank.py::"
            "test_a_partial_bank_matches_the_oracle_and_takes_no_gradient[eager-c]",
        ),
    ),
    Mutant(
        "bank-gets-gradients",
        "the bank's posteriors are not detached: gradients reach them",
        "betavae_triton/tcvae/terms.py",
        "    bank_mu, second = (t.detach().to(mu.dtype) for t in bank)",
        "    bank_mu, second = (t.to(mu.dtype) for t in bank)",
        (
            "tests/test_tcvae_bank.py::test_a_partial_bank_matches_the_oracle_and_takes_no_gradient[eager-c]",
        ),
    ),
    Mutant(
        "bank-ring-stuck",
        "the ring buffer's next slot does not advance",
        "betavae_triton/tcvae/bank.py",
        "        self.next.copy_((self.next + batch) % size)",
        "        self.next.copy_(self.next % size)",
        (
            "tests/test_tcvae_bank.py::test_the_ring_buffer_fills_with_copies_then_overwrites_the_oldest_first",
        ),
    ),
    Mutant(
        "bank-refresh-moves-the-ring",
        "a refresh advances the ring's next slot as a push does",
        "betavae_triton/tcvae/bank.py",
        "        self.scale.index_copy_(0, slots, scale.detach().to(self.scale.dtype))\n",
        "        self.scale.index_copy_(0, slots, scale.detach().to(self.scale.dtype))\n"
        "        self.next.copy_((self.next + slots.shape[0]) % self.size)\n",
        (
            "tests/test_tcvae_bank.py::"
            "test_a_refresh_overwrites_its_slots_and_leaves_the_ring_as_it_was",
        ),
    ),
    Mutant(
        "bank-refresh-newest-first",
        "the demo re-encodes the bank's most recent posteriors, not its stalest",
        "betavae_triton/demo/bank_slots.py",
        "        return torch.argsort(self.written, stable=True)[:count]",
        "        return torch.argsort(self.written, descending=True, stable=True)[:count]",
        (
            "tests/test_tc_track.py::"
            "test_a_refresh_re_encodes_the_stalest_posteriors_with_the_current_model",
        ),
    ),
    Mutant(
        "bank-refresh-age-unmarked",
        "a refreshed slot keeps the step of its push: the bank's age ignores the refresh",
        "betavae_triton/demo/bank_slots.py",
        "    slots.written[chosen] = step + 1",
        "    pass",
        ("tests/test_tc_track.py::test_a_bank_refreshed_whole_every_step_is_the_bank_re_encoded",),
    ),
    Mutant(
        "bank-pushes-in-eval",
        "the module pushes into its bank in eval mode too",
        "betavae_triton/loss.py",
        "        if self.bank is not None and self.training:",
        "        if self.bank is not None:",
        ("tests/test_tcvae_bank.py::test_the_module_scores_against_its_bank_and_pushes_after",),
    ),
    Mutant(
        "bank-resume-empty",
        "a loaded bank is taken as empty (its posteriors ignored until the next push)",
        "betavae_triton/tcvae/bank.py",
        "        module.filled = bool(module.count.item() > 0)",
        "        module.filled = False",
        ("tests/test_tcvae_bank.py::test_a_resumed_module_resumes_its_bank",),
    ),
    Mutant(
        "bank-larger-than-data",
        "a batch and a bank holding more posteriors than the data set are accepted",
        "betavae_triton/_checks.py",
        "    if global_batch + bank_loc.shape[0] > dataset_size:",
        "    if global_batch + bank_loc.shape[0] > dataset_size + 1:",
        ("tests/test_tcvae_bank.py::test_bad_banks_are_refused_by_name",),
    ),
    Mutant(
        "bank-gather-local",
        "with gather=True each rank pushes its own rows, not the global batch",
        "betavae_triton/tcvae/bank.py",
        "        if gather:\n",
        "        if False:\n",
        (
            "tests/test_tcvae_gather.py::"
            "test_two_ranks_with_a_bank_equal_one_process_with_the_same_bank",
        ),
    ),
)

FAILED = re.compile(r"^FAILED (\S+)", re.MULTILINE)


def _copy_tree(dest: Path) -> None:
    for name in (
        "betavae_triton",
        "reference",
        "tests",
        "perf",
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
    ):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "out"))
        else:
            shutil.copy2(src, dest / name)


def _pytest(where: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    env = {"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin", "HOME": str(where)}
    return subprocess.run(cmd, cwd=where, capture_output=True, text=True, env=env, timeout=900)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/mutants.py", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.id in args.only]
    rows, missed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "clean"
        _copy_tree(clean)
        named = tuple(sorted({t for m in mutants for t in m.tests}))
        baseline = _pytest(clean, named)
        if baseline.returncode != 0:
            print(baseline.stdout[-4000:] + baseline.stderr[-2000:])
            print("the named tests fail without any mutant: fix them first")
            return 2
        for m in mutants:
            work = Path(tmp) / m.id
            _copy_tree(work)
            target = work / m.file
            text = target.read_text()
            if text.count(m.old) != 1:
                print(
                    f"{m.id}: the fragment to mutate occurs {text.count(m.old)} times in {m.file}"
                )
                return 2
            target.write_text(text.replace(m.old, m.new))
            start = time.monotonic()
            run = _pytest(work, m.tests)
            caught = run.returncode != 0
            missed += not caught
            first = FAILED.search(run.stdout)
            by = first.group(1) if first else ("(error)" if caught else "-")
            rows.append(
                (m.id, m.what, "caught" if caught else "MISSED", by, time.monotonic() - start)
            )
            print(f"{m.id}: {'caught' if caught else 'MISSED'} by {by}", flush=True)
            shutil.rmtree(work)
    print("\n| mutant | the bug | result | first failing test |\n| --- | --- | --- | --- |")
    for mid, what, result, by, _ in rows:
        print(f"| `{mid}` | {what} | {result} | `{by}` |")
    print(f"\n{len(rows) - missed} of {len(rows)} mutants caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
