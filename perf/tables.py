"""The text tables: columns aligned, durations and sizes in readable units; the β-VAE
suite's table, the β-TCVAE suite's table, its memory-counter check and its global batch."""

from __future__ import annotations

import math
import statistics

__all__ = [
    "align_columns",
    "format_global_batch",
    "format_memory_check",
    "format_number",
    "format_seconds",
    "mib",
    "tcvae_table",
    "vae_table",
]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def format_seconds(seconds: float | None) -> str:
    """A duration with a unit that keeps it readable (s, ms, us); "-" when unknown."""
    if not _finite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= 0.9995 * scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def format_number(value: float | None, fmt: str, suffix: str = "") -> str:
    """``value`` formatted by ``fmt`` with ``suffix``; "-" when unknown or not finite."""
    return f"{value:{fmt}}{suffix}" if _finite(value) else "-"


def mib(nbytes: float | None) -> str:
    """A size in MiB (GiB from 1 GiB on); "-" when unknown."""
    if nbytes is None:
        return "-"
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB"


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


def _spread(row: dict) -> float | None:
    """Interquartile range of the timings, as a percentage of the median."""
    if not all(_finite(row.get(k)) for k in ("seconds", "p25", "p75")) or row["seconds"] <= 0:
        return None
    return 100 * (row["p75"] - row["p25"]) / row["seconds"]


def vae_table(rows: list[dict], copy_bw: float | None) -> str:
    """The β-VAE suite's rows as an aligned text table.

    Parameters
    ----------
    rows : list of dict
        Result rows (with ratios, see :func:`perf.race.add_ratios`).
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


def tcvae_table(rows: list[dict]) -> str:
    """The β-TCVAE suite's rows as an aligned text table.

    Parameters
    ----------
    rows : list of dict
        Result rows (time, peak extra memory and its prediction, ratios, error).

    Returns
    -------
    table : str
        One line per row, a blank line between (B, D) cases.
    """
    head = ["B", "D", "contender", "median", "IQR", "peak extra", "BxBxD", "peak/BBD"]
    head += ["predicted", "first call", "formula/this", "compiled/this", "rel err", "note"]
    lines: list[list[str] | None] = [head]
    last = None
    for row in rows:
        if last is not None and (row["batch"], row["latent"]) != last:
            lines.append(None)
        last = (row["batch"], row["latent"])
        note = row["skipped"] or row["error"] or ""
        if (row.get("foreign_load") or 0) > 0.25 and not note:
            note = f"disturbed: other processes took {row['foreign_load']:.1f} core"
        lines.append(
            [
                str(row["batch"]),
                str(row["latent"]),
                row["contender"],
                format_seconds(row["seconds"]),
                format_number(_spread(row), ".0f", "%"),
                mib(row["peak_extra_bytes"]),
                mib(row["bbd_bytes"]),
                format_number(row["peak_over_bbd"], ".2f"),
                mib(row["predicted_peak_bytes"]),
                format_seconds(row["first_call_s"]),
                format_number(row["formula_over_this"], ".2f", "x"),
                format_number(row["compiled_over_this"], ".2f", "x"),
                format_number(row["rel_err"], ".1e"),
                note,
            ]
        )
    return align_columns(lines, left=(2,))


def format_memory_check(checks: list[dict]) -> str:
    """The memory counter's check (:func:`perf.memory.memory_check`), one line per case."""
    lines = []
    for c in checks:
        expected = "-" if c["expected"] is None else mib(c["expected"])
        rss = mib(c["rss"]) if c["rss"] is not None else c.get("rss_error") or "not measured"
        lines.append(
            f"memory counter check: {c['case']}: expected {expected}, counted "
            f"{mib(c['counted'])}, resident-set growth {rss}"
        )
    return "\n".join(lines)


def format_global_batch(g: dict) -> str:
    """The global batch's lines of the report (:func:`perf.gather.global_batch`)."""
    b, d = g["batch"], g["latent"]
    single = g["single"]
    lines = [
        f"global batch B={b} D={d}: one process ({single['threads']} threads): "
        f"{format_seconds(statistics.median(single['seconds']))} per step, peak extra "
        f"{mib(single['peak_extra_bytes'])}"
    ]
    if g["gather"]:
        ranks = g["gather"]
        worst = max(statistics.median(r["seconds"]) for r in ranks)
        peak = max(r["peak_extra_bytes"] for r in ranks)
        mean_loss = sum(r["loss"] for r in ranks) / len(ranks)
        rel = abs(mean_loss - single["loss"]) / abs(single["loss"])
        lines.append(
            f"global batch B={b} D={d}: gather=True over {len(ranks)} gloo ranks of "
            f"{b // len(ranks)} rows ({ranks[0]['threads']} thread(s) each): "
            f"{format_seconds(worst)} per step (slowest rank), peak extra "
            f"{mib(peak)} per rank; mean of the ranks' losses vs one process: rel. diff "
            f"{rel:.1e}"
        )
    elif g["gather_note"]:
        lines.append(f"global batch: gather not timed: {g['gather_note']}")
    lines.append(
        f"global batch B={b} D={d}: the formula would hold B×B×D float32 tensors of "
        f"{mib(g['bbd_bytes'])} each: predicted peak {mib(g['formula_predicted_peak_bytes'])} "
        f"eager, {mib(g['compiled_predicted_peak_bytes'])} compiled"
    )
    return "\n".join(lines)
