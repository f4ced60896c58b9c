"""What a suite records about where it ran: the device, the versions, the commit, the load.
Shared by every suite (``bench``, ``btcvae``), so that their JSON documents describe a run
the same way (:func:`describe_run`, :func:`finish_run`)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

from perf.timing import Timing

__all__ = [
    "busy",
    "cpu_model",
    "describe_run",
    "device_name",
    "finish_run",
    "git_label",
    "git_state",
    "machine_load",
    "versions",
    "warn_if_busy",
]

PERF_DIR = Path(__file__).resolve().parent


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses and the CPUs there are."""
    if device.type == "cuda":
        return torch.cuda.getdevice_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs)"


def versions() -> dict:
    """The versions of Python, torch, triton (None if absent) and CUDA."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
    }


def git_state() -> dict:
    """The commit benchmarked, and whether the package or the reference differed from it."""
    state: dict = {"commit": None, "dirty": None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run = functools.partial(
            subprocess.run, cwd=PERF_DIR, capture_output=True, text=True, timeout=10
        )
        head = run(["git", "rev-parse", "HEAD"])
        if head.returncode == 0:
            state["commit"] = head.stdout.strip()
            # Only the code measured: the package and the reference.
            paths = [":/betavae_triton", ":/reference"]
            changes = run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths])
            state["dirty"] = bool(changes.stdout.strip())
    return state


def git_label(state: dict) -> str:
    """A commit and its dirtiness (from :func:`git_state`) in a few words."""
    if not state.get("commit"):
        return "unknown"
    dirty = " + uncommitted changes to the package" if state.get("dirty") else ""
    return state["commit"][:10] + dirty


def machine_load() -> dict:
    """Load average and CPU pressure: other work on the machine skews CPU timings."""
    load: dict = {}
    with contextlib.suppress(OSError):
        load["loadavg_1_5_15"] = list(os.getloadavg())
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        load["cpu_pressure_some"] = {k: float(v) for k, v in (f.split("=") for f in some[1:4])}
    return load


def busy(load: dict) -> str | None:
    """A warning when other work already loads the CPUs (it skews CPU timings)."""
    avg = load.get("loadavg_1_5_15")
    cpus = os.cpu_count() or 1
    if avg and avg[0] >= max(1.0, 0.5 * cpus):
        return (
            f"the machine is busy before the benchmark starts (load average {avg[0]:.2f} on "
            f"{cpus} CPUs): CPU timings will be skewed by the other work"
        )
    return None


def warn_if_busy(meta: dict, device: torch.device) -> str | None:
    """Say :func:`busy`'s warning on stderr for a CPU run, from ``meta["load_before"]``.

    Parameters
    ----------
    meta : dict
        The run's ``meta`` (:func:`describe_run`).
    device : torch.device
        The run's device: a GPU's timings are not skewed by the CPUs' load.

    Returns
    -------
    warning : str or None
        The warning said, or None on a GPU or a quiet machine.
    """
    warning = busy(meta["load_before"]) if device.type == "cpu" else None
    if warning:
        print(f"!!!!!!!! {warning}", file=sys.stderr)
    return warning


def describe_run(device: torch.device, quick: bool) -> dict:
    """The first fields of every suite's ``meta``: where and when it runs, what with.

    Parameters
    ----------
    device : torch.device
        The run's device.
    quick : bool
        ``--quick``.

    Returns
    -------
    meta : dict
        ``device``, ``device_type``, ``host``, ``date``, ``versions``, ``git``,
        ``platform``, ``threads``, ``quick``, ``argv`` and ``load_before``.
    """
    return {
        "device": device_name(device),
        "device_type": device.type,
        "host": socket.gethostname(),
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(),
        "versions": versions(),
        "git": git_state(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "quick": quick,
        "argv": sys.argv[1:],
        "load_before": machine_load(),
    }


def finish_run(meta: dict, timing: Timing, quiet_budget_s: float) -> None:
    """Add the load after the run and the time spent waiting for quiet to ``meta``.

    Parameters
    ----------
    meta : dict
        The run's ``meta``, updated in place: ``load_after``, ``quiet_wait_s``.
    timing : Timing
        The run's budgets, as they are now.
    quiet_budget_s : float
        What was left of the quiet budget when the timed work began.
    """
    meta["load_after"] = machine_load()
    meta["quiet_wait_s"] = quiet_budget_s - timing.quiet_budget_s
