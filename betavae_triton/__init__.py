"""betavae_triton: the beta-VAE loss as fused Triton kernels, a drop-in for nidl's.

>>> from betavae_triton import BetaVAELoss, beta_vae_loss
>>> from betavae_triton import BetaTCVAELoss, beta_tcvae_loss
"""

from ._dispatch import triton_available
from .functional import (
    beta_tcvae_loss,
    beta_vae_loss,
    capacity_beta_vae_loss,
    kl_normal_loss,
    reconstruction_loss,
)
from .loss import BetaTCVAELoss, BetaVAELoss, CapacityBetaVAELoss

if triton_available():
    # Registers the torch.library operators (betavae_triton::loss_fwd, ...), so that
    # exported programs that call them load as soon as the package is imported.
    from . import _ops  # noqa: F401

__all__ = [
    "BetaTCVAELoss",
    "BetaVAELoss",
    "CapacityBetaVAELoss",
    "beta_tcvae_loss",
    "beta_vae_loss",
    "capacity_beta_vae_loss",
    "kl_normal_loss",
    "reconstruction_loss",
]
__version__ = "0.1.0"
