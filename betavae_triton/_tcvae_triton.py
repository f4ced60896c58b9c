"""β-TCVAE's minibatch log-densities on the Triton kernels (not yet public).

:class:`MinibatchLogDensities` launches ``kernels/total_correlation.py``: one forward
kernel, two backward kernels (recomputation; deterministic). Extra memory O(B·D): the
saved log-sum-exps. The terms around it (log q(z|x), log p(z), the means) are small torch
ops, as on the eager path (:mod:`._tcvae_eager`), which this mirrors.
"""

from __future__ import annotations

import torch
import triton

from ._constants import ESTIMATOR_CODES
from ._dispatch import interpreter_enabled
from ._tcvae_eager import LogWeights
from .kernels.total_correlation import (
    _minibatch_grad_posterior,
    _minibatch_grad_z,
    _minibatch_log_densities_fwd,
)

Tensor = torch.Tensor
BLOCK_ROWS = 16
MAX_LATENT = 256


def _config(z: Tensor, log_w: LogWeights) -> dict:
    batch, latent = z.shape
    if latent > MAX_LATENT:
        raise ValueError(f"the Triton β-TCVAE kernels take at most {MAX_LATENT} latents")
    return dict(
        batch=batch,
        latent=latent,
        dataset_size=log_w.dataset_size,
        ESTIMATOR=ESTIMATOR_CODES[log_w.estimator],
        ACC_FP64=z.dtype == torch.float64,
        BLOCK_D=triton.next_power_of_2(latent),
        # 16 rows × up to 256 latents a program: 8 warps from 64 latents on keep the
        # registers near 120 a thread for float32 (sm_90a, compiled ahead of time).
        num_warps=8 if latent > 32 else 4,
    )


class MinibatchLogDensities(torch.autograd.Function):
    """``(log q(z), log q(z_d) per d)`` from the kernels; backward by recomputation."""

    @staticmethod
    def forward(ctx, z, mu, log_sigma, log_w: LogWeights):
        if z.device.type == "cpu" and not interpreter_enabled():
            raise RuntimeError("the Triton β-TCVAE kernels need a GPU or TRITON_INTERPRET=1")
        z, mu, log_sigma = (t.contiguous() for t in (z, mu, log_sigma))
        config = _config(z, log_w)
        log_qz = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
        log_prod = torch.empty_like(z)
        grid = (triton.cdiv(z.shape[0], BLOCK_ROWS),)
        _minibatch_log_densities_fwd[grid](
            z_ptr=z,
            mu_ptr=mu,
            log_sigma_ptr=log_sigma,
            log_qz_ptr=log_qz,
            log_prod_ptr=log_prod,
            BLOCK_I=BLOCK_ROWS,
            **config,
        )
        ctx.save_for_backward(z, mu, log_sigma, log_qz, log_prod)
        ctx.config = config
        return log_qz, log_prod

    @staticmethod
    def backward(ctx, g_qz, g_prod):
        z, mu, log_sigma, log_qz, log_prod = ctx.saved_tensors
        g_qz = torch.zeros_like(log_qz) if g_qz is None else g_qz.contiguous()
        g_prod = torch.zeros_like(log_prod) if g_prod is None else g_prod.contiguous()
        grad_z, grad_mu, grad_log_sigma = (torch.empty_like(t) for t in (z, mu, log_sigma))
        grid = (triton.cdiv(z.shape[0], BLOCK_ROWS),)
        saved = dict(
            z_ptr=z,
            mu_ptr=mu,
            log_sigma_ptr=log_sigma,
            log_qz_ptr=log_qz,
            log_prod_ptr=log_prod,
            g_qz_ptr=g_qz,
            g_prod_ptr=g_prod,
        )
        _minibatch_grad_z[grid](**saved, grad_z_ptr=grad_z, BLOCK_I=BLOCK_ROWS, **ctx.config)
        _minibatch_grad_posterior[grid](
            **saved,
            grad_mu_ptr=grad_mu,
            grad_log_sigma_ptr=grad_log_sigma,
            BLOCK_J=BLOCK_ROWS,
            **ctx.config,
        )
        return grad_z, grad_mu, grad_log_sigma, None
