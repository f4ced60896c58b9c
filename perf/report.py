"""The files a suite writes: the table as text, every figure as strict JSON (written whole or
not at all), and the β-VAE suite's bandwidth plot."""

from __future__ import annotations

import math
from pathlib import Path

from betavae_triton.demo import files

__all__ = ["DEFAULT_OUT", "plot_sweep", "write_json", "write_outputs"]

#: ``--out`` of every suite: the repository's ``perf/out/``, from whatever folder it runs.
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


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
    """Write ``document`` as strict JSON (non-finite numbers as null), indented by 2, in one
    step (:func:`betavae_triton.demo.files.write_json`: a ``.partial`` sibling, renamed), so
    that a run stopped midway leaves no half-written file.

    Parameters
    ----------
    path : pathlib.Path
        Output file.
    document : dict
        Metadata and rows.
    """
    files.write_json(path, _clean(document))


def write_outputs(out: Path, stem: str, text: str, document: dict) -> list[Path]:
    """Write a run's table (``<stem>.txt``) and figures (``<stem>.json``) under ``out``.

    Parameters
    ----------
    out : pathlib.Path
        Output folder (made if missing).
    stem : str
        File name without its suffix (``bench_cpu_quick``).
    text : str
        What the run printed: its header, table and notes.
    document : dict
        Every figure (see :func:`write_json`).

    Returns
    -------
    written : list of pathlib.Path
        The JSON file, then the text file.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.txt").write_text(text + "\n")
    write_json(out / f"{stem}.json", document)
    return [out / f"{stem}.json", out / f"{stem}.txt"]


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
        _plot_mode(ax, [r for r in sweep if r["mode"] == mode], contenders, copy_bw)
        moved = "read p, x" if mode == "fwd" else "read p, x; write grad p"
        ax.set_title(f"{mode}  ({moved})")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _plot_mode(ax, rows: list[dict], contenders: list[str], copy_bw: float | None) -> None:
    """One panel: each contender's bandwidth against size, the copy bandwidth dashed."""
    for name in contenders:
        pts = sorted(
            (r["numel"], r["bandwidth"] / 1e9)
            for r in rows
            if r["contender"] == name and _finite(r["bandwidth"])
        )
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", label=name)
    if copy_bw:
        ax.axhline(copy_bw / 1e9, color="black", linestyle="--", label="copy bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("elements of x (float32, normal)")
    ax.set_ylabel("effective bandwidth (GB/s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
