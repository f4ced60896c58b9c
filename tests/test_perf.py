"""``python -m perf.bench --quick`` runs end to end and writes sane figures (issue 5).

Speed is not asserted: only that every expected figure is there, positive and finite.
"""

from __future__ import annotations

import datetime
import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
QUICK_WORKLOADS = {"sprites", "faces", "sweep-2^16", "sweep-2^18", "sweep-2^20"}
MODES = {"fwd", "fwd+bwd"}


def _nidl_argument() -> str:
    """A local nidl (installed, or a wheel already on disk); ``none`` rather than download."""
    if importlib.util.find_spec("nidl") is not None:
        return ""
    candidates = [os.environ.get("NIDL_WHEEL", "")]
    candidates += sorted(glob.glob(str(ROOT / "perf" / "out" / "nidl-cache" / "nidl-*.whl")))
    candidates += sorted(glob.glob("/tmp/nidl/nidl-*.whl"))
    return next((c for c in candidates if c and Path(c).is_file()), "none")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_writes_json_and_plot(tmp_path: Path) -> None:
    nidl = _nidl_argument()
    cmd = [sys.executable, "-m", "perf.bench", "--quick", "--no-progress", "--out", str(tmp_path)]
    if nidl:
        cmd += ["--nidl", nidl]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    device = "cuda" if torch.cuda.is_available() else "cpu"
    stem = tmp_path / f"bench_{device}_quick"
    png = stem.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert "sweep-2^16" in stem.with_suffix(".txt").read_text()
    doc = json.loads(stem.with_suffix(".json").read_text())

    meta = doc["meta"]
    assert meta["device"] and meta["host"]
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["python"]
    datetime.datetime.fromisoformat(meta["date"])
    assert _positive(meta["copy_bandwidth_Bps"])

    expected = {"eager", "eager+compile", "compiled-ref"}
    if device == "cuda":
        expected.add("triton")
    if nidl != "none":
        expected.add("nidl")
    assert set(doc["contenders"]) == expected, doc["dropped"]
    assert {w["name"] for w in doc["workloads"]} == QUICK_WORKLOADS

    rows = {(r["workload"], r["mode"], r["contender"]): r for r in doc["results"]}
    assert set(rows) == {(w, m, c) for w in QUICK_WORKLOADS for m in MODES for c in expected}
    for key, row in rows.items():
        assert row["error"] is None, (key, row["error"])
        for field in ("seconds", "bandwidth", "bytes", "vs_compiled_ref", "first_call_s"):
            assert _positive(row[field]), (key, field, row[field])
        if "nidl" in expected:
            assert _positive(row["vs_nidl"]), (key, row["vs_nidl"])
        # Every contender computes the same loss as the float64 oracle.
        assert row["rel_err"] is not None and row["rel_err"] < 1e-3, (key, row["rel_err"])


def test_bench_runs_as_a_script_from_anywhere(tmp_path: Path) -> None:
    """``python perf/bench.py`` works as well as ``python -m perf.bench``, from any folder."""
    script = ROOT / "perf" / "bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--quick" in done.stdout and "--nidl" in done.stdout


# A stand-in for nidl's losses/beta_vae.py, written by this test (not nidl's code): enough
# to show that each form of --nidl finds the module and its version.
_STAND_IN = """
import torch


class BetaVAELoss:
    def __init__(self, beta=4.0, default_dist="normal"):
        self.beta = beta

    def __call__(self, x, p, q):
        rec = ((p - x) ** 2).sum() / x.shape[0]
        kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
        kl = kl.mean(dim=0).sum()
        return {"rec_loss": rec, "kl_loss": kl, "loss": rec + self.beta * kl}
"""


def _check_loss_class(cls: type) -> None:
    assert cls.__name__ == "BetaVAELoss"
    x = torch.rand(2, 3)
    q = torch.distributions.Normal(torch.zeros(2, 4), torch.ones(2, 4))
    out = cls(beta=4.0, default_dist="normal")(x, x, q)
    assert float(out["loss"]) == 0.0


def test_nidl_is_read_from_a_path_never_vendored(tmp_path: Path) -> None:
    """``--nidl`` takes a wheel, nidl's ``beta_vae.py`` or a folder holding the package:
    each form is read from a stand-in written here; a real nidl too when one is on disk."""
    import zipfile

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from perf.nidl import load_nidl

    assert not list(ROOT.glob("perf/**/beta_vae.py")), "nidl's code must not be vendored"
    assert load_nidl("none", tmp_path).cls is None
    if importlib.util.find_spec("nidl") is None:
        missing = load_nidl(None, tmp_path / "empty")  # nothing installed or cached
        assert missing.cls is None and "NOT FOUND" in missing.origin
    else:
        _check_loss_class(load_nidl(None, tmp_path / "empty").cls)

    package = tmp_path / "site" / "nidl"
    (package / "losses").mkdir(parents=True)
    (package / "losses" / "beta_vae.py").write_text(_STAND_IN)
    (package / "info.py").write_text('__version__ = "9.9.9"\n')
    wheel = tmp_path / "nidl-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("nidl/losses/beta_vae.py", _STAND_IN)
        zf.writestr("nidl-9.9.9.dist-info/METADATA", "Name: nidl\nVersion: 9.9.9\n")
    forms = (wheel, package / "losses" / "beta_vae.py", package, tmp_path / "site")
    for form in forms:
        source = load_nidl(str(form), tmp_path)
        _check_loss_class(source.cls)
        assert source.version == "9.9.9", (form, source.version)
    with pytest.raises(FileNotFoundError):
        load_nidl(str(tmp_path / "nowhere"), tmp_path)

    real = _nidl_argument()
    if real not in ("", "none"):  # a real nidl wheel on disk: read it the same way
        source = load_nidl(real, tmp_path)
        _check_loss_class(source.cls)
        assert source.version


def test_btcvae_benchmark_counts_memory_and_writes_json(tmp_path: Path) -> None:
    """``python -m perf.btcvae --quick`` at one size (issue 15): every figure is there, the
    memory counter sees the hand-computed peaks, and ours peaks below the B×B×D formula;
    the bank axis (issue 32) at K = 0 and 4096: a step with the bank's (B + K)·D values
    takes more memory and time than without."""
    cmd = [sys.executable, "-m", "perf.btcvae", "--quick", "--batch", "512", "--latent", "32"]
    cmd += ["--bank", "0", "4096"]
    cmd += ["--device", "cpu", "--no-progress", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((tmp_path / "btcvae_cpu_quick.json").read_text())
    assert doc["meta"]["versions"]["torch"] == torch.__version__ and doc["meta"]["git"]
    datetime.datetime.fromisoformat(doc["meta"]["date"])
    for check in doc["memory_check"][:2]:  # known by hand: 32 MiB, and inductor's 64 MiB
        assert 0 <= check["counted"] - check["expected"] < 1024, check  # + 0-d scalars
    rows = {r["contender"]: r for r in doc["results"]}
    assert set(rows) == {"ours-eager", "ours-compiled", "formula", "formula-compiled"}
    for name, row in rows.items():
        assert row["error"] is None and row["skipped"] is None, (name, row)
        for field in ("seconds", "first_call_s", "peak_extra_bytes", "bbd_bytes"):
            assert _positive(row[field]), (name, field, row[field])
        assert row["rel_err"] < 1e-4, (name, row["rel_err"])
    assert _positive(rows["ours-eager"]["formula_over_this"])
    for ours in ("ours-eager", "ours-compiled"):  # O(B·D) against the B×B×D formula
        assert rows[ours]["peak_extra_bytes"] < rows["formula"]["peak_extra_bytes"] / 4, ours
    assert _positive(rows["ours-compiled"]["compiled_over_this"])
    assert doc["targets"]["speed_vs_formula"][0]["batch"] == 512
    text = (tmp_path / "btcvae_cpu_quick.txt").read_text()
    assert "ours-eager" in text and "target: peak extra memory at K=4096 <= 64 MiB: met" in text
    without, bank = doc["bank"]
    assert (without["bank"], bank["bank"], bank["batch"], bank["latent"]) == (0, 4096, 64, 10)
    assert without["time_over_no_bank"] == 1.0 and bank["time_over_no_bank"] > 1.0
    # at least the (B + K, D) posteriors and their log σ, float32
    assert bank["peak_extra_bytes"] - without["peak_extra_bytes"] > 2 * 4096 * 10 * 4
