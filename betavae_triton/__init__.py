"""betavae_triton: the beta-VAE loss as fused Triton kernels, a drop-in for nidl's.

>>> from betavae_triton import BetaVAELoss, beta_vae_loss
"""

from .functional import beta_vae_loss, kl_normal_loss, reconstruction_loss
from .loss import BetaVAELoss

__all__ = ["BetaVAELoss", "beta_vae_loss", "kl_normal_loss", "reconstruction_loss"]
__version__ = "0.1.0"
