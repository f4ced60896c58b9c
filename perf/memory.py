"""Peak extra memory: the bytes a step allocates beyond what was allocated before it ran.

On a GPU, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, less what
was allocated before. On a CPU torch keeps no allocator statistics, so the step runs once
under ``torch.profiler`` with ``profile_memory=True``: every allocation and free of torch's
CPU allocator (inductor's buffers included) is an event, and the running sum of the events
in time order peaks at the step's peak. :func:`memory_check` validates that counter on
cases whose peak is known by hand, and on a suite's own steps against the resident set's
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``), which also sees memory
allocated outside torch's allocator.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch._inductor.config

__all__ = [
    "Check",
    "StepCases",
    "memory_check",
    "peak_extra_bytes",
    "rss_peak_extra_bytes",
    "rss_worker",
]

#: A case of :func:`memory_check`: what it is, the step, its peak when known by hand.
Check = tuple[str, Callable[[], object], int | None]
#: A suite's own cases: a public function ``(device) -> list of Check``, named by its
#: module and name so that the resident-set subprocess can build them too.
StepCases = Callable[[torch.device], list[Check]]
_ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for the block: the profiler's C++ side prints a
    ``USDT … profiler_start`` / ``profiler_stop`` pair per use (no setting turns it off);
    Python's own errors still surface, after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiled_peak(fn: Callable[[], object]) -> int:
    """CPU: peak of the running sum of torch's allocation events while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _native_stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    events = prof.profiler.kineto_results.events()
    sizes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in sizes:
        running += nbytes
        peak = max(peak, running)
    return peak


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes that ``fn`` allocates beyond what was allocated before it ran.

    Parameters
    ----------
    fn : callable
        One step (its result is dropped before the count ends).
    device : torch.device
        ``cuda``: the caching allocator's statistics; anything else: the profiler's
        allocation events (see the module's notes).

    Returns
    -------
    nbytes : int
        Peak extra bytes.
    """
    gc.collect()
    if device.type != "cuda":
        return _profiled_peak(fn)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss_peak_extra_bytes(fn: Callable[[], object]) -> int | None:
    """Linux: growth of the resident set's high-water mark while ``fn`` runs, after freed
    heap memory is handed back (``malloc_trim``) and the mark reset (``clear_refs``); None
    where either is unavailable. Counts memory allocated outside torch's allocator too, and
    memory that glibc keeps after a free: exact only where every large block is its own
    mapping (``MALLOC_MMAP_THRESHOLD_`` set, as :func:`memory_check`'s subprocess does)."""
    try:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_bytes("VmRSS")
        if _proc_status_bytes("VmHWM") > before + 2**20:
            return None  # the reset did not take
    except (OSError, KeyError, AttributeError):
        return None
    fn()
    return _proc_status_bytes("VmHWM") - before


def _hand_cases(device: torch.device) -> list[Check]:
    """Two cases whose peak is known by hand: eager tensors, and one inductor buffer."""
    n = 4 * 2**20  # 16 MiB of float32

    def two_live() -> None:
        x = torch.ones(n, device=device)
        y = x * 2  # x and y live: 32 MiB
        del x
        z = y + 1  # y and z live: 32 MiB
        del y, z

    a = torch.randn(512, 64, device=device)
    b = torch.randn(512, 64, device=device)
    pairwise = torch.compile(lambda a, b: (a[:, None, :] - b[None, :, :]).exp(), dynamic=False)
    pairwise(a, b)  # compile outside the count
    return [
        ("eager: two live 16 MiB tensors at a time", two_live, 2 * n * 4),
        ("inductor: one fused (512, 512, 64) output", lambda: pairwise(a, b), 512 * 512 * 64 * 4),
    ]


def _cases(device: torch.device, steps: str | None) -> list[Check]:
    """The hand cases, then those that the function named ``steps`` (``module:name``) gives."""
    cases = _hand_cases(device)
    if steps:
        module, name = steps.split(":")
        cases += getattr(importlib.import_module(module), name)(device)
    return cases


def rss_worker(steps: str | None) -> None:
    """Subprocess side of :func:`memory_check`: each case's resident-set growth, printed as
    ``RSS`` and a JSON list.

    Parameters
    ----------
    steps : str or None
        ``module:name`` of the suite's cases (see :func:`memory_check`).
    """
    torch._inductor.config.compile_threads = 1
    out = [rss_peak_extra_bytes(fn) for _, fn, _ in _cases(torch.device("cpu"), steps)]
    print("RSS " + json.dumps(out))


def _rss_in_subprocess(steps: str | None) -> tuple[list[int | None], str | None]:
    """Run :func:`rss_worker` with every block above 64 KiB its own mapping."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = f"from perf.memory import rss_worker; rss_worker({steps!r})"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return [], f"{type(err).__name__}: {err}"
    for line in done.stdout.splitlines():
        if line.startswith("RSS "):
            return json.loads(line[4:]), None
    return [], f"exit {done.returncode}: {done.stderr[-300:]}"


def memory_check(device: torch.device, steps: StepCases | None = None) -> list[dict]:
    """Validate :func:`peak_extra_bytes` on cases whose peak is known by hand and, on a CPU
    with ``steps``, on the suite's own steps too, against the resident set's growth in a
    subprocess where every large block is its own mapping (``MALLOC_MMAP_THRESHOLD_=65536``:
    a freed block leaves the resident set).

    Parameters
    ----------
    device : torch.device
        Where to allocate.
    steps : callable or None, default=None
        A module-level function ``(device) -> list of (case, fn, expected or None)``, its
        steps warmed up (a compile and a few seconds more); the subprocess imports it by
        its module and name. None (or a GPU): the hand cases alone, no resident-set column.

    Returns
    -------
    checks : list of dict
        ``case``, ``expected`` (bytes; None where not known by hand), ``counted`` (what
        :func:`peak_extra_bytes` says), ``rss`` (resident-set growth, None when not
        measured) and ``rss_error``.
    """
    named = f"{steps.__module__}:{steps.__name__}" if steps and device.type == "cpu" else None
    checks = []
    for case, fn, expected in _cases(device, named):
        counted = peak_extra_bytes(fn, device)
        checks.append({"case": case, "expected": expected, "counted": counted, "rss": None})
    if named:
        rss, error = _rss_in_subprocess(named)
        for check, value in itertools.zip_longest(checks, rss):
            if check is not None:
                check["rss"], check["rss_error"] = value, error
    return checks
