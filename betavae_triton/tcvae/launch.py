"""Launchers of β-TCVAE's minibatch kernels (``kernels/total_correlation.py``).

One forward kernel, then two backward kernels that recompute the pairwise log-densities
from the saved log-sum-exps (deterministic: every sum runs in one program). Extra memory
O(B·D): the saved log-sum-exps. ``launch`` is ``torch.library.wrap_triton`` inside the
operators on a GPU (so inductor sees the kernels) and the kernel itself under Triton's
interpreter on the CPU. Inputs are contiguous (B_l, D) / (B, D) tensors of one float
dtype (float32 or float64: the accumulation dtype).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from .._constants import ESTIMATOR_CODES
from ..kernels.total_correlation import (
    _minibatch_grad_posterior,
    _minibatch_grad_z,
    _minibatch_log_densities_fwd,
)

Tensor = torch.Tensor
BLOCK_ROWS = 16
MAX_LATENT = 256


class KernelConfig(NamedTuple):
    """The sizes and constexprs the three kernels share (their keyword arguments)."""

    n_rows: int
    row_offset: int
    batch: int
    latent: int
    dataset_size: int
    ESTIMATOR: int
    ACC_FP64: bool
    BLOCK_D: int
    num_warps: int


def _config(
    z: Tensor, mu: Tensor, row_offset: int, dataset_size: int, estimator: str
) -> KernelConfig:
    """The :class:`KernelConfig` of a call."""
    n_rows, latent = z.shape
    if latent > MAX_LATENT:
        raise ValueError(
            f"the Triton β-TCVAE kernels take at most {MAX_LATENT} latents, got {latent}; "
            "use backend='eager'"
        )
    return KernelConfig(
        n_rows=n_rows,
        row_offset=row_offset,
        batch=mu.shape[0],
        latent=latent,
        dataset_size=dataset_size,
        ESTIMATOR=ESTIMATOR_CODES[estimator],
        ACC_FP64=z.dtype == torch.float64,
        BLOCK_D=triton.next_power_of_2(latent),
        # 16 rows × up to 256 latents a program: 8 warps from 33 latents on keep the
        # registers near 120 a thread for float32 (sm_90a, compiled ahead of time).
        num_warps=8 if latent > 32 else 4,
    )


def launch_log_densities_fwd(
    launch,
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log q(z_id))``, shapes (B_l,) and (B_l, D)."""
    config = _config(z, mu, row_offset, dataset_size, estimator)
    log_qz = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
    log_prod = torch.empty_like(z)
    launch(_minibatch_log_densities_fwd)[(triton.cdiv(z.shape[0], BLOCK_ROWS),)](
        z_ptr=z,
        mu_ptr=mu,
        log_sigma_ptr=log_sigma,
        log_qz_ptr=log_qz,
        log_prod_ptr=log_prod,
        BLOCK_I=BLOCK_ROWS,
        **config._asdict(),
    )
    return log_qz, log_prod


def launch_log_densities_bwd(
    launch,
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    log_qz: Tensor,
    log_prod: Tensor,
    g_qz: Tensor,
    g_prod: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dz, dL/dμ, dL/d log σ)`` from the incoming gradients of the two outputs."""
    config = _config(z, mu, row_offset, dataset_size, estimator)
    grad_z, grad_mu, grad_log_sigma = (torch.empty_like(t) for t in (z, mu, log_sigma))
    saved = dict(
        z_ptr=z,
        mu_ptr=mu,
        log_sigma_ptr=log_sigma,
        log_qz_ptr=log_qz,
        log_prod_ptr=log_prod,
        g_qz_ptr=g_qz,
        g_prod_ptr=g_prod,
    )
    launch(_minibatch_grad_z)[(triton.cdiv(z.shape[0], BLOCK_ROWS),)](
        **saved, grad_z_ptr=grad_z, BLOCK_I=BLOCK_ROWS, **config._asdict()
    )
    launch(_minibatch_grad_posterior)[(triton.cdiv(mu.shape[0], BLOCK_ROWS),)](
        **saved,
        grad_mu_ptr=grad_mu,
        grad_log_sigma_ptr=grad_log_sigma,
        BLOCK_J=BLOCK_ROWS,
        **config._asdict(),
    )
    return grad_z, grad_mu, grad_log_sigma
