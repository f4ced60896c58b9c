"""The β-TCVAE suite's bank axis: ours at one (B, D) with a bank of K earlier posteriors
(``kl_decomposition(..., bank_loc, bank_scale)``), K from 0 up: the time of a step and its
peak extra memory, against the step without a bank.

Each sample is scored against B + K posteriors, so the work grows as B·(B + K)·D and the
extra memory as (B + K)·D (the posteriors with the bank's, their log-σ, their gradients,
the kernels' workspace); the bank itself is an input (a module's buffers), not counted.
"""

from __future__ import annotations

import functools
import itertools

import torch

from betavae_triton import kl_decomposition
from perf.memory import peak_extra_bytes
from perf.race import Progress
from perf.tables import format_seconds, mib
from perf.tcvae_contenders import ESTIMATOR, make_input_sets, step
from perf.timing import Timing, median_seconds

__all__ = ["BANK_DATASET_SIZE", "bank_axis", "format_bank"]

#: N for the bank axis: B + K must not exceed it.
BANK_DATASET_SIZE = 2**20


def _bank(size: int, latent: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(1)
    loc = torch.randn(size, latent, generator=gen, device=device)
    return loc, torch.rand(size, latent, generator=gen, device=device) + 0.5


def _row(size: int, sets: list, backend: str, device: torch.device, timing: Timing) -> dict:
    """One bank size: warmed up, timed, its peak extra memory counted."""
    batch, latent = sets[0][0].shape
    bank = _bank(size, latent, device) if size else (None, None)
    terms = functools.partial(
        kl_decomposition, dataset_size=BANK_DATASET_SIZE, estimator=ESTIMATOR,
        backend=backend, validate_args=False, bank_loc=bank[0], bank_scale=bank[1],
    )  # fmt: skip
    step(terms, sets[0])
    cycle = itertools.cycle(sets)
    return {
        "bank": size,
        "batch": batch,
        "latent": latent,
        "seconds": median_seconds(lambda: step(terms, next(cycle)), device, timing),
        "peak_extra_bytes": peak_extra_bytes(lambda: step(terms, sets[0]), device),
    }


def bank_axis(
    case: tuple[int, int],
    sizes: tuple[int, ...],
    backend: str,
    device: torch.device,
    timing: Timing,
    progress: Progress,
) -> list[dict]:
    """One row per bank size K at ``case`` = (B, D), on ``backend``.

    Parameters
    ----------
    case : tuple of int
        (B, D).
    sizes : tuple of int
        The bank sizes K (0: no bank).
    backend : str
        ``"triton"`` or ``"eager"``.
    device : torch.device
        Where.
    timing : Timing
        The timer's budgets.
    progress : Progress
        Where progress lines go.

    Returns
    -------
    rows : list of dict
        ``bank``, ``batch``, ``latent``, ``seconds`` (median of a step), ``peak_extra_bytes``
        and ``time_over_no_bank`` (None without a K = 0 row).
    """
    batch, latent = case
    sets = make_input_sets(batch, latent, device, 4)
    rows = []
    for size in sizes:
        progress.show(f"bank K={size} at B={batch} D={latent}")
        rows.append(_row(size, sets, backend, device, timing))
    base = next((r["seconds"] for r in rows if r["bank"] == 0), None)
    for row in rows:
        row["time_over_no_bank"] = row["seconds"] / base if base else None
    return rows


def format_bank(rows: list[dict], target_bytes: int) -> str:
    """The bank axis as a table, and the memory target at the largest K."""
    lines = ["      K   median  x no bank  peak extra", "-------  -------  ---------  ----------"]
    for r in rows:
        ratio = "-" if r["time_over_no_bank"] is None else f"{r['time_over_no_bank']:.2f}x"
        seconds, peak = format_seconds(r["seconds"]), mib(r["peak_extra_bytes"])
        lines.append(f"{r['bank']:7d}  {seconds:>7}  {ratio:>9}  {peak:>10}")
    largest = max(rows, key=lambda r: r["bank"])
    verdict = "met" if largest["peak_extra_bytes"] <= target_bytes else "MISSED"
    lines.append(
        f"target: peak extra memory at K={largest['bank']} <= {target_bytes / 2**20:.0f} MiB: "
        f"{verdict} ({largest['peak_extra_bytes'] / 2**20:.1f} MiB)"
    )
    return "\n".join(lines)
