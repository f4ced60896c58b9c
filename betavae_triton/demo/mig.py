"""The mutual information gap (MIG), a disentanglement score (Chen et al., 2018).

For each ground-truth factor v_k, the mutual information I(z_j; v_k) with every latent
z_j is estimated from a sample, the two most informative latents are kept, and their gap
is normalised by the factor's entropy H(v_k):

.. math::
    \\mathrm{MIG} = \\frac{1}{K} \\sum_k \\frac{I(z_{j^{(1)}}; v_k) - I(z_{j^{(2)}}; v_k)}{H(v_k)}

Latents are the posterior means, discretised into equal-width bins (20 by default, as in
``disentanglement_lib``); factors are discrete already. A score of 1 means each factor is
captured by one latent alone, 0 that no latent stands out.

References
----------
.. [1] Ricky T. Q. Chen, Xuechen Li, Roger Grosse, David Duvenaud, "Isolating Sources of
   Disentanglement in Variational Autoencoders", NeurIPS 2018.
"""

from __future__ import annotations

import numpy as np

__all__ = ["discretize", "entropy", "mig", "mutual_information"]


def discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Discretise each column into ``bins`` equal-width bins over its own range.

    Parameters
    ----------
    codes : numpy.ndarray
        Shape ``(N, D)``: one column per latent.
    bins : int, default=20
        Number of bins.

    Returns
    -------
    labels : numpy.ndarray
        ``int64`` array of shape ``(N, D)`` with values in ``[0, bins)``. A constant
        column is all zeros.
    """
    codes = np.asarray(codes, dtype=np.float64)
    lo = codes.min(axis=0, keepdims=True)
    span = codes.max(axis=0, keepdims=True) - lo
    scaled = (codes - lo) / np.where(span > 0, span, 1.0)
    return np.minimum((scaled * bins).astype(np.int64), bins - 1)


def entropy(labels: np.ndarray) -> float:
    """Entropy (nats) of the empirical distribution of discrete labels.

    Parameters
    ----------
    labels : numpy.ndarray
        Non-negative integers, shape ``(N,)``.

    Returns
    -------
    h : float
        :math:`-\\sum_a p(a) \\log p(a)`.
    """
    counts = np.bincount(np.asarray(labels))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two discrete label arrays, from their contingency table.

    Parameters
    ----------
    a, b : numpy.ndarray
        Non-negative integers, shape ``(N,)`` each.

    Returns
    -------
    mi : float
        :math:`\\sum_{a,b} p(a,b) \\log \\frac{p(a,b)}{p(a)p(b)}`, at least 0.
    """
    a, b = np.asarray(a), np.asarray(b)
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb) / a.size
    pa = joint.sum(axis=1, keepdims=True)
    pb = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum()
    return max(float(mi), 0.0)


def mig(
    codes: np.ndarray, factors: np.ndarray, bins: int = 20
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mutual information gap of latent codes with respect to discrete factors.

    Parameters
    ----------
    codes : numpy.ndarray
        Shape ``(N, D)``: the posterior mean of each of ``N`` samples.
    factors : numpy.ndarray
        Shape ``(N, K)``: non-negative integer ground-truth factors of the same samples.
    bins : int, default=20
        Bins per latent.

    Returns
    -------
    score : float
        The MIG, averaged over factors with non-zero entropy (NaN if there are none).
    per_factor : numpy.ndarray
        Shape ``(K,)``: each factor's normalised gap (NaN for a constant factor).
    mi : numpy.ndarray
        Shape ``(D, K)``: the mutual information of each latent with each factor, nats.

    Raises
    ------
    ValueError
        If the shapes do not match or there are fewer than 2 latents.
    """
    codes = np.asarray(codes)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0]:
        raise ValueError(
            f"codes (N, D) and factors (N, K) must share N, got {codes.shape} and {factors.shape}"
        )
    if codes.shape[1] < 2:
        raise ValueError("the MIG needs at least 2 latent dimensions")
    labels = discretize(codes, bins)
    n_latents, n_factors = codes.shape[1], factors.shape[1]
    mi = np.array(
        [
            [mutual_information(labels[:, j], factors[:, k]) for k in range(n_factors)]
            for j in range(n_latents)
        ]
    )
    per_factor = np.full(n_factors, np.nan)
    for k in range(n_factors):
        h = entropy(factors[:, k])
        if h > 0:
            top = np.sort(mi[:, k])[::-1]
            per_factor[k] = (top[0] - top[1]) / h
    valid = per_factor[~np.isnan(per_factor)]
    score = float(valid.mean()) if valid.size else float("nan")
    return score, per_factor, mi
