"""β-TCVAE's minibatch log-densities as one differentiable formula in torch ops.

    log q(z_i)    = LSE_j [Σ_d M_ijd + log w_ij]
    log q(z_id)   = LSE_j [M_ijd + log w_ij],    M_ijd = log N(z_id; μ_jd, σ_jd)

on the full (B_l, B, D) tensor of pairwise log-densities, with the estimator's weights of
:class:`.eager.LogWeights` (the one definition the chunked path uses too). Memory is
O(B_l·B·D), and autograd keeps it for the backward pass: this is not the training path.
It serves what the operators cannot, because autograd differentiates it to any order and
in every mode:

- ``torch.func`` transforms and forward-mode AD (:func:`.terms.minibatch_terms` calls it
  under them, on the eager backend);
- second derivatives: the operators' backward pass, asked for a graph
  (``create_graph=True``), recomputes its gradients from this formula (:mod:`.ops`).
"""

from __future__ import annotations

import torch

from .._constants import HALF_LOG_2PI
from . import decomposition
from .call import PairwiseCall
from .eager import LogWeights
from .weights import tensor_log

Tensor = torch.Tensor


def formula_log_densities(call: PairwiseCall) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log q(z_id))``, shapes (B_l,) and (B_l, D), for the call's samples
    (rows ``row_offset`` … of the batch) against every posterior (μ, log σ), (B, D)."""
    z, mu, log_sigma, row_offset, dataset_size, estimator = call
    n_rows, batch = z.shape[0], mu.shape[0]
    log_w = LogWeights(batch, dataset_size, estimator, row_offset, n_rows, log=tensor_log)
    log_w = log_w.block(0, batch, z.dtype, z.device)  # (B_l, B)
    t = (z[:, None, :] - mu[None, :, :]) * torch.exp(-log_sigma)[None, :, :]
    pair = -0.5 * t * t - HALF_LOG_2PI - log_sigma[None, :, :]  # (B_l, B, D)
    log_qz = torch.logsumexp(pair.sum(2) + log_w, dim=1)
    log_prod = torch.logsumexp(pair + log_w[:, :, None], dim=1)
    return log_qz, log_prod


def formula_terms(call: PairwiseCall) -> tuple[Tensor, Tensor, Tensor]:
    """``(mi, tc, dw_kl)`` of ``call`` by :func:`formula_log_densities` and
    :func:`.decomposition.term_means`, differentiable by autograd in every mode: three
    scalars (inside ``torch.compile``, three outputs of their own, not views of one)."""
    return decomposition.term_means(call, *formula_log_densities(call))
