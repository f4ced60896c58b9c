"""The β-VAE loss's terms on a backend: one :class:`~.call.LossCall`, run eagerly or by
the Triton operators.

:func:`beta_vae_terms` is what :mod:`betavae_triton.functional` calls with checked
arguments: it bundles them into a ``LossCall`` (β as a number or a 0-d tensor on the
data's device; which gradients autograd will ask for) and runs it on the backend that the
request names for the tensors' device: :func:`.eager.eager_terms`, or
:func:`.ops.triton_terms` (importing :mod:`.ops` registers the operators).
"""

from __future__ import annotations

import torch

from .._checks import loss_weight
from .._dispatch import autograd_transform, requested_backend, resolve_backend, triton_available
from .call import LossCall
from .eager import eager_terms

if triton_available():
    from .ops import triton_terms

Tensor = torch.Tensor


def _needs(*tensors: Tensor | None) -> bool:
    """Whether autograd will ask for the gradient of any of ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def loss_call(
    x: Tensor | None,
    p: Tensor | None,
    q_loc: Tensor | None,
    q_scale: Tensor | None,
    *,
    p_scale: Tensor | None = None,
    beta: float | Tensor = 0.0,
    dist: str = "normal",
    q_is_logvar: bool = False,
    per_sample: bool = False,
    kl_per_dim: bool = False,
) -> LossCall:
    """The :class:`~.call.LossCall` of checked arguments (None: a term that is not
    computed)."""
    device = (x if x is not None else q_loc).device
    beta, beta_tensor = loss_weight(beta, device)
    return LossCall(
        x=x,
        p=p,
        q_loc=q_loc,
        q_scale=q_scale,
        p_scale=p_scale,
        beta_tensor=beta_tensor,
        beta=beta,
        dist=dist,
        q_is_logvar=bool(q_is_logvar),
        per_sample=per_sample,
        kl_per_dim=kl_per_dim,
        need_grad_x=_needs(x),
        need_grad_p=_needs(p),
        need_grad_q=_needs(q_loc, q_scale),
        need_grad_p_scale=_needs(p_scale),
        in_place_backward=True,  # the package never hands the gradient buffers out
    )


def run_call(call: LossCall, backend: str | None) -> tuple[Tensor | None, ...]:
    """``(loss, rec, kl, kl_per_dim)`` of ``call`` on the backend that ``backend`` ("auto",
    "triton", "eager", or None for the default) picks for its tensors' device: the eager
    one under torch.func transforms and forward-mode AD, which the operators do not
    serve."""
    device = (call.x if call.x is not None else call.q_loc).device
    transform = autograd_transform(call.x, call.p, call.q_loc, call.q_scale, call.p_scale)
    if resolve_backend(requested_backend(backend), device, transform) == "eager":
        return eager_terms(call)
    if call.beta_tensor is None and torch.compiler.is_compiling():
        # The operator takes β as a float, on whose value a compiled graph would be
        # specialised: under torch.compile a number reaches the kernels as a 0-d tensor.
        beta = torch.ones((), dtype=torch.float64, device=device) * call.beta
        call = call._replace(beta_tensor=beta, beta=0.0)
    elif call.beta_tensor is None:
        call = call._replace(beta=float(call.beta))  # an int or a NumPy number too
    return triton_terms(call)


def beta_vae_terms(
    x: Tensor | None,
    p: Tensor | None,
    q_loc: Tensor | None,
    q_scale: Tensor | None,
    backend: str | None,
    **options,
) -> tuple[Tensor | None, ...]:
    """``(loss, rec, kl, kl_per_dim)``: :func:`loss_call` of the arguments (``options``
    are its keywords) run by :func:`run_call`."""
    return run_call(loss_call(x, p, q_loc, q_scale, **options), backend)
