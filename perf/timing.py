"""Timers: ``triton.testing.do_bench`` on a GPU, ``torch.utils.benchmark`` on a CPU.

Both report the median of many calls. The timed function rotates among several distinct
input sets so that a small workload is not served from a warm cache (L2 on a GPU, the
last-level cache on a CPU); ``do_bench`` also flushes the L2 between calls.

On a CPU, other work on the machine is the largest source of error: with every core in
torch's thread pool, one core taken by another process stalls each parallel region (the
pool waits for its slowest thread), and a 200 us step can read 10 ms. So each CPU
measurement waits for the machine to be quiet first, counts the CPU time that *other*
processes took while it ran (:class:`CpuLoad`, from ``/proc/stat``), and is taken again
when that foreign load exceeds a threshold; the row records what it saw.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "CpuLoad",
    "Timing",
    "cache_bytes",
    "copy_bandwidth",
    "measure",
    "median_seconds",
    "rotation_count",
    "timer_description",
    "wall_seconds",
]


class Timing:
    """Timing budgets.

    Parameters
    ----------
    quick : bool
        Short budgets (``--quick``).
    quiet_budget_s : float or None, default=None
        CPU: total seconds the whole run may spend waiting for other work on the machine
        to stop (None: 600, 0 with ``quick``).
    """

    def __init__(self, quick: bool, quiet_budget_s: float | None = None) -> None:
        #: CPU: ``blocked_autorange``'s ``min_run_time`` (seconds).
        self.cpu_min_run_time = 0.1 if quick else 0.5
        #: CPU: fewest timed blocks behind a median (a step slower than ``min_run_time``
        #: would otherwise be timed once).
        self.cpu_min_blocks = 1 if quick else 3
        #: CPU: foreign load (cores busy with other processes) above which a measurement
        #: is disturbed: waited out before it, taken again after it.
        self.quiet_threshold = 0.25
        #: CPU: most extra attempts at a disturbed measurement.
        self.cpu_retries = 0 if quick else 2
        #: CPU: longest wait for quiet before one measurement, and for the whole run.
        self.quiet_wait_s = 0.0 if quick else 20.0
        if quiet_budget_s is None:
            quiet_budget_s = 0.0 if quick else 600.0
        self.quiet_budget_s = quiet_budget_s
        #: GPU: ``do_bench``'s warm-up and repetition budgets (milliseconds).
        self.gpu_warmup_ms = 10 if quick else 25
        self.gpu_rep_ms = 40 if quick else 200
        #: Most input sets to rotate through, and the most bytes they may take.
        self.max_sets = 64 if quick else 256
        self.max_rotation_bytes = (256 if quick else 1024) * 2**20


def cache_bytes(device: torch.device) -> int:
    """Size of the cache to defeat: the GPU's L2, or the CPU's last-level cache.

    Parameters
    ----------
    device : torch.device
        The benchmark's device.

    Returns
    -------
    nbytes : int
        Bytes (a guess of 50 MiB on a GPU, 32 MiB on a CPU when unknown).
    """
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or 32 * 2**20


def rotation_count(set_bytes: int, cache: int, timing: Timing) -> int:
    """How many input sets to rotate through: enough to span twice the cache, within budget.

    Parameters
    ----------
    set_bytes : int
        Bytes of one input set.
    cache : int
        Cache size to defeat.
    timing : Timing
        Supplies the caps.

    Returns
    -------
    n_sets : int
        At least 1.
    """
    wanted = math.ceil(2 * cache / max(set_bytes, 1))
    affordable = max(1, timing.max_rotation_bytes // max(set_bytes, 1))
    return int(max(1, min(wanted, timing.max_sets, affordable)))


def measure(
    fn: Callable[[], object], device: torch.device, timing: Timing
) -> dict[str, float | None]:
    """Time one call of ``fn``: median and quartiles, in seconds.

    Parameters
    ----------
    fn : callable
        What to time (already warmed up: compiled, caches filled).
    device : torch.device
        ``cuda`` times with ``triton.testing.do_bench`` (CUDA events around each call, the
        L2 flushed between calls), anything else with
        ``torch.utils.benchmark.Timer.blocked_autorange`` (median and quartiles over its
        blocks), waiting for quiet and retrying when other work disturbed it.
    timing : Timing
        Budgets.

    Returns
    -------
    stats : dict
        ``seconds`` (the median), ``p25`` and ``p75``; on a CPU also ``foreign_load``
        (cores that other processes kept busy meanwhile, None if unknown),
        ``faults_per_call`` (minor page faults per call: fresh memory touched, 4 KiB
        each), ``attempts`` and ``quiet_wait_s`` (see the module's notes).
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        q = do_bench(
            fn,
            warmup=timing.gpu_warmup_ms,
            rep=timing.gpu_rep_ms,
            quantiles=[0.25, 0.5, 0.75],
        )
        p25, med, p75 = (float(v) * 1e-3 for v in q)
        return {"seconds": med, "p25": p25, "p75": p75}
    return _measure_cpu(fn, timing)


def _minor_faults() -> int | None:
    """Minor page faults of this process so far (first touches of fresh memory)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _blocked_times(fn: Callable[[], object], timing: Timing) -> tuple[list[float], int]:
    """Per-call times of ``blocked_autorange``'s blocks (at least ``cpu_min_blocks`` of
    them), and how many calls were made in all."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=timing.cpu_min_run_time)
    times = list(m.times)
    while len(times) < timing.cpu_min_blocks:
        times += timer.timeit(m.number_per_run).times
    # Its block-size search ran blocks of 1, 10, ..., number_per_run calls first.
    search = (10 * m.number_per_run - 1) // 9
    return sorted(times), len(times) * m.number_per_run + search


def _measure_cpu(fn: Callable[[], object], timing: Timing) -> dict[str, float | None]:
    """CPU timing guarded against other work on the machine (see the module's notes)."""
    load = CpuLoad()
    best: dict[str, float | None] | None = None
    waited = 0.0
    for attempt in range(1 + timing.cpu_retries):
        waited += load.wait_for_quiet(timing)
        load.start()
        faults = _minor_faults()
        times, calls = _blocked_times(fn, timing)
        foreign = load.foreign_cores()
        if faults is not None:
            faults = (_minor_faults() - faults) / calls
        if len(times) > 1:
            p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive")
        else:
            p25 = p75 = times[0]
        stats = {
            "seconds": float(statistics.median(times)),
            "p25": float(p25),
            "p75": float(p75),
            "foreign_load": foreign,
            "faults_per_call": faults,
            "attempts": attempt + 1,
        }
        if best is None or stats["seconds"] < best["seconds"]:
            best = stats
        if foreign is None or foreign <= timing.quiet_threshold:
            break
    assert best is not None
    best["quiet_wait_s"] = waited
    return best


class CpuLoad:
    """How many cores other processes keep busy: ``/proc/stat``'s busy time, less this
    process's CPU time, per second of wall time.

    Measures nothing (``foreign_cores`` returns None) where ``/proc/stat`` is missing.
    """

    def __init__(self) -> None:
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._since = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        # user nice system idle iowait irq softirq steal (guest time is inside user).
        jiffies = [int(v) for v in fields[1:9]]
        busy = sum(jiffies) - jiffies[3] - jiffies[4]
        return busy / self._hz, time.process_time(), time.perf_counter()

    def start(self) -> None:
        """Start a new interval."""
        self._since = self._snapshot()

    def foreign_cores(self) -> float | None:
        """Average foreign load since :meth:`start`, in cores (None if unknown)."""
        now = self._snapshot()
        if now is None or self._since is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self._since, now, strict=True))
        if wall <= 0:
            return None
        return max(0.0, (busy - own) / wall)

    def wait_for_quiet(self, timing: Timing, window: float = 0.25) -> float:
        """Sleep in ``window``-second steps until the foreign load falls below
        ``timing.quiet_threshold``, within ``timing.quiet_wait_s`` and what is left of
        ``timing.quiet_budget_s`` (which this spends).

        Parameters
        ----------
        timing : Timing
            Threshold and budgets.
        window : float, default=0.25
            Seconds per sample of the load.

        Returns
        -------
        waited : float
            Seconds spent waiting.
        """
        limit = min(timing.quiet_wait_s, timing.quiet_budget_s)
        waited = 0.0
        while waited < limit:
            self.start()
            time.sleep(window)
            foreign = self.foreign_cores()
            waited += window
            if foreign is None or foreign <= timing.quiet_threshold:
                break
        timing.quiet_budget_s = max(0.0, timing.quiet_budget_s - waited)
        return waited


def median_seconds(fn: Callable[[], object], device: torch.device, timing: Timing) -> float:
    """Median time of one call of ``fn``, in seconds (see :func:`measure`).

    Parameters
    ----------
    fn : callable
        What to time.
    device : torch.device
        Where it runs.
    timing : Timing
        Budgets.

    Returns
    -------
    seconds : float
        The median.
    """
    return measure(fn, device, timing)["seconds"]


def wall_seconds(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Back-to-back throughput on a GPU: ``calls`` calls then one sync, per call (median of 5).

    Unlike :func:`measure`'s CUDA events, this counts the host's launch overhead whenever
    it exceeds the device's work (small, launch-bound inputs).

    Parameters
    ----------
    fn : callable
        What to time.
    device : torch.device
        A CUDA device.
    calls : int, default=20
        Calls per sample.

    Returns
    -------
    seconds : float
        Median time per call.
    """
    samples = []
    for _ in range(5):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def copy_bandwidth(device: torch.device, timing: Timing, nbytes: int | None = None) -> float:
    """The device's copy bandwidth: a large ``dst.copy_(src)``, bytes read + written / time.

    The best of three medians: the roofline that the loss's effective bandwidth is held to.

    Parameters
    ----------
    device : torch.device
        Where to copy.
    timing : Timing
        Budgets.
    nbytes : int or None, default=None
        Size of the tensor copied; None takes 1 GiB on a GPU, 256 MiB on a CPU.

    Returns
    -------
    bandwidth : float
        Bytes per second.
    """
    if nbytes is None:
        nbytes = 2**30 if device.type == "cuda" else 2**28
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = min(median_seconds(lambda: dst.copy_(src), device, timing) for _ in range(3))
    return 2 * nbytes / seconds


def timer_description(device: torch.device, timing: Timing, rounds: int) -> str:
    """What :func:`measure` does on ``device``, in words, for a run's ``meta`` and header.

    Parameters
    ----------
    device : torch.device
        The run's device.
    timing : Timing
        Its budgets (whether CPU measurements wait for quiet and are retried).
    rounds : int
        Interleaved rounds, the fastest median kept.

    Returns
    -------
    description : str
        The timer, its statistic, the rounds.
    """
    if device.type == "cuda":
        text = "triton.testing.do_bench, median (L2 flushed between calls)"
    else:
        text = "torch.utils.benchmark.Timer.blocked_autorange, median"
    text += f"; fastest median of {rounds} interleaved round(s)"
    if device.type != "cuda" and timing.cpu_retries:
        text += (
            "; each measurement waits for other processes to leave the CPUs and is retried "
            f"when they took > {timing.quiet_threshold} core meanwhile"
        )
    return text
