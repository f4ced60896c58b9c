"""The β-TCVAE suite's targets: ours' peak extra memory under a limit at a large (B, D), and
ours no slower than the formula (eager and compiled) wherever it ran; checked on a run's
rows and said in words."""

from __future__ import annotations

from perf.tables import mib

__all__ = ["check_targets", "format_targets"]


def check_targets(rows: list[dict], ours: str, memory: tuple[int, int, int]) -> dict:
    """Check the targets on a run's rows.

    Parameters
    ----------
    rows : list of dict
        The run's rows, with their ratios (``formula_over_this``, ``compiled_over_this``).
    ours : str
        The contender that stands for ours on this device.
    memory : tuple of int
        ``(B, D, limit in bytes)``: ours' and ``ours-compiled``'s peak extra memory at
        (B, D) must stay under the limit.

    Returns
    -------
    targets : dict
        ``memory`` and ``compiled_memory`` (the peaks, met or not, None where not
        measured); ``speed_vs_formula`` (ours no slower than the formula wherever the
        formula ran: formula_time / ours_time ≥ 1) and ``speed_vs_compiled_formula``
        (ours and ``ours-compiled`` no slower than the compiled formula wherever it ran),
        one entry per (B, D).
    """
    batch, latent, limit = memory
    peak = _peak(rows, ours, batch, latent)
    compiled_peak = _peak(rows, "ours-compiled", batch, latent)
    speed = [
        {"batch": r["batch"], "latent": r["latent"], "ratio": r["formula_over_this"]}
        for r in rows
        if r["contender"] == ours and r["formula_over_this"] is not None
    ]
    for s in speed:
        s["met"] = s["ratio"] >= 1.0
    compiled = [
        {
            "contender": r["contender"],
            "batch": r["batch"],
            "latent": r["latent"],
            "ratio": r["compiled_over_this"],
            "met": r["compiled_over_this"] >= 1.0,
        }
        for r in rows
        if r["contender"] in (ours, "ours-compiled") and r["compiled_over_this"] is not None
    ]
    return {
        "ours": ours,
        "memory": {
            "batch": batch,
            "latent": latent,
            "limit_bytes": limit,
            "peak_extra_bytes": peak,
            "met": None if peak is None else peak < limit,
        },
        "speed_vs_formula": speed,
        "speed_vs_compiled_formula": compiled,
        "compiled_memory": {
            "peak_extra_bytes": compiled_peak,
            "met": compiled_peak < limit if compiled_peak else None,
        },
    }


def _peak(rows: list[dict], name: str, batch: int, latent: int) -> int | None:
    """The peak extra memory of ``name``'s first row at (B, D); None where it did not run."""
    at = [
        r for r in rows if r["contender"] == name and (r["batch"], r["latent"]) == (batch, latent)
    ]
    return at[0]["peak_extra_bytes"] if at else None


def format_targets(targets: dict) -> str:
    """The targets (:func:`check_targets`) as lines of text, each met or MISSED."""
    mem, ours = targets["memory"], targets["ours"]
    where = f"B={mem['batch']}, D={mem['latent']} < {mem['limit_bytes'] // 2**20} MiB"
    if mem["met"] is None:
        lines = [f"target: {ours} peak extra memory at {where}: not measured in this run"]
    else:
        verdict = "met" if mem["met"] else "MISSED"
        lines = [
            f"target: {ours} peak extra memory at {where}: "
            f"{mib(mem['peak_extra_bytes'])}: {verdict}"
        ]
    speed = targets["speed_vs_formula"]
    missed = [s for s in speed if not s["met"]]
    lines.append(
        f"target: {ours} no slower than formula where it fits (formula_time / ours_time >= 1): "
        f"met on {len(speed) - len(missed)} of {len(speed)} (B, D)"
        + ("" if not missed else "; MISSED at ")
        + ", ".join(f"B={s['batch']} D={s['latent']} ({s['ratio']:.2f}x)" for s in missed)
    )
    compiled = targets.get("speed_vs_compiled_formula", [])
    for name in sorted({s["contender"] for s in compiled}):
        mine = [s for s in compiled if s["contender"] == name]
        missed = [s for s in mine if not s["met"]]
        lines.append(
            f"target: {name} no slower than formula-compiled where it ran "
            f"(compiled_time / {name}_time >= 1): met on {len(mine) - len(missed)} of "
            f"{len(mine)} (B, D)"
            + ("" if not missed else "; MISSED at ")
            + ", ".join(f"B={s['batch']} D={s['latent']} ({s['ratio']:.2f}x)" for s in missed)
        )
    peak = targets.get("compiled_memory", {}).get("peak_extra_bytes")
    if peak is not None:
        verdict = "met" if targets["compiled_memory"]["met"] else "MISSED"
        lines.append(f"target: ours-compiled peak extra memory at {where}: {mib(peak)}: {verdict}")
    return "\n".join(lines)
