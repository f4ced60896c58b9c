"""The beta-VAE loss of the README's "Semantics (nidl's, exactly)", in float64, the
plainest way PyTorch offers.

Every input is cast to float64 first (autograd flows back through the cast, so gradients
with respect to the caller's tensors come out in their own dtype), the decoder output is
wrapped in the ``torch.distributions`` object it stands for, and each term is the
``torch.nn.functional`` loss with ``reduction="sum"`` or ``kl_divergence``, as nidl's
``BetaVAELoss`` computes them. There is no validation beyond what those functions do:
callers pass valid inputs (bernoulli values in [0, 1], positive scales).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Distribution, Laplace, Normal, kl_divergence

__all__ = [
    "DISTRIBUTIONS",
    "reference_beta_vae_loss",
    "reference_kl_normal_loss",
    "reference_reconstruction_loss",
]

DISTRIBUTIONS = ("normal", "laplace", "bernoulli")


def _f64(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64, differentiably (the gradient is cast back to ``t``'s dtype)."""
    return t.to(torch.float64)


def _decoder(p: torch.Tensor, dist: str) -> Distribution:
    """The decoder distribution that the tensor ``p`` parametrises (unit scale)."""
    if dist == "normal":
        return Normal(p, torch.ones_like(p), validate_args=False)
    if dist == "laplace":
        return Laplace(p, torch.ones_like(p), validate_args=False)
    if dist == "bernoulli":
        return Bernoulli(probs=p, validate_args=False)
    raise ValueError(f"unknown decoder distribution {dist!r}; expected one of {DISTRIBUTIONS}")


def _bernoulli_nll_sum(probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ −[x·max(log p, −100) + (1 − x)·max(log(1 − p), −100)], differentiated as written.

    The value and the gradient with respect to ``probs`` are ``binary_cross_entropy``'s.
    Its gradient with respect to the target ignores the −100 clamp (it is ±inf where p is 0
    or 1), whereas the README's "Semantics" differentiates the clamped formula:
    d/dx = max(log(1 − p), −100) − max(log p, −100). So the target enters
    ``binary_cross_entropy`` detached, and a term whose value is exactly zero carries that
    gradient to ``x``.
    """
    loss = F.binary_cross_entropy(probs, x.detach(), reduction="sum")
    if x.requires_grad:
        with torch.no_grad():
            d_dx = torch.log1p(-probs).clamp_min(-100.0) - torch.log(probs).clamp_min(-100.0)
        loss = loss + ((x - x.detach()) * d_dx).sum()
    return loss


def _softplus(t: torch.Tensor) -> torch.Tensor:
    """log(1 + eᵗ) = max(t, 0) + log1p(e^−|t|): exact to an ulp for every t, no threshold.

    Both pieces are written with ``where`` so that autograd gives σ(t) everywhere, ½ at
    t = 0 included (``clamp`` and ``abs`` would give 1 there), and no branch overflows.
    """
    minus_abs = torch.where(t > 0, -t, t)
    return torch.where(t > 0, t, torch.zeros_like(t)) + torch.log1p(torch.exp(minus_abs))


def _bernoulli_logits_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−log Bernoulli(logits).pmf(x) per element, x in [0, 1].

    −log σ(l) = softplus(−l) and −log(1 − σ(l)) = softplus(l). Written this way, a large
    logit's loss (e^−|l|, about 2.4e-13 at l = −29) keeps its digits; torch's
    ``Bernoulli.log_prob`` (binary_cross_entropy_with_logits) forms it as
    ``(1 − x)·l + max(−l, 0) + log1p(…)`` and loses them to the cancellation.
    """
    return (1 - x) * _softplus(logits) + x * _softplus(-logits)


def reference_reconstruction_loss(
    p: torch.Tensor,
    x: torch.Tensor,
    dist: str = "normal",
    p_is_logits: bool = False,
    reduction: str = "mean",
    p_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image reconstruction loss: Σ over every element of ℓ(p, x), divided by B.

    Parameters
    ----------
    p : torch.Tensor
        The decoder's mean (``"normal"``, ``"laplace"``) or probability (``"bernoulli"``),
        shape of ``x``. Any floating dtype; it is cast to float64.
    x : torch.Tensor
        The data, shape ``(B, ...)``. Any floating dtype; it is cast to float64.
    dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution: squared error (the decoder's scale is ignored), absolute
        error, or binary cross-entropy with logs clamped at −100.
    p_is_logits : bool, default=False
        With ``"bernoulli"``: ``p`` holds logits, and the loss is the exact
        ``−Bernoulli(logits=p).log_prob(x)`` (no clamp), computed as
        ``(1 − x)·softplus(p) + x·softplus(−p)`` so that no term cancels.
    reduction : {"mean", "none"}, default="mean"
        ``"none"``: one sum per sample, shape (B,).
    p_scale : torch.Tensor or None, default=None
        With ``"normal"`` or ``"laplace"``: the decoder's scale, broadcast to x; the loss
        is then the full ``−Normal(p, p_scale).log_prob(x)`` (or Laplace's).

    Returns
    -------
    rec_loss : torch.Tensor
        A float64 scalar (or shape (B,)).

    Raises
    ------
    ValueError
        If ``dist`` is unknown.
    """
    data = _f64(x)
    if p_scale is not None:
        cls = {"normal": Normal, "laplace": Laplace}[dist]
        decoder = cls(_f64(p), _f64(p_scale).expand(data.shape), validate_args=False)
        per_element = -decoder.log_prob(data)
    elif p_is_logits:
        if dist != "bernoulli":
            raise ValueError("p_is_logits needs dist='bernoulli'")
        per_element = _bernoulli_logits_nll(_f64(p), data)
    else:
        decoder = _decoder(_f64(p), dist)
        if isinstance(decoder, Bernoulli):
            per_element = torch.stack(
                [_bernoulli_nll_sum(pi, xi) for pi, xi in zip(decoder.probs, data, strict=True)]
            )
        elif isinstance(decoder, Normal):
            per_element = F.mse_loss(decoder.loc, data, reduction="none")
        else:
            per_element = F.l1_loss(decoder.loc, data, reduction="none")
    per_sample = per_element.reshape(len(data), -1).sum(dim=1)
    return per_sample if reduction == "none" else per_sample.sum() / len(data)


def reference_kl_normal_loss(
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    q_is_logvar: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL divergence of N(μ, σ²) from N(0, 1), averaged over dim 0 and summed over the rest.

    Parameters
    ----------
    q_loc, q_scale : torch.Tensor
        Mean and (positive) standard deviation of the diagonal Normal posterior; they
        broadcast to ``(Bq, ...)``. Any floating dtype; they are cast to float64.
    q_is_logvar : bool, default=False
        ``q_scale`` holds log σ²; the posterior is ``Normal(q_loc, exp(q_scale / 2))``.
    reduction : {"mean", "none", "per_dim"}, default="mean"
        ``"none"``: one sum per sample, shape (Bq,); ``"per_dim"``: the batch mean of each
        latent dimension, shape of one sample.

    Returns
    -------
    kl_loss : torch.Tensor
        A float64 scalar: ``kl_divergence(q, Normal(0, 1)).mean(dim=0).sum()`` (or as
        ``reduction`` says).
    """
    scale = torch.exp(0.5 * _f64(q_scale)) if q_is_logvar else _f64(q_scale)
    q = Normal(_f64(q_loc), scale, validate_args=False)
    zero = torch.zeros((), dtype=torch.float64, device=q.loc.device)
    prior = Normal(zero, torch.ones_like(zero), validate_args=False)
    kl = kl_divergence(q, prior)
    if reduction == "none":
        return kl.reshape(len(kl), -1).sum(dim=1)
    if reduction == "per_dim":
        return kl.mean(dim=0)
    return kl.mean(dim=0).sum()


def reference_beta_vae_loss(
    x: torch.Tensor,
    p: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    beta: float = 4.0,
    dist: str = "normal",
    p_is_logits: bool = False,
    q_is_logvar: bool = False,
    reduction: str = "mean",
    p_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The beta-VAE loss ``rec_loss + beta * kl_loss``, in float64.

    Parameters
    ----------
    x : torch.Tensor
        The data, shape ``(B, ...)``.
    p : torch.Tensor
        The decoder's output, shape of ``x`` (see :func:`reference_reconstruction_loss`).
    q_loc, q_scale : torch.Tensor
        The posterior's mean and standard deviation (see :func:`reference_kl_normal_loss`).
    beta : float, default=4.0
        Weight of the KL divergence.
    dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution.
    p_is_logits : bool, default=False
        ``p`` holds bernoulli logits (see :func:`reference_reconstruction_loss`).
    q_is_logvar : bool, default=False
        ``q_scale`` holds log σ² (see :func:`reference_kl_normal_loss`).
    reduction : {"mean", "none"}, default="mean"
        ``"none"``: per-sample terms, shape (B,) (the posterior's batch is B or 1).
    p_scale : torch.Tensor or None, default=None
        The decoder's scale for the full likelihood (see
        :func:`reference_reconstruction_loss`).

    Returns
    -------
    loss, rec_loss, kl_loss : torch.Tensor
        float64 scalars (or per-sample vectors).
    """
    rec_loss = reference_reconstruction_loss(p, x, dist, p_is_logits, reduction, p_scale)
    kl_loss = reference_kl_normal_loss(q_loc, q_scale, q_is_logvar, reduction)
    return rec_loss + beta * kl_loss, rec_loss, kl_loss
