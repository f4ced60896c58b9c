"""β-VAE against β-TCVAE on the demo's sprites: a study that can be rerun and resumed.

``python -m betavae_triton.demo.study [options]`` trains the demo's model
(:func:`betavae_triton.demo.run`) with both losses over a small grid: the batch size at an
equal number of images seen, the weight β (of the KL, or of the β-TCVAE's total
correlation), a KL warm-up (a fraction of the run's steps) and, for the β-TCVAE, the
minibatch estimator of q(z) (``mss`` or ``mws``). The protocol:

1. ``select``: every grid point on the selection seeds (0-4 by default); for each loss
   separately, the point with the best median MIG is *chosen*.
2. ``heldout``: each loss's chosen point on the held-out seeds (5-14 by default), never
   looked at during the selection: median and interquartile range of the MIG, active
   units, reconstruction, with images seen and wall time.

Each finished run is one JSON record, ``<out>/runs/<key>.json`` (``--out``: by default
``demo-output/study`` in the current folder, beside the demo's output), its key readable and
ending in a hash of everything that defines the run (grid point, seed, budget); a rerun
skips the runs whose record exists, so an interrupted study resumes where it stopped.
From the records it writes ``study.json`` and ``study.md`` (one table each way, with a
``chosen`` entry per loss: the demo's settings, the keys of
:data:`betavae_triton.demo.train.LOSS_DEFAULTS`), ``mig_vs_batch.png`` (MIG against
batch size per loss, median and IQR over seeds) and ``tc_bias.png`` (the minibatch
estimate of the total correlation minus the large-batch estimate of the same model's
q(z), against the minibatch size: the ``tc_probe`` of each run). ``--report-only``
rebuilds these from the records that the given options name; ``--quick`` runs four tiny
runs (one grid point per loss, one selection seed and one held-out seed) for the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ._extras import demo_extras

with demo_extras("python -m betavae_triton.demo.study", entry_point=__name__ == "__main__"):
    import numpy as np
    from tqdm import tqdm

    from . import plots
    from .train import ESTIMATORS, LOSS_DEFAULTS, LOSSES, DemoConfig, DistInfo, run

__all__ = [
    "PRESETS",
    "Budget",
    "GridPoint",
    "Study",
    "main",
    "parse_study",
    "readme_block",
    "run_study",
    "splice_readme",
]

# --grid: the default grid ("paper": batch size, warm-up and estimator, the levers that the
# paper and the demo's first runs point at) and a smaller one for a tighter budget.
PRESETS: dict[str, dict[str, tuple]] = {
    "paper": {
        "batch_sizes": (64, 256, 1024),
        "betas": (6.0,),
        "warmups": (0.0, 0.25),
        "estimators": ("mss", "mws"),
    },
    "small": {
        "batch_sizes": (64, 256, 1024),
        "betas": (6.0,),
        "warmups": (0.25,),
        "estimators": ("mss",),
    },
}
# --quick: the tiny sizes of the demo's own tests (tests/test_demo.py), eager.
QUICK = {
    "grid": {"batch_sizes": (16,), "betas": (6.0,), "warmups": (0.0,), "estimators": ("mss",)},
    "seeds_select": (0,),
    "seeds_heldout": (1,),
    "budget": {
        "images": 12 * 16,
        "lr": 1e-2,
        "n_train": 256,
        "n_eval": 256,
        "latent_dim": 4,
        "channels": 8,
        "compile": False,
        "tc_probe": (16, 64),
    },
}
# The minibatch sizes at which every run measures the bias of the total correlation's
# estimate (with the grid's batch sizes; those of n_eval sprites or more are skipped).
TC_PROBE = (16, 64, 256, 1024)
# Curves kept in a record: at most this many points, evenly spaced over the steps.
CURVE_POINTS = 250
FILES = ("study.json", "study.md", "mig_vs_batch.png", "tc_bias.png")
# --out: beside the demo's own output (DemoConfig.out), relative to the current folder.
DEFAULT_OUT = Path("demo-output") / "study"
# --readme: the block of a markdown file that holds study.md (its title dropped, its
# headings two levels down, its pictures' paths made relative to that file).
README_BEGIN = "<!-- study.md begins: python -m betavae_triton.demo.study --readme FILE -->"
README_END = "<!-- study.md ends -->"


@dataclass(frozen=True)
class GridPoint:
    """One setting of the grid.

    Attributes
    ----------
    loss : str
        ``"betavae"`` or ``"btcvae"``.
    batch_size : int
        Training batch size.
    beta : float
        The KL weight (β-VAE) or the total correlation's weight (β-TCVAE).
    warmup : float
        The KL warm-up's length as a fraction of the run's steps (0: none).
    estimator : str
        The β-TCVAE's estimator of q(z) (``"mss"`` for the β-VAE, where it names only the
        estimator of the ``tc_probe``).
    """

    loss: str
    batch_size: int
    beta: float
    warmup: float
    estimator: str

    def label(self) -> str:
        """A short readable name, e.g. ``btcvae_b256_beta6_w0.25_mws``."""
        return f"{self.loss}_b{self.batch_size}_beta{self.beta:g}_w{self.warmup:g}_{self.estimator}"


@dataclass(frozen=True)
class Budget:
    """What every run of the study shares.

    Attributes
    ----------
    images : int
        Training images seen per run: ``images // batch_size`` steps.
    lr : float
        Adam's learning rate.
    n_train, n_eval, latent_dim, channels : int
        As in :class:`betavae_triton.demo.DemoConfig`.
    compile : bool
        Run the loss step under ``torch.compile``.
    device : str
        The device of every run.
    tc_probe : tuple of int
        The minibatch sizes of the bias measurement (see ``DemoConfig.tc_probe``).
    """

    images: int = 2000 * 64
    lr: float = 1e-3
    n_train: int = 16384
    n_eval: int = 4096
    latent_dim: int = 10
    channels: int = 32
    compile: bool = True
    device: str = "cpu"
    tc_probe: tuple[int, ...] = TC_PROBE

    def steps(self, batch_size: int) -> int:
        """Training steps at ``batch_size`` for :attr:`images` images (at least 1)."""
        return max(1, self.images // batch_size)


@dataclass(frozen=True)
class Study:
    """The grid, the seeds and the budget of a study, and where it writes.

    Attributes
    ----------
    grid : tuple of GridPoint
        Every setting tried in the selection, in order (a tie goes to the first).
    seeds_select, seeds_heldout : tuple of int
        The seeds of each phase.
    budget : Budget
        What every run shares.
    out : pathlib.Path
        The study's folder: ``runs/`` holds the records, the report sits beside it.
    """

    grid: tuple[GridPoint, ...]
    seeds_select: tuple[int, ...]
    seeds_heldout: tuple[int, ...]
    budget: Budget
    out: Path

    @property
    def runs_dir(self) -> Path:
        """Where the records are."""
        return self.out / "runs"


def make_grid(
    losses: Iterable[str],
    batch_sizes: Iterable[int],
    betas: Iterable[float],
    warmups: Iterable[float],
    estimators: Iterable[str],
) -> tuple[GridPoint, ...]:
    """The product grid, per loss; the β-VAE does not vary the estimator (it has none).

    Parameters
    ----------
    losses, batch_sizes, betas, warmups, estimators : iterable
        The axes (warm-ups as fractions of the run's steps).

    Returns
    -------
    grid : tuple of GridPoint
        Loss-major, then batch size, β, warm-up and estimator, in the order given.
    """
    points = []
    for loss in losses:
        ests = tuple(estimators) if loss == "btcvae" else ("mss",)
        for b in batch_sizes:
            for beta in betas:
                for w in warmups:
                    points.extend(GridPoint(loss, b, float(beta), float(w), e) for e in ests)
    return tuple(dict.fromkeys(points))


def run_key(point: GridPoint, seed: int, budget: Budget) -> str:
    """The stable name of a run's record: its label, its seed and a hash of all of it.

    Parameters
    ----------
    point : GridPoint
        The setting.
    seed : int
        The run's seed.
    budget : Budget
        The shared settings (a different budget is a different run).

    Returns
    -------
    key : str
        E.g. ``btcvae_b64_beta6_w0_mss_s3_1a2b3c4d5e``: the same for the same run in every
        process and on every machine.
    """
    spec = {"point": asdict(point), "seed": seed, "budget": asdict(budget)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{point.label()}_s{seed}_{digest}"


def demo_config(point: GridPoint, seed: int, budget: Budget, out: Path) -> DemoConfig:
    """The demo's settings for one run: no figures, quiet, with the TC probe.

    Parameters
    ----------
    point : GridPoint
        The setting.
    seed : int
        The run's seed (model, data and noise).
    budget : Budget
        The shared settings.
    out : pathlib.Path
        Where the demo writes the run's ``run.json``.

    Returns
    -------
    config : DemoConfig
        ``steps = budget.images // batch_size``, ``kl_warmup`` the warm-up fraction of them.
    """
    steps = budget.steps(point.batch_size)
    return DemoConfig(
        device=budget.device,
        steps=steps,
        loss=point.loss,
        estimator=point.estimator,
        beta=point.beta,
        batch_size=point.batch_size,
        latent_dim=budget.latent_dim,
        out=out,
        seed=seed,
        compile=budget.compile,
        lr=budget.lr,
        kl_warmup=round(point.warmup * steps),
        n_train=budget.n_train,
        n_eval=budget.n_eval,
        channels=budget.channels,
        figures=False,
        quiet=True,
        tc_probe=tuple(sorted({*budget.tc_probe, point.batch_size})),
    )


def chosen_settings(point: GridPoint, budget: Budget) -> dict:
    """A chosen point as the demo's command-line settings (the keys of ``LOSS_DEFAULTS``)."""
    config = demo_config(point, 0, budget, Path())
    return {key: getattr(config, key) for key in LOSS_DEFAULTS["btcvae"]}


def _subsample(curves: dict[str, list[float]]) -> tuple[list[int], dict[str, list[float]]]:
    n = len(next(iter(curves.values())))
    idx = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).round().astype(int)).tolist()
    return [i + 1 for i in idx], {k: [v[i] for i in idx] for k, v in curves.items()}


def _write_json(path: Path, data: dict) -> None:
    """Written whole, then renamed: a file that exists is complete."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def run_one(point: GridPoint, seed: int, budget: Budget, runs_dir: Path) -> dict:
    """Train and evaluate one run in this process and write its record.

    Parameters
    ----------
    point, seed, budget
        As for :func:`demo_config`.
    runs_dir : pathlib.Path
        The folder of the records; the demo's ``run.json`` goes to a scratch folder in it,
        removed once the record is written.

    Returns
    -------
    record : dict
        What ``runs/<key>.json`` holds: ``key``, ``point``, ``seed``, ``budget``,
        ``steps``, ``kl_warmup``, ``images_seen``, ``wall_s`` (the run's total seconds),
        ``threads``, ``mig``, ``mig_per_factor``, ``active_dims``, ``kl_per_dim``,
        ``eval_rec_loss``, ``tc_probe``, ``final_mean``, ``timings``, ``tcvae`` (β-TCVAE
        only) and ``curves`` at the steps ``curve_steps`` (at most 250 of them).
    """
    key = run_key(point, seed, budget)
    scratch = runs_dir / f"{key}.d"
    config = demo_config(point, seed, budget, scratch)
    if budget.compile:
        torch._dynamo.reset()  # a fresh compile per run, clear of the last run's graphs
    summary = run(config, DistInfo())
    steps, curves = _subsample(summary["curves"])
    record = {
        "key": key,
        "point": asdict(point),
        "seed": seed,
        "budget": asdict(budget),
        "steps": config.steps,
        "kl_warmup": config.kl_warmup,
        "images_seen": config.steps * config.batch_size,
        "wall_s": summary["timings"]["total_s"],
        "threads": torch.get_num_threads(),
        "torch_version": summary["torch_version"],
        **{
            k: summary[k]
            for k in (
                "mig",
                "mig_per_factor",
                "active_dims",
                "kl_per_dim",
                "eval_rec_loss",
                "tc_probe",
                "final_mean",
                "timings",
                "tcvae",
            )
            if k in summary
        },
        "curve_steps": steps,
        "curves": curves,
    }
    _write_json(runs_dir / f"{key}.json", record)
    shutil.rmtree(scratch, ignore_errors=True)
    return record


def load_records(runs_dir: Path) -> dict[str, dict]:
    """Every complete record under ``runs_dir``, by key (a missing folder: none)."""
    if not runs_dir.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))}


def _stats(values: Sequence[float]) -> dict | None:
    """Median, quartiles and count (None for no values)."""
    if not values:
        return None
    q25, med, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "n": len(values)}


def _runs_of(study: Study, point: GridPoint, seeds: Sequence[int], records: dict) -> list[dict]:
    keys = (run_key(point, s, study.budget) for s in seeds)
    return [records[k] for k in keys if k in records]


def selection(study: Study, records: dict) -> tuple[list[dict], dict[str, GridPoint]]:
    """Score every grid point on the selection seeds and choose one point per loss.

    Returns
    -------
    rows : list of dict
        One per grid point: its fields, ``runs`` (records found) and the statistics of
        ``mig``, ``active_dims`` and ``eval_rec_loss``.
    chosen : dict of str to GridPoint
        Per loss, among the points that have every selection seed's record, the one with
        the best median MIG (the first such in grid order on a tie); a loss with no
        complete point is absent.
    """
    rows, best = [], {}
    for point in study.grid:
        runs = _runs_of(study, point, study.seeds_select, records)
        row = {**asdict(point), "runs": len(runs)}
        for field in ("mig", "active_dims", "eval_rec_loss"):
            row[field] = _stats([r[field] for r in runs])
        rows.append(row)
        if len(runs) == len(study.seeds_select) and runs:
            score = row["mig"]["median"]
            if point.loss not in best or score > best[point.loss][0]:
                best[point.loss] = (score, point)
    return rows, {loss: point for loss, (_, point) in best.items()}


def _specs(study: Study, phase: str, chosen: dict[str, GridPoint]) -> list[tuple]:
    if phase == "select":
        return [(p, s) for p in study.grid for s in study.seeds_select]
    return [(chosen[loss], s) for loss in chosen for s in study.seeds_heldout]


def run_phase(study: Study, phase: str, shard: tuple[int, int] = (0, 1)) -> int:
    """Run every run of ``phase`` that has no record yet, with a progress bar over runs.

    Parameters
    ----------
    study : Study
        The grid, seeds, budget and folder.
    phase : {"select", "heldout"}
        The selection's grid on its seeds, or the chosen points on the held-out seeds.
    shard : tuple of int, default=(0, 1)
        ``(k, n)``: run only the phase's runs ``k, k + n, k + 2n, ...`` (those without a
        record), so that ``n`` processes given ``k = 0 .. n - 1`` share a phase.

    Returns
    -------
    ran : int
        The number of runs trained now.

    Raises
    ------
    RuntimeError
        For ``heldout`` while any selection run has no record: a point is chosen only
        from the whole selection.
    """
    done = load_records(study.runs_dir)
    if phase == "heldout":
        wanted = [run_key(p, s, study.budget) for p, s in _specs(study, "select", {})]
        missing = sum(key not in done for key in wanted)
        if missing:
            raise RuntimeError(
                f"the selection is unfinished ({missing} of {len(wanted)} runs have no "
                "record): run --phase select first"
            )
    chosen = selection(study, done)[1]
    specs = _specs(study, phase, chosen)
    k, n = shard
    mine = specs[k::n]  # of the whole phase, not of what is pending: the same at any time
    pending = [(p, s) for p, s in mine if run_key(p, s, study.budget) not in done]
    print(
        f"{phase}: {len(specs)} runs"
        + (f", {len(mine)} in shard {k}/{n}" if n > 1 else "")
        + f", {len(mine) - len(pending)} already done, {len(pending)} to run",
        flush=True,
    )
    study.runs_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(pending, desc=phase, unit="run", dynamic_ncols=True)
    for point, seed in bar:
        bar.set_postfix_str(f"{point.label()} seed {seed}")
        record = run_one(point, seed, study.budget, study.runs_dir)
        bar.write(f"{record['key']}: MIG {record['mig']:.3f}, {record['wall_s']:.0f} s")
    bar.close()
    return len(pending)


def _tc_bias(study: Study, records: dict) -> dict[str, list[dict]]:
    """Per loss and probed size, the bias of every run of the study's grid and seeds."""
    seeds = (*study.seeds_select, *study.seeds_heldout)
    out: dict[str, list[dict]] = {}
    for loss in dict.fromkeys(p.loss for p in study.grid):
        runs = [
            r
            for p in study.grid
            if p.loss == loss
            for r in _runs_of(study, p, seeds, records)
            if r.get("tc_probe")
        ]
        by_size: dict[int, list[dict]] = {}
        for r in runs:
            for b in r["tc_probe"]["batches"]:
                by_size.setdefault(b["batch_size"], []).append(
                    {"bias": b["tc_bias"], "large": r["tc_probe"]["large"]["tc"]}
                )
        out[loss] = [
            {
                "batch_size": size,
                "tc_bias": _stats([v["bias"] for v in vals]),
                "large_batch_tc": _stats([v["large"] for v in vals]),
            }
            for size, vals in sorted(by_size.items())
        ]
    return out


def build_report(study: Study, records: dict) -> dict:
    """What ``study.json`` holds (see the module docstring), from the records."""
    rows, chosen = selection(study, records)
    heldout = {}
    for loss, point in chosen.items():
        runs = _runs_of(study, point, study.seeds_heldout, records)
        heldout[loss] = {
            **asdict(point),
            "runs": len(runs),
            "seeds": [r["seed"] for r in runs],
            **{f: _stats([r[f] for r in runs]) for f in ("mig", "active_dims", "eval_rec_loss")},
            "images_seen": study.budget.steps(point.batch_size) * point.batch_size,
            "wall_s": _stats([r["wall_s"] for r in runs]),
        }
    return {
        "protocol": {
            "seeds_select": list(study.seeds_select),
            "seeds_heldout": list(study.seeds_heldout),
            "grid": [asdict(p) for p in study.grid],
            "budget": asdict(study.budget),
            "rule": "per loss, the grid point with the best median MIG on seeds_select; "
            "reported on seeds_heldout",
        },
        "select": rows,
        "chosen": {loss: chosen_settings(p, study.budget) for loss, p in chosen.items()},
        "heldout": heldout,
        "tc_bias": _tc_bias(study, records),
        "records": len(records),
    }


def _seeds_text(seeds: Sequence[int]) -> str:
    """``0-4`` for a range, ``0,2,7`` otherwise."""
    s = list(seeds)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ",".join(map(str, s))


def _cell(stats: dict | None, fmt: str = ".3f") -> str:
    if stats is None:
        return "—"
    return f"{stats['median']:{fmt}} [{stats['q25']:{fmt}}, {stats['q75']:{fmt}}]"


def _setting(row: dict) -> list[str]:
    est = row["estimator"] if row["loss"] == "btcvae" else "—"
    return [row["loss"], str(row["batch_size"]), f"{row['beta']:g}", f"{row['warmup']:g}", est]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(study: Study, report: dict) -> str:
    """``study.md``: the held-out table, the selection table and the TC bias table."""
    b = study.budget
    setting = ["loss", "batch", "β", "warm-up", "estimator"]
    lines = [
        "# β-VAE and β-TCVAE on the demo's sprites",
        "",
        f"Each run: {b.images} training images seen ({b.n_train} sprites), {b.latent_dim} "
        f"latents, Adam lr {b.lr:g}, device {b.device}, "
        f"{'compiled' if b.compile else 'eager'}; MIG on {b.n_eval} held-out sprites. "
        f"Chosen per loss: the best median MIG on seeds {_seeds_text(study.seeds_select)}; "
        f"reported on seeds {_seeds_text(study.seeds_heldout)}. Cells: median "
        "[interquartile range] over seeds; warm-up as a fraction of the steps; "
        "reconstruction in nats per image (held-out sprites, posterior mean).",
        "",
        f"## Held-out seeds {_seeds_text(study.seeds_heldout)}",
        "",
    ]
    held = report["heldout"].values()
    lines += _table(
        [*setting, "runs", "MIG", "active units", "reconstruction", "images seen", "wall s"],
        (
            [
                *_setting(h),
                str(h["runs"]),
                _cell(h["mig"]),
                _cell(h["active_dims"], ".1f"),
                _cell(h["eval_rec_loss"], ".1f"),
                str(h["images_seen"]),
                _cell(h["wall_s"], ".1f"),
            ]
            for h in held
        ),
    )
    chosen = {(h["loss"], h["batch_size"], h["beta"], h["warmup"], h["estimator"]) for h in held}
    lines += ["", f"## Selection, seeds {_seeds_text(study.seeds_select)}", ""]
    lines += _table(
        [*setting, "runs", "MIG", "active units", "reconstruction", "chosen"],
        (
            [
                *_setting(r),
                str(r["runs"]),
                _cell(r["mig"]),
                _cell(r["active_dims"], ".1f"),
                _cell(r["eval_rec_loss"], ".1f"),
                "yes"
                if (r["loss"], r["batch_size"], r["beta"], r["warmup"], r["estimator"]) in chosen
                else "",
            ]
            for r in report["select"]
        ),
    )
    lines += [
        "",
        "## Bias of the minibatch total-correlation estimate",
        "",
        f"Minibatch estimate (mean over chunks of the held-out sprites' posteriors) minus "
        f"the estimate over all {b.n_eval} of them, nats, over every run of each loss.",
        "",
    ]
    lines += _table(
        ["loss", "minibatch", "runs", "TC bias", f"TC at {b.n_eval}"],
        (
            [
                loss,
                str(e["batch_size"]),
                str(e["tc_bias"]["n"]),
                _cell(e["tc_bias"], ".3g"),
                _cell(e["large_batch_tc"], ".3g"),
            ]
            for loss, entries in report["tc_bias"].items()
            for e in entries
        ),
    )
    lines += ["", "![MIG against batch size](mig_vs_batch.png)", "", "![TC bias](tc_bias.png)"]
    return "\n".join(lines) + "\n"


def _figures(study: Study, report: dict, records: dict) -> None:
    mig_series: dict[str, list] = {}
    for loss in dict.fromkeys(p.loss for p in study.grid):
        best: dict[int, tuple[float, list[float]]] = {}
        for p in study.grid:
            migs = [r["mig"] for r in _runs_of(study, p, study.seeds_select, records)]
            if p.loss == loss and migs:
                score = float(np.median(migs))
                if p.batch_size not in best or score > best[p.batch_size][0]:
                    best[p.batch_size] = (score, migs)
        mig_series[f"{loss}: best setting per batch size"] = [
            (b, migs) for b, (_, migs) in sorted(best.items())
        ]
    for loss, h in report["heldout"].items():
        point = GridPoint(*(h[f] for f in ("loss", "batch_size", "beta", "warmup", "estimator")))
        migs = [r["mig"] for r in _runs_of(study, point, study.seeds_heldout, records)]
        if migs:
            mig_series[f"{loss}: chosen, held-out seeds"] = [(h["batch_size"], migs)]
    plots.plot_mig_vs_batch(
        mig_series,
        study.out / FILES[2],
        f"MIG at {study.budget.images} images seen (selection seeds "
        f"{_seeds_text(study.seeds_select)}; held out {_seeds_text(study.seeds_heldout)})",
    )
    seeds = (*study.seeds_select, *study.seeds_heldout)
    bias_series: dict[str, list] = {}
    for loss in report["tc_bias"]:
        by_size: dict[int, list[float]] = {}
        for p in study.grid:
            if p.loss == loss:
                for r in _runs_of(study, p, seeds, records):
                    for b in (r.get("tc_probe") or {}).get("batches", []):
                        by_size.setdefault(b["batch_size"], []).append(b["tc_bias"])
        bias_series[loss] = sorted(by_size.items())
    plots.plot_tc_bias(
        bias_series,
        study.out / FILES[3],
        f"Minibatch TC estimate minus the estimate over {study.budget.n_eval} sprites",
    )


def write_report(study: Study) -> dict:
    """Write ``study.json``, ``study.md`` and the two PNGs from the records; return the
    report."""
    records = load_records(study.runs_dir)
    report = build_report(study, records)
    study.out.mkdir(parents=True, exist_ok=True)
    report["files"] = [str(study.out / f) for f in FILES]
    _write_json(study.out / FILES[0], report)
    (study.out / FILES[1]).write_text(markdown(study, report))
    _figures(study, report, records)
    return report


def readme_block(study_md: str, out: Path, readme: Path) -> str:
    """``study.md`` as the block of ``readme`` that holds it.

    Parameters
    ----------
    study_md : str
        The text of ``study.md``.
    out : Path
        The study's folder (where the pictures are).
    readme : Path
        The markdown file the block goes into.

    Returns
    -------
    block : str
        ``study_md`` without its title, with ``##`` headings made ``####`` and every
        relative ``.png`` link made relative to ``readme``'s folder.
    """
    rel = Path(os.path.relpath(out.resolve(), readme.resolve().parent)).as_posix()
    lines = []
    for line in study_md.splitlines()[1:]:
        if line.startswith("#"):
            line = "##" + line
        line = re.sub(r"\]\((?![a-z]+:|/)([^)]+\.png)\)", lambda m: f"]({rel}/{m[1]})", line)
        lines.append(line)
    return "\n".join(lines).strip("\n") + "\n"


def splice_readme(readme: Path, study: Study) -> None:
    """Replace the block of ``readme`` between :data:`README_BEGIN` and :data:`README_END`
    with the study's ``study.md`` (see :func:`readme_block`).

    Raises
    ------
    RuntimeError
        If ``readme`` has no such block.
    """
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise RuntimeError(f"{readme} has no block {README_BEGIN} … {README_END} to fill")
    block = readme_block((study.out / FILES[1]).read_text(), study.out, readme)
    readme.write_text(f"{text[: begin + len(README_BEGIN)]}\n{block}{text[end:]}")


def run_study(
    study: Study,
    phase: str = "all",
    *,
    report_only: bool = False,
    shard: tuple[int, int] = (0, 1),
    readme: Path | None = None,
) -> dict:
    """Run the phases asked for (skipping finished runs), then write the report.

    Parameters
    ----------
    study : Study
        The grid, seeds, budget and folder.
    phase : {"select", "heldout", "all"}, default="all"
        ``all``: the selection, then the held-out runs of the points it chose.
    report_only : bool, default=False
        Train nothing: rebuild the report from the records.
    shard : tuple of int, default=(0, 1)
        ``(k, n)``: this process's share of each phase's runs (see :func:`run_phase`).
    readme : Path, optional
        A markdown file whose study block (:func:`splice_readme`) gets the new report.

    Returns
    -------
    report : dict
        What ``study.json`` holds, with ``ran``: the number of runs trained now.
    """
    ran = 0
    if not report_only:
        for name in ("select", "heldout") if phase == "all" else (phase,):
            ran += run_phase(study, name, shard)
    report = write_report(study)
    print(f"ran {ran} new runs; wrote {', '.join(FILES)} to {study.out.resolve()}", flush=True)
    if readme is not None:
        splice_readme(readme, study)
        print(f"wrote study.md into {readme}", flush=True)
    return {**report, "ran": ran}


def _seeds(text: str) -> tuple[int, ...]:
    """``"0-4"``, ``"5,7,9"`` or a mix (``"0-2,8"``) as a tuple of distinct seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seeds like 0-4 or 0,2,5, got {text!r}"
        ) from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative seeds, got {text!r}")
    return tuple(dict.fromkeys(seeds))


def _shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (``0 <= K < N``) as ``(K, N)``."""
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return shard


def build_parser() -> argparse.ArgumentParser:
    """The study's command line (``python -m betavae_triton.demo.study --help``).

    Returns
    -------
    parser : argparse.ArgumentParser
        The grid axes default to ``None`` (the ``--grid`` preset's then); the budget's
        defaults are :class:`Budget`'s.
    """
    d = Budget()
    parser = argparse.ArgumentParser(
        prog="python -m betavae_triton.demo.study",
        description=(
            "Train the demo's model with the beta-VAE and the beta-TCVAE over a grid of batch "
            "sizes (at equal images seen), betas, KL warm-ups and estimators; choose each "
            "loss's best median MIG on the selection seeds and report it on the held-out "
            "seeds. Each finished run is a JSON record under OUT/runs, which a rerun skips; "
            "the report is OUT/study.json, OUT/study.md, OUT/mig_vs_batch.png and "
            "OUT/tc_bias.png."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the study's folder (the default lies beside the demo's own output, in the "
        "current folder; the README's study is in perf/results/study)",
    )
    parser.add_argument(
        "--phase",
        choices=("select", "heldout", "all"),
        default="all",
        help="select: the grid on the selection seeds; heldout: each loss's chosen point "
        "on the held-out seeds (needs a finished selection); all: both, in turn",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: rebuild the report"
    )
    parser.add_argument(
        "--readme",
        type=Path,
        metavar="FILE",
        help="also write study.md into FILE, between its lines "
        f"{README_BEGIN!r} and {README_END!r}",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        metavar="K/N",
        help="run every N-th run of the phase, from the K-th (0-based): N processes "
        "with K = 0..N-1 and one --out share a phase; needs --phase select or heldout",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="four tiny eager runs for the tests (overrides the grid, seeds and budget)",
    )
    parser.add_argument(
        "--seeds-select",
        type=_seeds,
        default="0-4",
        metavar="SEEDS",
        help="the selection's seeds, e.g. 0-4 or 0,2,5",
    )
    parser.add_argument(
        "--seeds-heldout",
        type=_seeds,
        default="5-14",
        metavar="SEEDS",
        help="the held-out seeds (none shared with the selection's)",
    )
    parser.add_argument(
        "--grid",
        choices=tuple(PRESETS),
        default="paper",
        help="the grid's axes: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k} {' '.join(map(str, v))}" for k, v in p.items())
            for name, p in PRESETS.items()
        ),
    )
    parser.add_argument(
        "--losses", nargs="+", choices=LOSSES, default=list(LOSSES), help="the losses compared"
    )
    grid = parser.add_argument_group(
        "grid axes (each, when given, replaces the --grid preset's)",
    )
    grid.argument_default = argparse.SUPPRESS
    grid.add_argument("--batch-sizes", nargs="+", type=int, metavar="B", help="batch sizes")
    grid.add_argument(
        "--betas", nargs="+", type=float, metavar="BETA", help="KL (beta-TCVAE: TC) weights"
    )
    grid.add_argument(
        "--warmups",
        nargs="+",
        type=float,
        metavar="FRAC",
        help="KL warm-up lengths, fractions of the run's steps in [0, 1)",
    )
    grid.add_argument(
        "--estimators",
        nargs="+",
        choices=ESTIMATORS,
        help="the beta-TCVAE's estimators of q(z) (the beta-VAE has none)",
    )
    budget = parser.add_argument_group("budget (shared by every run)")
    budget.add_argument(
        "--steps-images",
        type=int,
        default=d.images,
        metavar="N",
        help="training images seen per run (steps = N // batch size)",
    )
    budget.add_argument("--lr", type=float, default=d.lr, help="Adam's learning rate")
    budget.add_argument("--n-train", type=int, default=d.n_train, help="training sprites")
    budget.add_argument(
        "--n-eval", type=int, default=d.n_eval, help="held-out sprites (MIG, TC probe)"
    )
    budget.add_argument("--latent-dim", type=int, default=d.latent_dim, help="latents")
    budget.add_argument(
        "--channels", type=int, default=d.channels, help="the model's convolution width"
    )
    budget.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=d.compile,
        help="compile each run's loss step (--no-compile: eager)",
    )
    budget.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    return parser


def parse_study(argv: Sequence[str] | None = None) -> tuple[Study, argparse.Namespace]:
    """Parse the command line into a :class:`Study` (and the namespace, for the phase).

    Raises
    ------
    SystemExit
        With status 2 and a message, on a bad argument.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        axes, seeds_select, seeds_heldout = (
            QUICK["grid"],
            QUICK["seeds_select"],
            QUICK["seeds_heldout"],
        )
        budget = Budget(**QUICK["budget"])
    else:
        preset = PRESETS[args.grid]
        axes = {k: getattr(args, k, None) or preset[k] for k in preset}
        seeds_select, seeds_heldout = args.seeds_select, args.seeds_heldout
        budget = Budget(
            images=args.steps_images,
            lr=args.lr,
            n_train=args.n_train,
            n_eval=args.n_eval,
            latent_dim=args.latent_dim,
            channels=args.channels,
            compile=args.compile,
            device=args.device,
        )
    if args.shard[1] > 1 and args.phase == "all" and not args.report_only:
        parser.error(
            "--shard needs --phase select or heldout (the shards of the selection "
            "must all finish before the held-out runs start)"
        )
    if set(seeds_select) & set(seeds_heldout):
        parser.error("--seeds-select and --seeds-heldout must not share a seed")
    if any(not 0 <= w < 1 for w in axes["warmups"]):
        parser.error("--warmups are fractions of the run, in [0, 1)")
    if any(b < 2 or b > budget.n_train for b in axes["batch_sizes"]):
        parser.error(f"--batch-sizes must lie in [2, --n-train {budget.n_train}]")
    if budget.latent_dim < 2:
        parser.error("--latent-dim must be at least 2 (the MIG compares the top two latents)")
    grid = make_grid(args.losses, **axes)
    study = Study(grid, tuple(seeds_select), tuple(seeds_heldout), budget, args.out)
    return study, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study from the command line; 0 on success."""
    study, args = parse_study(argv)
    try:
        run_study(
            study,
            args.phase,
            report_only=args.report_only,
            shard=args.shard,
            readme=args.readme,
        )
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
