"""What a demo run shows and writes: the progress bar while it trains, and what rank 0
does once training ends: evaluate, draw, write ``run.json``, print.

:func:`progress_bar` and :func:`loss_postfix` are the training's progress bar and the
losses it shows. :func:`report` evaluates the model on the held-out sprites
(:mod:`.evaluate`: the MIG, the KL of each latent, the reconstruction loss and, if asked,
the TC probe), draws the four figures (:data:`FIGURES`, through :mod:`.plots`), writes
``run.json`` whole (:func:`.files.write_json`) and prints a summary of the run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import plots
from .config import DemoConfig
from .evaluate import ACTIVE_KL, evaluate, score_latents, tc_probe
from .files import write_json
from .losses import TCVAE_KEYS, make_loss
from .model import ConvVAE
from .sprites import FACTOR_NAMES, Sprites

__all__ = ["FIGURES", "loss_postfix", "progress_bar", "report"]

FIGURES = ("reconstructions.png", "traversals.png", "kl_per_dim.png", "loss_curves.png")


def progress_bar(total: int, *, disable: bool) -> tqdm:
    """The training's progress bar over ``total`` steps (``disable``: none shown)."""
    return tqdm(total=total, desc="training", disable=disable, dynamic_ncols=True)


def loss_postfix(keys: tuple[str, ...], row: list[float]) -> dict[str, str]:
    """The progress bar's losses: ``loss``, ``rec``, ``kl`` (and ``mi``, ``tc``, ``dw_kl``)."""
    return {
        k.removesuffix("_loss"): f"{v:.1f}" if k in ("loss", "rec_loss") else f"{v:.2f}"
        for k, v in zip(keys, row, strict=True)
    }


def report(
    model: ConvVAE,
    eval_data: Sprites,
    summary: dict,
    config: DemoConfig,
    device: torch.device,
    t_start: float,
) -> dict:
    """Evaluate on held-out sprites, draw the figures, write ``run.json``, print a summary.

    Parameters
    ----------
    model : ConvVAE
        The trained model (the one DDP wraps, if any); set to eval mode here.
    eval_data : Sprites
        The held-out sprites.
    summary : dict
        What training recorded (:func:`.train.run`'s summary so far); its ``timings``
        gain ``eval_s`` and ``total_s``.
    config : DemoConfig
        The run's settings.
    device : torch.device
        Where the model lives.
    t_start : float
        ``time.perf_counter()`` at the start of the run, for ``total_s``.

    Returns
    -------
    report : dict
        What ``run.json`` adds to ``summary`` (see :func:`.train.run`).
    """
    t0 = time.perf_counter()
    model.eval()
    ev = evaluate(model, eval_data, make_loss(config, kl_per_dim=True), config.dist, device)
    scores = score_latents(ev["mu"], ev["kl_per_dim"], eval_data.factors)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if config.figures:
        files = _figures(model, eval_data, ev, scores["notes"], summary, config, device)
    probe = _probe(ev, summary["world_size"], config, device)
    timings = summary["timings"]
    timings["eval_s"] = time.perf_counter() - t0
    result = _results(ev, scores, probe, [*files, out / "run.json"])
    timings["total_s"] = time.perf_counter() - t_start
    write_json(out / "run.json", {**summary, **result})
    if not config.quiet:
        print(_summary_text(summary, result, config, out), file=sys.stdout, flush=True)
    return result


def _probe(ev: dict, world_size: int, config: DemoConfig, device: torch.device) -> dict:
    """``{"tc_probe": ...}`` (:func:`.evaluate.tc_probe` at ``config.tc_probe``'s sizes,
    N the training sprites of all ranks), or nothing without sizes to probe."""
    if not config.tc_probe:
        return {}
    dataset_size = config.n_train * world_size
    return {
        "tc_probe": tc_probe(
            ev["mu"],
            ev["scale"],
            config.tc_probe,
            dataset_size,
            config.estimator,
            config.seed,
            device,
        )
    }


def _results(ev: dict, scores: dict, probe: dict, files: list[Path]) -> dict:
    """The evaluation's entries of ``run.json``, in their order there."""
    kl_per_dim = ev["kl_per_dim"]
    return {
        "eval_rec_loss": float(ev["rec_loss"]),
        **probe,
        "mig": scores["mig"],
        "mig_per_factor": dict(zip(FACTOR_NAMES, scores["mig_per_factor"].tolist(), strict=True)),
        "factor_entropy": dict(zip(FACTOR_NAMES, scores["factor_entropy"].tolist(), strict=True)),
        "mutual_information": [
            dict(zip(FACTOR_NAMES, row, strict=True))
            for row in scores["mutual_information"].tolist()
        ],
        "kl_per_dim": kl_per_dim.tolist(),
        "active_dims": int((kl_per_dim > ACTIVE_KL).sum()),
        "files": [str(f) for f in files],
    }


@torch.no_grad()
def _figures(
    model: ConvVAE,
    eval_data: Sprites,
    ev: dict,
    notes: list[str],
    summary: dict,
    config: DemoConfig,
    device: torch.device,
) -> list[Path]:
    """Draw :data:`FIGURES` into ``config.out``: reconstructions of the first 16 held-out
    sprites, traversals of each latent from the first one's code, the KL of each latent
    and the training curves."""
    n_show, out, mu = 16, Path(config.out), ev["mu"]
    inputs = eval_data.batch(slice(0, n_show)).numpy()[:, 0]
    recons = model.decode(torch.from_numpy(mu[:n_show]).to(device)).float().cpu().numpy()[:, 0]
    values = np.linspace(-3.0, 3.0, 9)
    d = mu.shape[1]
    codes = np.repeat(mu[None, None, 0], d, axis=0).repeat(len(values), axis=1)  # (d, v, d)
    for j in range(d):
        codes[j, :, j] = values
    sweep = torch.from_numpy(codes.reshape(-1, d).astype(np.float32)).to(device)
    traversals = model.decode(sweep).float().cpu().numpy().reshape(d, len(values), 64, 64)
    curves = summary["curves"]
    steps = list(range(1, len(curves["loss"]) + 1))
    title = "Latent traversals" + (", β-TCVAE" if config.loss == "btcvae" else "")
    return [
        plots.plot_reconstructions(inputs, recons, out / FIGURES[0]),
        plots.plot_traversals(
            traversals, values, ev["kl_per_dim"], out / FIGURES[1], notes, title=title
        ),
        plots.plot_kl_per_dim(ev["kl_per_dim"], out / FIGURES[2], ACTIVE_KL),
        plots.plot_loss_curves(steps, curves, config.beta, out / FIGURES[3], config.kl_warmup),
    ]


def _summary_text(summary: dict, result: dict, config: DemoConfig, out: Path) -> str:
    """The lines printed at the end of a run: the final losses, the timings, the active
    latents, the MIG and the files written."""
    final, timings = summary["final_mean"], summary["timings"]
    sps = timings["steps_per_s"]
    per = ", ".join(f"{k} {v:.3f}" for k, v in result["mig_per_factor"].items())
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
        f"active latent dims (KL > {ACTIVE_KL:g}): {result['active_dims']} of {config.latent_dim}",
        f"MIG: {result['mig']:.4f}  ({per})",
        f"wrote {', '.join(Path(f).name for f in result['files'])} to {out.resolve()}",
    ]
    return "\n".join(lines)
