"""The β-VAE loss behind the public API: reconstruction + β·KL on either backend.

- :mod:`.terms`: the entry point, :func:`~.terms.beta_vae_terms` (a call, run on a backend);
- :mod:`.call`: one call described once (``LossCall``, ``LossOutputs``, ``LaunchPlan``);
- :mod:`.layout`: the memory order the kernels walk p and x in;
- :mod:`.eager`: the eager path (plain PyTorch, autograd);
- :mod:`.ops`: the Triton backend as ``torch.library`` operators, registered on import of
  this subpackage, and the autograd Function the package calls them through;
- :mod:`.autograd`: their backward pass (rescaling the gradients the forward wrote);
- :mod:`.launch`: the kernels' launchers, grids sized for a GPU;
- :mod:`.cpu`: what the operators do on CPU tensors (the kernels under the interpreter,
  otherwise the same formulas in torch ops).
"""

from .terms import beta_vae_terms, loss_call, run_call

__all__ = ["beta_vae_terms", "loss_call", "run_call"]
