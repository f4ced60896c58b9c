"""The race every suite runs on each of its cases: the contenders warmed up one by one, then
timed in interleaved rounds, each one's fastest median kept; the fields every result row
has, and the ratios between rows.

Interleaving the rounds spreads any interference from other work on the machine over
every contender alike; the fastest median is the least disturbed one.
"""

from __future__ import annotations

import gc
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

import torch

from perf.timing import Timing, measure, wall_seconds

__all__ = [
    "Progress",
    "Race",
    "add_ratios",
    "failure",
    "free",
    "new_row",
    "race",
    "relative_error",
]


def new_row(identity: dict, measured: dict, tail: dict) -> dict:
    """A result row before the race: what it is, then the fields every suite fills.

    Parameters
    ----------
    identity : dict
        What the row times (workload, shape, contender, ...), first in the row.
    measured : dict
        The suite's own measurements, after the timings (bytes moved, peak memory, ...).
    tail : dict
        The suite's remaining fields, after the loss checks (ratios, notes, error).

    Returns
    -------
    row : dict
        ``identity``, then ``seconds``, ``p25``, ``p75`` (None), ``round_medians`` ([]),
        ``first_call_s``, then ``measured``, then ``loss``, ``oracle_loss``, ``rel_err``,
        ``foreign_load``, ``faults_per_call`` (None), then ``tail``.
    """
    return {
        **identity,
        **dict.fromkeys(("seconds", "p25", "p75")),
        "round_medians": [],
        "first_call_s": None,
        **measured,
        **dict.fromkeys(("loss", "oracle_loss", "rel_err", "foreign_load", "faults_per_call")),
        **tail,
    }


def failure(err: BaseException) -> str:
    """An error as a row records it: its type and the start of its message."""
    return f"{type(err).__name__}: {str(err)[:200]}"


def free(device: torch.device) -> None:
    """Collect garbage, and hand cached CUDA memory back (after a failed contender)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Progress:
    """Where a run is, on stderr: a bar (``tqdm``), one line per step, or nothing.

    Parameters
    ----------
    enabled : bool
        False prints nothing (``--no-progress``).
    total : int or None, default=None
        Steps in the run: a bar; None prints one line per step instead.
    """

    def __init__(self, enabled: bool, total: int | None = None) -> None:
        self.enabled, self._bar = enabled, None
        if total is not None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", disable=not enabled, file=sys.stderr)

    def show(self, text: str) -> None:
        """Say what runs now."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        elif self.enabled:
            print(f"  {text}", file=sys.stderr, flush=True)

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` steps done."""
        if self._bar is not None:
            self._bar.update(steps)

    @property
    def done(self) -> int:
        """Steps counted so far (0 without a bar)."""
        return self._bar.n if self._bar is not None else 0

    def write(self, message: str, file: TextIO | None = None) -> None:
        """Print a line (stdout by default) without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=file)
        else:
            print(message, file=file)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()


@dataclass
class Race:
    """How a suite races its contenders.

    Parameters
    ----------
    device : torch.device
        Where.
    timing : Timing
        The timers' budgets.
    rounds : int
        Interleaved timing rounds.
    progress : Progress
        Where the race says what runs.
    wall : bool, default=False
        Also time back-to-back calls (:func:`perf.timing.wall_seconds`, CUDA only).
    """

    device: torch.device
    timing: Timing
    rounds: int
    progress: Progress
    wall: bool = False


def race(
    rows: Mapping[str, dict],
    warm_ups: Mapping[str, Callable[[dict], Callable[[], object]]],
    how: Race,
    label: str,
    compiled: Sequence[str] = (),
) -> None:
    """Warm up each contender, then time the ones that warmed up in ``how.rounds``
    round-robin passes; each row keeps its fastest median (``round_medians`` has them all).

    Parameters
    ----------
    rows : mapping of str to dict
        Every contender's row in this case (:func:`new_row`), updated in place; a
        contender's error (in warm-up or timing) goes to its ``error``.
    warm_ups : mapping of str to callable
        For each contender to time: ``warm_up(row) -> fn``, which makes the first calls
        (compiling the compiled ones), fills ``row`` (``first_call_s``, ``loss``, ...)
        and returns the call to time.
    how : Race
        Device, budgets, rounds, progress.
    label : str
        The case, for the progress (``B=64 D=10``).
    compiled : sequence of str, default=()
        The contenders whose first call compiles (said in the progress).
    """
    start = how.progress.done
    fns = {}
    for name, warm_up in warm_ups.items():
        how.progress.show(f"{label} {name}: warm-up{' + compile' * (name in compiled)}")
        try:
            fns[name] = warm_up(rows[name])
        except Exception as err:
            rows[name]["error"] = failure(err)
            free(how.device)
        how.progress.advance()
    for r in range(how.rounds):
        for name, fn in list(fns.items()):
            how.progress.show(f"{label} {name}: round {r + 1}")
            try:
                stats = measure(fn, how.device, how.timing)
                if how.wall:
                    stats["wall_seconds"] = wall_seconds(fn, how.device)
            except Exception as err:
                rows[name]["error"] = failure(err)
                fns.pop(name)
                free(how.device)
                continue
            rows[name]["round_medians"].append(stats["seconds"])
            if rows[name]["seconds"] is None or stats["seconds"] < rows[name]["seconds"]:
                rows[name].update(stats)
            how.progress.advance()
    how.progress.advance(start + len(rows) * (1 + how.rounds) - how.progress.done)


def relative_error(loss: float | None, oracle: float | None) -> float | None:
    """``|loss − oracle| / |oracle|``; None when either is unknown or the oracle is 0."""
    if loss is None or not oracle:
        return None
    return abs(loss - oracle) / abs(oracle)


def add_ratios(rows: list[dict], rivals: Mapping[str, str], case: Sequence[str]) -> None:
    """Fill each row's speed-ups against rival contenders: their time / the row's.

    Parameters
    ----------
    rows : list of dict
        Result rows with ``contender`` and ``seconds``; updated in place (None where a
        time is missing).
    rivals : mapping of str to str
        Field to fill -> the rival contender whose time it divides
        (``{"vs_nidl": "nidl"}``).
    case : sequence of str
        The fields that say which rows race each other (``("workload", "mode")``).
    """
    times = {(*(r[k] for k in case), r["contender"]): r["seconds"] for r in rows}
    for row in rows:
        ours = row["seconds"]
        for key, rival in rivals.items():
            theirs = times.get((*(row[k] for k in case), rival))
            ok = _finite(ours) and _finite(theirs) and ours > 0
            row[key] = theirs / ours if ok else None


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
