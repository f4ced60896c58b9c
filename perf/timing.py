"""Timers: ``triton.testing.do_bench`` on a GPU, ``torch.utils.benchmark`` on a CPU.

Both report the median of many calls. The timed function rotates among several distinct
input sets so that a small workload is not served from a warm cache (L2 on a GPU, the
last-level cache on a CPU); ``do_bench`` also flushes the L2 between calls.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "Timing",
    "cache_bytes",
    "copy_bandwidth",
    "measure",
    "median_seconds",
    "rotation_count",
    "wall_seconds",
]


class Timing:
    """Timing budgets.

    Parameters
    ----------
    quick : bool
        Short budgets (``--quick``).
    """

    def __init__(self, quick: bool) -> None:
        #: CPU: ``blocked_autorange``'s ``min_run_time`` (seconds).
        self.cpu_min_run_time = 0.1 if quick else 0.5
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


def measure(fn: Callable[[], object], device: torch.device, timing: Timing) -> dict[str, float]:
    """Time one call of ``fn``: median and quartiles, in seconds.

    Parameters
    ----------
    fn : callable
        What to time (already warmed up: compiled, caches filled).
    device : torch.device
        ``cuda`` times with ``triton.testing.do_bench`` (CUDA events around each call, the
        L2 flushed between calls), anything else with
        ``torch.utils.benchmark.Timer.blocked_autorange`` (quartiles over its blocks).
    timing : Timing
        Budgets.

    Returns
    -------
    stats : dict
        ``seconds`` (the median), ``p25`` and ``p75``.
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
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=timing.cpu_min_run_time)
    times = sorted(m.times)
    if len(times) > 1:
        p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        p25 = p75 = times[0]
    return {"seconds": float(m.median), "p25": float(p25), "p75": float(p75)}


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
