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


def test_nidl_is_read_from_a_path_never_vendored(tmp_path: Path) -> None:
    """``--nidl`` takes a wheel, nidl's ``beta_vae.py`` or a folder holding the package."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from perf.contenders import load_nidl

    assert not list(ROOT.glob("perf/**/beta_vae.py")), "nidl's code must not be vendored"
    assert load_nidl("none", tmp_path).cls is None
    missing = load_nidl(None, tmp_path)  # no installed nidl, nothing cached: no download
    if importlib.util.find_spec("nidl") is None:
        assert missing.cls is None and "NOT FOUND" in missing.origin
    nidl = _nidl_argument()
    if nidl in ("", "none"):
        return
    source = load_nidl(nidl, tmp_path)
    assert source.cls.__name__ == "BetaVAELoss" and source.version
    x = torch.rand(2, 3)
    q = torch.distributions.Normal(torch.zeros(2, 4), torch.ones(2, 4))
    out = source.cls(beta=4.0, default_dist="normal")(x, x, q)
    assert float(out["loss"]) == 0.0
