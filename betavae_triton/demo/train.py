"""The training loop of a demo run: :func:`run` sets up the device and DDP, trains the model
in a (possibly distributed, possibly compiled) step and hands rank 0's model to
:func:`.report.report`.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every rank trains its own copy
of the model wrapped in ``DistributedDataParallel`` on its own shard of sprites (the data
generator is seeded with the rank), DDP averages the gradients, and rank 0 alone shows
the progress bar, evaluates and writes the outputs.

``torch.compile`` is applied to the loss step (:func:`.losses.make_loss_step`: the forward
pass through the, possibly DDP-wrapped, model, the construction of the decoder and
posterior distributions and :class:`betavae_triton.BetaVAELoss`, or with ``--loss
btcvae`` :class:`betavae_triton.BetaTCVAELoss`, which also reads the sample z the decoder
was given and, under DDP, all-gathers the posteriors of the global batch); AOTAutograd
compiles the matching backward, which ``loss.backward()`` runs. In one process the step
is one graph (``fullgraph=True``). Under DDP, Dynamo leaves DDP's own forward (its reducer
bookkeeping) to run eagerly and compiles the wrapped module with its DDP optimiser, which
splits the graph at DDP's gradient buckets so that the all-reduces still overlap the
backward; the loss after it is a second graph. The optimiser step and the evaluation stay
eager.

The settings are :mod:`.config`'s, the losses and the KL warm-up :mod:`.losses`', the
evaluation :mod:`.evaluate`'s, and the progress bar, the files and the printed summary
:mod:`.report`'s.
"""

from __future__ import annotations

import hashlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import betavae_triton
from betavae_triton import BetaTCVAELoss, BetaVAELoss, resolved_backend

from .bank_slots import BankSlots, refresh_bank
from .config import DemoConfig, DistInfo, distributed_info
from .losses import (
    full_weight_row,
    loss_keys,
    make_loss_step,
    make_train_loss,
    set_weights,
    tensor_weights,
)
from .model import ConvVAE
from .report import loss_postfix, progress_bar, report
from .sprites import Sprites, make_sprites
from .tc_track import TCTracker

__all__ = ["Training", "run"]


@dataclass(frozen=True)
class Training:
    """What the training loop leaves: the losses of every step and the time it took.

    Attributes
    ----------
    history : torch.Tensor
        Shape ``(steps, len(loss_keys))``, on the CPU: each step's losses at the full
        weights (:func:`.losses.full_weight_row`).
    step_times : list of float
        Seconds per step, the first one's including its compilation.
    train_s : float
        Seconds of the whole loop.
    """

    history: torch.Tensor
    step_times: list[float]
    train_s: float


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
    device = _device(config, info)
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


def _device(config: DemoConfig, info: DistInfo) -> torch.device:
    """The run's device, made current: ``config.device``, or under torchrun on CUDA
    ``cuda:LOCAL_RANK``; a ``RuntimeError`` where the CUDA device asked for is absent."""
    device = torch.device(config.device)
    if device.type != "cuda":
        return device
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
    return device


def _run(config: DemoConfig, info: DistInfo, device: torch.device, t_start: float) -> dict:
    """Build the model and the data, train, gather the ranks' results, report on rank 0."""
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

    loss_fn = make_train_loss(config, info)
    slots = _bank_slots(config, info)
    tracker = _tracker(config, info, eval_data, images, loss_fn, slots)
    training = _train(config, info, model, loss_fn, images, device, slots, tracker)
    keys = loss_keys(config.loss)
    last_k = min(50, config.steps)
    final_mean = _mean_over_ranks(training.history[-last_k:], info, device)
    params_identical = _compare_ranks(raw_model, info)
    if config.check_params is not None:
        _save_params(raw_model, train, info, config.check_params)
    summary = {
        **_summary(config, info, device, loss_fn, training, data_s),
        "final_mean": dict(zip(keys, final_mean, strict=True)),
        "final_mean_steps": last_k,
        "params_identical_across_ranks": params_identical,
        "curves": {k: training.history[:, i].tolist() for i, k in enumerate(keys)},
    }
    if isinstance(loss_fn, BetaTCVAELoss):
        summary["tcvae"] = {
            "alpha": 1.0,
            "gamma": 1.0,
            "dataset_size": loss_fn.dataset_size,
            "estimator": loss_fn.estimator,
            "gather": loss_fn.gather,
            "bank_size": config.bank,
            "bank_refresh": config.bank_refresh,
        }
    if tracker is not None:
        summary["tc_track"] = tracker.record()
    if info.main:
        assert eval_data is not None
        summary.update(report(raw_model, eval_data, summary, config, device, t_start))
    return summary


def _bank_slots(config: DemoConfig, info: DistInfo) -> BankSlots | None:
    """The mirror of the loss's bank that tracking and refreshing read (None where neither
    is asked for); a ``ValueError`` for a refresh under several processes (each rank's bank
    holds the global batch's posteriors, a rank has its own sprites only)."""
    if not config.bank or not (config.tc_track or config.bank_refresh):
        return None
    if config.bank_refresh and info.distributed:
        raise ValueError("--bank-refresh re-encodes the bank's sprites in one process only")
    return BankSlots(config.bank)


def _tracker(
    config: DemoConfig,
    info: DistInfo,
    eval_data: Sprites | None,
    images: torch.Tensor,
    loss_fn: BetaVAELoss,
    slots: BankSlots | None,
) -> TCTracker | None:
    """The TC bias tracker of ``config.tc_track`` (None without it); a ``ValueError`` where
    it cannot measure: the β-VAE, or several processes (each rank's bank is the global
    batch's, its tracker knows its own images only)."""
    if not config.tc_track:
        return None
    if not isinstance(loss_fn, BetaTCVAELoss) or info.distributed:
        raise ValueError("--tc-track measures the beta-TCVAE's estimate in one process")
    assert eval_data is not None
    return TCTracker(
        every=config.tc_track,
        eval_images=eval_data.images.to(images.device),
        train_images=images,
        batch_size=config.batch_size,
        dataset_size=loss_fn.dataset_size,
        slots=slots,
        seed=config.seed,
    )


def _loss_step(
    config: DemoConfig, info: DistInfo, model: torch.nn.Module, loss_fn: BetaVAELoss
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The step that training calls: :func:`.losses.make_loss_step`'s, compiled with
    ``config.compile``."""
    step_fn = make_loss_step(model, loss_fn, config.dist)
    if config.compile:
        # DDP's forward cannot be traced (Dynamo breaks the graph there on purpose, see
        # the module docstring), so fullgraph only without it.
        step_fn = torch.compile(step_fn, fullgraph=not info.distributed, dynamic=False)
    return step_fn


def _train(
    config: DemoConfig,
    info: DistInfo,
    model: torch.nn.Module,
    loss_fn: BetaVAELoss,
    images: torch.Tensor,
    device: torch.device,
    slots: BankSlots | None = None,
    tracker: TCTracker | None = None,
) -> Training:
    """The training loop: ``config.steps`` Adam steps on batches of ``images``, the KL
    warm-up's weights set before each, the losses read back every ``log_every`` steps,
    after each update the bank's ``slots`` followed and ``config.bank_refresh`` of them
    re-encoded (in the step times), the ``tracker``'s measurements after the steps it asks
    for (not in the step times)."""
    if config.kl_warmup > 0:
        tensor_weights(loss_fn, device)
    keys = loss_keys(config.loss)
    step_fn = _loss_step(config, info, model, loss_fn)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed * 1000 + info.rank)
    sampler = _batches(config.n_train, config.batch_size, generator)
    history = torch.zeros(config.steps, len(keys), device=device)
    bar = progress_bar(config.steps, disable=config.quiet or not info.main)
    step_times: list[float] = []
    t_train = time.perf_counter()
    for step in range(config.steps):
        t_step = time.perf_counter()
        index = next(sampler)
        x = images[index.to(device)].float()
        # KL warm-up (Bowman et al., 2016): β grows linearly from beta / kl_warmup to beta
        # over the first kl_warmup steps, then stays: the beta-VAE loss proper.
        set_weights(loss_fn, config.beta, min(1.0, (step + 1) / max(config.kl_warmup, 1)))
        out = step_fn(x)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        history[step] = full_weight_row(out, config.beta)
        if slots is not None:
            slots.push(step, index)
            if config.bank_refresh:
                refresh_bank(loss_fn, slots, model, images, config.bank_refresh, step)
        if step == 0 or (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            last = history[step].tolist()  # the one read-back: syncs with the device
            bar.set_postfix(loss_postfix(keys, last))
        if step == 0:
            _sync(device)
        step_times.append(time.perf_counter() - t_step)
        bar.update(1)
        if tracker is not None:
            if tracker.due(step, config.steps):
                tracker.measure(step, model, loss_fn)
    _sync(device)
    train_s = time.perf_counter() - t_train
    bar.close()
    return Training(history.cpu(), step_times, train_s)


def _summary(
    config: DemoConfig,
    info: DistInfo,
    device: torch.device,
    loss_fn: BetaVAELoss,
    training: Training,
    data_s: float,
) -> dict:
    """The head of ``run.json``: the settings, where and how the run ran, the versions, the
    timings and the first and last step's losses."""
    step_times = training.step_times
    later = step_times[1:]
    mean_step = statistics.fmean(later) if later else None
    keys = loss_keys(config.loss)
    return {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "device": str(device),
        "world_size": info.world_size,
        "loss_backend": resolved_backend(loss_fn.backend, device),
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
            "train_s": training.train_s,
        },
        "initial": dict(zip(keys, training.history[0].tolist(), strict=True)),
        "final": dict(zip(keys, training.history[-1].tolist(), strict=True)),
    }


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield index batches forever: a fresh permutation every epoch, remainder dropped."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


def _sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA; nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mean_over_ranks(rows: torch.Tensor, info: DistInfo, device: torch.device) -> list[float]:
    """The mean of ``rows`` (the last steps' losses) over the steps and over all ranks."""
    mean = rows.mean(dim=0).to(device)
    if info.distributed:
        dist.all_reduce(mean)
        mean /= info.world_size
    return mean.cpu().tolist()


def _compare_ranks(model: torch.nn.Module, info: DistInfo) -> bool | None:
    """Gather every rank's flattened parameters and compare them (None: one process)."""
    if not info.distributed:
        return None
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def _save_params(model: torch.nn.Module, data: Sprites, info: DistInfo, path: Path) -> None:
    """Save this rank's final parameters and its data shard's checksum to
    ``<path>.rank<r>.pt`` (``--check-params``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "rank": info.rank,
            "world_size": info.world_size,
            "data_checksum": hashlib.sha256(data.factors.tobytes()).hexdigest()[:16],
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path.with_name(f"{path.name}.rank{info.rank}.pt"),
    )
