"""betavae_triton: the beta-VAE loss as fused Triton kernels, a drop-in for nidl's.

>>> from betavae_triton import BetaVAELoss, beta_vae_loss
>>> from betavae_triton import BetaTCVAELoss, beta_tcvae_loss

Importing the package registers its ``torch.library`` operators (``betavae_triton::*``),
so that an exported program that calls them loads as soon as the package is imported.
"""

from . import functional
from ._dispatch import resolved_backend, triton_available
from .functional import *  # noqa: F403  (the functional core: functional.__all__)
from .loss import BetaTCVAELoss, BetaVAELoss, CapacityBetaVAELoss
from .tcvae.cpu import CpuKernels, NativeBuildWarning, tcvae_cpu_kernels

__all__ = [
    "BetaTCVAELoss",
    "BetaVAELoss",
    "CapacityBetaVAELoss",
    "CpuKernels",
    "NativeBuildWarning",
    *functional.__all__,
    "resolved_backend",
    "tcvae_cpu_kernels",
    "triton_available",
]
__version__ = "0.1.0"
