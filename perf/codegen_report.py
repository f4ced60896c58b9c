"""``perf/codegen.py``'s report: per specialization (registers, spills, 128-bit accesses,
occupancy, one wave), per workload (bytes moved, launches), β-TCVAE's grids and inner
loops, and the summary line."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import triton

from perf.codegen_checks import COMPUTE_BOUND, TC_FILL_LATENTS, Row, tc_unfilled
from perf.report import write_json

__all__ = ["summary", "table", "tc_loop_table", "tc_table", "write_report"]


def tc_table(tc_grids: dict[str, list[dict]]) -> str:
    """The β-TCVAE grids: per case and kernel, grid, programs per SM, blocks an SM holds,
    and the fraction of one H100 wave filled."""
    lines = [
        "β-TCVAE grids on an H100 (132 SMs): programs per SM, blocks per SM of the compiled "
        "kernel, fraction of one wave filled",
        f"{'case':<18} {'kernel':<30} {'grid':>12} {'prog/SM':>8} {'blk/SM':>6} {'wave':>6}",
    ]
    for name, launches in tc_grids.items():
        for g in launches:
            grid = "x".join(map(str, g["grid"]))
            lines.append(
                f"{name:<18} {g['kernel']:<30} {grid:>12} {g['programs_per_sm']:>8.1f} "
                f"{g['resident_blocks']:>6} {g['wave_fill']:>6.2f}"
            )
    return "\n".join(lines)


def _load_widths(bits: list[int]) -> str:
    """Loads by width: ``3x128``, ``2x32+3x64`` (``-`` for none)."""
    counts = {b: bits.count(b) for b in sorted(set(bits))}
    return "+".join(f"{n}x{b}" for b, n in counts.items()) or "-"


def tc_loop_table(rows: dict[str, Row], arch: int) -> str:
    """β-TCVAE's pairwise kernels: per specialization, registers, blocks per SM, the
    global loads of an iteration of the inner loop by width, the width the layout allows
    for the posteriors' (the forward and dL/dz; ``-`` for dL/dμ, whose loop loads
    samples), and the exponentials an iteration."""
    lines = [
        f"β-TCVAE inner loops (sm_{arch}{'a' if arch == 90 else ''}): loads an iteration by "
        "width (bits), the posterior width the layout allows, exponentials an iteration",
        f"{'specialization':<150} {'regs':>4} {'blk/SM':>6} {'loop loads':>14} {'allowed':>7} "
        f"{'ok':>3} {'exp':>4}",
    ]
    for label, row in sorted(rows.items()):
        if not label.startswith(COMPUTE_BOUND):
            continue
        a = row.arch[arch]
        allowed = "-" if row.posterior_bits is None else str(row.posterior_bits)
        ok = "-" if row.posterior_bits is None else ("ok" if row.posterior_ok else "NO")
        lines.append(
            f"{label[:150]:<150} {a['registers']:>4} {row.resident_blocks:>6} "
            f"{_load_widths(a['loop_load_bits']):>14} {allowed:>7} {ok:>3} {a['loop_exps']:>4}"
        )
    return "\n".join(lines)


def table(rows: dict[str, Row], workloads: dict[str, dict], archs: tuple[int, ...]) -> str:
    """Per specialization (compiled for the first architecture): registers, spills, 128-bit
    loads and stores, vectors where allowed, blocks per SM, occupancy, one wave; then per
    workload the bytes moved, the time at 3.35 TB/s and the launches."""
    head = f"{'specialization':<150} {'regs':>4} {'spill':>5} {'ld128':>5} {'st128':>5} "
    head += f"{'vec':>4} {'blk/SM':>6} {'occ':>5} {'wave':>4}"
    lines = [f"compiled for sm_{archs[0]}{'a' if archs[0] == 90 else ''} (H100 occupancy)", head]
    for label, row in sorted(rows.items()):
        a = row.arch[archs[0]]
        vec = ("ok" if row.vectors_ok else "NO") if row.vectors_allowed else "n/a"
        wave = ("1" if row.one_wave else ">1") if row.persistent else "-"
        spills = max(row.arch[arch]["spill_bytes"] for arch in archs)
        lines.append(
            f"{label[:150]:<150} {a['registers']:>4} {spills:>5} {a['loads_128']:>5} "
            f"{a['stores_128']:>5} {vec:>4} {row.resident_blocks:>6} {row.occupancy:>5.2f} "
            f"{wave:>4}"
        )
    lines.append("")
    lines.append(f"{'workload':<16} {'shape':<22} {'MB moved':>9} {'µs @3.35TB/s':>13}  launches")
    for name, w in workloads.items():
        lines.append(
            f"{name:<16} {'x'.join(map(str, w['shape'])):<22} {w['bytes'] / 1e6:>9.1f} "
            f"{w['h100_us']:>13.1f}  {', '.join(w['launches'])}"
        )
    return "\n".join(lines)


def summary(rows: dict[str, Row], archs: tuple[int, ...], tc_grids: dict) -> str:
    """The report's last line: how many specializations, spills, vectors, waves."""
    spilling = sum(any(r.arch[a]["spill_bytes"] for a in archs) for r in rows.values())
    allowed = [r for r in rows.values() if r.vectors_allowed]
    vector_ok = sum(r.vectors_ok for r in allowed)
    persistent = [r for r in rows.values() if r.persistent]
    waves = sum(r.one_wave for r in persistent)
    arch_names = ", ".join(f"sm_{a}{'a' if a == 90 else ''}" for a in archs)
    must = [g for launches in tc_grids.values() for g in launches if g["must_fill"]]
    filled = len(must) - len(tc_unfilled(tc_grids))
    walks = [r for r in rows.values() if r.posterior_bits is not None]
    return (
        f"codegen: {len(rows)} specializations compiled for {arch_names}; {spilling} spill; "
        f"128-bit data access in {vector_ok} of {len(allowed)} where the layout allows; "
        f"{waves} of {len(persistent)} persistent grids in one wave on an H100; "
        f"β-TCVAE: {filled} of {len(must)} pairwise grids at B >= 256, D in "
        f"{'/'.join(map(str, TC_FILL_LATENTS))} fill one wave, posterior loads as wide as "
        f"the layout allows in {sum(r.posterior_ok for r in walks)} of {len(walks)}"
    )


def write_report(
    out: Path,
    archs: tuple[int, ...],
    rows: dict[str, Row],
    workloads: dict[str, dict],
    tc_grids: dict[str, list[dict]],
) -> None:
    """Print the report and write it to ``out``: ``codegen.txt`` and ``codegen.json``.

    Parameters
    ----------
    out : pathlib.Path
        Output folder (made if missing).
    archs : tuple of int
        The architectures compiled for, the first one reported in full.
    rows, workloads, tc_grids : dict
        What :func:`perf.codegen_checks.analyse` found.
    """
    text = table(rows, workloads, archs) + "\n\n" + tc_table(tc_grids)
    text += "\n\n" + tc_loop_table(rows, archs[0])
    text += "\n\n" + summary(rows, archs, tc_grids)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "codegen.txt").write_text(text + "\n")
    document = {
        "archs": list(archs),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "specializations": {label: asdict(row) for label, row in rows.items()},
        "workloads": workloads,
        "tc_grids": tc_grids,
    }
    write_json(out / "codegen.json", document)
