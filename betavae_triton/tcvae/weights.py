"""The estimators' importance weights, defined once.

For rows i of a batch of B drawn from a data set of N, log w_ij weighs posterior j in
the minibatch estimate log q(z_i) ≈ LSE_j [log q(z_i | x_j) + log w_ij]:

- ``"mws"`` (minibatch weighted sampling): −log(B·N) everywhere;
- ``"mss"`` (stratified, the paper's appendix): ``own`` = −log N on the diagonal,
  ``strat`` = log((N − B + 1)/(N(B − 1))) at j = i + 1 mod B, ``rest`` = −log(B − 1)
  elsewhere (each row sums to 1);
- ``"mss-reference"`` (the authors' published matrix): ``own`` in column 0, ``strat`` in
  column 1 and at row B − 2 of column 0, ``rest`` elsewhere;
- ``"mss-bank"`` ("mss" with a bank of K earlier posteriors scored besides the batch's
  B, T = B + K in all): ``own`` = −log N on the diagonal, ``strat`` = ``rest`` =
  log((N − 1)/(N(T − 1))) for every other posterior, of the batch or the bank.

The bank's weights follow from what log q(z_i) is: log (1/N) Σ_n q(z_i | x_n) over the N
data points. Sample i's own posterior is one of them, known exactly: weight 1/N. The
other N − 1 are represented by the T − 1 other posteriors at hand, each standing for
(N − 1)/(T − 1) of them: weight (N − 1)/(N(T − 1)). Each row sums to 1, and when the
batch and the bank hold every posterior of the data set once (T = N) every weight is 1/N:
the estimate is log q(z_i) exactly, and log q(z_id) likewise (the same weights per
dimension). The paper's weights do not have this property (at B = N they give
1/(N(N − 1)) to the stratum's posterior and 1/(N − 1) to the others); there is no bank
form of ``"mws"``, whose weights sum to 1/N (an estimate of q(z_i)/N, exact for no T).

:func:`estimator_weights` gives the three values, in float64, to the C kernels (rounded
to the data's dtype by the call) and to the chunked torch path (:class:`.eager.LogWeights`,
which lays them out by those rules). The Triton kernels derive the same values in-kernel
from the integer sizes (``kernels/total_correlation.py``'s ``estimator_constants``),
because a float argument reaches a kernel in float32, too coarse for the float64 path;
``tests/test_tcvae_eager.py`` holds every implementation to the float64 oracle's
``reference.log_importance_weights``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .._constants import ESTIMATOR_CODES, MSS_BANK, MWS

Tensor = torch.Tensor


class EstimatorWeights(NamedTuple):
    """An estimator's code (``_constants.ESTIMATOR_CODES``) and its three log-weights
    (equal for ``"mws"``): numbers, or 0-d float64 tensors from :func:`tensor_log`."""

    code: int
    own: float | Tensor
    strat: float | Tensor
    rest: float | Tensor


def tensor_log(value: float) -> Tensor:
    """log ``value`` as a 0-d float64 tensor: inside ``torch.compile``, a data-set size that
    changes between calls (a symbolic int) stays symbolic in it, where ``math.log`` would
    specialise it (a recompile per size)."""
    return torch.scalar_tensor(value, dtype=torch.float64).log()


def estimator_weights(
    batch: int, dataset_size: int, estimator: str, log: Callable[[float], float | Tensor] = math.log
) -> EstimatorWeights:
    """The log-weights of ``estimator`` for ``batch`` posteriors (with a bank: the batch's
    and the bank's) from ``dataset_size``, by ``log`` (:func:`math.log`, or
    :func:`tensor_log` for the differentiable formula)."""
    code = ESTIMATOR_CODES[estimator]
    n, m = dataset_size, batch - 1
    if code == MWS:
        mws = -log(batch * n)
        return EstimatorWeights(code, mws, mws, mws)
    if code == MSS_BANK:
        other = log((n - 1) / (n * m))
        return EstimatorWeights(code, -log(n), other, other)
    return EstimatorWeights(code, -log(n), log((n - m) / (n * m)), -log(m))
