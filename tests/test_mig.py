"""The demo's MIG (``betavae_triton.demo.mig``) against disentanglement_lib's definition.

disentanglement_lib (``evaluation/metrics/mig.py`` and ``utils.py``) computes the MIG as:

- each latent discretised on its own histogram: ``np.digitize(x, np.histogram(x, 20)[1][:-1])``
  (20 equal-width bins over the latent's range, labels 1..20);
- ``m[j, k]``, the discrete mutual information of latent ``j``'s labels with factor ``k``
  (``sklearn.metrics.mutual_info_score``, nats, from the contingency table);
- ``H[k]``, the factor's entropy (``mutual_info_score(y, y)``);
- MIG = mean over factors of (largest ``m[:, k]`` minus the second largest) / ``H[k]``.

This file writes those formulas again with numpy alone (``np.unique`` and ``np.add.at``, no
code shared with the demo's ``bincount`` version) and checks the demo against them on cases
known by hand and on a random code. Where scikit-learn happens to be installed its
``mutual_info_score`` is a further check; it is not a dependency of the tests.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from betavae_triton.demo.mig import discretize, entropy, mig, mutual_information

BINS = 20
N = 20_000
FACTOR_LEVELS = (3, 6, 40)  # 40 levels: more than the 20 bins, so some bins merge levels


def _dlib_discretize(codes: np.ndarray, bins: int = BINS) -> np.ndarray:
    """disentanglement_lib's ``_histogram_discretize``, one latent per column."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        out[:, j] = np.digitize(codes[:, j], np.histogram(codes[:, j], bins)[1][:-1])
    return out


def _contingency_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two label arrays, as ``mutual_info_score``."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    total = 0.0
    for r, c in zip(*np.nonzero(joint), strict=True):
        total += joint[r, c] * np.log(joint[r, c] / (pa[r] * pb[c]))
    return max(total, 0.0)


def _dlib_mig(codes: np.ndarray, factors: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """disentanglement_lib's ``discrete_mig``: score, per-factor gaps and ``m`` (D, K)."""
    labels = _dlib_discretize(codes)
    m = np.array(
        [
            [_contingency_mi(labels[:, j], factors[:, k]) for k in range(factors.shape[1])]
            for j in range(codes.shape[1])
        ]
    )
    h = np.array([_contingency_mi(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])
    top = np.sort(m, axis=0)[::-1]
    per_factor = (top[0] - top[1]) / h
    return float(per_factor.mean()), per_factor, m


def _factors(rng: np.random.Generator, n: int = N) -> np.ndarray:
    return np.stack([rng.integers(0, k, n) for k in FACTOR_LEVELS], axis=1)


def _noise_bound(levels: int, n: int = N, bins: int = BINS) -> float:
    """The plug-in MI of independent labels is biased upwards by about
    ``(bins - 1)(levels - 1) / (2n)`` nats (Miller-Madow), with a standard deviation of the
    same order; a gap between two such estimates stays below 4 times that bias."""
    return 4 * (bins - 1) * (levels - 1) / (2 * n)


def test_discretisation_is_disentanglement_libs_histogram():
    """Same partition of every latent as disentanglement_lib's (its labels are ours + 1),
    the maximum in the last bin, a constant latent in one bin."""
    rng = np.random.default_rng(1)
    codes = np.concatenate(
        [rng.normal(size=(5000, 3)), rng.uniform(-2, 7, (5000, 1)), np.full((5000, 1), 0.3)],
        axis=1,
    )
    ours = discretize(codes, BINS)
    theirs = _dlib_discretize(codes)
    np.testing.assert_array_equal(ours[:, :4] + 1, theirs[:, :4])
    assert ours[:, :4].min() == 0 and ours[:, :4].max() == BINS - 1
    assert len(np.unique(ours[:, 4])) == len(np.unique(theirs[:, 4])) == 1


def test_entropy_and_mutual_information_match_the_contingency_formulas():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 7, 3000)
    z = (y + rng.integers(0, 3, 3000)) % 9  # dependent on y, not a function of it
    assert entropy(y) == pytest.approx(_contingency_mi(y, y), rel=1e-12)
    counts = np.unique(y, return_counts=True)[1] / y.size
    assert entropy(y) == pytest.approx(-(counts * np.log(counts)).sum(), rel=1e-12)
    assert mutual_information(z, y) == pytest.approx(_contingency_mi(z, y), rel=1e-12)
    assert mutual_information(y, y) == pytest.approx(entropy(y), rel=1e-12)


def test_a_latent_that_copies_a_factor_scores_1_for_it():
    """Latent 0 is factor 0 itself (as floats), latent 1 is constant (MI exactly 0): the gap
    is the factor's whole entropy. With independent noise as the runner-up instead, the
    gap falls short of 1 by at most the noise's estimation bias."""
    rng = np.random.default_rng(3)
    factors = _factors(rng)
    codes = np.stack([factors[:, 0].astype(float), np.zeros(N)], axis=1)
    _, per_factor, mi = mig(codes, factors)
    assert per_factor[0] == pytest.approx(1.0, abs=1e-12)
    assert mi[0, 0] == pytest.approx(entropy(factors[:, 0]), rel=1e-12)
    assert mi[1].max() == 0.0
    np.testing.assert_allclose(per_factor, _dlib_mig(codes, factors)[1], rtol=1e-10, atol=1e-12)

    noisy = np.stack([factors[:, 0].astype(float), rng.normal(size=N)], axis=1)
    _, per_factor, _ = mig(noisy, factors)
    bound = _noise_bound(FACTOR_LEVELS[0]) / entropy(factors[:, 0])
    assert 1.0 - bound <= per_factor[0] <= 1.0


def test_independent_noise_scores_about_0():
    """Four latents of noise independent of three factors: every factor's gap is within the
    sampling bound of :func:`_noise_bound` (relative to its entropy), and the demo and
    disentanglement_lib's formulas agree."""
    rng = np.random.default_rng(4)
    factors = _factors(rng)
    codes = rng.normal(size=(N, 4))
    score, per_factor, _ = mig(codes, factors)
    h = np.array([entropy(factors[:, k]) for k in range(len(FACTOR_LEVELS))])
    bounds = np.array([_noise_bound(k) for k in FACTOR_LEVELS]) / h
    assert (per_factor >= 0).all() and (per_factor <= bounds).all(), (per_factor, bounds)
    assert 0.0 <= score <= bounds.max()
    want, want_per_factor, _ = _dlib_mig(codes, factors)
    np.testing.assert_allclose(per_factor, want_per_factor, rtol=1e-10, atol=1e-14)
    assert score == pytest.approx(want, rel=1e-10, abs=1e-14)


def test_two_latents_sharing_a_factor_score_0_for_it():
    """Latents 0 and 1 both hold factor 1 (one doubled: the same bins exactly), latent 2
    holds factor 0, latent 3 factor 2: factor 1's gap is exactly 0; factor 0's is 1 less
    the runner-up's MI, which is only estimation bias (the other latents are functions of
    independent factors)."""
    rng = np.random.default_rng(5)
    factors = _factors(rng)
    f0, f1, f2 = (factors[:, k].astype(float) for k in range(3))
    codes = np.stack([f1, 2.0 * f1, f0, f2], axis=1)
    score, per_factor, mi = mig(codes, factors)
    assert mi[0, 1] == pytest.approx(mi[1, 1], rel=1e-12)
    assert per_factor[1] == pytest.approx(0.0, abs=1e-12)
    h = np.array([entropy(factors[:, k]) for k in range(3)])
    # Factor 0 (3 levels) is copied whole; factor 2 (40 levels) is binned into 20 bins of
    # two levels each, so its top MI is the entropy of those bins, not the factor's.
    assert per_factor[0] > 1.0 - _noise_bound(FACTOR_LEVELS[0]) / h[0]
    want, want_per_factor, want_m = _dlib_mig(codes, factors)
    np.testing.assert_allclose(mi, want_m, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(per_factor, want_per_factor, rtol=1e-10, atol=1e-12)
    assert score == pytest.approx(want, rel=1e-10)


def test_a_random_partly_disentangled_code_matches_disentanglement_lib():
    """Six latents, each a random mix of the three factors plus noise of random size: the
    MI matrix, the per-factor gaps and the score agree with the independent formulas (and,
    where scikit-learn is installed, with its ``mutual_info_score``)."""
    rng = np.random.default_rng(6)
    factors = _factors(rng, 8000)
    mixing = rng.normal(size=(3, 6)) * (rng.random((3, 6)) < 0.5)
    scaled = factors / (np.array(FACTOR_LEVELS) - 1)
    codes = scaled @ mixing + rng.normal(size=(8000, 6)) * rng.uniform(0.05, 1.0, 6)
    score, per_factor, mi = mig(codes, factors)
    want, want_per_factor, want_m = _dlib_mig(codes, factors)
    np.testing.assert_allclose(mi, want_m, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(per_factor, want_per_factor, rtol=1e-10, atol=1e-14)
    assert score == pytest.approx(want, rel=1e-10)
    assert 0.0 < score < 1.0  # the case is neither trivial nor perfect

    if importlib.util.find_spec("sklearn") is not None:
        from sklearn.metrics import mutual_info_score

        labels = _dlib_discretize(codes)
        sk = np.array(
            [[mutual_info_score(factors[:, k], labels[:, j]) for k in range(3)] for j in range(6)]
        )
        np.testing.assert_allclose(mi, sk, rtol=1e-10, atol=1e-14)


def test_a_constant_factor_is_left_out_of_the_mean():
    """A documented difference: disentanglement_lib divides by every factor's entropy, so a
    constant factor (entropy 0) makes its score NaN; the demo's ``mig`` gives that factor
    NaN and averages over the others."""
    rng = np.random.default_rng(7)
    factors = np.stack([rng.integers(0, 6, 4000), np.zeros(4000, dtype=np.int64)], axis=1)
    codes = np.stack([factors[:, 0].astype(float), np.zeros(4000)], axis=1)
    score, per_factor, _ = mig(codes, factors)
    assert np.isnan(per_factor[1])
    assert score == pytest.approx(per_factor[0]) and score == pytest.approx(1.0, abs=1e-12)


def test_a_factor_with_empty_levels_has_the_entropy_of_its_observed_levels():
    """A factor of 3 levels whose sample holds only 0 and 2 (level 1 empty, as a small
    evaluation set can leave it): its entropy is that of the levels it takes, log 2 for
    two equally frequent ones (an empty level weighs 0, never 0 · log 0 = NaN, and the
    number of levels enters nowhere), and a latent that copies it scores 1 for it."""
    rng = np.random.default_rng(8)
    # Every pair of (0 or 2, 0 or 1 or 2) 500 times, shuffled: the second factor, of full
    # levels, is independent of the first in the sample itself (their MI is 0).
    factors = rng.permutation(np.stack([np.repeat([0, 2], 1500), np.tile([0, 1, 2], 1000)], 1))
    skipping, full = factors[:, 0], factors[:, 1]
    assert set(np.unique(skipping)) == {0, 2}
    assert mutual_information(skipping, full) == pytest.approx(0.0, abs=1e-12)
    assert entropy(skipping) == pytest.approx(np.log(2), rel=1e-12)
    assert entropy(skipping) == pytest.approx(_contingency_mi(skipping, skipping), rel=1e-12)
    assert mutual_information(skipping, skipping) == pytest.approx(np.log(2), rel=1e-12)

    codes = np.stack([skipping.astype(float), full.astype(float), np.zeros(3000)], axis=1)
    score, per_factor, _ = mig(codes, factors)
    np.testing.assert_allclose(per_factor, [1.0, 1.0], rtol=0, atol=1e-12)
    assert score == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(per_factor, _dlib_mig(codes, factors)[1], rtol=1e-10, atol=1e-12)
