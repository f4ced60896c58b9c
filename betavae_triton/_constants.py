"""The numbers and modes that the kernels and the eager path share, stated once.

Plain Python (no triton import): the eager path runs where triton is not installed.
:mod:`betavae_triton.kernels.constants` turns each into a ``tl.constexpr`` of the same name.
"""

# The reconstruction losses: the kernels' ``DIST`` constexpr, and the ``dist`` string of
# a call ("bernoulli_logits" reads p as logits).
NORMAL, LAPLACE, BERNOULLI, BERNOULLI_LOGITS = 0, 1, 2, 3
DIST_CODES = {
    "normal": NORMAL,
    "laplace": LAPLACE,
    "bernoulli": BERNOULLI,
    "bernoulli_logits": BERNOULLI_LOGITS,
}

# How the decoder's scale p_scale is read (the kernels' ``P_SCALE`` constexpr): not at all
# (nidl's squared / absolute error), one value per element, one value shared by all.
NO_P_SCALE, P_SCALE_PER_ELEMENT, P_SCALE_SHARED = 0, 1, 2

# ½ log 2π and log 2: the constants of the full normal and laplace negative log-likelihoods.
HALF_LOG_2PI = 0.9189385332046727
LOG_2 = 0.6931471805599453
# PyTorch's binary_cross_entropy clamps each log at −100 ...
BCE_LOG_FLOOR = -100.0
# ... and its backward divides by max(p(1 − p), 1e-12), a float32 constant even in float64.
BCE_GRAD_EPS = 9.999999960041972e-13

# β-TCVAE's estimators of q(z) from a minibatch (the kernels' ``ESTIMATOR`` constexpr):
# the three a user names, and "mss-bank", what "mss" becomes with a bank of posteriors
# (tcvae/weights.py).
MWS, MSS, MSS_REFERENCE, MSS_BANK = 0, 1, 2, 3
ESTIMATOR_CODES = {"mws": MWS, "mss": MSS, "mss-reference": MSS_REFERENCE, "mss-bank": MSS_BANK}
