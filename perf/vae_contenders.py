"""The β-VAE suite's contenders, each a step ``(x, p, mu, scale) -> loss``, and its oracle.

Every contender receives the same call a training script makes: the data ``x``, the decoder
output ``p`` as a tensor read by ``default_dist``, and the posterior ``Normal(mu, scale)``
built inside the step. Each builder takes the workload (its decoder distribution) and
nidl's ``BetaVAELoss`` (None when it was not found); ``perf/bench.py`` declares which
builder is which contender. Compiled steps are wrapped in a fresh
``torch.compile(dynamic=False)``: the suite resets dynamo between workloads, so each
workload compiles its own static graphs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Normal

from betavae_triton import BetaVAELoss
from perf.refmath import beta_vae_loss_same_dtype
from perf.workloads import Workload

__all__ = ["BETA", "Step", "compiled_reference", "nidl", "oracle_loss", "ours", "ours_compiled"]

BETA = 4.0

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _loss_module_step(loss_fn: Callable) -> Step:
    def step(x, p, mu, scale):
        return loss_fn(x, p, Normal(mu, scale))["loss"]

    return step


def ours(backend: str) -> Callable[[Workload, type | None], Step]:
    """The builder of ``betavae_triton.BetaVAELoss(backend=backend)``'s step."""

    def build(w: Workload, nidl_cls: type | None = None) -> Step:
        return _loss_module_step(BetaVAELoss(BETA, w.dist, backend=backend))

    build.__name__ = f"ours_{backend}"
    return build


def ours_compiled(w: Workload, nidl_cls: type | None = None) -> Step:
    """``torch.compile`` of a step that calls the eager backend."""
    step = _loss_module_step(BetaVAELoss(BETA, w.dist, backend="eager"))
    return torch.compile(step, dynamic=False)


def nidl(w: Workload, nidl_cls: type | None = None) -> Step:
    """nidl's ``BetaVAELoss``, eager (see :mod:`perf.nidl` for where it is read from)."""
    if nidl_cls is None:
        raise RuntimeError("nidl's BetaVAELoss was not loaded")
    return _loss_module_step(nidl_cls(beta=BETA, default_dist=w.dist))


def compiled_reference(w: Workload, nidl_cls: type | None = None) -> Step:
    """``torch.compile`` of the reference's plain maths in the workload's dtype
    (:func:`perf.refmath.beta_vae_loss_same_dtype`)."""

    def step(x, p, mu, scale):
        return beta_vae_loss_same_dtype(x, p, mu, scale, BETA, w.dist)[0]

    return torch.compile(step, dynamic=False)


def oracle_loss(w: Workload, x, p, mu, scale) -> float:
    """The loss in float64, by ``reference/`` when it is importable, to check contenders.

    Parameters
    ----------
    w : Workload
        Supplies the decoder distribution.
    x, p, mu, scale : torch.Tensor
        One input set.

    Returns
    -------
    loss : float
        The float64 loss.
    """
    args = [t.detach().double() for t in (x, p, mu, scale)]
    try:
        from reference import reference_beta_vae_loss
    except ImportError:
        reference_beta_vae_loss = beta_vae_loss_same_dtype
    with torch.no_grad():
        return float(reference_beta_vae_loss(*args, BETA, w.dist)[0])
