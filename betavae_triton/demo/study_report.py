"""The study's report: ``study.json``, ``study.md``, the two figures, and ``study.md``
spliced into a README.

:func:`write_report` rebuilds every file of :data:`FILES` from the records
(:func:`.study_choice.build_report`): the JSON whole (:func:`.files.write_json`), the
markdown tables (:func:`markdown`), ``mig_vs_batch.png`` and ``tc_bias.png``
(:mod:`.plots`). :func:`splice_readme` puts ``study.md`` between :data:`README_BEGIN` and
:data:`README_END` of a markdown file (for a folder not named ``study``, the markers that
name it: :func:`readme_markers`), its headings and picture links adapted
(:func:`readme_block`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import plots
from .files import write_json
from .study_choice import TRACKED, build_report, load_records, runs_of
from .study_grid import GridPoint, Study

__all__ = [
    "FILES",
    "README_BEGIN",
    "README_END",
    "markdown",
    "readme_block",
    "readme_markers",
    "splice_readme",
    "write_report",
]

FILES = ("study.json", "study.md", "mig_vs_batch.png", "tc_bias.png")
# A study with a bank on its grid draws the bias of its TC estimates during training too.
TRACK_FILE = "tc_track.png"
# --readme: the block of a markdown file that holds study.md (its title dropped, its
# headings two levels down, its pictures' paths made relative to that file).
README_BEGIN = "<!-- study.md begins: python -m betavae_triton.demo.study --readme FILE -->"
README_END = "<!-- study.md ends -->"
# The figure's names of :data:`.study_choice.TRACKED`.
TRACK_LABELS = ("without the bank", "with the bank", "bank re-encoded")
# The columns that name a grid point in study.md's tables (a bank's column only where the
# grid has a bank), and a row's key of them.
SETTING = ["loss", "batch", "β", "warm-up", "estimator"]
POINT_FIELDS = ("loss", "batch_size", "beta", "warmup", "estimator", "bank", "bank_refresh")


def _seeds_text(seeds: Sequence[int]) -> str:
    """``0-4`` for a range, ``0,2,7`` otherwise."""
    s = list(seeds)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ",".join(map(str, s))


def _cell(stats: dict | None, fmt: str = ".3f") -> str:
    """A statistic as ``median [q25, q75]``, or a dash for none."""
    if stats is None:
        return "—"
    return f"{stats['median']:{fmt}} [{stats['q25']:{fmt}}, {stats['q75']:{fmt}}]"


def _setting_header(report: dict) -> list[str]:
    """:data:`SETTING`, with a bank's column where the grid has a bank."""
    return [*SETTING, "bank"] if "tc_track" in report else SETTING


def _setting(row: dict, report: dict) -> list[str]:
    """A row's grid point as the :func:`_setting_header` cells."""
    est = row["estimator"] if row["loss"] == "btcvae" else "—"
    cells = [row["loss"], str(row["batch_size"]), f"{row['beta']:g}", f"{row['warmup']:g}", est]
    return cells + ([_bank_cell(row)] if "tc_track" in report else [])


def _bank_cell(row: dict) -> str:
    """``4096``, ``4096, 192 re-encoded per step``, or a dash for no bank."""
    if not row["bank"]:
        return "—"
    refresh = row.get("bank_refresh", 0)
    return f"{row['bank']}" + (f", {refresh} re-encoded per step" if refresh else "")


def _point_key(row: dict) -> tuple:
    """A row's grid point as a tuple of :data:`POINT_FIELDS` (no bank: 0)."""
    return tuple(row.get(f, 0) for f in POINT_FIELDS)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _scores(row: dict) -> list[str]:
    """A row's runs, MIG, active units and reconstruction cells."""
    return [
        str(row["runs"]),
        _cell(row["mig"]),
        _cell(row["active_dims"], ".1f"),
        _cell(row["eval_rec_loss"], ".1f"),
    ]


def markdown(study: Study, report: dict) -> str:
    """``study.md``: the held-out table, the selection table and the TC bias table."""
    b = study.budget
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
        *_heldout_table(report),
        "",
        f"## Selection, seeds {_seeds_text(study.seeds_select)}",
        "",
        *_selection_table(report),
        "",
        "## Bias of the minibatch total-correlation estimate",
        "",
        f"Minibatch estimate (mean over chunks of the held-out sprites' posteriors) minus "
        f"the estimate over all {b.n_eval} of them, nats, over every run of each loss.",
        "",
        *_bias_table(study, report),
        "",
        "![MIG against batch size](mig_vs_batch.png)",
        "",
        "![TC bias](tc_bias.png)",
        *(_track_section(report) if report.get("tc_track") else []),
    ]
    return "\n".join(lines) + "\n"


def _track_section(report: dict) -> list[str]:
    """The bias of the TC estimates of the runs with a bank, measured during training."""
    lines = [
        "",
        "## Bias of the total-correlation estimate during training, with a bank",
        "",
        "Every run with a bank measures, eight times during training and with the model of "
        "that step, the TC estimate of the held-out sprites in chunks of the training batch "
        "size: without the bank (what the loss estimates without one), with the bank as it "
        "stands (posteriors of training sprites, encoded up to K / B steps before) and with "
        "the same sprites re-encoded by the model of the step (the bank without its "
        "staleness); each minus the estimate over every held-out sprite at that step, nats, "
        "over the runs of every seed. Bank age: the mean number of updates since the bank's "
        "posteriors were encoded.",
    ]
    for row in report["tc_track"]:
        late = row["after_warmup"]
        lines += [
            "",
            f"{' '.join(_setting(row, report))}, {row['runs']} runs; after the warm-up: "
            f"without the bank {_cell(late['batch'])}, with it {_cell(late['bank'])}, "
            f"re-encoded {_cell(late['fresh'])}; staleness (with it minus re-encoded, "
            f"measurement by measurement) {_cell(late.get('staleness'))}.",
            "",
            *_table(
                ["step", "bank age", "without the bank", "with the bank", "bank re-encoded"],
                (
                    [
                        str(m["step"]),
                        _cell(m["bank_age"], ".1f"),
                        *(_cell(m[name]) for name in TRACKED),
                    ]
                    for m in row["by_step"]
                ),
            ),
            "",
            "After the warm-up, the bank's most recent posteriors alone (fresher, fewer) "
            "and the whole bank:",
            "",
            *_table(
                ["bank's part", "measurements", "bank age", "with it", "re-encoded", "staleness"],
                (
                    [
                        str(part["size"]),
                        str(part["n"]),
                        _cell(part["bank_age"], ".1f"),
                        _cell(part["bank"]),
                        _cell(part["fresh"]),
                        _cell(part.get("staleness")),
                    ]
                    for part in row["parts_after_warmup"]
                ),
            ),
        ]
    return [*lines, "", f"![TC bias during training]({TRACK_FILE})"]


def _heldout_table(report: dict) -> list[str]:
    """Each loss's chosen point on the held-out seeds."""
    return _table(
        [
            *_setting_header(report),
            *("runs", "MIG", "active units", "reconstruction", "images seen", "wall s"),
        ],
        (
            [*_setting(h, report), *_scores(h), str(h["images_seen"]), _cell(h["wall_s"], ".1f")]
            for h in report["heldout"].values()
        ),
    )


def _selection_table(report: dict) -> list[str]:
    """Every grid point on the selection seeds, the chosen ones marked."""
    chosen = {_point_key(h) for h in report["heldout"].values()}
    return _table(
        [*_setting_header(report), "runs", "MIG", "active units", "reconstruction", "chosen"],
        (
            [
                *_setting(r, report),
                *_scores(r),
                "yes" if _point_key(r) in chosen else "",
            ]
            for r in report["select"]
        ),
    )


def _bias_table(study: Study, report: dict) -> list[str]:
    """Per loss and minibatch size, the TC probe's bias and the large-batch TC."""
    return _table(
        ["loss", "minibatch", "runs", "TC bias", f"TC at {study.budget.n_eval}"],
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


def _mig_series(study: Study, report: dict, records: dict) -> dict[str, list]:
    """``mig_vs_batch.png``'s curves: per loss, the best setting's selection MIGs at each
    batch size, and the chosen point's held-out MIGs."""
    series: dict[str, list] = {}
    for loss in dict.fromkeys(p.loss for p in study.grid):
        best: dict[int, tuple[float, list[float]]] = {}
        for p in study.grid:
            migs = [r["mig"] for r in runs_of(study, p, study.seeds_select, records)]
            if p.loss == loss and migs:
                score = float(np.median(migs))
                if p.batch_size not in best or score > best[p.batch_size][0]:
                    best[p.batch_size] = (score, migs)
        series[f"{loss}: best setting per batch size"] = [
            (b, migs) for b, (_, migs) in sorted(best.items())
        ]
    for loss, h in report["heldout"].items():
        point = GridPoint(*_point_key(h))
        migs = [r["mig"] for r in runs_of(study, point, study.seeds_heldout, records)]
        if migs:
            series[f"{loss}: chosen, held-out seeds"] = [(h["batch_size"], migs)]
    return series


def _bias_series(study: Study, report: dict, records: dict) -> dict[str, list]:
    """``tc_bias.png``'s points: per loss, every run's TC bias at each probed size."""
    seeds = (*study.seeds_select, *study.seeds_heldout)
    series: dict[str, list] = {}
    for loss in report["tc_bias"]:
        by_size: dict[int, list[float]] = {}
        for p in study.grid:
            if p.loss == loss:
                for r in runs_of(study, p, seeds, records):
                    for b in (r.get("tc_probe") or {}).get("batches", []):
                        by_size.setdefault(b["batch_size"], []).append(b["tc_bias"])
        series[loss] = sorted(by_size.items())
    return series


def _figures(study: Study, report: dict, records: dict) -> None:
    """Draw ``mig_vs_batch.png`` and ``tc_bias.png`` into the study's folder."""
    plots.plot_mig_vs_batch(
        _mig_series(study, report, records),
        study.out / FILES[2],
        f"MIG at {study.budget.images} images seen (selection seeds "
        f"{_seeds_text(study.seeds_select)}; held out {_seeds_text(study.seeds_heldout)})",
    )
    plots.plot_tc_bias(
        _bias_series(study, report, records),
        study.out / FILES[3],
        f"Minibatch TC estimate minus the estimate over {study.budget.n_eval} sprites",
    )
    if report.get("tc_track"):
        points = [GridPoint(*_point_key(row)) for row in report["tc_track"]]
        plots.plot_tc_track(
            _track_series(study, points, records),
            study.out / TRACK_FILE,
            f"{points[0].label()}: TC estimate minus the estimate over "
            f"{study.budget.n_eval} held-out sprites",
        )


def _track_series(study: Study, points: list[GridPoint], records: dict) -> dict[str, list]:
    """``tc_track.png``'s points: per tracked estimate of the first point, every run's bias
    at each step; of each further point (another bank or refresh), "with the bank" alone,
    labelled with its bank."""
    seeds = (*study.seeds_select, *study.seeds_heldout)
    series: dict[str, dict[int, list[float]]] = {}
    for i, point in enumerate(points):
        tracked = zip(TRACKED, TRACK_LABELS, strict=True)
        if i:
            label = f"with the bank of {_bank_cell(asdict(point))}"
            tracked = iter([("bank", label)])
        for name, label in tracked:
            by_step = series.setdefault(label, {})
            for r in runs_of(study, point, seeds, records):
                for m in (r.get("tc_track") or {}).get("points", []):
                    if m[name] is not None:
                        by_step.setdefault(m["step"], []).append(m[name] - m["full"])
    return {label: sorted(by_step.items()) for label, by_step in series.items()}


def write_report(study: Study) -> dict:
    """Write ``study.json``, ``study.md`` and the two PNGs from the records; return the
    report."""
    records = load_records(study.runs_dir)
    report = build_report(study, records)
    study.out.mkdir(parents=True, exist_ok=True)
    report["files"] = [str(study.out / f) for f in FILES]
    if report.get("tc_track"):
        report["files"].append(str(study.out / TRACK_FILE))
    write_json(study.out / FILES[0], report)
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


def readme_markers(out: Path) -> tuple[str, str]:
    """The lines around the README block of the study in ``out``: :data:`README_BEGIN` and
    :data:`README_END` for a folder named ``study``; for another, the same with the
    folder's name before ``study.md`` (``<!-- study-bank/study.md begins: …``), so that
    one README holds several studies."""
    if out.name == "study":
        return README_BEGIN, README_END
    return (
        README_BEGIN.replace("study.md", f"{out.name}/study.md", 1),
        README_END.replace("study.md", f"{out.name}/study.md", 1),
    )


def splice_readme(readme: Path, study: Study) -> None:
    """Replace the block of ``readme`` between the study's :func:`readme_markers` with the
    study's ``study.md`` (see :func:`readme_block`).

    Raises
    ------
    RuntimeError
        If ``readme`` has no such block.
    """
    text = readme.read_text()
    opening, closing = readme_markers(study.out)
    begin, end = text.find(opening), text.find(closing)
    if begin < 0 or end < begin:
        raise RuntimeError(f"{readme} has no block {opening} … {closing} to fill")
    block = readme_block((study.out / FILES[1]).read_text(), study.out, readme)
    readme.write_text(f"{text[: begin + len(opening)]}\n{block}{text[end:]}")
