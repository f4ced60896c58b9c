"""What a demo run is given: its settings (:class:`DemoConfig`), the choices they range
over, the defaults each loss changes (:data:`LOSS_DEFAULTS`), and where the process stands
in a torchrun launch (:class:`DistInfo`).

Both commands build on these: ``python -m betavae_triton.demo`` parses its command line
into a :class:`DemoConfig` (:mod:`.__main__`), and the study builds one per run
(:func:`.study_grid.demo_config`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "DISTS",
    "ESTIMATORS",
    "LOSSES",
    "LOSS_DEFAULTS",
    "DemoConfig",
    "DistInfo",
    "default_device",
    "distributed_info",
]

# --loss: the beta-VAE (rec + beta * KL) or the beta-TCVAE (rec + mi + beta * tc + dw_kl).
LOSSES = ("betavae", "btcvae")
# --estimator: the beta-TCVAE's minibatch estimator of q(z) (stratified or weighted sampling).
ESTIMATORS = ("mss", "mws")
# --dist: the decoder distribution, which sets the reconstruction loss.
DISTS = ("bernoulli", "normal", "laplace")


def default_device() -> str:
    """The device a run takes when none is named.

    Returns
    -------
    device : str
        ``"cuda"`` when ``torch.cuda.is_available()`` (the loss then runs its Triton
        kernels), else ``"cpu"`` (the loss then runs its eager PyTorch path, which
        ``torch.compile`` fuses).
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class DemoConfig:
    """Settings of one demo run (the command-line arguments).

    Attributes
    ----------
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; by default :func:`default_device`, CUDA
        when present. Under torchrun on CUDA each rank takes ``cuda:LOCAL_RANK``.
    steps : int
        Optimiser steps (per rank).
    loss : str
        ``"betavae"``: :class:`betavae_triton.BetaVAELoss`, rec + beta * KL.
        ``"btcvae"``: :class:`betavae_triton.BetaTCVAELoss`, rec + mi + beta * tc +
        dw_kl (alpha = gamma = 1), its ``dataset_size`` the number of training sprites
        over all ranks, with ``gather=True`` under DDP.
    estimator : str
        With ``loss="btcvae"``, the minibatch estimator of q(z): ``"mss"`` (minibatch
        stratified sampling) or ``"mws"`` (minibatch weighted sampling); also the
        estimator of the ``tc_probe``.
    beta : float
        KL weight of the beta-VAE loss; with ``loss="btcvae"``, the weight of the total
        correlation.
    dist : str
        Decoder distribution: ``"bernoulli"``, ``"normal"`` or ``"laplace"``.
    batch_size : int
        Images per step and rank.
    latent_dim : int
        Latent dimensions.
    out : pathlib.Path
        Output folder.
    seed : int
        Seed of the model initialisation, the data and the sampling.
    compile : bool
        Run the loss step under ``torch.compile``.
    lr : float
        Adam's learning rate.
    kl_warmup : int
        Steps over which the KL's weight in the optimised objective grows linearly from
        ``beta / kl_warmup`` to ``beta`` (0: none); with ``loss="btcvae"`` the weights of
        mi, tc and dw_kl grow together, by the same factor. The recorded ``loss`` is
        always the loss at the full weights.
    n_train : int
        Training sprites generated per rank.
    n_eval : int
        Held-out sprites for the MIG and the per-dimension KL.
    channels : int
        Convolution channels of the model.
    log_every : int
        Steps between updates of the progress bar (each one reads the losses back).
    check_params : pathlib.Path or None
        If given, each rank saves its final parameters and a checksum of its data shard
        to ``<check_params>.rank<r>.pt``, so that a test can check that every rank ends
        with identical parameters trained on different data.
    figures : bool
        Draw the four figures (``False``: ``run.json`` alone, as a study's runs do).
    quiet : bool
        No progress bar and no printed summary.
    tc_probe : tuple of int
        Batch sizes at which to measure, after training, the bias of the minibatch
        estimate of the total correlation: the held-out sprites' posteriors, one sample
        each, are split into chunks of each size and the mean of the chunks' estimates is
        compared with the estimate over all of them at once (``n_eval`` sprites, through
        :func:`betavae_triton.kl_decomposition`). Sizes of ``n_eval`` or more are skipped;
        empty (the default): no probe.
    bank : int
        With ``loss="btcvae"``, K > 0: the loss keeps the posteriors of the last K training
        images in a bank and scores each sample against it too (``BetaTCVAELoss``'s
        ``bank_size``; estimator "mss"); 0: no bank.
    bank_refresh : int
        With a bank, R > 0: after every update the training loop re-encodes the R
        posteriors of the bank computed longest ago with the updated model and overwrites
        them (:func:`.bank_slots.refresh_bank`; one process); 0: the bank holds what was
        pushed.
    tc_track : int
        Steps between measurements, during training, of the bias of the minibatch TC
        estimate, with and without the bank, against the estimate over every held-out
        sprite at the same step (:class:`.tc_track.TCTracker`; one process, β-TCVAE
        only); 0: none.
    """

    device: str = field(default_factory=default_device)
    # About 3 minutes on a 2-core CPU (~12 steps/s). β = 6: in a sweep of this budget (β 2,
    # 4, 6, 8; KL warm-up; batch 32; lr 5e-4; seed 0, sigmoid decoder) β = 4 learned an
    # entangled code (MIG ≈ 0.04) and β = 6 the most disentangled one (MIG ≈ 0.35). MIG
    # varies a lot from run to run at this budget: see the README for the default run's.
    steps: int = 2000
    loss: str = "betavae"
    estimator: str = "mss"
    beta: float = 6.0
    dist: str = "bernoulli"
    batch_size: int = 64
    latent_dim: int = 10
    out: Path = field(default_factory=lambda: Path("demo-output"))
    seed: int = 0
    compile: bool = True
    lr: float = 1e-3
    kl_warmup: int = 0
    n_train: int = 16384
    n_eval: int = 4096
    channels: int = 32
    log_every: int = 10
    check_params: Path | None = None
    figures: bool = True
    quiet: bool = False
    tc_probe: tuple[int, ...] = ()
    bank: int = 0
    bank_refresh: int = 0
    tc_track: int = 0


# What the command line's defaults become with --loss L, where they differ from DemoConfig's
# (the beta-VAE's): the beta-TCVAE's defaults follow the configuration that the bank's study
# (python -m betavae_triton.demo.study --bank 0 4096 --bank-refresh 0 192 …) chose, "chosen"
# in its study.json; an option given on the command line wins
# (perf/results/study-bank/study.json; tests/test_study.py checks that these are its
# "chosen" for the beta-TCVAE: batch 64 at the same 128,000 images seen, a bank of the last
# 4096 posteriors of which the 192 stalest are re-encoded after every update, a KL warm-up
# over the first quarter of the steps).
LOSS_DEFAULTS: dict[str, dict[str, object]] = {
    "betavae": {},
    "btcvae": {
        "steps": 2000,
        "batch_size": 64,
        "lr": 1e-3,
        "beta": 6.0,
        "kl_warmup": 500,
        "estimator": "mss",
        "bank": 4096,
        "bank_refresh": 192,
    },
}


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a torchrun launch (one process without one).

    Attributes
    ----------
    rank, world_size, local_rank, local_world_size : int
        As torchrun sets them in the environment.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that reports and writes files."""
        return self.rank == 0


def distributed_info(environ: dict[str, str] | None = None) -> DistInfo:
    """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``.

    Parameters
    ----------
    environ : dict of str to str, optional
        The environment; ``os.environ`` by default.

    Returns
    -------
    info : DistInfo
        The single-process defaults for missing variables.
    """
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    return DistInfo(
        rank=int(env.get("RANK", "0")),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
    )
