"""Introspection for tools: the kernel launches the package would make, without a GPU.

``perf/codegen.py`` compiles every kernel specialization the API launches ahead of time;
it needs to know those launches for a GPU it does not have. These functions run the
launchers on ``meta`` tensors (nothing is computed or allocated) with grids sized for a
described :class:`GPU`, and return what each launch would pass:

>>> import torch
>>> from betavae_triton.tools import H100, beta_vae_launches
>>> x = torch.empty(256, 1, 64, 64, device="meta")
>>> p = torch.empty_like(x).requires_grad_()
>>> mu, sigma = (torch.empty(256, 10, device="meta").requires_grad_() for _ in range(2))
>>> for launch in beta_vae_launches(x, p, mu, sigma, H100):
...     print(launch.kernel.__name__, launch.grid)
_reconstruction_fwd_bwd (1, 512)
_normal_kl_fwd_bwd (1, 2)
_finalize_loss (1,)
_rescale_grad_inplace (512,)
_rescale_grad_inplace (3,)

The launches are those of the Triton backend on that GPU before any kernel has run there
(on a real one, a kernel that ran reports its registers, and later grids respect them:
:func:`resident_blocks` is that rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ._checks import check_loss_inputs
from ._device import GPU, H100, H100_SM, SMLimits, resident_blocks
from .tcvae.launch import launch_log_densities_bwd, launch_log_densities_fwd
from .vae.launch import GPU_CONFIG, launch_loss_fwd, launch_rescale_grad_
from .vae.terms import loss_call

__all__ = [
    "GPU",
    "H100",
    "H100_SM",
    "KernelLaunch",
    "SMLimits",
    "beta_tcvae_launches",
    "beta_vae_launches",
    "persistent_programs_per_sm",
    "resident_blocks",
]


class KernelLaunch(NamedTuple):
    """One kernel launch: the ``@triton.jit`` function, its grid and its keyword
    arguments (tensors on ``meta``, numbers, constexprs and ``num_warps``)."""

    kernel: Callable
    grid: tuple[int, ...]
    kwargs: dict


def _recorder(launches: list[KernelLaunch]) -> Callable:
    """A ``launch`` callable that records each launch instead of running it."""

    def launch(kernel):
        class Grid:
            def __getitem__(self, grid):
                def run(**kwargs):
                    launches.append(KernelLaunch(kernel, tuple(grid), kwargs))

                return run

        return Grid()

    return launch


def beta_vae_launches(
    x: torch.Tensor,
    p: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    gpu: GPU = H100,
    *,
    p_scale: torch.Tensor | None = None,
    dist: str = "normal",
    p_is_logits: bool = False,
    q_is_logvar: bool = False,
    reduction: str = "mean",
    kl_per_dim: bool = False,
    backward: bool = True,
) -> list[KernelLaunch]:
    """The launches of one forward (and backward) of :func:`betavae_triton.beta_vae_loss`
    on ``gpu``.

    Parameters
    ----------
    x, p, q_loc, q_scale : torch.Tensor
        As for :func:`~betavae_triton.beta_vae_loss`, on the ``meta`` device (shapes,
        dtypes, strides and ``requires_grad`` are what matter).
    gpu : GPU, default=H100
        The GPU the grids are sized for.
    p_scale, dist, p_is_logits, q_is_logvar, reduction, kl_per_dim
        As for :func:`~betavae_triton.beta_vae_loss`.
    backward : bool, default=True
        Add the backward pass's launches for an incoming gradient other than 1 (the
        rescaling kernel launches only then).

    Returns
    -------
    launches : list of KernelLaunch
        In launch order.
    """
    kind, per_sample = check_loss_inputs(
        x, p, q_loc, q_scale, dist=dist, p_is_logits=p_is_logits, reduction=reduction,
        p_scale=p_scale, validate_args=False,
    )  # fmt: skip
    options = dict(q_is_logvar=q_is_logvar, per_sample=per_sample, kl_per_dim=kl_per_dim)
    call = loss_call(x, p, q_loc, q_scale, p_scale=p_scale, beta=4.0, dist=kind, **options)
    launches: list[KernelLaunch] = []
    record = _recorder(launches)
    out = launch_loss_fwd(record, call, gpu)
    if backward:
        factor = torch.empty((), dtype=torch.float32, device=x.device)
        launch_rescale_grad_(record, out.rec_grads, factor, None, 1.0, gpu)
        launch_rescale_grad_(record, out.kl_grads, None, factor, 4.0, gpu)
    return launches


def beta_tcvae_launches(
    z: torch.Tensor,
    gpu: GPU = H100,
    *,
    dataset_size: int = 60_000,
    estimator: str = "mss",
    row_offset: int = 0,
    batch: int | None = None,
) -> list[KernelLaunch]:
    """The launches of one forward and backward of β-TCVAE's minibatch terms on ``gpu``.

    Parameters
    ----------
    z : torch.Tensor
        This rank's samples, (B_l, D), on the ``meta`` device, in the dtype the kernels
        read (float32, or float64).
    gpu : GPU, default=H100
        The GPU the grids are sized for.
    dataset_size, estimator
        As for :func:`~betavae_triton.beta_tcvae_loss`.
    row_offset, batch : int
        The rank's first row in the (gathered) batch of ``batch`` posteriors (default:
        one process, ``batch`` = B_l).

    Returns
    -------
    launches : list of KernelLaunch
        Forward, then backward.
    """
    batch = z.shape[0] if batch is None else batch
    mu = z.new_empty((batch, z.shape[1]))
    log_sigma = torch.empty_like(mu)
    launches: list[KernelLaunch] = []
    record = _recorder(launches)
    options = (row_offset, dataset_size, estimator)
    log_qz, log_prod = launch_log_densities_fwd(record, z, mu, log_sigma, *options, gpu)
    incoming = (torch.empty_like(log_qz), torch.empty_like(log_prod))
    saved = (z, mu, log_sigma, log_qz, log_prod, *incoming)
    launch_log_densities_bwd(record, *saved, *options, gpu)
    return launches


def persistent_programs_per_sm(element_size: int) -> int:
    """The most programs per SM that the β-VAE reductions (and the rescaling) launch for
    data of ``element_size`` bytes: their persistent grid is at most this many per SM,
    fewer where a kernel that ran on the GPU turned out to allow fewer."""
    return GPU_CONFIG[element_size][2]
