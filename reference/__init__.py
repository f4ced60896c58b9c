"""The float64 oracle: a plain statement of the README's "Semantics (nidl's, exactly)",
used only by the tests.

It is written the way nidl writes the loss (``torch.distributions`` objects,
``torch.nn.functional`` losses with ``reduction="sum"``, ``kl_divergence``), computes in
float64, and shares no code with :mod:`betavae_triton`: the package never imports it, and
it never imports the package.
"""

from .beta_tcvae import (
    ESTIMATORS,
    log_importance_weights,
    reference_beta_tcvae_loss,
    reference_beta_tcvae_terms,
    reference_log_densities,
)
from .beta_vae import (
    DISTRIBUTIONS,
    reference_beta_vae_loss,
    reference_kl_normal_loss,
    reference_reconstruction_loss,
)

__all__ = [
    "DISTRIBUTIONS",
    "ESTIMATORS",
    "log_importance_weights",
    "reference_beta_tcvae_loss",
    "reference_beta_tcvae_terms",
    "reference_beta_vae_loss",
    "reference_kl_normal_loss",
    "reference_log_densities",
    "reference_reconstruction_loss",
]
