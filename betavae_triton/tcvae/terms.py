"""β-TCVAE's decomposition of the KL term on a backend: mi, tc and dw_kl.

The three terms come from one operator call (and one backward): the Triton operator
(``betavae_triton::tc_log_densities``) or the eager one
(``betavae_triton::tc_log_densities_eager``), both in :mod:`.ops`, which compute the
pairwise part, log q(z) and log Π_d q(z_d) (O(B²·D) work), in O(B·D) and O(B·chunk·D)
extra memory, and the per-sample parts (log q(z|x), log p(z), the means) from it. Run as
it is (nothing traces it), the eager operator is applied without the dispatcher
(:func:`.ops.tc_log_densities_eager_call`); inside ``torch.compile`` on the C kernels, a
step that differentiates the terms calls their forward with gradients at small B·D (one
call, no backward operator: :func:`.ops.terms_with_gradients`, :data:`GRADIENTS_AHEAD`),
and a small batch that needs no gradient is the formula, which inductor fuses
(:data:`FUSED`). A compiled call that takes the forward with gradients has its checks and
route decided by two constants to dynamo, which it does not guard on
(:func:`planned_terms`: a call's guards cost every later call some 60–100 ns each). With
``gather``, the posteriors of every rank are all-gathered (with autograd) and this rank's
samples are scored against all of them: the rank's rows are rows ``rank · B`` … of the
global batch.
"""

from __future__ import annotations

import operator

import torch

from .._checks import check_tcvae_inputs
from .._dispatch import autograd_transform, requested_backend, resolve_backend
from . import cpu
from .call import PairwiseCall
from .formula import formula_terms
from .ops import (
    c_kernels_in_graph,
    eager_terms,
    gradients_ahead,
    log_sigma_from,
    tc_log_densities,
    tc_log_densities_eager_call,
    terms_with_gradients,
    untraced,
    weighed_terms_with_gradients,
)
from .weights import estimator_weights

Tensor = torch.Tensor

#: Inside ``torch.compile``, the eager backend hands inductor the B_l × B × D formula
#: (:mod:`.formula`) instead of calling an operator when the formula has at most this many
#: elements (256 KiB in float32) and either no C kernels are built (the chunked torch
#: algorithm costs more than the formula at every size up to :data:`FUSED`) or the batch is
#: at most :data:`FUSED_BATCH` posteriors and the step will not differentiate the terms (a
#: ``no_grad`` forward). A step that differentiates them calls the C kernels' operators
#: (their forward with gradients up to :data:`GRADIENTS_AHEAD`). Measured on the 2-core
#: CPU (``perf/RESULTS.md``, compiled forward + backward against ``torch.compile`` of the
#: formula, 2026-12-07): at B = 32 with one thread the formula's route and the C kernels'
#: are within the spread of each other and of the compiled formula (0.94–1.02 of its
#: speed at D = 6, 10, 16, best of 61 interleaved rounds); with two threads inductor's
#: parallel loops cost more than they save at these sizes (the compiled formula 150–420
#: µs a step), and the C kernels' route is 1.0–2.8 times as fast as the formula. The
#: Triton backend's operator is kernels in the graph (no such call): it keeps them at
#: every size.
FUSED = 1 << 16
FUSED_BATCH = 32

#: Inside ``torch.compile`` on the C kernels, a step that differentiates the terms calls
#: their forward with gradients (:func:`.ops.terms_with_gradients`: one operator call, no
#: backward operator) while the posteriors hold at most this many values (B·D, the batch's
#: and a bank's), and the forward and backward operators beyond. Measured on the 2-core
#: CPU (2026-12-08, the C kernels alone, best of 5 alternating runs): the forward with
#: gradients keeps each row's t and exponentials and four (D, B) partial sums, and is
#: faster than the forward and backward kernels together at every size tried, 32 × 6 to
#: 1024 × 32 (B·D = 2^15): 15.2 against 20.3 µs at 32 × 16, 158 against 237 at 128 × 16,
#: 20.6 against 30.1 ms at 1024 × 32 with one thread; 354 against 528 µs at 256 × 16 with
#: two. Beyond the sizes measured, the two operators.
GRADIENTS_AHEAD = 1 << 15


def world(gather: bool, group=None) -> tuple[int, int]:
    """``(rank, world size)`` of the process group for ``gather``; ``(0, 1)`` without."""
    if not gather:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gather=True all-gathers the posteriors across ranks: initialise "
            "torch.distributed first (torch.distributed.init_process_group), or pass "
            "gather=False to score each rank's batch on its own"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather(t: Tensor, group) -> Tensor:
    """Concatenate every rank's ``t`` along dim 0, with autograd (the gradient of each
    rank's share is the sum over ranks of the gradients of its rows)."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    gather = getattr(funcol, "all_gather_single_autograd", None)
    if gather is None:  # torch < 2.13
        gather = funcol.all_gather_tensor_autograd
    out = gather(t.contiguous(), 0, group if group is not None else dist.group.WORLD)
    return funcol.wait_tensor(out) if isinstance(out, funcol.AsyncCollectiveTensor) else out


def _with_bank(
    mu: Tensor, log_sigma: Tensor, bank: tuple[Tensor, Tensor], q_is_logvar: bool
) -> tuple[Tensor, Tensor]:
    """The posteriors (B, D) followed by the bank's (K, D), detached: the rows every
    sample is scored against. One (B + K, D) copy of each per call, O((B + K)·D)."""
    bank_mu, second = (t.detach().to(mu.dtype) for t in bank)
    bank_log_sigma = log_sigma_from(second, q_is_logvar)
    return torch.cat((mu, bank_mu)), torch.cat((log_sigma, bank_log_sigma))


def _fused(call: PairwiseCall, triton: bool) -> bool:
    """Whether ``call``, on the eager backend inside ``torch.compile``, costs less as the
    formula than as an operator's call (:data:`FUSED`)."""
    if triton or not torch.compiler.is_compiling():
        return False
    if call.z.shape[0] * call.mu.numel() > FUSED:
        return False
    if not c_kernels_in_graph(call.z):
        return True
    return call.mu.shape[0] <= FUSED_BATCH and not gradients_ahead(call)


# (bound once, so that a compiled call reads no ``torch`` here: a module that torch's own
# code the call traces reads too, and two names for one object cost a Python guard each)
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled


@torch.compiler.assume_constant_result
def _c_route(
    dtypes: tuple[torch.dtype, ...], devices: tuple[str, ...], backend: str | None
) -> bool:
    """Whether a compiled call of z, μ and σ (their ``dtypes`` and device types) on
    ``backend`` is one the C kernels' forward with gradients may serve: the eager backend
    on a CPU, the kernels built, not exporting, one dtype, float32 or float64. A constant
    to ``torch.compile`` (:func:`planned_terms`)."""
    try:
        resolved = resolve_backend(requested_backend(backend), torch.device(devices[0]))
    except (ValueError, RuntimeError):
        return False
    dtype = dtypes[0]
    return (
        resolved == "eager"
        and devices == ("cpu",) * 3
        and dtypes == (dtype,) * 3
        and dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_exporting()
        and cpu.kernels_ready(dtype)
    )


@torch.compiler.assume_constant_result
def _weights(
    batch: int,
    latent: int,
    dtype: torch.dtype,
    dataset_size: int,
    estimator: str,
    q_is_logvar: bool,
    check: bool,
) -> tuple | None:
    """The estimator's weights (:func:`.weights.estimator_weights`, a tuple) for a batch of
    ``batch`` posteriors of ``latent`` dimensions in ``dtype``, or None where, with
    ``check``, the checks of :mod:`.._checks` refuse the arguments (run here on meta tensors
    of that shape and dtype; the traced path then raises their error). A constant to
    ``torch.compile`` (:func:`planned_terms`)."""
    if check:
        meta = [torch.empty((batch, latent), dtype=dtype, device="meta") for _ in range(3)]
        try:
            check_tcvae_inputs(*meta, dataset_size, estimator, q_is_logvar, False)
        except (TypeError, ValueError, RuntimeError):
            return None
    return tuple(estimator_weights(batch, dataset_size, estimator))


def planned_terms(
    z: Tensor,
    q_loc: Tensor,
    q_scale: Tensor,
    dataset_size: int,
    estimator: str,
    q_is_logvar: bool,
    backend: str | None,
    check: bool,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Inside ``torch.compile``, ``(mi, tc, dw_kl)`` of a call (one batch, no gather, no
    bank) on the route that :func:`minibatch_terms` takes for it, the C kernels' forward
    with gradients, with its checks (``check``) and route decided by two constants to
    dynamo (:func:`_c_route`, :func:`_weights`); or None where the traced path serves the
    call: another route, broadcast posteriors, arguments the checks refuse (which it
    raises).

    Why: dynamo guards on every module global, function and constant that a traced call's
    Python reads, and checks those guards before each later call of the compiled
    function. Traced through the checks, dispatch and routing, a call on the C kernels
    left 316 guard entries, some 18 µs a call at B × D = 32 × 16 in a training step
    (about 60 ns each: the step in between evicts from the cache what they read),
    against the compiled formula's 72 and 2–6 µs; dynamo runs the constants once per
    trace and guards on nothing they read (``perf/RESULTS.md``, "an eighth pass"). What
    they read is guarded on anyway: the tensors' shapes, dtypes and devices, grad mode,
    the Python arguments. The batch size, the latent size and N become plain ints
    (``operator.index``: a recompile per value where they were symbolic), as the
    estimator's weights made the batch size and N on this route before.
    """
    # (written out, without generator expressions or builtins where an attribute or an
    # operator will do: each one read is a guard entry, each generator a closure's)
    if not _is_compiling():
        return None
    if not (isinstance(z, Tensor) and isinstance(q_loc, Tensor) and isinstance(q_scale, Tensor)):
        return None
    if not (_grad_enabled() and (z.requires_grad or q_loc.requires_grad or q_scale.requires_grad)):
        return None  # (a step that does not differentiate the terms: another route)
    if z.dim() != 2 or q_loc.shape != z.shape or q_scale.shape != z.shape:
        return None
    dtypes = (z.dtype, q_loc.dtype, q_scale.dtype)
    devices = (z.device.type, q_loc.device.type, q_scale.device.type)
    if not _c_route(dtypes, devices, backend):
        return None
    batch, latent = z.shape
    if batch * latent > GRADIENTS_AHEAD or not isinstance(dataset_size, int):
        return None
    index = operator.index
    weights = _weights(
        index(batch), index(latent), z.dtype, index(dataset_size), estimator, q_is_logvar, check
    )
    if weights is None:
        return None
    log_sigma = log_sigma_from(q_scale, q_is_logvar)
    terms = weighed_terms_with_gradients(
        z.contiguous(), q_loc.contiguous(), log_sigma.contiguous(), 0, weights
    )
    # (copies, as minibatch_terms returns them: views of one tensor cost AOTAutograd's
    # runtime a replay per call)
    mi, tc, dw_kl = terms.unbind()
    return mi.clone(), tc.clone(), dw_kl.clone()


def minibatch_terms(
    z: Tensor,
    q_loc: Tensor,
    q_scale: Tensor,
    dataset_size: int,
    estimator: str,
    q_is_logvar: bool,
    backend: str | None,
    gather: bool = False,
    group=None,
    bank: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mi, tc, dw_kl)``: the means over this rank's samples of log q(z|x) − log q(z),
    log q(z) − log Π q(z) and log Π q(z) − log p(z), in float64 for float64 inputs and
    float32 otherwise, differentiable in z, q_loc and q_scale, on the backend that
    ``backend`` ("auto", "triton", "eager", or None for the default) picks for z's
    device. Under a torch.func transform or forward-mode AD, which the operators do not
    serve, the eager backend computes the pairwise terms by :mod:`.formula` (plain
    autograd). ``bank``: ``(loc, scale)`` of K more posteriors, (K, D), scored after the
    (global) batch's with "mss"'s bank weights (:mod:`.weights`), without gradient."""
    if not gather and bank is None:
        planned = planned_terms(
            z, q_loc, q_scale, dataset_size, estimator, q_is_logvar, backend, check=False
        )
        if planned is not None:
            return planned
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.to(dtype)
    mu, second = (t.to(dtype) for t in (q_loc, q_scale))
    # (expanded only where they broadcast: an expand is a node for autograd to walk)
    mu = mu if mu.shape == z.shape else mu.expand_as(z)
    second = second if second.shape == z.shape else second.expand_as(z)
    transform = autograd_transform(z, q_loc, q_scale)
    triton = resolve_backend(requested_backend(backend), z.device, transform) == "triton"
    if not (triton or gather or bank is not None or transform) and untraced(z, mu, second):
        # run as it is: one autograd node from σ to the three terms
        return eager_terms(z, mu, second, q_is_logvar, dataset_size, estimator)
    log_sigma = log_sigma_from(second, q_is_logvar)
    rank, _ = world(gather, group)
    row_offset, mu_all, log_sigma_all = 0, mu, log_sigma
    if gather:
        both = _all_gather(torch.cat((mu, log_sigma), dim=1), group)
        mu_all, log_sigma_all = both.split(z.shape[1], dim=1)
        row_offset = rank * z.shape[0]
    if bank is not None:
        mu_all, log_sigma_all = _with_bank(mu_all, log_sigma_all, bank, q_is_logvar)
        estimator = "mss-bank"
    call = PairwiseCall(z, mu_all, log_sigma_all, row_offset, dataset_size, estimator)
    if transform is not None or _fused(call, triton):
        # torch.func, forward-mode AD: plain autograd's formula; inside torch.compile at
        # small sizes, the formula inductor fuses (cheaper than an operator's call)
        return formula_terms(call)
    call = call.contiguous()
    if not triton and call.mu.numel() <= GRADIENTS_AHEAD and gradients_ahead(call):
        terms = terms_with_gradients(call)
    else:
        terms = (tc_log_densities(*call) if triton else tc_log_densities_eager_call(call))[2]
    if torch.compiler.is_compiling():
        # Three outputs that are views of one tensor cost AOTAutograd's runtime a replay
        # of the views per call; copies fused into the graph cost nothing.
        return tuple(t.clone() for t in terms.unbind())
    mi, tc, dw_kl = terms.unbind()
    return mi, tc, dw_kl
