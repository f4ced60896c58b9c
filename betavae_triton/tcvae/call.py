"""One call of β-TCVAE's pairwise log-densities, described once.

- :class:`PairwiseCall`: the samples, the posteriors and the estimator of one call; its
  fields, in order, are the first arguments of both operators of :mod:`.ops`, whose
  schemas :data:`FORWARD_SCHEMA` and :data:`BACKWARD_SCHEMA` write out.
- :class:`PairwiseSaved`: what the backward pass reads besides the call (the forward's
  log-sum-exps and the incoming gradients).
- :data:`C_FORWARD_SCHEMA`, :data:`C_BACKWARD_SCHEMA`, :data:`C_TERMS_SCHEMA`: the C
  kernels' operators, which take the same tensors with the estimator's log-weights.

The operators return ``(log q(z_i), log q(z_id), [mi, tc, dw_kl])``: the pairwise
log-densities and the three terms computed from them (:mod:`.decomposition`).

Every implementation (the Triton launchers, the C kernels, the chunked torch algorithm,
the differentiable formula) is handed these bundles instead of the argument list.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

Tensor = torch.Tensor

FORWARD_SCHEMA = (
    "(Tensor z, Tensor mu, Tensor log_sigma, SymInt row_offset, SymInt dataset_size, "
    "str estimator, bool interpreted=False) -> (Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor z, Tensor mu, Tensor log_sigma, SymInt row_offset, SymInt dataset_size, "
    "str estimator, Tensor log_qz, Tensor log_prod, Tensor? g_qz, Tensor? g_prod, "
    "Tensor? g_terms, bool interpreted=False) -> (Tensor, Tensor, Tensor)"
)

#: The C kernels' operators (``minibatch_ops.cpp``): a contiguous call's tensors and row
#: offset, with the estimator's code and log-weights (:mod:`.weights`) in place of its
#: name and the data set's size.
C_FORWARD_SCHEMA = (
    "(Tensor z, Tensor mu, Tensor log_sigma, int row_offset, int estimator, float own, "
    "float strat, float rest) -> (Tensor, Tensor, Tensor)"
)
C_BACKWARD_SCHEMA = (
    "(Tensor z, Tensor mu, Tensor log_sigma, Tensor log_qz, Tensor log_prod, Tensor? g_qz, "
    "Tensor? g_prod, Tensor? g_terms, int row_offset, int estimator, float own, "
    "float strat, float rest) -> (Tensor, Tensor, Tensor)"
)
#: The C kernels' forward with the three terms' gradients (for a compiled step that will
#: differentiate them): ``[mi, tc, dw_kl]`` (3,) and the pairwise parts of their gradients
#: with respect to z (3, B_l, D), μ and log σ (3, B, D), term by term (without the
#: samples' own parts).
C_TERMS_SCHEMA = (
    "(Tensor z, Tensor mu, Tensor log_sigma, int row_offset, int estimator, float own, "
    "float strat, float rest) -> (Tensor, Tensor, Tensor, Tensor)"
)


class PairwiseCall(NamedTuple):
    """The log-densities of the samples ``z`` (B_l, D) — rows ``row_offset`` … of a batch
    of B — against every posterior (``mu``, ``log_sigma``), (B, D), with the importance
    weights of ``estimator`` for a data set of ``dataset_size``. One dtype (float32, or
    float64), contiguous."""

    z: Tensor
    mu: Tensor
    log_sigma: Tensor
    row_offset: int
    dataset_size: int
    estimator: str

    def contiguous(self) -> PairwiseCall:
        """The call with contiguous tensors (the implementations' layout)."""
        return self._replace(
            z=self.z.contiguous(), mu=self.mu.contiguous(), log_sigma=self.log_sigma.contiguous()
        )


class PairwiseSaved(NamedTuple):
    """The backward pass's inputs besides the call: the forward's log q(z_i) (B_l,) and
    log q(z_id) (B_l, D), and the incoming gradients of those and of the three terms
    ``[mi, tc, dw_kl]`` (None where autograd gave none)."""

    log_qz: Tensor
    log_prod: Tensor
    g_qz: Tensor | None
    g_prod: Tensor | None
    g_terms: Tensor | None
