"""The shared constants of :mod:`betavae_triton._constants` as ``tl.constexpr``\\ s, so that
the kernels compare and compute with them by name."""

import triton.language as tl

from .. import _constants as c

NORMAL = tl.constexpr(c.NORMAL)
LAPLACE = tl.constexpr(c.LAPLACE)
BERNOULLI = tl.constexpr(c.BERNOULLI)
BERNOULLI_LOGITS = tl.constexpr(c.BERNOULLI_LOGITS)

NO_P_SCALE = tl.constexpr(c.NO_P_SCALE)
P_SCALE_PER_ELEMENT = tl.constexpr(c.P_SCALE_PER_ELEMENT)
P_SCALE_SHARED = tl.constexpr(c.P_SCALE_SHARED)

HALF_LOG_2PI = tl.constexpr(c.HALF_LOG_2PI)
LOG_2 = tl.constexpr(c.LOG_2)
BCE_LOG_FLOOR = tl.constexpr(c.BCE_LOG_FLOOR)
BCE_GRAD_EPS = tl.constexpr(c.BCE_GRAD_EPS)

MWS = tl.constexpr(c.MWS)
MSS = tl.constexpr(c.MSS)
MSS_REFERENCE = tl.constexpr(c.MSS_REFERENCE)
MSS_BANK = tl.constexpr(c.MSS_BANK)
