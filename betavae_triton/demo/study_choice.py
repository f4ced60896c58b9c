"""The study's statistics and its choice, from the run records alone.

:func:`load_records` reads the records (``runs/<key>.json``); :func:`runs_of` finds a grid
point's records for given seeds; :func:`selection` scores every grid point on the
selection seeds and chooses one point per loss (the best median MIG); :func:`build_report`
puts the selection, the choice, its held-out results and the TC probe's bias together:
what ``study.json`` holds (:mod:`.study_report` writes it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .study_grid import GridPoint, Study, chosen_settings, run_key

__all__ = ["build_report", "load_records", "runs_of", "selection", "stats"]


def load_records(runs_dir: Path) -> dict[str, dict]:
    """Every complete record under ``runs_dir``, by key (a missing folder: none)."""
    if not runs_dir.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))}


def stats(values: Sequence[float]) -> dict | None:
    """Median, quartiles and count (None for no values)."""
    if not values:
        return None
    q25, med, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "n": len(values)}


def runs_of(study: Study, point: GridPoint, seeds: Sequence[int], records: dict) -> list[dict]:
    """The records of ``point`` at ``seeds`` (in their order) that exist."""
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
        runs = runs_of(study, point, study.seeds_select, records)
        row = {**asdict(point), "runs": len(runs)}
        for field in ("mig", "active_dims", "eval_rec_loss"):
            row[field] = stats([r[field] for r in runs])
        rows.append(row)
        if len(runs) == len(study.seeds_select) and runs:
            score = row["mig"]["median"]
            if point.loss not in best or score > best[point.loss][0]:
                best[point.loss] = (score, point)
    return rows, {loss: point for loss, (_, point) in best.items()}


def _heldout(study: Study, point: GridPoint, records: dict) -> dict:
    """A chosen point's results on the held-out seeds: the held-out table's row."""
    runs = runs_of(study, point, study.seeds_heldout, records)
    return {
        **asdict(point),
        "runs": len(runs),
        "seeds": [r["seed"] for r in runs],
        **{f: stats([r[f] for r in runs]) for f in ("mig", "active_dims", "eval_rec_loss")},
        "images_seen": study.budget.steps(point.batch_size) * point.batch_size,
        "wall_s": stats([r["wall_s"] for r in runs]),
    }


def tc_bias(study: Study, records: dict) -> dict[str, list[dict]]:
    """Per loss and probed size, the bias of every run of the study's grid and seeds."""
    seeds = (*study.seeds_select, *study.seeds_heldout)
    out: dict[str, list[dict]] = {}
    for loss in dict.fromkeys(p.loss for p in study.grid):
        runs = [
            r
            for p in study.grid
            if p.loss == loss
            for r in runs_of(study, p, seeds, records)
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
                "tc_bias": stats([v["bias"] for v in vals]),
                "large_batch_tc": stats([v["large"] for v in vals]),
            }
            for size, vals in sorted(by_size.items())
        ]
    return out


def build_report(study: Study, records: dict) -> dict:
    """What ``study.json`` holds (see :mod:`.study`'s docstring), from the records."""
    rows, chosen = selection(study, records)
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
        "heldout": {loss: _heldout(study, point, records) for loss, point in chosen.items()},
        "tc_bias": tc_bias(study, records),
        "records": len(records),
    }
