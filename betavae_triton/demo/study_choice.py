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

__all__ = ["TRACKED", "build_report", "load_records", "runs_of", "selection", "stats", "tc_track"]


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


# The estimates a run with a bank tracks during training (DemoConfig.tc_track): without
# the bank, with it as it stands, with its sprites re-encoded by the current model.
TRACKED = ("batch", "bank", "fresh")


def tc_track(study: Study, records: dict) -> list[dict]:
    """Per grid point with a bank, the bias of its TC estimates during training.

    Returns
    -------
    rows : list of dict
        One per point with a bank and tracked runs (selection and held-out seeds): its
        fields, ``runs``, ``by_step`` (per measured step: ``step``, the median
        ``bank_age`` and the statistics of each of :data:`TRACKED` minus the estimate over
        every held-out sprite, over the runs), ``after_warmup`` (the same statistics
        over every measurement after the run's KL warm-up, and ``staleness``: those of
        ``bank - fresh``, measurement by measurement) and ``parts_after_warmup`` (per size
        of the bank's most recent part measured alone, the whole bank last: ``size``,
        ``n`` and the statistics of ``bank_age``, ``bank``, ``fresh`` and ``staleness``
        after the warm-up).
    """
    seeds = (*study.seeds_select, *study.seeds_heldout)
    rows = []
    for point in study.grid:
        runs = [r for r in runs_of(study, point, seeds, records) if r.get("tc_track")]
        if point.bank and runs:
            rows.append({**asdict(point), "runs": len(runs), **_track_stats(point, runs)})
    return rows


def _track_stats(point: GridPoint, runs: list[dict]) -> dict:
    """:func:`tc_track`'s ``by_step``, ``after_warmup`` and ``parts_after_warmup`` of one
    point's runs."""
    by_step: dict[int, dict[str, list[float]]] = {}
    late: dict[str, list[float]] = {name: [] for name in (*TRACKED, "staleness")}
    parts: dict[int, dict[str, list[float]]] = {}
    for r in runs:
        for m in r["tc_track"]["points"]:
            after = m["step"] > r["kl_warmup"]
            cell = by_step.setdefault(m["step"], {n: [] for n in (*TRACKED, "bank_age")})
            for name in (n for n in TRACKED if m[n] is not None):
                cell[name].append(m[name] - m["full"])
                late[name].extend([m[name] - m["full"]] * after)
            cell["bank_age"].extend([m["bank_age"]] * (m["bank_age"] is not None))
            if m["bank"] is not None:
                late["staleness"].extend([m["bank"] - m["fresh"]] * after)
            whole = {"size": point.bank, **{n: m[n] for n in ("bank", "fresh", "bank_age")}}
            for part in [*m.get("sub_banks", []), whole]:
                if after and part["bank"] is not None:
                    got = parts.setdefault(
                        part["size"], {"bank": [], "fresh": [], "age": [], "staleness": []}
                    )
                    got["bank"].append(part["bank"] - m["full"])
                    got["fresh"].append(part["fresh"] - m["full"])
                    got["age"].append(part["bank_age"])
                    got["staleness"].append(part["bank"] - part["fresh"])
    return {
        "by_step": [
            {"step": step, "bank_age": stats(cell["bank_age"])}
            | {name: stats(cell[name]) for name in TRACKED}
            for step, cell in sorted(by_step.items())
        ],
        "after_warmup": {name: stats(late[name]) for name in (*TRACKED, "staleness")},
        "parts_after_warmup": [
            {"size": size, "n": len(got["bank"]), "bank_age": stats(got["age"])}
            | {name: stats(got[name]) for name in ("bank", "fresh", "staleness")}
            for size, got in sorted(parts.items())
        ],
    }


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
        **({"tc_track": tc_track(study, records)} if any(p.bank for p in study.grid) else {}),
        "records": len(records),
    }
