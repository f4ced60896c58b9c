"""The demo's figures, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

__all__ = [
    "plot_kl_per_dim",
    "plot_loss_curves",
    "plot_mig_vs_batch",
    "plot_reconstructions",
    "plot_tc_bias",
    "plot_tc_track",
    "plot_traversals",
]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_reconstructions(inputs: np.ndarray, recons: np.ndarray, path: Path) -> Path:
    """Inputs beside their reconstructions: pairs of rows, inputs above.

    Parameters
    ----------
    inputs, recons : numpy.ndarray
        Shape ``(N, 64, 64)``, values in [0, 1]; ``N`` a multiple of 8 reads best.
    path : pathlib.Path
        Where to write the PNG.

    Returns
    -------
    path : pathlib.Path
        ``path``.
    """
    n = inputs.shape[0]
    cols = min(n, 8)
    pairs = -(-n // cols)
    fig, axes = plt.subplots(2 * pairs, cols, figsize=(1.2 * cols, 2.5 * pairs), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(n):
        r, c = divmod(i, cols)
        axes[2 * r, c].imshow(inputs[i], cmap="gray", vmin=0, vmax=1)
        axes[2 * r + 1, c].imshow(recons[i], cmap="gray", vmin=0, vmax=1)
    for r in range(pairs):
        axes[2 * r, 0].set_ylabel("input", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel("recon.", fontsize=8)
    fig.suptitle("Inputs and reconstructions (decoder at the posterior mean)")
    return _save(fig, path)


def plot_traversals(
    images: np.ndarray,
    values: np.ndarray,
    kl_per_dim: np.ndarray,
    path: Path,
    row_notes: Sequence[str] | None = None,
    *,
    title: str = "Latent traversals",
) -> Path:
    """One row per latent dimension swept over ``values``, the others held fixed.

    Parameters
    ----------
    images : numpy.ndarray
        Shape ``(D, V, 64, 64)``: row ``d`` decodes the sweep of latent ``d``.
    values : numpy.ndarray
        Shape ``(V,)``: the values of the swept latent, one per column.
    kl_per_dim : numpy.ndarray
        Shape ``(D,)``: each latent's mean KL, written beside its row; rows are sorted
        by it, most informative first.
    path : pathlib.Path
        Where to write the PNG.
    row_notes : sequence of str, optional
        ``D`` short notes (e.g. the factor a latent is most informative about), written
        under each latent's label.
    title : str, default="Latent traversals"
        The figure's title, before "(rows sorted by KL)".

    Returns
    -------
    path : pathlib.Path
        ``path``.
    """
    d, v = images.shape[:2]
    order = np.argsort(-kl_per_dim, kind="stable")
    fig, axes = plt.subplots(d, v, figsize=(0.75 * v + 1.4, 0.75 * d + 0.6), squeeze=False)
    for row, dim in enumerate(order):
        for col in range(v):
            ax = axes[row, col]
            ax.imshow(images[dim, col], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == d - 1:
                ax.set_xlabel(f"{values[col]:+.1f}", fontsize=7)
        label = f"z{dim}\nKL {kl_per_dim[dim]:.2f}"
        if row_notes is not None:
            label += f"\n{row_notes[dim]}"
        axes[row, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(f"{title} (rows sorted by KL)")
    return _save(fig, path)


def plot_kl_per_dim(kl_per_dim: np.ndarray, path: Path, threshold: float = 0.1) -> Path:
    """Bar chart of the KL of each latent dimension, averaged over a batch.

    Parameters
    ----------
    kl_per_dim : numpy.ndarray
        Shape ``(D,)``, nats.
    path : pathlib.Path
        Where to write the PNG.
    threshold : float, default=0.1
        The KL above which a latent counts as active, drawn as a dashed line.

    Returns
    -------
    path : pathlib.Path
        ``path``.
    """
    d = kl_per_dim.shape[0]
    active = kl_per_dim > threshold
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * d + 1.5), 3.0))
    ax.bar(np.arange(d), kl_per_dim, color=np.where(active, "tab:blue", "tab:gray"))
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"active: KL > {threshold:g}")
    ax.set_xticks(np.arange(d), [f"z{i}" for i in range(d)], fontsize=8)
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per latent dimension: {int(active.sum())} of {d} active")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average (the first ``window - 1`` points dropped)."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def _plot_kl_terms(
    ax: plt.Axes, steps: np.ndarray, curves: dict[str, Sequence[float]], window: int
) -> None:
    """The beta-TCVAE's KL and the three terms it splits into, on a symmetric-log axis."""
    terms = (
        ("kl_loss", "KL (logged, not optimised)", "tab:green"),
        ("mi_loss", "mi", "tab:purple"),
        ("tc_loss", "tc", "tab:red"),
        ("dw_kl_loss", "dw_kl", "tab:brown"),
    )
    for key, label, color in terms:
        raw = np.asarray(curves[key])
        ax.plot(steps, raw, color=color, lw=0.6, alpha=0.3)
        ax.plot(steps[window - 1 :], _smooth(raw, window), color=color, lw=1.2, label=label)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title("KL and its terms")


def _plot_loss(
    ax: plt.Axes,
    steps: np.ndarray,
    curves: dict[str, Sequence[float]],
    window: int,
    objective: str,
) -> None:
    """The left panel of the training curves: the loss and the reconstruction loss."""
    lines = (
        ("loss", f"loss = {objective}", "tab:blue"),
        ("rec_loss", "reconstruction", "tab:orange"),
    )
    for key, label, color in lines:
        raw = np.asarray(curves[key])
        ax.plot(steps, raw, color=color, lw=0.6, alpha=0.3)
        ax.plot(steps[window - 1 :], _smooth(raw, window), color=color, lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("per image (summed over pixels)")
    ax.set_title("Loss and reconstruction")
    ax.legend()
    ax.grid(alpha=0.3, which="both")


def plot_loss_curves(
    steps: Sequence[int],
    curves: dict[str, Sequence[float]],
    beta: float,
    path: Path,
    kl_warmup: int = 0,
) -> Path:
    """Loss, reconstruction and KL against the training step.

    Parameters
    ----------
    steps : sequence of int
        Step numbers.
    curves : dict of str to sequence of float
        ``"loss"``, ``"rec_loss"`` and ``"kl_loss"``, one value per step; for the
        beta-TCVAE also ``"mi_loss"``, ``"tc_loss"`` and ``"dw_kl_loss"``, drawn beside
        the KL on a symmetric-log axis (the batch estimates of mi and tc may dip below 0).
    beta : float
        The KL weight (the beta-TCVAE's total-correlation weight), for the legend.
    path : pathlib.Path
        Where to write the PNG.
    kl_warmup : int, default=0
        Length of the KL warm-up, marked by a dotted line when positive.

    Returns
    -------
    path : pathlib.Path
        ``path``.
    """
    steps = np.asarray(steps)
    window = max(1, len(steps) // 50)
    tcvae = "tc_loss" in curves
    fig, (ax_loss, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.5))
    objective = f"rec + mi + {beta:g}·tc + dw_kl" if tcvae else f"rec + {beta:g}·KL"
    _plot_loss(ax_loss, steps, curves, window, objective)
    if tcvae:
        _plot_kl_terms(ax_kl, steps, curves, window)
    else:
        kl = np.maximum(np.asarray(curves["kl_loss"]), 1e-3)
        ax_kl.plot(steps, kl, color="tab:green", lw=0.6, alpha=0.3)
        ax_kl.plot(steps[window - 1 :], _smooth(kl, window), color="tab:green", lw=1.2)
        ax_kl.set_yscale("log")
        ax_kl.set_title("KL")
    ax_kl.set_xlabel("step")
    ax_kl.set_ylabel("nats per image, summed over latents")
    ax_kl.grid(alpha=0.3, which="both")
    if kl_warmup > 0:
        for ax in (ax_loss, ax_kl):
            ax.axvline(kl_warmup, color="k", ls=":", lw=0.8, label="end of KL warm-up")
    if kl_warmup > 0 or tcvae:
        ax_kl.legend(fontsize=8)
    suffix = f" (faint: every step; solid: mean of {window})" if window > 1 else ""
    fig.suptitle("Training curves" + suffix)
    fig.tight_layout()
    return _save(fig, path)


def _spread_lines(
    ax: plt.Axes,
    series: dict[str, Sequence[tuple[float, Sequence[float]]]],
    marker: str = "o",
    log_x: bool = True,
) -> None:
    """One line per label through the medians, a bar over each interquartile range, on a
    base-2 logarithmic x axis labelled with plain numbers (``log_x``) or a linear one."""
    for label, points in series.items():
        if not points:
            continue
        xs = np.array([x for x, _ in points], dtype=float)
        q = np.array([np.percentile(np.asarray(ys, dtype=float), [25, 50, 75]) for _, ys in points])
        line = ax.plot(xs, q[:, 1], marker=marker, label=label)[0]
        ax.errorbar(
            xs, q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]], fmt="none",
            ecolor=line.get_color(), capsize=3, lw=1,
        )  # fmt: skip
    if not log_x:
        return
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 64, 256, not 2^6, 2^8
    ax.xaxis.set_minor_formatter(NullFormatter())


# The y axis of the TC bias figures.
BIAS_LABEL = "TC bias, nats (median, bars: IQR)"


def _spread_figure(
    series: dict[str, Sequence[tuple[float, Sequence[float]]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    marker: str = "o",
    log_x: bool = True,
    zero_line: bool = False,
    y_from_zero: bool = False,
) -> Path:
    """One :func:`_spread_lines` figure with its labels, legend and grid, saved."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _spread_lines(ax, series, marker=marker, log_x=log_x)
    if zero_line:
        ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if y_from_zero:
        ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both" if log_x else "major")
    return _save(fig, path)


def plot_mig_vs_batch(
    series: dict[str, Sequence[tuple[float, Sequence[float]]]], path: Path, title: str
) -> Path:
    """MIG against the training batch size: median over seeds, interquartile bars.

    Parameters
    ----------
    series : dict of str to sequence of (float, sequence of float)
        One line per label (a loss): ``(batch size, the MIG of each seed)`` pairs, in
        increasing batch size.
    path : pathlib.Path
        Where to write the PNG.
    title : str
        The figure's title.

    Returns
    -------
    path : pathlib.Path
        ``path``.
    """
    return _spread_figure(
        series, path, title, "batch size (equal images seen)",
        "MIG (median, bars: interquartile range)", y_from_zero=True,
    )  # fmt: skip


def plot_tc_bias(
    series: dict[str, Sequence[tuple[float, Sequence[float]]]], path: Path, title: str
) -> Path:
    """The minibatch estimate of the total correlation minus the large-batch estimate of
    the same model's q(z), against the minibatch size.

    Parameters
    ----------
    series : dict of str to sequence of (float, sequence of float)
        One line per label: ``(batch size, the bias of each run, nats)`` pairs.
    path : pathlib.Path
        Where to write the PNG.
    title : str
        The figure's title.

    Returns
    -------
    path : pathlib.Path
        ``path``.
    """
    return _spread_figure(
        series, path, title, "minibatch size of the estimate", BIAS_LABEL, marker="s",
        zero_line=True,
    )  # fmt: skip


def plot_tc_track(
    series: dict[str, Sequence[tuple[float, Sequence[float]]]], path: Path, title: str
) -> Path:
    """The bias of the minibatch TC estimates during training, against the step.

    Parameters
    ----------
    series : dict of str to sequence of (float, sequence of float)
        One line per estimate (without the bank, with it, with it re-encoded): ``(step,
        the bias of each run, nats)`` pairs.
    path : pathlib.Path
        Where to write the PNG.
    title : str
        The figure's title.

    Returns
    -------
    path : pathlib.Path
        ``path``.
    """
    return _spread_figure(
        series, path, title, "training step", BIAS_LABEL, log_x=False, zero_line=True
    )
