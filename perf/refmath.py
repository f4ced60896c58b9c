"""The reference's plain mathematics, in the inputs' own dtype, for ``compiled-ref``.

``reference.reference_beta_vae_loss`` (``reference/beta_vae.py``) is the test oracle: it
computes in float64 only. The β-VAE suite's ``compiled-ref`` contender is ``torch.compile``
of the same plain statement of the loss (nidl's semantics, the README's "Semantics (nidl's,
exactly)"; ``torch.nn.functional`` and ``torch.distributions``, like nidl) run in the
workload's dtype, which is what a user who compiles the textbook code gets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Laplace, Normal, kl_divergence

__all__ = ["beta_vae_loss_same_dtype"]


def beta_vae_loss_same_dtype(
    x: torch.Tensor,
    p: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    beta: float = 4.0,
    dist: str = "normal",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The beta-VAE loss written plainly, computed in the dtype of its inputs.

    Parameters
    ----------
    x : torch.Tensor
        The data, shape ``(B, ...)``.
    p : torch.Tensor
        The decoder's mean (normal, laplace) or probability (bernoulli), shape of ``x``.
    q_loc, q_scale : torch.Tensor
        Mean and standard deviation of the diagonal Normal posterior.
    beta : float, default=4.0
        Weight of the KL divergence.
    dist : {"normal", "laplace", "bernoulli"}, default="normal"
        Decoder distribution.

    Returns
    -------
    loss, rec_loss, kl_loss : torch.Tensor
        Scalars, ``loss = rec_loss + beta * kl_loss``.
    """
    # reference/beta_vae.py line for line, less its ``.to(torch.float64)`` casts.
    if dist == "normal":
        decoder = Normal(p, torch.ones_like(p), validate_args=False)
    elif dist == "laplace":
        decoder = Laplace(p, torch.ones_like(p), validate_args=False)
    elif dist == "bernoulli":
        decoder = Bernoulli(probs=p, validate_args=False)
    else:
        raise ValueError(f"unknown decoder distribution {dist!r}")
    if isinstance(decoder, Bernoulli):
        rec = F.binary_cross_entropy(decoder.probs, x.detach(), reduction="sum")
        if x.requires_grad:
            with torch.no_grad():
                d_dx = torch.log1p(-p).clamp_min(-100.0) - torch.log(p).clamp_min(-100.0)
            rec = rec + ((x - x.detach()) * d_dx).sum()
    elif isinstance(decoder, Normal):
        rec = F.mse_loss(decoder.loc, x, reduction="sum")
    else:
        rec = F.l1_loss(decoder.loc, x, reduction="sum")
    rec = rec / len(x)
    q = Normal(q_loc, q_scale, validate_args=False)
    zero = torch.zeros((), dtype=q.loc.dtype, device=q.loc.device)
    prior = Normal(zero, torch.ones_like(zero), validate_args=False)
    kl = kl_divergence(q, prior).mean(dim=0).sum()
    return rec + beta * kl, rec, kl
