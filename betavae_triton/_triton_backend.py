"""The Triton backend's entry points: what :mod:`.functional` calls with a
:class:`~betavae_triton._call.LossCall` when the kernels compute the loss."""

from __future__ import annotations

import torch

from . import _ops  # noqa: F401  (registers the operators that FusedBetaVAELoss calls)
from ._autograd import FusedBetaVAELoss
from ._call import LossCall

Tensor = torch.Tensor


def beta_vae_loss(call: LossCall) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(loss, rec, kl, kl_per_dim)`` of ``call`` (``kl_per_dim`` None unless asked for).
    Three launches forward, at most two backward."""
    loss, rec, kl, kl_per_dim = FusedBetaVAELoss.apply(*call)
    return loss, rec, kl, kl_per_dim if call.kl_per_dim else None
