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
:data:`betavae_triton.demo.config.LOSS_DEFAULTS`), ``mig_vs_batch.png`` (MIG against
batch size per loss, median and IQR over seeds) and ``tc_bias.png`` (the minibatch
estimate of the total correlation minus the large-batch estimate of the same model's
q(z), against the minibatch size: the ``tc_probe`` of each run). ``--report-only``
rebuilds these from the records that the given options name; ``--quick`` runs four tiny
runs (one grid point per loss, one selection seed and one held-out seed) for the tests.

This module is the command and its resumable runner (:func:`run_one`, :func:`run_phase`,
:func:`run_study`); the study's parts are :mod:`.study_grid` (the grid, the budget, the
run keys), :mod:`.study_choice` (the statistics and the choice), :mod:`.study_report`
(``study.json``, ``study.md``, the figures, the README block) and :mod:`.study_cli` (the
command line).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ._extras import demo_extras

with demo_extras("python -m betavae_triton.demo.study", entry_point=__name__ == "__main__"):
    import numpy as np
    from tqdm import tqdm

    from .config import DistInfo
    from .files import write_json
    from .study_choice import load_records, selection
    from .study_cli import parse_study
    from .study_grid import Budget, GridPoint, Study, demo_config, run_key
    from .study_report import FILES, splice_readme, write_report
    from .train import run

__all__ = ["main", "run_one", "run_phase", "run_study"]

# Curves kept in a record: at most this many points, evenly spaced over the steps.
CURVE_POINTS = 250
# Summary entries of the demo's run that a record keeps (those the run has).
RECORD_ENTRIES = (
    "mig",
    "mig_per_factor",
    "active_dims",
    "kl_per_dim",
    "eval_rec_loss",
    "tc_probe",
    "final_mean",
    "timings",
    "tcvae",
    "tc_track",
)


def _subsample(curves: dict[str, list[float]]) -> tuple[list[int], dict[str, list[float]]]:
    """At most :data:`CURVE_POINTS` evenly spaced steps of the curves (1-based)."""
    n = len(next(iter(curves.values())))
    idx = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).round().astype(int)).tolist()
    return [i + 1 for i in idx], {k: [v[i] for i in idx] for k, v in curves.items()}


def run_one(point: GridPoint, seed: int, budget: Budget, runs_dir: Path) -> dict:
    """Train and evaluate one run in this process and write its record.

    Parameters
    ----------
    point, seed, budget
        As for :func:`.study_grid.demo_config`.
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
        only), ``tc_track`` (with a bank) and ``curves`` at the steps ``curve_steps`` (at
        most 250 of them).
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
        **{k: summary[k] for k in RECORD_ENTRIES if k in summary},
        "curve_steps": steps,
        "curves": curves,
    }
    write_json(runs_dir / f"{key}.json", record)
    shutil.rmtree(scratch, ignore_errors=True)
    return record


def _specs(study: Study, phase: str, chosen: dict[str, GridPoint]) -> list[tuple]:
    """The phase's runs, in order: the grid on the selection seeds, or each loss's chosen
    point on the held-out seeds."""
    if phase == "select":
        return [(p, s) for p in study.grid for s in study.seeds_select]
    return [(chosen[loss], s) for loss in chosen for s in study.seeds_heldout]


def _check_selection_done(study: Study, done: dict) -> None:
    """Raise ``RuntimeError`` while any selection run has no record."""
    wanted = [run_key(p, s, study.budget) for p, s in _specs(study, "select", {})]
    missing = sum(key not in done for key in wanted)
    if missing:
        raise RuntimeError(
            f"the selection is unfinished ({missing} of {len(wanted)} runs have no "
            "record): run --phase select first"
        )


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
        _check_selection_done(study, done)
    specs = _specs(study, phase, selection(study, done)[1])
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
        A markdown file whose study block (:func:`.study_report.splice_readme`) gets the
        new report.

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
