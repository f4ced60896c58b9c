"""Tests of the study (``python -m betavae_triton.demo.study``): its ``--quick`` mode end to
end (records, ``study.json``, ``study.md``, the PNGs, the resume and ``--report-only``),
and its parts (the grid, the run keys, the seeds, the selection rule) on records made up
in the test. No test asserts a MIG value: the quick runs are far too short to mean one.

The quick study is four tiny eager runs, a few seconds on one CPU core.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import betavae_triton.demo.study as study_module
from betavae_triton.demo import DemoConfig, options, plots, study_report
from betavae_triton.demo.config import LOSS_DEFAULTS
from betavae_triton.demo.study import main
from betavae_triton.demo.study_choice import build_report, load_records, selection
from betavae_triton.demo.study_cli import build_parser, parse_study
from betavae_triton.demo.study_grid import (
    PRESETS,
    Budget,
    GridPoint,
    Study,
    demo_config,
    make_grid,
    run_key,
)
from betavae_triton.demo.study_report import (
    FILES,
    README_BEGIN,
    README_END,
    markdown,
    readme_block,
    readme_markers,
    splice_readme,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECORD_KEYS = {
    "key", "point", "seed", "budget", "steps", "kl_warmup", "images_seen", "wall_s",
    "threads", "mig", "mig_per_factor", "active_dims", "kl_per_dim", "eval_rec_loss",
    "tc_probe", "final_mean", "timings", "curve_steps", "curves",
}  # fmt: skip


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def _check_record(key: str, record: dict) -> None:
    assert RECORD_KEYS <= set(record), RECORD_KEYS - set(record)
    assert record["key"] == key
    point = GridPoint(**record["point"])
    assert key == run_key(point, record["seed"], Budget(**_budget(record["budget"])))
    assert (record["steps"], record["images_seen"], record["kl_warmup"]) == (12, 192, 0)
    assert ("tcvae" in record) is (point.loss == "btcvae")
    assert math.isfinite(record["mig"]) and math.isfinite(record["eval_rec_loss"])
    assert record["eval_rec_loss"] > 0 and 0 <= record["active_dims"] <= 4
    assert record["wall_s"] > 0 and record["curve_steps"] == list(range(1, 13))
    assert all(len(c) == 12 for c in record["curves"].values())
    probe = record["tc_probe"]
    assert probe["large_batch"] == 256 and probe["estimator"] == point.estimator
    assert [b["batch_size"] for b in probe["batches"]] == [16, 64]
    for b in probe["batches"]:
        assert b["chunks"] == 256 // b["batch_size"]
        assert b["tc_bias"] == pytest.approx(b["tc"] - probe["large"]["tc"], abs=1e-12)


def _budget(saved: dict) -> dict:
    return {**saved, "tc_probe": tuple(saved["tc_probe"])}


@pytest.mark.usefixtures("one_thread")
def test_quick_study_writes_records_and_report_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "select: 2 runs, 0 already done, 2 to run" in printed
    assert "heldout: 2 runs, 0 already done, 2 to run" in printed
    assert "ran 4 new runs" in printed

    # One record per run, named by its key; no scratch folder or partial file left.
    records = _records(out)
    assert len(records) == 4
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"{k}.json" for k in records)
    for key, record in records.items():
        _check_record(key, record)
    by_run = {(r["point"]["loss"], r["seed"]): r for r in records.values()}
    assert set(by_run) == {(loss, s) for loss in ("betavae", "btcvae") for s in (0, 1)}

    # study.json: the protocol, the selection, one chosen setting and held-out row per loss,
    # their numbers those of the records.
    study = json.loads((out / "study.json").read_text())
    assert study["protocol"]["seeds_select"] == [0] and study["protocol"]["seeds_heldout"] == [1]
    assert study["records"] == 4
    assert set(study["chosen"]) == {"betavae", "btcvae"}
    for loss, chosen in study["chosen"].items():
        assert set(chosen) == set(LOSS_DEFAULTS["btcvae"]), "pastable into LOSS_DEFAULTS"
        assert chosen == {
            "steps": 12,
            "batch_size": 16,
            "lr": 1e-2,
            "beta": 6.0,
            "kl_warmup": 0,
            "estimator": "mss",
            "bank": 0,
            "bank_refresh": 0,
        }, loss
    for row in study["select"]:
        run = by_run[(row["loss"], 0)]
        assert row["runs"] == 1 and row["mig"]["median"] == run["mig"]
        assert row["eval_rec_loss"]["median"] == run["eval_rec_loss"]
    for loss, held in study["heldout"].items():
        run = by_run[(loss, 1)]
        assert held["runs"] == 1 and held["seeds"] == [1] and held["images_seen"] == 192
        for field in ("mig", "active_dims", "eval_rec_loss"):
            assert held[field]["median"] == held[field]["q25"] == run[field]
        assert held["wall_s"]["median"] == run["wall_s"]
    for loss, entries in study["tc_bias"].items():
        assert [e["batch_size"] for e in entries] == [16, 64], loss
        biases = [b["tc_bias"] for r in records.values() for b in r["tc_probe"]["batches"]]
        for e in entries:
            assert e["tc_bias"]["n"] == 2  # both seeds of the loss
            assert min(biases) <= e["tc_bias"]["median"] <= max(biases)

    # study.md: the three tables, a row per loss in each of the first two.
    md = (out / "study.md").read_text()
    assert md.count("| loss | batch | β | warm-up | estimator | runs | MIG |") == 2
    assert "| loss | minibatch | runs | TC bias |" in md
    assert md.count("| betavae | 16 | 6 | 0 | — | 1 |") == 2
    assert md.count("| btcvae | 16 | 6 | 0 | mss | 1 |") == 2
    for name in ("mig_vs_batch.png", "tc_bias.png"):
        blob = (out / name).read_bytes()
        assert blob.startswith(PNG_MAGIC) and len(blob) > 5_000, name
        assert f"({name})" in md

    # A rerun trains nothing and leaves every record as it was.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "select: 2 runs, 2 already done, 0 to run" in printed
    assert "heldout: 2 runs, 2 already done, 0 to run" in printed
    assert "ran 0 new runs" in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == mtimes

    # --report-only rebuilds the report from the records alone.
    for name in FILES:
        (out / name).unlink()
    assert main(["--quick", "--out", str(out), "--report-only"]) == 0
    assert "ran 0 new runs" in capsys.readouterr().out
    assert all((out / name).is_file() for name in FILES)
    assert json.loads((out / "study.json").read_text())["chosen"] == study["chosen"]


def test_heldout_before_selection_is_an_error(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path), "--phase", "heldout"]) == 1
    assert "run --phase select first" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.usefixtures("one_thread")
def test_shards_split_each_phase_and_heldout_waits_for_the_whole_selection(tmp_path, capsys):
    """Two shards run disjoint halves of the quick selection; the held-out phase refuses
    to start on half a selection, then its shards run the chosen points' seeds."""
    quick = ["--quick", "--out", str(tmp_path)]
    assert main([*quick, "--phase", "select", "--shard", "0/2"]) == 0
    assert len(_records(tmp_path)) == 1
    assert main([*quick, "--phase", "heldout", "--shard", "0/2"]) == 1
    assert "the selection is unfinished (1 of 2 runs" in capsys.readouterr().err
    assert main([*quick, "--phase", "select", "--shard", "1/2"]) == 0
    first = set(_records(tmp_path))
    assert len(first) == 2 and {k.split("_")[0] for k in first} == {"betavae", "btcvae"}
    for k in (0, 1):
        assert main([*quick, "--phase", "heldout", "--shard", f"{k}/2"]) == 0
    records = _records(tmp_path)
    assert len(records) == 4 and {r["seed"] for k, r in records.items() if k not in first} == {1}
    assert main([*quick]) == 0
    assert "ran 0 new runs" in capsys.readouterr().out


def test_readme_block_is_study_md_with_headings_down_and_pictures_relinked(tmp_path):
    out = tmp_path / "perf" / "results" / "study"
    out.mkdir(parents=True)
    study_md = "# Title\n\ntext\n\n## Held-out\n\n| a |\n\n![MIG](mig_vs_batch.png)\n"
    (out / "study.md").write_text(study_md)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Top\n\nbefore\n{README_BEGIN}\nstale\n{README_END}\nafter\n")
    study = Study((), (0,), (1,), Budget(), out)
    splice_readme(readme, study)
    expected = "text\n\n#### Held-out\n\n| a |\n\n![MIG](perf/results/study/mig_vs_batch.png)\n"
    assert readme_block(study_md, out, readme) == expected
    assert readme.read_text() == (
        f"# Top\n\nbefore\n{README_BEGIN}\n{expected}{README_END}\nafter\n"
    )
    splice_readme(readme, study)  # idempotent
    assert readme.read_text().count("#### Held-out") == 1
    readme.write_text("no block here\n")
    with pytest.raises(RuntimeError, match="has no block"):
        splice_readme(readme, study)


def test_paper_grid_varies_the_estimator_of_the_btcvae_alone():
    grid = make_grid(("betavae", "btcvae"), **PRESETS["paper"])
    beta_vae = [p for p in grid if p.loss == "betavae"]
    tcvae = [p for p in grid if p.loss == "btcvae"]
    assert len(beta_vae) == 3 * 1 * 2 and {p.estimator for p in beta_vae} == {"mss"}
    assert len(tcvae) == 3 * 1 * 2 * 2 and {p.estimator for p in tcvae} == {"mss", "mws"}
    assert len(set(grid)) == len(grid)


def test_run_keys_name_the_run_and_change_with_anything_that_defines_it():
    point, budget = GridPoint("btcvae", 256, 6.0, 0.25, "mws"), Budget()
    key = run_key(point, 3, budget)
    assert key.startswith("btcvae_b256_beta6_w0.25_mws_s3_")
    assert run_key(GridPoint("btcvae", 256, 6.0, 0.25, "mws"), 3, Budget()) == key
    others = {
        run_key(point, 4, budget),
        run_key(GridPoint("btcvae", 256, 6.0, 0.25, "mss"), 3, budget),
        run_key(point, 3, Budget(images=budget.images + 1)),
        run_key(point, 3, Budget(compile=False)),
    }
    assert key not in others and len(others) == 4


def test_a_zero_bank_keeps_the_names_of_the_runs_made_before_banks_existed():
    """The committed records were written before GridPoint had a bank: their names (and so
    a rerun's skip) hold; a bank is part of the name and of the hash."""
    budget = Budget()
    point = GridPoint("btcvae", 64, 6.0, 0.25, "mss")
    assert run_key(point, 0, budget) == "btcvae_b64_beta6_w0.25_mss_s0_fcc7f24775"
    assert (COMMITTED / "runs" / "btcvae_b64_beta6_w0.25_mss_s0_fcc7f24775.json").is_file()
    banked = run_key(GridPoint("btcvae", 64, 6.0, 0.25, "mss", 4096), 0, budget)
    assert banked.startswith("btcvae_b64_beta6_w0.25_mss_k4096_s0_")
    assert banked[-10:] != "fcc7f24775"


def test_bank_axis_multiplies_the_btcvae_mss_points_alone():
    grid = make_grid(("betavae", "btcvae"), (64,), (6.0,), (0.25,), ("mss", "mws"), (0, 4096))
    assert [(p.loss, p.estimator, p.bank) for p in grid] == [
        ("betavae", "mss", 0),
        ("btcvae", "mss", 0),
        ("btcvae", "mss", 4096),
        ("btcvae", "mws", 0),
    ]
    config = demo_config(grid[2], 3, Budget(images=128_000), Path("x"))
    assert (config.bank, config.tc_track) == (4096, 2000 // 8)
    assert demo_config(grid[1], 3, Budget(images=128_000), Path("x")).tc_track == 0


def test_refresh_axis_multiplies_the_points_with_a_bank_at_least_as_large():
    """A refresh needs a bank (and one of R posteriors or more); a zero refresh keeps the
    name and the hash of the bank's runs made before refreshes existed."""
    grid = make_grid(("btcvae",), (64,), (6.0,), (0.25,), ("mss",), (0, 128, 4096), (0, 192))
    assert [(p.bank, p.bank_refresh) for p in grid] == [(0, 0), (128, 0), (4096, 0), (4096, 192)]
    refreshed = grid[-1]
    assert refreshed.label() == "btcvae_b64_beta6_w0.25_mss_k4096_r192"
    config = demo_config(refreshed, 3, Budget(images=128_000), Path("x"))
    assert (config.bank, config.bank_refresh) == (4096, 192)
    budget = Budget()
    assert run_key(grid[2], 0, budget) == "btcvae_b64_beta6_w0.25_mss_k4096_s0_cce67f66d1"
    assert (
        COMMITTED_BANK / "runs" / "btcvae_b64_beta6_w0.25_mss_k4096_s0_cce67f66d1.json"
    ).is_file()
    assert run_key(refreshed, 0, budget)[-10:] != "cce67f66d1"


BANK_STUDY = [
    "--losses", "betavae", "btcvae", "--batch-sizes", "16", "--betas", "6", "--warmups", "0",
    "--estimators", "mss", "--bank", "0", "64", "--seeds-select", "0", "--seeds-heldout", "1",
    "--steps-images", "192", "--n-train", "256", "--n-eval", "256", "--latent-dim", "4",
    "--channels", "8", "--no-compile", "--lr", "1e-2",
]  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_a_bank_study_tracks_the_tc_bias_during_training_and_reports_it(tmp_path, capsys):
    """``--bank 0 64``: the bank's runs measure their TC estimate's bias during training
    (every 12 // 8 = 1 step; the bank's most recent 16 alone too), study.json's
    ``tc_track`` holds its statistics over the runs (the biases those of the records),
    study.md a section and a bank column, and tc_track.png is drawn."""
    out = tmp_path / "study"
    assert main([*BANK_STUDY, "--out", str(out), "--phase", "select"]) == 0
    records = _records(out)
    assert len(records) == 3
    banked = [r for r in records.values() if r["point"].get("bank")]
    assert len(banked) == 1 and banked[0]["tcvae"]["bank_size"] == 64
    points = banked[0]["tc_track"]["points"]
    assert [m["step"] for m in points] == list(range(1, 13))
    assert all("tc_track" not in r for r in records.values() if not r["point"].get("bank"))
    report = json.loads((out / "study.json").read_text())
    (row,) = report["tc_track"]
    assert (row["bank"], row["runs"], len(row["by_step"])) == (64, 1, 12)
    for m, stats in zip(points, row["by_step"], strict=True):
        for name in ("batch", "bank", "fresh"):
            assert stats[name]["median"] == pytest.approx(m[name] - m["full"], abs=1e-12)
    recent, whole = row["parts_after_warmup"]  # no warm-up: every measurement counts
    assert (recent["size"], recent["n"], whole["size"], whole["n"]) == (16, 12, 64, 12)
    biases = sorted(m["sub_banks"][0]["bank"] - m["full"] for m in points)
    assert recent["bank"]["median"] == pytest.approx((biases[5] + biases[6]) / 2, abs=1e-12)
    stale = sorted(m["bank"] - m["fresh"] for m in points)  # measurement by measurement
    late = row["after_warmup"]["staleness"]
    assert late["median"] == pytest.approx((stale[5] + stale[6]) / 2, abs=1e-12)
    assert whole["staleness"] == late
    part = sorted(m["sub_banks"][0]["bank"] - m["sub_banks"][0]["fresh"] for m in points)
    assert recent["staleness"]["median"] == pytest.approx((part[5] + part[6]) / 2, abs=1e-12)
    md = (out / "study.md").read_text()
    assert "## Bias of the total-correlation estimate during training, with a bank" in md
    assert "| loss | batch | β | warm-up | estimator | bank |" in md
    assert (out / "tc_track.png").read_bytes().startswith(PNG_MAGIC)
    assert report["files"][-1] == str(out / "tc_track.png")


def test_demo_config_spends_the_same_images_at_every_batch_size():
    budget = Budget(images=128_000, tc_probe=(16, 64))
    for batch, steps in ((64, 2000), (256, 500), (1024, 125)):
        config = demo_config(GridPoint("btcvae", batch, 6.0, 0.25, "mws"), 7, budget, Path("x"))
        assert (config.steps, config.batch_size, config.kl_warmup) == (steps, batch, steps // 4)
        assert config.seed == 7 and config.estimator == "mws" and config.device == "cpu"
        assert not config.figures and config.quiet
        assert config.tc_probe == tuple(sorted({16, 64, batch}))


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0-4", (0, 1, 2, 3, 4)), ("5,7", (5, 7)), ("0-2,8,1", (0, 1, 2, 8)), ("3", (3,))],
)
def test_seed_lists(text, seeds):
    assert options.seeds(text) == seeds


@pytest.mark.parametrize(
    "argv",
    [
        ["--seeds-select", "0-4", "--seeds-heldout", "4-9"],  # shared seed
        ["--seeds-select", "a-b"],
        ["--warmups", "1.0"],
        ["--batch-sizes", "1"],
        ["--shard", "2/2", "--phase", "select"],
        ["--shard", "0-2", "--phase", "select"],
        ["--shard", "0/2"],  # phase all: the held-out shards would start on half a selection
    ],
)
def test_bad_study_arguments_are_argparse_errors(argv):
    with pytest.raises(SystemExit) as exc:
        parse_study(argv)
    assert exc.value.code == 2


def test_selection_takes_the_best_median_over_complete_points(tmp_path):
    """Records made up here: per loss, the point whose median MIG over the selection seeds
    is largest wins, a point missing a seed cannot, a tie goes to the first in grid order,
    and held-out seeds' records do not count."""
    grid = (
        GridPoint("betavae", 64, 6.0, 0.0, "mss"),
        GridPoint("betavae", 256, 6.0, 0.0, "mss"),
        GridPoint("betavae", 1024, 6.0, 0.0, "mss"),
        GridPoint("btcvae", 64, 6.0, 0.0, "mss"),
        GridPoint("btcvae", 64, 6.0, 0.0, "mws"),
    )
    study = Study(grid, (0, 1, 2), (5,), Budget(), tmp_path)
    migs = {
        grid[0]: [0.9, 0.1, 0.2],  # mean 0.40, median 0.2
        grid[1]: [0.3, 0.3, 0.25],  # median 0.3: the best complete betavae point
        grid[2]: [0.8, 0.8],  # best, but seed 2 missing
        grid[3]: [0.1, 0.5, 0.4],  # median 0.4
        grid[4]: [0.4, 0.4, 0.0],  # median 0.4 too: the tie goes to grid[3]
    }
    records = {}
    for point, values in migs.items():
        for seed, value in enumerate(values):
            records[run_key(point, seed, study.budget)] = {
                "mig": value, "active_dims": 3, "eval_rec_loss": 100.0,
            }  # fmt: skip
    records[run_key(grid[0], 5, study.budget)] = {"mig": 1.0, "active_dims": 3, "eval_rec_loss": 1}
    rows, chosen = selection(study, records)
    assert chosen == {"betavae": grid[1], "btcvae": grid[3]}
    assert [r["runs"] for r in rows] == [3, 3, 2, 3, 3]
    for row, values in zip(rows, migs.values(), strict=True):
        assert row["mig"]["median"] == pytest.approx(np.median(values))
        assert row["mig"]["q25"] == pytest.approx(np.percentile(values, 25))


def test_command_line_grid_is_the_preset_with_the_axes_given_replaced():
    study, args = parse_study([])
    assert study.grid == make_grid(("betavae", "btcvae"), **PRESETS["paper"])
    assert (study.seeds_select, study.seeds_heldout) == ((0, 1, 2, 3, 4), tuple(range(5, 15)))
    assert study.budget == Budget() and study.out == Path("demo-output/study")
    assert args.phase == "all" and not args.report_only
    study, _ = parse_study(["--grid", "small", "--losses", "btcvae"])
    assert study.grid == make_grid(("btcvae",), **PRESETS["small"])
    study, _ = parse_study(["--batch-sizes", "32", "128", "--estimators", "mws"])
    assert {(p.loss, p.batch_size, p.estimator) for p in study.grid} == {
        (loss, b, "mss" if loss == "betavae" else "mws")
        for loss in ("betavae", "btcvae")
        for b in (32, 128)
    }
    assert {p.warmup for p in study.grid} == set(PRESETS["paper"]["warmups"])


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_study(["--help"])
    assert exc.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m betavae_triton.demo.study")
    parser = build_parser()
    assert parser.description.endswith(".")
    assert [a.dest for a in parser._actions if not a.help] == []


# ---- the study behind the README (perf/results/study, committed) -------------------------

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "perf" / "results" / "study"
COMMITTED_BANK = ROOT / "perf" / "results" / "study-bank"
# The fields of a held-out row that name its grid point.
POINT_KEYS = ("loss", "batch_size", "beta", "warmup", "estimator", "bank", "bank_refresh")


def _committed_study(folder: Path = COMMITTED) -> tuple[Study, dict]:
    report = json.loads((folder / "study.json").read_text())
    protocol = report["protocol"]
    study = Study(
        tuple(GridPoint(**p) for p in protocol["grid"]),
        tuple(protocol["seeds_select"]),
        tuple(protocol["seeds_heldout"]),
        Budget(**_budget(protocol["budget"])),
        folder,
    )
    return study, report


@pytest.mark.parametrize("committed", [COMMITTED, COMMITTED_BANK], ids=lambda p: p.name)
def test_committed_study_report_is_what_its_records_give(committed):
    """study.md and study.json's tables are rebuilt from the committed run records, here:
    no number in them was edited by hand (the bank's study: its tracked TC bias too)."""
    study, report = _committed_study(committed)
    records = load_records(study.runs_dir)
    rebuilt = build_report(study, records)
    for field in ("select", "chosen", "heldout", "tc_bias", "tc_track", "records"):
        assert rebuilt.get(field) == report.get(field), field
    assert ("tc_track" in report) is (committed == COMMITTED_BANK)
    assert markdown(study, rebuilt) == (committed / "study.md").read_text()
    chosen = [
        GridPoint(**{k: row[k] for k in POINT_KEYS if k in row})
        for row in report["heldout"].values()
    ]
    wanted = [run_key(p, seed, study.budget) for p in study.grid for seed in study.seeds_select]
    wanted += [run_key(p, seed, study.budget) for p in chosen for seed in study.seeds_heldout]
    missing = sorted(set(wanted) - set(records))
    assert not missing, f"every run of both phases has its record: {missing}"


@pytest.mark.parametrize("committed", [COMMITTED, COMMITTED_BANK], ids=lambda p: p.name)
def test_readme_holds_the_committed_study_md(committed):
    readme = ROOT / "README.md"
    text = readme.read_text()
    begin, end = readme_markers(committed)
    block = text[text.index(begin) + len(begin) + 1 : text.index(end)]
    assert block == readme_block((committed / "study.md").read_text(), committed, readme)
    for picture in FILES[2:]:
        assert (committed / picture).read_bytes().startswith(PNG_MAGIC)


def test_a_study_folder_of_another_name_has_markers_of_its_own(tmp_path):
    assert readme_markers(tmp_path / "study") == (README_BEGIN, README_END)
    begin, end = readme_markers(tmp_path / "study-bank")
    assert begin.startswith("<!-- study-bank/study.md begins: ") and begin.endswith(" -->")
    assert end == "<!-- study-bank/study.md ends -->"
    assert README_BEGIN not in begin and README_END not in end


def test_demo_defaults_are_the_studys_choice_for_the_btcvae():
    """The bank's study chose the β-TCVAE's setting (the first study's choice, batch 256
    without a bank, is in its own report)."""
    _, report = _committed_study(COMMITTED_BANK)
    assert LOSS_DEFAULTS["btcvae"] == report["chosen"]["btcvae"]


# ---- the protocol: what the held-out seeds may touch (issue 31) ----------------------------

PROTOCOL_GRID = (
    GridPoint("betavae", 64, 6.0, 0.0, "mss"),
    GridPoint("betavae", 256, 6.0, 0.0, "mss"),
    GridPoint("btcvae", 64, 6.0, 0.0, "mss"),
    GridPoint("btcvae", 256, 6.0, 0.0, "mss"),
)
# MIG by grid point over the selection seeds 0-2: the β-VAE's best is batch 256, the
# β-TCVAE's batch 64.
SELECT_MIGS = {
    PROTOCOL_GRID[0]: (0.10, 0.20, 0.15),
    PROTOCOL_GRID[1]: (0.30, 0.25, 0.35),
    PROTOCOL_GRID[2]: (0.40, 0.30, 0.20),
    PROTOCOL_GRID[3]: (0.05, 0.10, 0.00),
}


def _made_up(point: GridPoint, seed: int, mig: float, budget: Budget) -> tuple[str, dict]:
    """A record as run_one writes it, with the fields the report reads."""
    steps = budget.steps(point.batch_size)
    return run_key(point, seed, budget), {
        "point": asdict(point), "seed": seed, "steps": steps,
        "images_seen": steps * point.batch_size, "mig": mig, "active_dims": 3 + seed,
        "eval_rec_loss": 100.0 - 10 * mig, "wall_s": 10.0 + seed,
    }  # fmt: skip


def _protocol_study(tmp_path: Path) -> tuple[Study, dict[str, dict], dict[str, dict]]:
    """A study with selection seeds 0-2 and held-out seeds 3-5, its selection records,
    and held-out records of every grid point whose MIG would overturn the choice if it
    counted: 0 for each loss's chosen point, 1 for every other (as if another study's
    held-out runs, or those of another choice, shared the folder)."""
    study = Study(PROTOCOL_GRID, (0, 1, 2), (3, 4, 5), Budget(images=128_000), tmp_path)
    select = dict(
        _made_up(p, s, mig, study.budget)
        for p, migs in SELECT_MIGS.items()
        for s, mig in enumerate(migs)
    )
    chosen = {PROTOCOL_GRID[1], PROTOCOL_GRID[2]}
    heldout = dict(
        _made_up(p, s, 0.0 if p in chosen else 1.0, study.budget)
        for p in PROTOCOL_GRID
        for s in study.seeds_heldout
    )
    return study, select, heldout


def test_heldout_records_never_change_the_choice(tmp_path):
    """The choice is made on the selection seeds alone: held-out records, however good
    or bad, change neither the chosen point of either loss nor the selection rows that
    the choice reads."""
    study, select, heldout = _protocol_study(tmp_path)
    rows, chosen = selection(study, select)
    assert chosen == {"betavae": PROTOCOL_GRID[1], "btcvae": PROTOCOL_GRID[2]}
    assert [r["runs"] for r in rows] == [3, 3, 3, 3]
    assert selection(study, {**select, **heldout}) == (rows, chosen)
    report = build_report(study, {**select, **heldout})
    assert report["chosen"] == build_report(study, select)["chosen"]
    assert report["chosen"]["btcvae"]["batch_size"] == 64


def test_heldout_records_enter_no_selection_figure_or_table(tmp_path, monkeypatch):
    """The selection's statistics, its table in study.md and its curves in
    mig_vs_batch.png come from the selection seeds alone; the held-out seeds appear only
    in the held-out row and curve of each loss's chosen point."""
    study, select, heldout = _protocol_study(tmp_path)
    records = {**select, **heldout}
    report = build_report(study, records)
    assert report["select"] == build_report(study, select)["select"]
    for row, migs in zip(report["select"], SELECT_MIGS.values(), strict=True):
        assert row["runs"] == 3 and row["mig"]["median"] == pytest.approx(np.median(migs))

    def section(md: str) -> str:  # the selection's table in study.md
        return md[md.index("## Selection") : md.index("## Bias")]

    assert section(markdown(study, report)) == section(markdown(study, build_report(study, select)))
    for loss, point in (("betavae", PROTOCOL_GRID[1]), ("btcvae", PROTOCOL_GRID[2])):
        held = report["heldout"][loss]
        assert held["runs"] == 3 and held["seeds"] == [3, 4, 5] and held["mig"]["median"] == 0
        assert (held["batch_size"], held["estimator"]) == (point.batch_size, point.estimator)

    drawn: dict[str, dict] = {}
    monkeypatch.setattr(
        plots, "plot_mig_vs_batch", lambda series, path, title: drawn.update(series)
    )
    monkeypatch.setattr(plots, "plot_tc_bias", lambda series, path, title: None)
    study_report._figures(study, report, records)
    assert drawn == {
        "betavae: best setting per batch size": [
            (64, list(SELECT_MIGS[PROTOCOL_GRID[0]])),
            (256, list(SELECT_MIGS[PROTOCOL_GRID[1]])),
        ],
        "btcvae: best setting per batch size": [
            (64, list(SELECT_MIGS[PROTOCOL_GRID[2]])),
            (256, list(SELECT_MIGS[PROTOCOL_GRID[3]])),
        ],
        "betavae: chosen, held-out seeds": [(256, [0.0, 0.0, 0.0])],
        "btcvae: chosen, held-out seeds": [(64, [0.0, 0.0, 0.0])],
    }


def test_heldout_runs_see_as_many_images_as_their_points_selection_runs(tmp_path, monkeypatch):
    """Both phases through run_study, with the demo's training replaced by a stand-in
    that records each run's settings: every run sees ``images // batch`` steps of its
    batch (at most the budget, less by under one batch), a held-out run exactly the
    images of its point's selection runs, and the held-out table says so. The budget
    (1000 images) is no multiple of the batch sizes (16: 992 images, 48: 960)."""
    configs: list[DemoConfig] = []

    def train(config: DemoConfig, dist: object) -> dict:
        configs.append(config)
        mig = 0.5 if config.batch_size == 48 else 0.1
        return {
            "curves": {"loss": [1.0] * config.steps}, "timings": {"total_s": 1.0},
            "torch_version": torch.__version__, "mig": mig + config.seed / 100,
            "active_dims": 2, "eval_rec_loss": 50.0,
        }  # fmt: skip

    monkeypatch.setattr(study_module, "run", train)
    for figure in ("plot_mig_vs_batch", "plot_tc_bias"):  # (not what this test is about)
        monkeypatch.setattr(plots, figure, lambda series, path, title: None)
    budget = Budget(images=1000, compile=False, tc_probe=())
    grid = make_grid(("betavae", "btcvae"), (16, 48), (6.0,), (0.0,), ("mss",))
    study = Study(grid, (0, 1), (2, 3, 4), budget, tmp_path)
    report = study_module.run_study(study)
    assert report["ran"] == len(configs) == 4 * 2 + 2 * 3

    seen = {(c.loss, c.batch_size, c.seed): c.steps * c.batch_size for c in configs}
    for (_, batch, _), images in seen.items():
        assert images == budget.steps(batch) * batch == {16: 992, 48: 960}[batch]
        assert budget.images - batch < images <= budget.images
    records = load_records(study.runs_dir)
    for record in records.values():
        point = record["point"]
        assert record["images_seen"] == seen[(point["loss"], point["batch_size"], record["seed"])]
        assert record["images_seen"] == record["steps"] * point["batch_size"]
    for loss, held in report["heldout"].items():
        assert held["batch_size"] == 48 and held["seeds"] == [2, 3, 4]
        selected = {seen[(loss, 48, s)] for s in study.seeds_select}
        heldout = {seen[(loss, 48, s)] for s in study.seeds_heldout}
        assert heldout == selected == {held["images_seen"]} == {960}
