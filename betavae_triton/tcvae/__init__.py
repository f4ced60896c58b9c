"""β-TCVAE's decomposition of the KL term behind the public API: mi, tc and dw_kl.

- :mod:`.terms`: the entry point, :func:`~.terms.minibatch_terms` (the three terms on a
  backend; the all-gather of ``gather=True``), and :func:`~.terms.planned_terms` (inside
  ``torch.compile``, a call checked and routed once per trace);
- :mod:`.ops`: the pairwise log-densities as ``torch.library`` operators (Triton, CPU,
  eager) with one autograd, registered on import of this subpackage;
- :mod:`.eager`: the chunked PyTorch algorithm (online log-sum-exps, backward by
  recomputation);
- :mod:`.launch`: the launchers of the Triton kernels (``kernels/total_correlation.py``).
"""

from .terms import minibatch_terms, planned_terms, world

__all__ = ["minibatch_terms", "planned_terms", "world"]
