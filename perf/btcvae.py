"""Benchmark β-TCVAE's minibatch terms against the B×B×D formula: ``python -m perf.btcvae``.

Times forward + backward of loss = α·mi + β·tc + γ·dw_kl (α = 1, β = 6, γ = 1; float32;
estimator "mss"; N = 60000) at (B, D) = (32, 6), (64, 10), (128, 16), then for B in 256,
1024, 4096 and D in 10, 32, 128, and measures
each step's peak extra memory: the bytes it allocates beyond its inputs. Contenders:

==================== =========================================================================
``ours-triton``      ``betavae_triton.kl_decomposition(..., backend="triton")`` (GPU only)
``ours-eager``       the same with ``backend="eager"``: on a CPU the C kernels
                     (``tcvae/minibatch.c``), backward by recomputation
``ours-compiled``    ``torch.compile`` of a function that calls ours (the default backend:
                     the kernels of the device), what a user's compiled training step runs
``formula``          the B×B×D formula as public implementations write it (Chen et al.'s
                     ``_log_density`` pairwise tensor, ``logsumexp`` over dim 1), float32
``formula-compiled`` ``torch.compile`` (inductor) of ``formula``
==================== =========================================================================

"ours" is ``ours-triton`` on a GPU and ``ours-eager`` on a CPU: the targets are held to it
(and to ``ours-compiled`` against ``formula-compiled``). Without ``--quick``, a global
batch (``--global-batch``, default 16384 × 32) is also timed in one process and as
``gather=True`` over two gloo ranks, where no B×B×D formula fits in memory.
The formula contenders are skipped, with their predicted peak, where it exceeds
``--memory-cap``. Writes a table to the terminal and ``btcvae_<device>.json`` / ``.txt``
under ``--out`` (default ``perf/out/``). Also runs as ``python perf/btcvae.py``.

Peak extra memory: on a GPU, ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, less what was allocated before. On a CPU torch keeps no
allocator statistics, so the step runs once under ``torch.profiler`` with
``profile_memory=True``: every allocation and free of torch's CPU allocator (inductor's
buffers included) is an event, and the running sum of the events in time order peaks at the
step's peak. :func:`memory_check` validates that counter on cases whose peak is known by hand
and against the resident set's high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``), which also sees memory allocated outside torch's allocator.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import functools
import gc
import itertools
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as `python perf/btcvae.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch._inductor.config

from betavae_triton import kl_decomposition, triton_available
from perf import machine
from perf.report import align_columns, format_number, format_seconds, write_json
from perf.timing import Timing, cache_bytes, measure, rotation_count

__all__ = [
    "BATCHES",
    "CONTENDERS",
    "LATENTS",
    "formula_terms",
    "main",
    "memory_check",
    "parse_args",
    "peak_extra_bytes",
    "predicted_peak_bytes",
    "run",
]

ALPHA, BETA, GAMMA = 1.0, 6.0, 1.0
DATASET_SIZE = 60000
ESTIMATOR = "mss"
BATCHES = (256, 1024, 4096)
LATENTS = (10, 32, 128)
QUICK_BATCHES = (256, 1024)
QUICK_LATENTS = (10, 32)
#: The (B, D) pairs where most β-TCVAE training happens, timed before the grid (with
#: --quick too) unless --batch or --latent narrows the run.
SMALL_CASES = ((32, 6), (64, 10), (128, 16))
#: Every contender, in table order.
CONTENDERS = ("ours-triton", "ours-eager", "ours-compiled", "formula", "formula-compiled")
COMPILED = frozenset({"ours-compiled", "formula-compiled"})
#: The global batch (B, D) timed in one process and over GATHER_RANKS gloo ranks.
GLOBAL_BATCH = (16384, 32)
GATHER_RANKS = 2
#: Peak extra memory of one forward + backward, in float32 B×B×D tensors, plus B×B
#: matrices (the log-weights and the joint's log-sum-exp input): measured on a CPU at
#: B = 256 … 1024 (torch 2.13); every run prints the measured peak next to the prediction.
#: ``oracle``: the float64 reference's forward alone, under ``no_grad``.
PEAK_FACTORS = {"formula": (6.1, 6), "formula-compiled": (1.15, 6), "oracle": (6.3, 6)}
#: Default ``--memory-cap`` on a CPU: the most a predicted peak may take (GiB).
CPU_MEMORY_CAP_GIB = 8.0
#: On a GPU: this share of the device's memory.
GPU_MEMORY_CAP_SHARE = 0.6
#: Target: ours' peak extra memory at B = 4096, D = 128 below this many bytes.
OURS_MEMORY_TARGET = (4096, 128, 64 * 2**20)
#: (B, D) of the contenders' steps in :func:`memory_check`.
MEMORY_CHECK_CASE = (1024, 32)
TRITON_ON_CPU = (
    "GPU only: on CPU tensors the Triton kernels run only under the interpreter "
    "(TRITON_INTERPRET=1), far too slow to time"
)
PERF_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = PERF_DIR / "out"
LOG_2PI = math.log(2 * math.pi)


def _log_density(sample: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(sample; μ, σ²), elementwise with broadcasting: the authors' ``Normal.log_density``
    (``lib/dist.py`` of rtqichen/beta-tcvae), restated."""
    inv_sigma = torch.exp(-log_sigma)
    tmp = (sample - mu) * inv_sigma
    return -0.5 * (tmp * tmp + 2 * log_sigma + LOG_2PI)


def _mss_log_weights(batch: int, dataset_size: int, like: torch.Tensor) -> torch.Tensor:
    """log w_ij of minibatch stratified sampling (the paper's weights: 1/N on the diagonal,
    (N − B + 1)/(N(B − 1)) at j = i + 1 mod B, 1/(B − 1) elsewhere), a (B, B) matrix built at
    each call, as the authors' ``_log_importance_weight_matrix`` is."""
    n, m = dataset_size, batch - 1
    w = torch.full((batch, batch), 1.0 / m, dtype=like.dtype, device=like.device)
    rows = torch.arange(batch, device=like.device)
    w[rows, rows] = 1.0 / n
    w[rows, (rows + 1) % batch] = (n - m) / (n * m)
    return w.log()


def formula_terms(
    z: torch.Tensor, q_loc: torch.Tensor, q_scale: torch.Tensor, dataset_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mi, tc, dw_kl)`` the way public β-TCVAE code computes them, in the inputs' dtype:
    the (B, B, D) pairwise log-densities, then ``logsumexp`` over the posteriors (dim 1)
    for log q(z) (the joint: summed over D first) and for each marginal log q(z_d).

    Parameters
    ----------
    z, q_loc, q_scale : torch.Tensor
        Samples, posterior means and standard deviations, shape (B, D).
    dataset_size : int
        N.

    Returns
    -------
    mi, tc, dw_kl : torch.Tensor
        Batch means, differentiable in the three inputs.
    """
    batch, latent = z.shape
    log_sigma = torch.log(q_scale)
    # pair[i, j, d] = log N(z_id; μ_jd, σ_jd): the authors' `_logqz`, a (B, B, D) tensor.
    pair = _log_density(
        z.view(batch, 1, latent), q_loc.view(1, batch, latent), log_sigma.view(1, batch, latent)
    )
    log_w = _mss_log_weights(batch, dataset_size, z)
    log_qz = torch.logsumexp(log_w + pair.sum(2), dim=1)
    log_prod_qz = torch.logsumexp(log_w.view(batch, batch, 1) + pair, dim=1).sum(1)
    log_qz_x = _log_density(z, q_loc, log_sigma).sum(1)
    zero = torch.zeros_like(z)
    log_pz = _log_density(z, zero, zero).sum(1)
    return (
        (log_qz_x - log_qz).mean(),
        (log_qz - log_prod_qz).mean(),
        (log_prod_qz - log_pz).mean(),
    )


def bbd_bytes(batch: int, latent: int) -> int:
    """Bytes of one float32 (B, B, D) tensor."""
    return batch * batch * latent * 4


def predicted_peak_bytes(name: str, batch: int, latent: int) -> int | None:
    """Predicted peak extra memory of a forward + backward (``oracle``: forward alone in
    float64), from :data:`PEAK_FACTORS`; None for ours (O(B·D) plus blocks of about 2^20
    values, whatever B)."""
    if name not in PEAK_FACTORS:
        return None
    per_bbd, per_bb = PEAK_FACTORS[name]
    return int(per_bbd * bbd_bytes(batch, latent) + per_bb * batch * batch * 4)


# --- peak extra memory --------------------------------------------------------------------


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


def _check_cases(device: torch.device, steps: bool) -> list[tuple[str, Callable, int | None]]:
    """``(case, fn, expected bytes or None)``: two hand-computable cases, then (``steps``)
    the three CPU contenders' steps at :data:`MEMORY_CHECK_CASE`, warmed up."""
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
    cases = [
        ("eager: two live 16 MiB tensors at a time", two_live, 2 * n * 4),
        ("inductor: one fused (512, 512, 64) output", lambda: pairwise(a, b), bbd_bytes(512, 64)),
    ]
    if steps:
        batch, latent = MEMORY_CHECK_CASE
        (inputs,) = make_input_sets(batch, latent, device, 1)
        for name in ("ours-eager", "formula", "formula-compiled"):
            terms = build_terms(name)
            for _ in range(2):
                _step(terms, inputs)
            fn = functools.partial(_step, terms, inputs)
            cases.append((f"{name} step at B={batch}, D={latent}", fn, None))
    return cases


def _rss_worker(steps: bool) -> None:
    """Subprocess side of :func:`memory_check`: each case's resident-set growth, as JSON."""
    torch._inductor.config.compile_threads = 1
    out = []
    for _, fn, _ in _check_cases(torch.device("cpu"), steps):
        rss = rss_peak_extra_bytes(fn)
        out.append(rss)
    print("RSS " + json.dumps(out))


def _rss_in_subprocess(steps: bool) -> tuple[list[int | None], str | None]:
    """Run :func:`_rss_worker` with every block above 64 KiB its own mapping."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = f"from perf.btcvae import _rss_worker; _rss_worker({steps})"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=PERF_DIR.parent,
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


def memory_check(device: torch.device, steps: bool) -> list[dict]:
    """Validate :func:`peak_extra_bytes` on cases whose peak is known by hand and, on a CPU,
    against the resident set's growth in a subprocess where every large block is its own
    mapping (``MALLOC_MMAP_THRESHOLD_=65536``: a freed block leaves the resident set).

    Parameters
    ----------
    device : torch.device
        Where to allocate.
    steps : bool
        Also the CPU contenders' steps at :data:`MEMORY_CHECK_CASE` (a compile and a few
        seconds more); no resident-set column without them.

    Returns
    -------
    checks : list of dict
        ``case``, ``expected`` (bytes; None where not known by hand), ``counted`` (what
        :func:`peak_extra_bytes` says), ``rss`` (resident-set growth, None when not
        measured) and ``rss_error``.
    """
    checks = []
    for case, fn, expected in _check_cases(device, steps and device.type == "cpu"):
        counted = peak_extra_bytes(fn, device)
        checks.append({"case": case, "expected": expected, "counted": counted, "rss": None})
    if steps and device.type == "cpu":
        rss, error = _rss_in_subprocess(steps)
        for check, value in itertools.zip_longest(checks, rss):
            if check is not None:
                check["rss"], check["rss_error"] = value, error
    return checks


# --- contenders and steps -----------------------------------------------------------------


def available_contenders(device: torch.device) -> dict[str, str | None]:
    """Each contender: None when it can run on ``device``, else why not."""
    status: dict[str, str | None] = dict.fromkeys(CONTENDERS)
    if device.type != "cuda":
        status["ours-triton"] = TRITON_ON_CPU
    elif not triton_available():
        status["ours-triton"] = "triton is not importable"
    return status


def primary(device: torch.device) -> str:
    """The contender that stands for ours: the kernels on a GPU, the eager path on a CPU."""
    return "ours-triton" if device.type == "cuda" else "ours-eager"


def build_terms(name: str) -> Callable:
    """``(z, q_loc, q_scale) -> (mi, tc, dw_kl)`` for a contender (a fresh compile)."""
    if name == "ours-compiled":
        ours = functools.partial(
            _ours_terms, dataset_size=DATASET_SIZE, estimator=ESTIMATOR, backend=None
        )
        return torch.compile(ours, dynamic=False)
    if name.startswith("ours-"):
        backend = name.removeprefix("ours-")
        return functools.partial(
            _ours_terms, dataset_size=DATASET_SIZE, estimator=ESTIMATOR, backend=backend
        )
    terms = functools.partial(formula_terms, dataset_size=DATASET_SIZE)
    return torch.compile(terms, dynamic=False) if name in COMPILED else terms


def _ours_terms(z, q_loc, q_scale, dataset_size, estimator, backend):
    # validate_args=False: no host sync for the σ > 0 check, as in a compiled step.
    return kl_decomposition(
        z, q_loc, q_scale, dataset_size, estimator, backend=backend, validate_args=False
    )


def make_input_sets(
    batch: int, latent: int, device: torch.device, n_sets: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``n_sets`` leaves ``(z, q_loc, q_scale)`` requiring grad, float32: q_loc ~ N(0, 1),
    q_scale ~ U(0.5, 1.5), z = q_loc + q_scale · ε."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        loc = torch.randn(batch, latent, generator=gen, device=device)
        scale = torch.rand(batch, latent, generator=gen, device=device) + 0.5
        z = loc + scale * torch.randn(batch, latent, generator=gen, device=device)
        sets.append(tuple(t.requires_grad_() for t in (z, loc, scale)))
    return sets


def _step(terms: Callable, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One training step's worth: gradients cleared (set to None), forward, backward."""
    for t in inputs:
        t.grad = None
    mi, tc, dw_kl = terms(*inputs)
    loss = ALPHA * mi + BETA * tc + GAMMA * dw_kl
    loss.backward()
    return loss.detach()


def _oracle_loss(inputs: tuple[torch.Tensor, ...]) -> float:
    """The loss from the float64 oracle (``reference/beta_tcvae.py``), not timed."""
    from reference.beta_tcvae import reference_beta_tcvae_terms

    with torch.no_grad():
        mi, tc, dw_kl = reference_beta_tcvae_terms(*inputs, DATASET_SIZE, ESTIMATOR)
    return float(ALPHA * mi + BETA * tc + GAMMA * dw_kl)


# --- one case -----------------------------------------------------------------------------


def _new_row(batch: int, latent: int, name: str, ctx: dict) -> dict:
    predicted = predicted_peak_bytes(name, batch, latent)
    skipped = None
    if predicted is not None and predicted > ctx["cap"]:
        skipped = (
            f"skipped: predicted peak {predicted / 2**30:.1f} GiB > cap "
            f"{ctx['cap'] / 2**30:.0f} GiB"
        )
    return {
        "batch": batch,
        "latent": latent,
        "contender": name,
        "dtype": "float32",
        "estimator": ESTIMATOR,
        "dataset_size": DATASET_SIZE,
        "seconds": None,
        "p25": None,
        "p75": None,
        "round_medians": [],
        "first_call_s": None,
        "compile_s": None,
        "peak_extra_bytes": None,
        "bbd_bytes": bbd_bytes(batch, latent),
        "predicted_peak_bytes": predicted,
        "peak_over_bbd": None,
        "loss": None,
        "oracle_loss": None,
        "rel_err": None,
        "foreign_load": None,
        "faults_per_call": None,
        "formula_over_this": None,
        "compiled_over_this": None,
        "skipped": skipped,
        "error": None,
    }


def _fail(row: dict, err: Exception) -> None:
    row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    gc.collect()


def _prepare(row: dict, terms: Callable, sets: list, ctx: dict) -> Callable[[], object] | None:
    """Warm up a contender (the first call compiles), then count its peak memory; the
    timed function, or None after an error."""
    device = ctx["device"]
    cycle = itertools.cycle(sets)
    try:
        start = time.perf_counter()
        row["loss"] = float(_step(terms, sets[0]))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row["first_call_s"] = time.perf_counter() - start
        _step(terms, sets[0])
        for t in sets[0]:
            t.grad = None
        row["peak_extra_bytes"] = peak_extra_bytes(lambda: _step(terms, sets[0]), device)
        row["peak_over_bbd"] = row["peak_extra_bytes"] / row["bbd_bytes"]
    except Exception as err:
        _fail(row, err)
        return None
    return lambda: _step(terms, next(cycle))


def bench_case(batch: int, latent: int, ctx: dict) -> list[dict]:
    """Every contender at one (B, D): warm-up and memory count for each, then ``rounds``
    round-robin passes of timing (each contender's fastest median kept), so that other
    work on the machine disturbs every contender alike."""
    device, timing = ctx["device"], ctx["timing"]
    torch._dynamo.reset()
    rows = {name: _new_row(batch, latent, name, ctx) for name in ctx["contenders"]}
    n_sets = rotation_count(3 * batch * latent * 4, ctx["cache"], timing)
    sets = make_input_sets(batch, latent, device, n_sets)
    oracle = None
    if predicted_peak_bytes("oracle", batch, latent) <= ctx["cap"]:
        oracle = _oracle_loss(sets[0])
    fns = {}
    for name, row in rows.items():
        if row["skipped"]:
            continue
        _progress(f"B={batch} D={latent} {name}: warm-up{' + compile' * (name in COMPILED)}")
        fn = _prepare(row, build_terms(name), sets, ctx)
        if fn is not None:
            fns[name] = fn
    for r in range(ctx["rounds"]):
        for name, fn in list(fns.items()):
            _progress(f"B={batch} D={latent} {name}: round {r + 1}")
            try:
                stats = measure(fn, device, timing)
            except Exception as err:
                _fail(rows[name], err)
                fns.pop(name)
                continue
            row = rows[name]
            row["round_medians"].append(stats["seconds"])
            if row["seconds"] is None or stats["seconds"] < row["seconds"]:
                row.update(stats)
    for row in rows.values():
        _finish_row(row, rows, oracle)
    return list(rows.values())


def _finish_row(row: dict, rows: dict, oracle: float | None) -> None:
    """Ratios (their time / this row's), compile time, error against the oracle."""
    secs = row["seconds"]
    rivals = {"formula_over_this": "formula", "compiled_over_this": "formula-compiled"}
    for key, rival in rivals.items():
        theirs = rows.get(rival, {}).get("seconds")
        if secs and theirs:
            row[key] = theirs / secs
    if row["contender"] in COMPILED and secs and row["first_call_s"]:
        row["compile_s"] = max(0.0, row["first_call_s"] - secs)  # less one fwd + bwd
    row["oracle_loss"] = oracle
    if oracle is not None and row["loss"] is not None:
        row["rel_err"] = abs(row["loss"] - oracle) / abs(oracle)


#: Whether :func:`_progress` prints (``--no-progress`` turns it off).
_PROGRESS = {"on": True}


def _progress(message: str) -> None:
    if _PROGRESS["on"]:
        print(f"  {message}", file=sys.stderr, flush=True)


# --- a global batch --------------------------------------------------------------------------


def _global_inputs(batch: int, latent: int) -> tuple[torch.Tensor, ...]:
    """The global batch ``(z, q_loc, q_scale)``, float32, the same in every process."""
    return make_input_sets(batch, latent, torch.device("cpu"), 1, seed=1)[0]


def _ours_gather_terms(z, q_loc, q_scale):
    return kl_decomposition(
        z, q_loc, q_scale, DATASET_SIZE, ESTIMATOR, validate_args=False, gather=True
    )


def _timed_steps(terms: Callable, leaves: tuple, steps: int, device: torch.device) -> dict:
    """One warm-up step, the peak extra memory of one, then ``steps`` timed steps."""
    loss = float(_step(terms, leaves))
    peak = peak_extra_bytes(lambda: _step(terms, leaves), device)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        _step(terms, leaves)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {"loss": loss, "peak_extra_bytes": peak, "seconds": seconds}


def _gather_rank(batch: int, latent: int, steps: int, out: str) -> None:
    """One gloo rank of :func:`bench_global_batch` (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT`` set): its share of the global batch, scored with
    ``gather=True``; the timings to ``out`` as JSON."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    rows = slice(rank * batch // world, (rank + 1) * batch // world)
    leaves = tuple(t[rows].detach().clone().requires_grad_() for t in _global_inputs(batch, latent))
    result = _timed_steps(_ours_gather_terms, leaves, steps, torch.device("cpu"))
    result.update(rank=rank, threads=torch.get_num_threads())
    Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gather_processes(batch: int, latent: int, steps: int, ranks: int) -> list[dict]:
    """Run :func:`_gather_rank` in ``ranks`` processes; their results, by rank."""
    import tempfile

    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env["WORLD_SIZE"] = str(ranks)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"rank{r}.json") for r in range(ranks)]
        procs = []
        for r in range(ranks):
            call = f"_gather_rank({batch}, {latent}, {steps}, {outs[r]!r})"
            code = f"from perf.btcvae import _gather_rank; {call}"
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code],
                    env=dict(env, RANK=str(r)),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        errors = [p.communicate(timeout=3600)[1] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(
                next(e for p, e in zip(procs, errors, strict=True) if p.returncode)[-800:]
            )
        return [json.loads(Path(o).read_text()) for o in outs]


def bench_global_batch(batch: int, latent: int, device: torch.device, steps: int = 2) -> dict:
    """Ours at a global batch where no B×B×D formula fits: forward + backward in one
    process (every thread), and, on a CPU, with ``gather=True`` over
    :data:`GATHER_RANKS` gloo ranks that share the CPUs (each its share of the rows,
    scored against every posterior): seconds per step, peak extra memory (per rank), the
    losses (the ranks' mean is the single process's), and what the formula would hold."""
    _progress(f"global batch B={batch} D={latent}: one process")
    leaves = tuple(t.to(device).detach().requires_grad_() for t in _global_inputs(batch, latent))
    terms = functools.partial(
        _ours_terms, dataset_size=DATASET_SIZE, estimator=ESTIMATOR, backend=None
    )
    single = _timed_steps(terms, leaves, steps, device)
    single["threads"] = torch.get_num_threads()
    result = {
        "batch": batch,
        "latent": latent,
        "single": single,
        "gather": None,
        "gather_note": None,
        "bbd_bytes": bbd_bytes(batch, latent),
        "formula_predicted_peak_bytes": predicted_peak_bytes("formula", batch, latent),
        "compiled_predicted_peak_bytes": predicted_peak_bytes("formula-compiled", batch, latent),
    }
    if device.type != "cpu":
        result["gather_note"] = "gather timed on a CPU only (gloo ranks sharing its cores)"
        return result
    _progress(f"global batch B={batch} D={latent}: {GATHER_RANKS} gloo ranks, gather=True")
    try:
        result["gather"] = _gather_processes(batch, latent, steps, GATHER_RANKS)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        result["gather_note"] = f"{type(err).__name__}: {err}"
    return result


def format_global_batch(g: dict) -> str:
    """The global batch's lines of the report."""
    b, d = g["batch"], g["latent"]
    single = g["single"]
    lines = [
        f"global batch B={b} D={d}: one process ({single['threads']} threads): "
        f"{format_seconds(statistics.median(single['seconds']))} per step, peak extra "
        f"{_mib(single['peak_extra_bytes'])}"
    ]
    if g["gather"]:
        ranks = g["gather"]
        worst = max(statistics.median(r["seconds"]) for r in ranks)
        peak = max(r["peak_extra_bytes"] for r in ranks)
        mean_loss = sum(r["loss"] for r in ranks) / len(ranks)
        rel = abs(mean_loss - single["loss"]) / abs(single["loss"])
        lines.append(
            f"global batch B={b} D={d}: gather=True over {len(ranks)} gloo ranks of "
            f"{b // len(ranks)} rows ({ranks[0]['threads']} thread(s) each): "
            f"{format_seconds(worst)} per step (slowest rank), peak extra "
            f"{_mib(peak)} per rank; mean of the ranks' losses vs one process: rel. diff "
            f"{rel:.1e}"
        )
    elif g["gather_note"]:
        lines.append(f"global batch: gather not timed: {g['gather_note']}")
    lines.append(
        f"global batch B={b} D={d}: the formula would hold B×B×D float32 tensors of "
        f"{_mib(g['bbd_bytes'])} each: predicted peak {_mib(g['formula_predicted_peak_bytes'])} "
        f"eager, {_mib(g['compiled_predicted_peak_bytes'])} compiled"
    )
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------


def _mib(nbytes: float | None) -> str:
    if nbytes is None:
        return "-"
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB"


def format_table(rows: list[dict]) -> str:
    """Rows as an aligned text table, a blank line between batch sizes."""
    head = ["B", "D", "contender", "median", "IQR", "peak extra", "BxBxD", "peak/BBD"]
    head += ["predicted", "first call", "formula/this", "compiled/this", "rel err", "note"]
    lines: list[list[str] | None] = [head]
    last = None
    for row in rows:
        if last is not None and (row["batch"], row["latent"]) != last:
            lines.append(None)
        last = (row["batch"], row["latent"])
        secs, p25, p75 = row["seconds"], row["p25"], row["p75"]
        iqr = 100 * (p75 - p25) / secs if secs and p25 is not None and p75 is not None else None
        note = row["skipped"] or row["error"] or ""
        if (row.get("foreign_load") or 0) > 0.25 and not note:
            note = f"disturbed: other processes took {row['foreign_load']:.1f} core"
        lines.append(
            [
                str(row["batch"]),
                str(row["latent"]),
                row["contender"],
                format_seconds(secs),
                format_number(iqr, ".0f", "%"),
                _mib(row["peak_extra_bytes"]),
                _mib(row["bbd_bytes"]),
                format_number(row["peak_over_bbd"], ".2f"),
                _mib(row["predicted_peak_bytes"]),
                format_seconds(row["first_call_s"]),
                format_number(row["formula_over_this"], ".2f", "x"),
                format_number(row["compiled_over_this"], ".2f", "x"),
                format_number(row["rel_err"], ".1e"),
                note,
            ]
        )
    return align_columns(lines, left=(2,))


def check_targets(rows: list[dict], ours: str) -> dict:
    """The targets: ours' peak extra memory at B = 4096, D = 128 under 64 MiB (and
    ``ours-compiled``'s); ours no slower than the formula wherever the formula ran
    (formula_time / ours_time ≥ 1); ours and ``ours-compiled`` no slower than the compiled
    formula wherever it ran (compiled_time / ours_time ≥ 1)."""
    batch, latent, limit = OURS_MEMORY_TARGET
    mine = [r for r in rows if r["contender"] == ours]
    at = [r for r in mine if (r["batch"], r["latent"]) == (batch, latent)]
    peak = at[0]["peak_extra_bytes"] if at else None
    speed = [
        {"batch": r["batch"], "latent": r["latent"], "ratio": r["formula_over_this"]}
        for r in mine
        if r["formula_over_this"] is not None
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
    compiled_peak = [
        r["peak_extra_bytes"]
        for r in rows
        if r["contender"] == "ours-compiled" and (r["batch"], r["latent"]) == (batch, latent)
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
            "peak_extra_bytes": compiled_peak[0] if compiled_peak else None,
            "met": compiled_peak[0] < limit if compiled_peak and compiled_peak[0] else None,
        },
    }


def format_targets(targets: dict) -> str:
    """The targets as lines of text."""
    mem, ours = targets["memory"], targets["ours"]
    where = f"B={mem['batch']}, D={mem['latent']}"
    if mem["met"] is None:
        lines = [f"target: {ours} peak extra memory at {where} < 64 MiB: not measured in this run"]
    else:
        verdict = "met" if mem["met"] else "MISSED"
        lines = [
            f"target: {ours} peak extra memory at {where} < 64 MiB: "
            f"{_mib(mem['peak_extra_bytes'])}: {verdict}"
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
        lines.append(
            f"target: ours-compiled peak extra memory at {where} < 64 MiB: {_mib(peak)}: {verdict}"
        )
    return "\n".join(lines)


def format_memory_check(checks: list[dict]) -> str:
    """The counter's validation, one line per case."""
    lines = []
    for c in checks:
        expected = "-" if c["expected"] is None else _mib(c["expected"])
        rss = _mib(c["rss"]) if c["rss"] is not None else c.get("rss_error") or "not measured"
        lines.append(
            f"memory counter check: {c['case']}: expected {expected}, counted "
            f"{_mib(c['counted'])}, resident-set growth {rss}"
        )
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (None reads ``sys.argv``)."""
    parser = argparse.ArgumentParser(
        prog="python -m perf.btcvae",
        description=__doc__.split("\n\n")[1].removesuffix(" Contenders:")
        + f" Contenders: {', '.join(CONTENDERS)} (see the module's docstring).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="B in 256 1024, D in 10 32, short budgets, one round",
    )
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--batch", type=int, nargs="+", metavar="B", help="batch sizes")
    parser.add_argument("--latent", type=int, nargs="+", metavar="D", help="latent sizes")
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=CONTENDERS,
        metavar="NAME",
        help=f"{' '.join(CONTENDERS)} (default: every one that runs here)",
    )
    parser.add_argument(
        "--memory-cap",
        type=float,
        metavar="GIB",
        help=f"skip a contender whose predicted peak exceeds this (default: "
        f"{CPU_MEMORY_CAP_GIB:.0f} on a CPU, {100 * GPU_MEMORY_CAP_SHARE:.0f}%% of a GPU's "
        "memory)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="R",
        help="interleaved timing rounds (default: 2, 1 with --quick)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        metavar="S",
        help="CPU: seconds the run may spend in all waiting for other processes to leave "
        "the CPUs (default: 600, 0 with --quick)",
    )
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: perf/out/)"
    )
    parser.add_argument(
        "--global-batch",
        type=int,
        nargs=2,
        metavar=("B", "D"),
        help=f"the global batch timed in one process and with gather=True "
        f"(default: {GLOBAL_BATCH[0]} {GLOBAL_BATCH[1]}, not with --quick; 0 0: none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def _context(args: argparse.Namespace, device: torch.device) -> dict:
    wanted = args.contenders or CONTENDERS
    status = available_contenders(device)
    if args.memory_cap is not None:
        cap = int(args.memory_cap * 2**30)
    elif device.type == "cuda":
        cap = int(GPU_MEMORY_CAP_SHARE * torch.cuda.get_device_properties(device).total_memory)
    else:
        cap = int(CPU_MEMORY_CAP_GIB * 2**30)
    return {
        "device": device,
        "timing": Timing(args.quick, args.quiet_budget),
        "rounds": args.rounds or (1 if args.quick else 2),
        "contenders": [c for c in CONTENDERS if c in wanted and status[c] is None],
        "dropped": {c: status[c] for c in wanted if status[c] is not None},
        "cap": cap,
        "cache": cache_bytes(device),
    }


def _meta(args: argparse.Namespace, ctx: dict) -> dict:
    device = ctx["device"]
    return {
        "device": machine.device_name(device),
        "device_type": device.type,
        "host": socket.gethostname(),
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(),
        "versions": machine.versions(),
        "git": machine.git_state(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "argv": sys.argv[1:],
        "load_before": machine.machine_load(),
        "loss": f"{ALPHA:g}*mi + {BETA:g}*tc + {GAMMA:g}*dw_kl, then .backward() "
        "(gradients set to None before each step)",
        "ours": primary(device),
        "memory_cap_bytes": ctx["cap"],
        "peak_factors": {k: list(v) for k, v in PEAK_FACTORS.items()},
        "rounds": ctx["rounds"],
        "timer": (
            "triton.testing.do_bench, median"
            if device.type == "cuda"
            else "torch.utils.benchmark.Timer.blocked_autorange, median; each measurement "
            "waits for other processes to leave the CPUs"
        )
        + f"; fastest median of {ctx['rounds']} interleaved round(s)",
        "memory_counter": (
            "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            if device.type == "cuda"
            else "torch.profiler profile_memory=True: allocation events summed in time order"
        ),
        "inductor_compile_threads": 1,
    }


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark, print the table and write the outputs; the JSON document."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    _PROGRESS["on"] = not args.no_progress
    # In-process compilation: compile workers would steal the CPUs from what is timed.
    torch._inductor.config.compile_threads = 1
    ctx = _context(args, device)
    meta = _meta(args, ctx)
    busy = machine.busy(meta["load_before"]) if device.type == "cpu" else None
    if busy:
        print(f"!!!!!!!! {busy}", file=sys.stderr)
    for name, reason in ctx["dropped"].items():
        print(f"note: contender {name!r} left out: {reason}", file=sys.stderr)
    checks = memory_check(device, steps=not args.quick)
    quiet_budget = ctx["timing"].quiet_budget_s
    batches = args.batch or (QUICK_BATCHES if args.quick else BATCHES)
    latents = args.latent or (QUICK_LATENTS if args.quick else LATENTS)
    cases = [] if args.batch or args.latent else list(SMALL_CASES)
    cases += [(batch, latent) for batch in batches for latent in latents]
    rows: list[dict] = []
    start = time.perf_counter()
    for batch, latent in cases:
        rows += bench_case(batch, latent, ctx)
    global_batch = args.global_batch or (None if args.quick else GLOBAL_BATCH)
    big = None
    if global_batch and all(global_batch):
        big = bench_global_batch(*global_batch, device)
    meta["elapsed_s"] = time.perf_counter() - start
    meta["load_after"] = machine.machine_load()
    meta["quiet_wait_s"] = quiet_budget - ctx["timing"].quiet_budget_s
    targets = check_targets(rows, primary(device))
    document = {
        "meta": meta,
        "contenders": ctx["contenders"],
        "dropped": ctx["dropped"],
        "memory_check": checks,
        "targets": targets,
        "results": rows,
        "global_batch": big,
    }
    text = _header(meta, busy) + format_table(rows) + "\n\n"
    text += format_targets(targets) + "\n" + format_memory_check(checks)
    if big is not None:
        text += "\n" + format_global_batch(big)
    print(text)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"btcvae_{device.type}{'_quick' if args.quick else ''}"
    stem.with_suffix(".txt").write_text(text + "\n")
    write_json(stem.with_suffix(".json"), document)
    print(f"wrote {stem}.json, {stem}.txt")
    return document


def _header(meta: dict, busy: str | None) -> str:
    v = meta["versions"]
    return (
        f"# beta-TCVAE minibatch terms vs the BxBxD formula | {meta['device']} | "
        f"torch {v['torch']} | triton {v['triton']} | python {v['python']} | {meta['date']}\n"
        f"# git {machine.git_label(meta['git'])}; ours = {meta['ours']}; float32, estimator "
        f"{ESTIMATOR}, N = {DATASET_SIZE}; step: {meta['loss']}\n"
        f"# {meta['timer']}\n"
        f"# peak extra: {meta['memory_counter']}; BxBxD: one float32 (B, B, D) tensor; "
        f"predicted: formula peaks, skipped above {meta['memory_cap_bytes'] / 2**30:.1f} GiB\n"
        "# formula/this, compiled/this: their median / this row's (> 1: this row is faster); "
        "first call includes inductor's compile; rel err: loss vs the float64 oracle\n"
        + (f"# WARNING: {busy}\n" if busy else "")
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m perf.btcvae``; 0 on success."""
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
