"""The benchmark's outputs: a terminal table, a JSON file of every figure, a bandwidth plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["add_ratios", "format_table", "plot_sweep", "write_json"]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def add_ratios(rows: list[dict]) -> None:
    """Fill each row's speed-ups: ``vs_nidl`` and ``vs_compiled_ref`` (their time / ours).

    Parameters
    ----------
    rows : list of dict
        Result rows with ``workload``, ``mode``, ``contender`` and ``seconds``; updated in
        place (None where a time is missing).
    """
    times = {(r["workload"], r["mode"], r["contender"]): r["seconds"] for r in rows}
    for row in rows:
        ours = row["seconds"]
        for key, rival in (("vs_nidl", "nidl"), ("vs_compiled_ref", "compiled-ref")):
            theirs = times.get((row["workload"], row["mode"], rival))
            ok = _finite(ours) and _finite(theirs) and ours > 0
            row[key] = theirs / ours if ok else None


def format_seconds(seconds: float | None) -> str:
    """A duration with a unit that keeps it readable (s, ms, us); "-" when unknown."""
    if not _finite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= 0.9995 * scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _spread(row: dict) -> float | None:
    """Interquartile range of the timings, as a percentage of the median."""
    if not all(_finite(row.get(k)) for k in ("seconds", "p25", "p75")) or row["seconds"] <= 0:
        return None
    return 100 * (row["p75"] - row["p25"]) / row["seconds"]


def format_number(value: float | None, fmt: str, suffix: str = "") -> str:
    """``value`` formatted by ``fmt`` with ``suffix``; "-" when unknown or not finite."""
    return f"{value:{fmt}}{suffix}" if _finite(value) else "-"


def format_table(rows: list[dict], copy_bw: float | None) -> str:
    """Rows as an aligned text table.

    Parameters
    ----------
    rows : list of dict
        Result rows (with ratios, see :func:`add_ratios`).
    copy_bw : float or None
        The measured copy bandwidth (bytes/s): adds a ``%copy`` column. A ``wall/call``
        column (GPU: back-to-back calls, launch overhead included) appears when the rows
        have ``wall_seconds``, a ``faults`` column (CPU: minor page faults per call, each
        a first touch of 4 KiB of fresh memory) when they have ``faults_per_call``.

    Returns
    -------
    table : str
        The table, one line per row, and a blank line between workloads.
    """
    wall = any(_finite(r.get("wall_seconds")) for r in rows)
    faults = any(_finite(r.get("faults_per_call")) for r in rows)
    head = ["workload", "shape", "dtype", "mode", "contender", "median", "IQR"]
    head += ["wall/call"] if wall else []
    head += ["GB/s"]
    head += ["faults"] if faults else []
    head += ["%copy"] if copy_bw else []
    head += ["x nidl", "x c-ref", "note"]
    lines = [head]
    last = None
    for row in rows:
        if last is not None and row["workload"] != last:
            lines.append(None)
        last = row["workload"]
        gbps = row["bandwidth"] / 1e9 if _finite(row["bandwidth"]) else None
        line = [
            row["workload"],
            "x".join(map(str, row["shape"])),
            row["dtype"],
            row["mode"],
            row["contender"],
            format_seconds(row["seconds"]),
            format_number(_spread(row), ".0f", "%"),
        ]
        if wall:
            line.append(format_seconds(row.get("wall_seconds")))
        line.append(format_number(gbps, ".1f"))
        if faults:
            line.append(format_number(row.get("faults_per_call"), ".0f"))
        if copy_bw:
            line.append(
                format_number(row.get("copy_share") and 100 * row["copy_share"], ".0f", "%")
            )
        line += [
            format_number(row["vs_nidl"], ".2f", "x"),
            format_number(row["vs_compiled_ref"], ".2f", "x"),
        ]
        line.append(row["error"] or row.get("warning") or "")
        lines.append(line)
    return align_columns(lines, left=range(5))


def align_columns(lines: list, left) -> str:
    """Rows (the first one the header; None for a blank line) as aligned text: the columns
    in ``left`` and the last one flush left, the others flush right, a rule under the
    header."""
    n = len(lines[0])
    widths = [max(len(str(ln[i])) for ln in lines if ln) for i in range(n)]
    out = []
    for ln in lines:
        if ln is None:
            out.append("")
            continue
        cells = [
            str(c).ljust(w) if i in left or i == n - 1 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(ln, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _clean(value: object) -> object:
    """JSON has no NaN or Infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, document: dict) -> None:
    """Write ``document`` as strict JSON (non-finite numbers as null).

    Parameters
    ----------
    path : pathlib.Path
        Output file.
    document : dict
        Metadata and rows.
    """
    path.write_text(json.dumps(_clean(document), indent=2, allow_nan=False) + "\n")


def plot_sweep(
    path: Path,
    rows: list[dict],
    contenders: list[str],
    copy_bw: float | None,
    title: str,
) -> bool:
    """Effective bandwidth vs size on the sweep, one line per contender, as a PNG.

    One panel per mode (forward; forward + backward), log2 size axis, like Triton's
    ``perf_report`` plots; the copy bandwidth is a dashed horizontal line.

    Parameters
    ----------
    path : pathlib.Path
        Output PNG.
    rows : list of dict
        Result rows; those of sweep workloads are plotted.
    contenders : list of str
        Contenders, in legend order.
    copy_bw : float or None
        Measured copy bandwidth (bytes/s), or None.
    title : str
        Figure title (the device).

    Returns
    -------
    written : bool
        False when there is no sweep point to plot.
    """
    sweep = [r for r in rows if r["sweep"]]
    if not sweep:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in sweep))
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for name in contenders:
            pts = sorted(
                (r["numel"], r["bandwidth"] / 1e9)
                for r in sweep
                if r["mode"] == mode and r["contender"] == name and _finite(r["bandwidth"])
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=name)
        if copy_bw:
            ax.axhline(copy_bw / 1e9, color="black", linestyle="--", label="copy bandwidth")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("elements of x (float32, normal)")
        ax.set_ylabel("effective bandwidth (GB/s)")
        moved = "read p, x" if mode == "fwd" else "read p, x; write grad p"
        ax.set_title(f"{mode}  ({moved})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
