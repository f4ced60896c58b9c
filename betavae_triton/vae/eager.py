"""The β-VAE loss's eager path: plain PyTorch ops, differentiated by autograd.

It builds no distribution objects and never synchronises with the device, so that
``torch.compile`` (inductor) can fuse it into a couple of kernels by itself. Half-precision
inputs are computed in float32 (float64 stays float64), and each result is cast back to
the dtype the reference returns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._constants import BCE_GRAD_EPS, BCE_LOG_FLOOR, HALF_LOG_2PI, LOG_2
from .._dispatch import autograd_transform
from .call import LossCall, accumulation_dtype


class _BernoulliNLL(torch.autograd.Function):
    """−[x·max(log p, −100) + (1 − x)·max(log(1 − p), −100)], summed (``reduce``) or per
    element, with PyTorch's gradient.

    ``F.binary_cross_entropy`` computes the same, but raises (CPU) or asserts on the device
    (CUDA) when p leaves [0, 1] or is NaN; the README ("Bad input") promises NaN there.
    Reverse mode and ``torch.func`` transforms (``vmap`` by the generated rule); forward
    mode in :class:`_BernoulliNLLForward`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(p: torch.Tensor, x: torch.Tensor, reduce: bool) -> torch.Tensor:
        # Two temporaries, updated in place (fewer allocations: on the CPU each large one
        # costs page faults).
        log_p = torch.log(p).clamp_min_(BCE_LOG_FLOOR)
        log_1mp = torch.neg(p).log1p_().clamp_min_(BCE_LOG_FLOOR)
        # −[x·log p + (1 − x)·log(1 − p)] as −[(L − x·L) + x·log p], L = log(1 − p): exact
        # for x = 0 and 1 (L + x·(log p − L) would lose log p = −1e-16 beside L = −36.7).
        loss = torch.addcmul(log_1mp, x, log_1mp, value=-1.0).addcmul_(x, log_p).neg_()
        # Targets outside [0, 1] give NaN, not an extrapolated number. (Probabilities
        # outside give NaN through the logs.)
        if reduce:
            return _nan_outside_unit_interval(loss.sum(), x)
        return torch.where((x < 0) | (x > 1), torch.nan, loss)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        p, x, reduce = inputs
        ctx.save_for_backward(p, x)
        ctx.save_for_forward(p, x)
        ctx.reduce = reduce

    @staticmethod
    def derivatives(p: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dℓ/dp = (p − x) / max(p(1 − p), 1e-12), as binary_cross_entropy's backward
        (whose 1e-12 is a float32 constant even in float64), and dℓ/dx."""
        d_p = (p - x) / (p * (1 - p)).clamp_min(BCE_GRAD_EPS)
        d_x = torch.log1p(-p).clamp_min(BCE_LOG_FLOOR) - torch.log(p).clamp_min(BCE_LOG_FLOOR)
        return d_p, d_x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, x = ctx.saved_tensors
        d_p, d_x = _BernoulliNLL.derivatives(p, x)
        grad_p = grad * d_p if ctx.needs_input_grad[0] else None
        grad_x = grad * d_x if ctx.needs_input_grad[1] else None
        return grad_p, grad_x, None


class _BernoulliLogitsNLL(torch.autograd.Function):
    """Binary cross-entropy from the logit l, exact for every finite l: the per-element
    ``max(l, 0) − x·l + log1p(e^−|l|)``, with gradients σ(l) − x and −l.

    ``F.binary_cross_entropy_with_logits`` computes ``log(1 + e^−|l|)`` in a way that
    loses the small tail in float32 (at l = −15, x = 0 it returns 0 instead of 3.1e-7);
    the kernels and the README promise the exact value. Reverse mode and ``torch.func``
    transforms; forward mode in :class:`_BernoulliLogitsNLLForward`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Out of place: an exported program replays these ops under autograd, which
        # saves exp's output for its backward (an in-place log1p_ would overwrite it).
        tail = torch.log1p(torch.exp(-torch.abs(logits)))
        return torch.clamp_min(logits, 0.0) - x * logits + tail

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def derivatives(logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dℓ/dl = σ(l) − x as (1 − x)·σ(l) − x·σ(−l) (no cancellation where σ(l) rounds
        to 1), and dℓ/dx = −l."""
        return (1 - x) * torch.sigmoid(logits) - x * torch.sigmoid(-logits), -logits

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, x = ctx.saved_tensors
        d_logits, d_x = _BernoulliLogitsNLL.derivatives(logits, x)
        grad_logits = grad * d_logits if ctx.needs_input_grad[0] else None
        grad_x = grad * d_x if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


# Forward-mode AD: the same functions with a jvp, taken only when forward-mode AD or a
# torch.func transform is active (autograd_transform), because dynamo cannot trace an
# autograd.Function that defines one (a graph break under torch.compile).


class _BernoulliNLLForward(_BernoulliNLL):
    """:class:`_BernoulliNLL` with its JVP."""

    @staticmethod
    def jvp(ctx, t_p, t_x, _):
        p, x = ctx.saved_tensors
        return _tangent(_BernoulliNLL.derivatives(p, x), (t_p, t_x), ctx.reduce)


class _BernoulliLogitsNLLForward(_BernoulliLogitsNLL):
    """:class:`_BernoulliLogitsNLL` with its JVP."""

    @staticmethod
    def jvp(ctx, t_logits, t_x):
        logits, x = ctx.saved_tensors
        return _tangent(_BernoulliLogitsNLL.derivatives(logits, x), (t_logits, t_x), False)


def _bernoulli_functions(p: torch.Tensor, x: torch.Tensor):
    """``(probabilities' NLL, logits' NLL)``: the forward-mode pair under an autograd
    transform, the plain pair otherwise."""
    if autograd_transform(p, x) is not None:
        return _BernoulliNLLForward, _BernoulliLogitsNLLForward
    return _BernoulliNLL, _BernoulliLogitsNLL


def _tangent(derivatives, tangents, reduce: bool) -> torch.Tensor:
    """Σ_k dℓ/dinput_k · tangent_k per element (summed with ``reduce``): the JVP of an
    elementwise loss (a missing tangent counts as zero)."""
    terms = [d * t for d, t in zip(derivatives, tangents, strict=True) if t is not None]
    out = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return out.sum() if reduce else out


def _nan_outside_unit_interval(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """NaN where a Bernoulli target leaves [0, 1] (the README's "Bad input"): one read-only
    pass over x, no host sync."""
    lo, hi = torch.aminmax(x)
    return torch.where((lo < 0) | (hi > 1), torch.nan, loss)


def reconstruction_sum(p: torch.Tensor, x: torch.Tensor, dist: str) -> torch.Tensor:
    """Σ over every element of the per-element negative log-likelihood, in the acc. dtype.

    ``dist="bernoulli_logits"`` reads p as logits: the exact cross-entropy
    ``max(l, 0) − x·l + log1p(e^−|l|)`` (no clamp, gradients σ(l) − x and −l).
    """
    dtype = torch.promote_types(p.dtype, x.dtype)
    if dtype == torch.bfloat16 and dist in ("normal", "laplace"):
        # ATen sums bfloat16 with float32 accumulation inside one fused kernel, as nidl's
        # code does; upcasting both tensors first would move three times the bytes.
        loss_fn = F.mse_loss if dist == "normal" else F.l1_loss
        return loss_fn(p.to(dtype), x.to(dtype), reduction="sum").float()
    acc = accumulation_dtype(dtype)
    p, x = p.to(acc), x.to(acc)
    if dist == "normal":
        return F.mse_loss(p, x, reduction="sum")
    if dist == "laplace":
        return F.l1_loss(p, x, reduction="sum")
    probs_nll, logits_nll = _bernoulli_functions(p, x)
    if dist == "bernoulli_logits":
        return _nan_outside_unit_interval(logits_nll.apply(p, x).sum(), x)
    return probs_nll.apply(p, x, True)


def reconstruction_rows(p: torch.Tensor, x: torch.Tensor, dist: str) -> torch.Tensor:
    """Per-sample sums of the per-element negative log-likelihood, shape (B,), acc. dtype."""
    acc = accumulation_dtype(torch.promote_types(p.dtype, x.dtype))
    p, x = p.to(acc), x.to(acc)
    if dist == "normal":
        loss = F.mse_loss(p, x, reduction="none")
    elif dist == "laplace":
        loss = F.l1_loss(p, x, reduction="none")
    elif dist == "bernoulli_logits":
        loss = _bernoulli_functions(p, x)[1].apply(p, x)
        loss = torch.where((x < 0) | (x > 1), torch.nan, loss)
    else:
        loss = _bernoulli_functions(p, x)[0].apply(p, x, False)
    return loss.reshape(x.shape[0], -1).sum(1)


def full_nll(p: torch.Tensor, x: torch.Tensor, p_scale: torch.Tensor, dist: str) -> torch.Tensor:
    """Per-element −log N(x; p, s²) or −log Laplace(x; p, s), in the accumulation dtype:
    the decoder's scale s = ``p_scale`` learned with the model (σ-VAE), broadcast to x."""
    acc = accumulation_dtype(
        torch.promote_types(torch.promote_types(p.dtype, x.dtype), p_scale.dtype)
    )
    p, x, s = p.to(acc), x.to(acc), p_scale.to(acc)
    if dist == "normal":
        return 0.5 * ((p - x) / s).square() + torch.log(s) + HALF_LOG_2PI
    return (p - x).abs() / s + torch.log(s) + LOG_2


def reconstruction_term(
    p: torch.Tensor,
    x: torch.Tensor,
    dist: str,
    per_sample: bool = False,
    p_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image reconstruction loss Σ ℓ(p, x) / B (or per sample, shape (B,)), in p's
    and x's result dtype; with the decoder's ``p_scale``, the full negative
    log-likelihood."""
    out_dtype = torch.promote_types(p.dtype, x.dtype)
    if p_scale is not None:
        out_dtype = torch.promote_types(out_dtype, p_scale.dtype)
        rows = full_nll(p, x, p_scale, dist).reshape(x.shape[0], -1).sum(1)
        return (rows if per_sample else rows.sum() / x.shape[0]).to(out_dtype)
    if per_sample:
        return reconstruction_rows(p, x, dist).to(out_dtype)
    return (reconstruction_sum(p, x, dist) / x.shape[0]).to(out_dtype)


def kl_elements(
    q_loc: torch.Tensor, q_scale: torch.Tensor, q_is_logvar: bool = False
) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) of each latent, broadcast, in the accumulation dtype.

    With ``q_is_logvar`` the second argument is v = log σ²: ½(μ² + e^v − 1 − v).
    """
    acc = accumulation_dtype(torch.promote_types(q_loc.dtype, q_scale.dtype))
    mu, s = q_loc.to(acc), q_scale.to(acc)
    if q_is_logvar:
        return 0.5 * (mu.square() + torch.exp(s) - 1.0 - s)
    return 0.5 * (mu.square() + s.square() - 1.0) - torch.log(s)


def kl_term(
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    q_is_logvar: bool = False,
    per_sample: bool = False,
) -> torch.Tensor:
    """Σ KL / Bq over the latents, batch-averaged (or per sample, shape (Bq,))."""
    out_dtype = torch.promote_types(q_loc.dtype, q_scale.dtype)
    # μ and σ broadcast against each other inside kl_elements: its shape is theirs.
    kl = kl_elements(q_loc, q_scale, q_is_logvar)
    batch = kl.shape[0]
    if per_sample:
        return kl.reshape(batch, -1).sum(1).to(out_dtype)
    return (kl.sum() / batch).to(out_dtype)


def kl_per_dimension(
    q_loc: torch.Tensor, q_scale: torch.Tensor, q_is_logvar: bool = False
) -> torch.Tensor:
    """The batch-mean KL of each latent dimension: shape of one posterior sample."""
    out_dtype = torch.promote_types(q_loc.dtype, q_scale.dtype)
    kl = kl_elements(q_loc, q_scale, q_is_logvar)
    return (kl.sum(0) / kl.shape[0]).to(out_dtype)


def eager_terms(call: LossCall) -> tuple[torch.Tensor | None, ...]:
    """``(loss, rec, kl, kl_per_dim)`` of ``call`` with ``loss = rec + β·kl``; a term the
    call does not compute (and the loss then) is None, and so is ``kl_per_dim`` unless
    asked for. The ``need_grad_*`` flags are autograd's business here."""
    rec = kl = loss = kl_dims = None
    if call.x is not None:
        rec = reconstruction_term(call.p, call.x, call.dist, call.per_sample, call.p_scale)
    if call.q_loc is not None:
        kl = kl_term(call.q_loc, call.q_scale, call.q_is_logvar, call.per_sample)
        if call.kl_per_dim:
            kl_dims = kl_per_dimension(call.q_loc, call.q_scale, call.q_is_logvar).detach()
    if rec is not None and kl is not None:
        # A tensor β weighs like a number: it does not change the result's dtype.
        weighted = call.weight * kl
        loss = rec + (weighted.to(kl.dtype) if call.beta_tensor is not None else weighted)
    return loss, rec, kl, kl_dims
