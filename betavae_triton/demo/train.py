"""The training loop: data, a (possibly distributed, possibly compiled) step, evaluation.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every rank trains its own copy
of the model wrapped in ``DistributedDataParallel`` on its own shard of sprites (the data
generator is seeded with the rank), DDP averages the gradients, and rank 0 alone shows
the progress bar, evaluates and writes the outputs.

``torch.compile`` is applied to the loss step (the forward pass through the, possibly
DDP-wrapped, model, the construction of the decoder and posterior distributions and
:class:`betavae_triton.BetaVAELoss`, or with ``--loss btcvae``
:class:`betavae_triton.BetaTCVAELoss`, which also reads the sample z the decoder was
given and, under DDP, all-gathers the posteriors of the global batch); AOTAutograd
compiles the matching backward, which ``loss.backward()`` runs. In one process the step
is one graph (``fullgraph=True``). Under DDP, Dynamo leaves DDP's own forward (its reducer
bookkeeping) to run eagerly and compiles the wrapped module with its DDP optimiser, which
splits the graph at DDP's gradient buckets so that the all-reduces still overlap the
backward; the loss after it is a second graph. The optimiser step and the evaluation stay
eager.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributions import Bernoulli, Distribution, Laplace, Normal
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import betavae_triton
from betavae_triton import BetaTCVAELoss, BetaVAELoss, kl_decomposition

from . import plots
from .mig import entropy, mig
from .model import ConvVAE
from .sprites import FACTOR_NAMES, Sprites, make_sprites

__all__ = [
    "ESTIMATORS",
    "LOSSES",
    "LOSS_DEFAULTS",
    "DemoConfig",
    "DistInfo",
    "default_device",
    "distributed_info",
    "loss_backend",
    "run",
]

# --loss: the beta-VAE (rec + beta * KL) or the beta-TCVAE (rec + mi + beta * tc + dw_kl).
LOSSES = ("betavae", "btcvae")
# --estimator: the beta-TCVAE's minibatch estimator of q(z) (stratified or weighted sampling).
ESTIMATORS = ("mss", "mws")
LOSS_KEYS = ("loss", "rec_loss", "kl_loss")
# What BetaTCVAELoss adds: the three terms its KL splits into (the KL itself is logged).
TCVAE_KEYS = ("mi_loss", "tc_loss", "dw_kl_loss")
FIGURES = ("reconstructions.png", "traversals.png", "kl_per_dim.png", "loss_curves.png")
# A latent whose KL, averaged over held-out sprites, exceeds this (nats) counts as active.
ACTIVE_KL = 0.1


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


# What the command line's defaults become with --loss L, where they differ from DemoConfig's
# (the beta-VAE's): the beta-TCVAE's defaults follow the configuration that the study
# (python -m betavae_triton.demo.study) chose, "chosen" in its study.json; an option
# given on the command line wins (perf/results/study/study.json; tests/test_study.py checks
# that these are its "chosen" for the beta-TCVAE: batch 256 at the same 128,000 images seen,
# a KL warm-up over the first quarter of the steps).
LOSS_DEFAULTS: dict[str, dict[str, object]] = {
    "betavae": {},
    "btcvae": {
        "steps": 500,
        "batch_size": 256,
        "lr": 1e-3,
        "beta": 6.0,
        "kl_warmup": 125,
        "estimator": "mss",
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


def loss_backend(requested: str, device: torch.device) -> str:
    """The implementation that :class:`betavae_triton.BetaVAELoss` runs on ``device``.

    Derived from the package's documented rule (the README's "Backends" table), not from
    its internals: ``"auto"`` runs the Triton kernels on CUDA tensors when the ``triton``
    package is importable and the eager PyTorch path otherwise; ``"triton"`` and
    ``"eager"`` run what they name (``"triton"`` raises where the kernels cannot run).

    Parameters
    ----------
    requested : {"auto", "triton", "eager"}
        The loss's ``backend`` attribute.
    device : torch.device
        Where the loss's tensors live.

    Returns
    -------
    backend : {"triton", "eager"}
        What computes the loss.

    Raises
    ------
    ValueError
        If ``requested`` names no backend.
    """
    if requested in ("triton", "eager"):
        return requested
    if requested != "auto":
        raise ValueError(f"backend must be 'auto', 'triton' or 'eager', got {requested!r}")
    triton_importable = importlib.util.find_spec("triton") is not None
    return "triton" if device.type == "cuda" and triton_importable else "eager"


def _make_loss(config: DemoConfig, *, kl_per_dim: bool = False) -> BetaVAELoss:
    """The beta-VAE loss: ``config``'s beta and decoder distribution, the automatic backend.
    The training loss of ``--loss betavae``; the evaluation's per-latent KL for both."""
    return BetaVAELoss(
        config.beta, config.dist, backend="auto", validate_args=False, kl_per_dim=kl_per_dim
    )


def _make_train_loss(config: DemoConfig, info: DistInfo) -> BetaVAELoss:
    """The loss that training follows: :func:`_make_loss`'s, or with ``--loss btcvae`` the
    beta-TCVAE loss (alpha = gamma = 1), N = the training sprites of all ranks, and under
    DDP each rank's samples scored against the posteriors of the global batch."""
    if config.loss == "betavae":
        return _make_loss(config)
    return BetaTCVAELoss(
        alpha=1.0,
        beta=config.beta,
        gamma=1.0,
        dataset_size=config.n_train * info.world_size,
        estimator=config.estimator,
        default_dist=config.dist,
        backend="auto",
        gather=info.distributed,
        validate_args=False,
    )


def _loss_keys(loss: str) -> tuple[str, ...]:
    """The losses recorded every step: the beta-VAE's three, plus mi, tc and dw_kl."""
    return LOSS_KEYS + TCVAE_KEYS if loss == "btcvae" else LOSS_KEYS


def _weight_names(loss_fn: BetaVAELoss) -> tuple[str, ...]:
    """The loss's weights of its KL terms: beta (and the beta-TCVAE's alpha and gamma)."""
    return ("alpha", "beta", "gamma") if isinstance(loss_fn, BetaTCVAELoss) else ("beta",)


def _tensor_weights(loss_fn: BetaVAELoss, device: torch.device) -> None:
    """Turn the loss's weights into 0-d tensors on ``device``, for a KL warm-up to update in
    place: the step is compiled with ``dynamic=False``, under which a number that changes
    recompiles it at every new value (and past Dynamo's cache limit runs it eagerly),
    whereas a tensor's value is an input of the graph."""
    for name in _weight_names(loss_fn):
        setattr(loss_fn, name, torch.tensor(float(getattr(loss_fn, name)), device=device))


def _set_weights(loss_fn: BetaVAELoss, beta: float, factor: float) -> None:
    """The KL warm-up's weights for a step: beta (and the beta-TCVAE's alpha = gamma = 1)
    times ``factor``; in place where they are tensors (see :func:`_tensor_weights`)."""
    for name in _weight_names(loss_fn):
        value = (beta if name == "beta" else 1.0) * factor
        weight = getattr(loss_fn, name)
        if isinstance(weight, torch.Tensor):
            weight.fill_(value)
        else:
            setattr(loss_fn, name, value)


def _full_weight_row(out: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """One step's recorded losses (:func:`_loss_keys`' order), ``loss`` at the full
    weights whatever the warm-up's of this step."""
    rec, kl = out["rec_loss"].detach().float(), out["kl_loss"].detach().float()
    if "tc_loss" not in out:
        return torch.stack([rec + beta * kl, rec, kl])
    mi, tc, dw_kl = (out[k].detach().float() for k in TCVAE_KEYS)
    return torch.stack([rec + mi + beta * tc + dw_kl, rec, kl, mi, tc, dw_kl])


def _postfix(keys: tuple[str, ...], row: list[float]) -> dict[str, str]:
    """The progress bar's losses: ``loss``, ``rec``, ``kl`` (and ``mi``, ``tc``, ``dw_kl``)."""
    return {
        k.removesuffix("_loss"): f"{v:.1f}" if k in ("loss", "rec_loss") else f"{v:.2f}"
        for k, v in zip(keys, row, strict=True)
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decoder_distribution(logits: torch.Tensor, name: str) -> Distribution:
    """Wrap the decoder's logits in the distribution that BetaVAELoss reads.

    Bernoulli takes the logits themselves: the loss computes the cross-entropy from them,
    exactly, without forming the sigmoid. Normal and Laplace take the sigmoid as the mean.
    """
    if name == "bernoulli":
        return Bernoulli(logits=logits, validate_args=False)
    p = torch.sigmoid(logits)
    if name == "normal":
        return Normal(p, torch.ones_like(p), validate_args=False)
    return Laplace(p, torch.ones_like(p), validate_args=False)


def _make_loss_step(
    model: torch.nn.Module, loss_fn: BetaVAELoss, dist_name: str
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The step to compile: ``x -> the loss's dict``, whose ``loss`` the optimiser
    follows. The beta-TCVAE loss also reads the sample z that the decoder was given. A KL
    warm-up updates the loss's weights, 0-d tensors then, before each call: one compile
    however often they change."""
    tcvae = isinstance(loss_fn, BetaTCVAELoss)

    def loss_step(x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, mu, scale, z = model(x)
        q = Normal(mu, scale, validate_args=False)
        p = _decoder_distribution(logits, dist_name)
        return loss_fn(x, p, q, z) if tcvae else loss_fn(x, p, q)

    return loss_step


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Yield index batches forever: a fresh permutation every epoch, remainder dropped."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


@torch.no_grad()
def _evaluate(
    model: ConvVAE, data: Sprites, loss_fn: BetaVAELoss, dist_name: str, device: torch.device
) -> dict[str, np.ndarray]:
    """Posterior means and the mean KL of each latent over ``data``, in eager mode.

    Parameters
    ----------
    model : ConvVAE
        The trained model, in eval mode.
    data : Sprites
        The held-out sprites.
    loss_fn : BetaVAELoss
        The run's loss, built with ``kl_per_dim=True``.
    dist_name : str
        The decoder distribution (``--dist``).
    device : torch.device
        Where the model lives.

    Returns
    -------
    evaluation : dict of str to numpy.ndarray
        ``"mu"`` and ``"scale"``, the posterior means (what the MIG reads) and standard
        deviations, shape ``(len(data), latent_dim)`` each; ``"kl_per_dim"``, shape
        ``(latent_dim,)``: the loss's batch-mean KL of each latent, averaged over the
        batches weighted by their sizes, i.e. the mean over all of ``data``; and
        ``"rec_loss"``, 0-d: the reconstruction loss per image, averaged likewise. The
        decoder reads the posterior mean (no sampling); the KL does not depend on it.
    """
    mus, scales = [], []
    kl_sum = torch.zeros(model.latent_dim, dtype=torch.float64)
    rec_sum = 0.0
    for start in range(0, len(data), 512):
        x = data.batch(slice(start, start + 512)).to(device)
        mu, scale = model.encode(x)
        p = _decoder_distribution(model.decode_logits(mu), dist_name)
        out = loss_fn(x, p, Normal(mu, scale, validate_args=False))
        kl_sum += out["kl_per_dim"].double().cpu() * x.shape[0]
        rec_sum += float(out["rec_loss"]) * x.shape[0]
        mus.append(mu.float().cpu())
        scales.append(scale.float().cpu())
    return {
        "mu": torch.cat(mus).numpy(),
        "scale": torch.cat(scales).numpy(),
        "kl_per_dim": (kl_sum / len(data)).numpy(),
        "rec_loss": np.asarray(rec_sum / len(data)),
    }


@torch.no_grad()
def _tc_probe(
    mu: np.ndarray,
    scale: np.ndarray,
    batch_sizes: tuple[int, ...],
    dataset_size: int,
    estimator: str,
    seed: int,
    device: torch.device,
) -> dict:
    """The minibatch estimates of mi, tc and dw_kl at several batch sizes against the
    estimate over the whole evaluation set: the bias of the small-batch estimates.

    One sample ``z ~ q(z|x)`` per held-out sprite (seeded) is scored by
    :func:`betavae_triton.kl_decomposition` against the posteriors of its chunk: for each
    size ``b`` in ``batch_sizes`` (below ``len(mu)``), the chunks of ``b`` consecutive
    sprites (remainder dropped) and the mean of their estimates; and once against all
    ``len(mu)`` posteriors, the large-batch estimate, whose own bias is the smallest.
    float64 on the CPU (cheap there), float32 on CUDA; O(B·D) memory either way.

    Returns
    -------
    probe : dict
        ``estimator``, ``dataset_size``, ``large_batch`` (``len(mu)``), ``large``
        (``{"mi", "tc", "dw_kl"}``, nats) and ``batches``: one dict per probed size,
        ``batch_size``, ``chunks``, the chunk means ``mi``, ``tc``, ``dw_kl``, and
        ``tc_bias`` = ``tc`` minus the large-batch ``tc``.
    """
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    loc = torch.from_numpy(mu).to(device, dtype)
    sd = torch.from_numpy(scale).to(device, dtype)
    noise = torch.randn(loc.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    z = loc + sd * noise.to(device)
    names = ("mi", "tc", "dw_kl")

    def terms(sl: slice) -> torch.Tensor:
        return torch.stack(kl_decomposition(z[sl], loc[sl], sd[sl], dataset_size, estimator))

    n = loc.shape[0]
    large = dict(zip(names, terms(slice(0, n)).tolist(), strict=True))
    batches = []
    for b in sorted({b for b in batch_sizes if 2 <= b < n}):
        chunks = [terms(slice(s, s + b)) for s in range(0, n - b + 1, b)]
        mean = dict(zip(names, torch.stack(chunks).mean(dim=0).tolist(), strict=True))
        batches.append(
            {"batch_size": b, "chunks": len(chunks), **mean, "tc_bias": mean["tc"] - large["tc"]}
        )
    return {
        "estimator": estimator,
        "dataset_size": dataset_size,
        "large_batch": n,
        "large": large,
        "batches": batches,
    }


@torch.no_grad()
def _figures(
    model: ConvVAE,
    eval_data: Sprites,
    mu: np.ndarray,
    kl_per_dim: np.ndarray,
    curves: dict[str, list[float]],
    beta: float,
    out: Path,
    device: torch.device,
    row_notes: list[str],
    kl_warmup: int,
    loss: str,
) -> list[Path]:
    n_show = 16
    inputs = eval_data.batch(slice(0, n_show)).numpy()[:, 0]
    recons = model.decode(torch.from_numpy(mu[:n_show]).to(device)).float().cpu().numpy()[:, 0]
    values = np.linspace(-3.0, 3.0, 9)
    d = mu.shape[1]
    codes = np.repeat(mu[None, None, 0], d, axis=0).repeat(len(values), axis=1)  # (d, v, d)
    for j in range(d):
        codes[j, :, j] = values
    sweep = torch.from_numpy(codes.reshape(-1, d).astype(np.float32)).to(device)
    traversals = model.decode(sweep).float().cpu().numpy().reshape(d, len(values), 64, 64)
    steps = list(range(1, len(curves["loss"]) + 1))
    title = "Latent traversals" + (", β-TCVAE" if loss == "btcvae" else "")
    return [
        plots.plot_reconstructions(inputs, recons, out / FIGURES[0]),
        plots.plot_traversals(
            traversals, values, kl_per_dim, out / FIGURES[1], row_notes, title=title
        ),
        plots.plot_kl_per_dim(kl_per_dim, out / FIGURES[2], ACTIVE_KL),
        plots.plot_loss_curves(steps, curves, beta, out / FIGURES[3], kl_warmup),
    ]


def _data_checksum(data: Sprites) -> str:
    return hashlib.sha256(data.factors.tobytes()).hexdigest()[:16]


def run(config: DemoConfig, info: DistInfo | None = None) -> dict:
    """Train the beta-VAE, evaluate it, write the figures and ``run.json``.

    Parameters
    ----------
    config : DemoConfig
        The run's settings.
    info : DistInfo, optional
        The process's place in a torchrun launch; read from the environment by default.

    Returns
    -------
    summary : dict
        What ``run.json`` holds: ``args`` (the config), ``device``, ``world_size``,
        ``loss_backend``, ``compiled``, versions, ``timings`` (seconds: ``data_s``,
        ``first_step_s``, ``compile_s``, ``steps_per_s``, ``train_s``, and on rank 0
        ``eval_s`` and ``total_s``), ``initial`` and ``final`` (the losses of the first
        and last step on this rank), ``final_mean`` (the losses averaged over the last
        ``final_mean_steps`` steps and over all ranks), ``params_identical_across_ranks``
        (None in one process), ``curves`` (this rank's losses at every step). The losses
        are ``loss``, ``rec_loss`` and ``kl_loss``; with ``loss="btcvae"`` also
        ``mi_loss``, ``tc_loss`` and ``dw_kl_loss``, and a ``tcvae`` entry holds the
        loss's ``alpha``, ``gamma``, ``dataset_size``, ``estimator`` and ``gather``. Rank 0
        alone evaluates, writes the files and adds ``eval_rec_loss`` (the reconstruction
        loss of the held-out sprites at their posterior means, per image), with
        ``config.tc_probe`` a ``tc_probe`` (see :class:`DemoConfig`), ``mig``,
        ``mig_per_factor``, ``factor_entropy``, ``mutual_information`` (nats, one dict per
        latent), ``kl_per_dim``, ``active_dims`` and ``files``.
    """
    t_start = time.perf_counter()
    info = distributed_info() if info is None else info
    device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {config.device!r} asked for, but torch.cuda.is_available() is False"
            )
        if info.distributed:
            if info.local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"rank {info.rank} has LOCAL_RANK {info.local_rank} but this node has "
                    f"only {torch.cuda.device_count()} CUDA device(s): launch at most that "
                    "many processes per node, or use --device cpu"
                )
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if info.distributed:
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=info.rank,
            world_size=info.world_size,
        )
    try:
        return _run(config, info, device, t_start)
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run(config: DemoConfig, info: DistInfo, device: torch.device, t_start: float) -> dict:
    # The model starts the same on every rank (DDP would broadcast rank 0's anyway);
    # the data shard and the reparameterisation noise differ per rank.
    torch.manual_seed(config.seed)
    raw_model = ConvVAE(config.latent_dim, config.channels).to(device)
    model: torch.nn.Module = raw_model
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(raw_model, device_ids=ids)
    torch.manual_seed(config.seed * 1000 + info.rank + 1)

    t0 = time.perf_counter()
    train = make_sprites(config.n_train, seed=[config.seed, info.rank, 0])
    images = train.images.to(device)
    eval_data = make_sprites(config.n_eval, seed=[config.seed, 0, 1]) if info.main else None
    data_s = time.perf_counter() - t0

    loss_fn = _make_train_loss(config, info)
    if config.kl_warmup > 0:
        _tensor_weights(loss_fn, device)
    keys = _loss_keys(config.loss)
    step_fn = _make_loss_step(model, loss_fn, config.dist)
    if config.compile:
        # DDP's forward cannot be traced (Dynamo breaks the graph there on purpose, see
        # the module docstring), so fullgraph only without it.
        step_fn = torch.compile(step_fn, fullgraph=not info.distributed, dynamic=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = _batches(
        config.n_train,
        config.batch_size,
        torch.Generator().manual_seed(config.seed * 1000 + info.rank),
    )

    history = torch.zeros(config.steps, len(keys), device=device)
    bar = tqdm(
        total=config.steps,
        desc="training",
        disable=config.quiet or not info.main,
        dynamic_ncols=True,
    )
    step_times: list[float] = []
    t_train = time.perf_counter()
    for step in range(config.steps):
        t_step = time.perf_counter()
        x = images[next(sampler).to(device)].float()
        # KL warm-up (Bowman et al., 2016): β grows linearly from beta / kl_warmup to beta
        # over the first kl_warmup steps, then stays: the beta-VAE loss proper.
        _set_weights(loss_fn, config.beta, min(1.0, (step + 1) / max(config.kl_warmup, 1)))
        out = step_fn(x)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        history[step] = _full_weight_row(out, config.beta)
        if step == 0 or (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            last = history[step].tolist()  # the one read-back: syncs with the device
            bar.set_postfix(_postfix(keys, last))
        if step == 0:
            _sync(device)
        step_times.append(time.perf_counter() - t_step)
        bar.update(1)
    _sync(device)
    train_s = time.perf_counter() - t_train
    bar.close()

    curves_t = history.cpu()
    last_k = min(50, config.steps)
    final_avg = curves_t[-last_k:].mean(dim=0).to(device)
    if info.distributed:
        dist.all_reduce(final_avg)
        final_avg /= info.world_size
    params_identical = _compare_ranks(raw_model, info)
    if config.check_params is not None:
        _save_params(raw_model, train, info, config.check_params)

    later = step_times[1:]
    mean_step = statistics.fmean(later) if later else None
    summary: dict = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "device": str(device),
        "world_size": info.world_size,
        "loss_backend": loss_backend(loss_fn.backend, device),
        "compiled": config.compile,
        "torch_version": torch.__version__,
        "betavae_triton_version": betavae_triton.__version__,
        "python_version": platform.python_version(),
        "timings": {
            "data_s": data_s,
            "first_step_s": step_times[0],
            # The first step's extra time: compilation (None when eager).
            "compile_s": max(step_times[0] - (mean_step or 0.0), 0.0) if config.compile else None,
            "steps_per_s": 1.0 / mean_step if mean_step else None,
            "train_s": train_s,
        },
        "initial": dict(zip(keys, curves_t[0].tolist(), strict=True)),
        "final": dict(zip(keys, curves_t[-1].tolist(), strict=True)),
        "final_mean": dict(zip(keys, final_avg.cpu().tolist(), strict=True)),
        "final_mean_steps": last_k,
        "params_identical_across_ranks": params_identical,
        "curves": {k: curves_t[:, i].tolist() for i, k in enumerate(keys)},
    }
    if isinstance(loss_fn, BetaTCVAELoss):
        summary["tcvae"] = {
            "alpha": 1.0,
            "gamma": 1.0,
            "dataset_size": loss_fn.dataset_size,
            "estimator": loss_fn.estimator,
            "gather": loss_fn.gather,
        }
    if info.main:
        assert eval_data is not None
        summary.update(_report(raw_model, eval_data, summary, config, device, t_start))
    return summary


def _compare_ranks(model: torch.nn.Module, info: DistInfo) -> bool | None:
    """Gather every rank's flattened parameters and compare them (None: one process)."""
    if not info.distributed:
        return None
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def _save_params(model: torch.nn.Module, data: Sprites, info: DistInfo, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "rank": info.rank,
            "world_size": info.world_size,
            "data_checksum": _data_checksum(data),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path.with_name(f"{path.name}.rank{info.rank}.pt"),
    )


def _report(
    model: ConvVAE,
    eval_data: Sprites,
    summary: dict,
    config: DemoConfig,
    device: torch.device,
    t_start: float,
) -> dict:
    """Evaluate on held-out sprites, draw the figures, write ``run.json``, print a summary."""
    t0 = time.perf_counter()
    model.eval()
    ev = _evaluate(model, eval_data, _make_loss(config, kl_per_dim=True), config.dist, device)
    kl_per_dim = ev["kl_per_dim"]
    score, per_factor, mi = mig(ev["mu"], eval_data.factors)
    # Each latent's best-known factor, as the share of that factor's entropy it holds.
    h = np.array([entropy(eval_data.factors[:, k]) for k in range(len(FACTOR_NAMES))])
    share = mi / np.where(h > 0, h, 1.0)
    notes = [
        f"{FACTOR_NAMES[k]} {share[j, k]:.2f}" if kl_per_dim[j] > ACTIVE_KL else "inactive"
        for j, k in enumerate(share.argmax(axis=1))
    ]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if config.figures:
        files = _figures(
            model,
            eval_data,
            ev["mu"],
            kl_per_dim,
            summary["curves"],
            config.beta,
            out,
            device,
            notes,
            config.kl_warmup,
            config.loss,
        )
    report: dict = {}
    if config.tc_probe:
        dataset_size = config.n_train * summary["world_size"]
        report["tc_probe"] = _tc_probe(
            ev["mu"],
            ev["scale"],
            config.tc_probe,
            dataset_size,
            config.estimator,
            config.seed,
            device,
        )
    eval_s = time.perf_counter() - t0
    report = {
        "eval_rec_loss": float(ev["rec_loss"]),
        **report,
        "mig": score,
        "mig_per_factor": dict(zip(FACTOR_NAMES, per_factor.tolist(), strict=True)),
        "factor_entropy": dict(zip(FACTOR_NAMES, h.tolist(), strict=True)),
        "mutual_information": [dict(zip(FACTOR_NAMES, row, strict=True)) for row in mi.tolist()],
        "kl_per_dim": kl_per_dim.tolist(),
        "active_dims": int((kl_per_dim > ACTIVE_KL).sum()),
        "files": [str(f) for f in (*files, out / "run.json")],
    }
    timings = summary["timings"]
    timings["eval_s"] = eval_s
    timings["total_s"] = time.perf_counter() - t_start
    # Written whole, then renamed: a run.json that exists is complete.
    partial = out / "run.json.partial"
    partial.write_text(json.dumps({**summary, **report}, indent=2) + "\n")
    partial.replace(out / "run.json")
    if config.quiet:
        return report

    final = summary["final_mean"]
    sps = timings["steps_per_s"]
    per = ", ".join(f"{k} {v:.3f}" for k, v in report["mig_per_factor"].items())
    terms = "".join(f", {k.removesuffix('_loss')} {final[k]:.2f}" for k in TCVAE_KEYS if k in final)
    lines = [
        f"final loss {final['loss']:.2f} (rec {final['rec_loss']:.2f}, "
        f"kl {final['kl_loss']:.2f}{terms}; mean of the last {summary['final_mean_steps']} "
        "steps); "
        f"first step {summary['initial']['loss']:.2f}",
        f"{config.steps} steps on {summary['device']} x{summary['world_size']} in "
        f"{timings['train_s']:.1f} s ("
        + (f"compile {timings['compile_s']:.1f} s, " if config.compile else "not compiled, ")
        + (f"{sps:.2f} steps/s" if sps else "n/a steps/s")
        + f"); total {timings['total_s']:.1f} s",
        f"active latent dims (KL > {ACTIVE_KL:g}): {report['active_dims']} of {config.latent_dim}",
        f"MIG: {score:.4f}  ({per})",
        f"wrote {', '.join(Path(f).name for f in report['files'])} to {out.resolve()}",
    ]
    print("\n".join(lines), file=sys.stdout, flush=True)
    return report
