"""Benchmark the beta-VAE loss: ``python -m perf.bench [--quick] [options]``.

Races ``betavae_triton`` (Triton kernels on a GPU, the eager path, the eager path under
``torch.compile``) against nidl's ``BetaVAELoss`` and ``torch.compile`` of the reference's
plain maths, on named workloads (sprites, faces, mri, mri-bf16, mri64) and a sweep of
sizes, forward alone and forward + backward. Writes a table to the terminal and, under
``--out`` (default ``perf/out/``), a JSON file of every figure, the table as text, and a
PNG of effective bandwidth against size on the sweep. Also runs as ``python perf/bench.py``.

On a GPU the timer is ``triton.testing.do_bench``; on a CPU ``torch.utils.benchmark``, and
the Triton contender is left out there (it would run under the Triton interpreter, whose
timings mean nothing). nidl's code is read at run time from the installed package or from
``--nidl PATH`` (a wheel, its ``beta_vae.py``, or a folder holding the package), never
copied into this repository.

Effective bandwidth is the fewest bytes the step must move divided by its median time:
forward reads p and x; forward + backward also writes p's gradient. The latent tensors are
left out of that count.

torch.distributions argument validation is off for every contender while timing (it scans
the tensors and syncs with the device; ``--validate-args`` keeps it on).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import itertools
import math
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as `python perf/bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch._inductor.config
from tqdm import tqdm

from perf import machine
from perf.contenders import (
    COMPILED,
    CONTENDERS,
    NIDL_VERSION,
    NidlSource,
    available_contenders,
    build_step,
    load_nidl,
    oracle_loss,
)
from perf.report import add_ratios, format_table, plot_sweep, write_json
from perf.timing import Timing, cache_bytes, copy_bandwidth, measure, rotation_count, wall_seconds
from perf.workloads import MODES, Workload, make_input_sets, select_workloads

__all__ = ["main", "parse_args", "run"]

PERF_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = PERF_DIR / "out"
NIDL_CACHE = PERF_DIR / "out" / "nidl-cache"
#: Largest sweep size (power of two): CONTRACT section 6's 2^28, on every device.
SWEEP_MAX = 28
#: Why the Triton contender is not in CPU runs (also written to the table and JSON).
TRITON_ON_CPU = (
    "not run on a CPU. The Triton kernels run on CPU tensors only under the "
    "interpreter (TRITON_INTERPRET=1), which executes them in numpy, block by block: "
    "a correctness tool whose timings say nothing about the kernels' speed"
)
#: Relative error against the float64 oracle above which a row is flagged.
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-9, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line.

    Parameters
    ----------
    argv : list of str or None
        Arguments; None reads ``sys.argv``.

    Returns
    -------
    args : argparse.Namespace
        Parsed options.
    """
    parser = argparse.ArgumentParser(
        prog="python -m perf.bench",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small subset, short budgets: sprites and faces at 1/8 batch, 3-point sweep",
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        metavar="NAME",
        help="sprites faces mri mri-bf16 mri64 sweep sweep-2^K (default: all)",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        metavar="NAME",
        choices=CONTENDERS,
        help=f"{' '.join(CONTENDERS)} (default: every one that can run here)",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="default: both"
    )
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument(
        "--nidl",
        metavar="PATH",
        help=f"a nidl-{NIDL_VERSION} wheel (.whl), nidl's losses/beta_vae.py, or a folder "
        "holding the nidl package; `none` leaves nidl out; `download` runs `pip download "
        f"nidl=={NIDL_VERSION} --no-deps` into perf/out/nidl-cache/ "
        "(default: the installed nidl package, else a wheel already in that cache)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: perf/out/)"
    )
    parser.add_argument(
        "--sweep-max",
        type=int,
        metavar="K",
        help=f"largest sweep size 2^K (default: {SWEEP_MAX})",
    )
    parser.add_argument(
        "--validate-args",
        action="store_true",
        help="keep torch.distributions argument validation on while timing",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="R",
        help="interleaved timing rounds per contender, fastest median kept "
        "(default: 3 on a GPU, 2 on a CPU, 1 with --quick)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        metavar="S",
        help="CPU: seconds the run may spend in all waiting for other processes to leave "
        "the CPUs before a measurement (default: 600, 0 with --quick)",
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _validation(enabled: bool) -> Iterator[None]:
    from torch.distributions import Distribution

    before = Distribution._validate_args
    Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed_fn(mode: str, step, sets) -> Callable[[], None]:
    """One call of the step on the next input set (and its backward, in ``fwd+bwd``)."""
    cycle = itertools.cycle(sets)
    if mode == "fwd":

        def fn() -> None:
            step(*next(cycle))

    else:

        def fn() -> None:
            x, p, mu, scale = next(cycle)
            torch.autograd.grad(step(x, p, mu, scale), (p, mu, scale))

    return fn


def _warm_up(mode: str, step, sets, fn, device: torch.device) -> dict:
    """First call (compiles the compiled contenders), two more calls, and the loss's value."""
    start = time.perf_counter()
    loss = step(*sets[0])
    if mode == "fwd+bwd":
        torch.autograd.grad(loss, sets[0][1:])
    _sync(device)
    first_call = time.perf_counter() - start
    for _ in range(2):
        fn()
    _sync(device)
    return {"first_call_s": first_call, "loss": float(loss.detach())}


def _new_row(w: Workload, mode: str, name: str, n_sets: int, oracle, error) -> dict:
    return {
        **{k: v for k, v in w.describe().items() if k != "name"},
        "workload": w.name,
        "mode": mode,
        "contender": name,
        "seconds": None,
        "p25": None,
        "p75": None,
        "round_medians": [],
        "first_call_s": None,
        "n_sets": n_sets,
        "bytes": w.min_bytes(mode),
        "loss": None,
        "oracle_loss": oracle,
        "rel_err": None,
        "foreign_load": None,
        "faults_per_call": None,
        "error": error,
        "warning": None,
    }


def _bench_mode(w, mode, steps, errors, sets, oracle, ctx: dict) -> list[dict]:
    """Every contender on one workload and mode: warm up and check each, then time them
    in ``rounds`` round-robin passes and keep each one's fastest median.

    Interleaving the rounds spreads any interference from other work on the machine over
    every contender alike; the fastest median is the least disturbed one.
    """
    device, timing, bar = ctx["device"], ctx["timing"], ctx["bar"]
    rows, fns = {}, {}
    progress_end = bar.n + len(steps | errors) * (1 + ctx["rounds"])
    for name in steps | errors:
        rows[name] = _new_row(w, mode, name, len(sets or ()), oracle, errors.get(name))
        if rows[name]["error"] is not None:
            continue
        bar.set_postfix_str(f"{w.name} {mode} {name} (warm-up{', compile' * (name in COMPILED)})")
        try:
            fns[name] = _timed_fn(mode, steps[name], sets)
            rows[name].update(_warm_up(mode, steps[name], sets, fns[name], device))
        except Exception as err:
            rows[name]["error"] = f"{type(err).__name__}: {str(err)[:200]}"
            fns.pop(name, None)
            _free(device)
        bar.update()
    for r in range(ctx["rounds"]):
        for name, fn in list(fns.items()):
            bar.set_postfix_str(f"{w.name} {mode} {name} (round {r + 1})")
            try:
                stats = measure(fn, device, timing)
                if device.type == "cuda":
                    stats["wall_seconds"] = wall_seconds(fn, device)
            except Exception as err:
                rows[name]["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                fns.pop(name)
                _free(device)
                continue
            row = rows[name]
            row["round_medians"].append(stats["seconds"])
            if row["seconds"] is None or stats["seconds"] < row["seconds"]:
                row.update(stats)
            bar.update()
    bar.update(progress_end - bar.n)
    for row in rows.values():
        if row["loss"] is not None and oracle:
            row["rel_err"] = abs(row["loss"] - oracle) / abs(oracle)
            if not row["rel_err"] <= TOLERANCE.get(w.dtype, 1e-3):
                row["warning"] = f"loss off by {row['rel_err']:.2g} (rel.)"
        foreign = row["foreign_load"]
        if foreign is not None and foreign > timing.quiet_threshold and not row["warning"]:
            row["warning"] = f"disturbed: other processes took {foreign:.1f} core"
        if row["error"] or row["warning"]:
            tqdm.write(f"{w.name} {mode} {row['contender']}: {row['error'] or row['warning']}")
        secs = row["seconds"]
        ok = secs is not None and math.isfinite(secs) and secs > 0
        row["bandwidth"] = row["bytes"] / secs if ok else None
        copy_bw = ctx["copy_bw"]
        row["copy_share"] = row["bandwidth"] / copy_bw if ok and copy_bw else None
    return [rows[name] for name in ctx["contenders"] if name in rows]


def _bench_workload(w: Workload, ctx: dict) -> list[dict]:
    """Both modes of one workload, with freshly compiled contenders."""
    device, contenders = ctx["device"], ctx["contenders"]
    torch._dynamo.reset()
    steps, errors = {}, {}
    for name in contenders:
        try:
            steps[name] = build_step(name, w, ctx["nidl_cls"])
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
    rows, oracle = [], None
    n_sets = rotation_count(w.min_bytes("fwd"), ctx["cache"], ctx["timing"])
    for mode in ctx["modes"]:
        mode_errors, sets = dict(errors), None
        try:
            sets = make_input_sets(w, device, mode == "fwd+bwd", n_sets)
            if oracle is None:
                oracle = oracle_loss(w, *sets[0])
        except torch.OutOfMemoryError as err:
            mode_errors = dict.fromkeys(contenders, f"inputs: OutOfMemoryError: {err}"[:200])
        mode_steps = {k: v for k, v in steps.items() if k not in mode_errors}
        rows += _bench_mode(w, mode, mode_steps, mode_errors, sets, oracle, ctx)
        del sets
        _free(device)
    return rows


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark and write its outputs.

    Parameters
    ----------
    args : argparse.Namespace
        Options from :func:`parse_args`.

    Returns
    -------
    document : dict
        Everything written to the JSON file.
    """
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing = Timing(args.quick, args.quiet_budget)
    rounds = args.rounds or (1 if args.quick else 3 if device.type == "cuda" else 2)
    sweep_max = args.sweep_max or SWEEP_MAX
    workloads = select_workloads(args.workloads, args.quick, sweep_max)
    wanted = list(args.contenders or CONTENDERS)

    nidl = NidlSource(None, "not asked for", None)
    if "nidl" in wanted:
        nidl = load_nidl(args.nidl, NIDL_CACHE)
    nidl_cls, nidl_origin = nidl.cls, nidl.origin
    status = available_contenders(device, nidl_cls)
    contenders = [c for c in CONTENDERS if c in wanted and status[c] is None]
    dropped = {c: status[c] for c in wanted if status[c] is not None}
    if "triton" in dropped and device.type != "cuda":
        dropped["triton"] = TRITON_ON_CPU
    notes = [f"{name} left out: {reason}" for name, reason in dropped.items()]
    for name, reason in dropped.items():
        loud = "!" * 8 if name == "nidl" else "note:"
        print(f"{loud} contender {name!r} dropped: {reason}", file=sys.stderr)
    if "nidl" in wanted and nidl_cls is None:
        print(f"!!!!!!!! nidl: {nidl_origin}", file=sys.stderr)
    load_before = machine.machine_load()
    busy = machine.busy(load_before) if device.type == "cpu" else None
    if busy:
        print(f"!!!!!!!! {busy}", file=sys.stderr)

    # In-process compilation: a pool of compile workers starting up in the background
    # steals the CPU from whatever is being timed meanwhile.
    torch._inductor.config.compile_threads = 1
    cache = cache_bytes(device)
    quiet_budget = timing.quiet_budget_s
    with _validation(args.validate_args):
        copy_bw = copy_bandwidth(device, timing)
    meta = {
        "device": machine.device_name(device),
        "device_type": device.type,
        "host": socket.gethostname(),
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(),
        "versions": {**machine.versions(), "nidl": nidl.version},
        "git": machine.git_state(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "argv": sys.argv[1:],
        "load_before": load_before,
        "busy_warning": busy,
        "nidl": nidl_origin,
        "notes": notes,
        "validate_args": args.validate_args,
        "sweep_max_log2": sweep_max,
        "rounds": rounds,
        "cache_bytes_defeated": cache,
        "timer": (
            "triton.testing.do_bench, median (L2 flushed between calls)"
            if device.type == "cuda"
            else "torch.utils.benchmark.Timer.blocked_autorange, median"
        )
        + f"; fastest median of {rounds} interleaved round(s)"
        + (
            f"; each measurement waits for other processes to leave the CPUs and is "
            f"retried when they took > {timing.quiet_threshold} core meanwhile"
            if device.type == "cpu" and not args.quick
            else ""
        ),
        "bytes_counted": "fwd: read p and x; fwd+bwd: read p and x, write grad p "
        "(latent tensors left out)",
        "speedup": "their median time / this row's median time",
        "copy_bandwidth_Bps": copy_bw,
        "inductor_compile_threads": 1,
        "foreign_load_threshold_cores": timing.quiet_threshold if device.type == "cpu" else None,
    }
    tqdm.write(f"device: {meta['device']}; copy bandwidth {copy_bw / 1e9:.1f} GB/s", sys.stderr)

    total = len(workloads) * len(args.modes) * len(contenders) * (1 + rounds)
    bar = tqdm(total=total, unit="step", disable=args.no_progress, file=sys.stderr)
    ctx = {
        "device": device,
        "timing": timing,
        "rounds": rounds,
        "bar": bar,
        "contenders": contenders,
        "modes": args.modes,
        "nidl_cls": nidl_cls,
        "cache": cache,
        "copy_bw": copy_bw,
    }
    rows: list[dict] = []
    with _validation(args.validate_args):
        for w in workloads:
            rows += _bench_workload(w, ctx)
    bar.close()
    add_ratios(rows)

    meta["load_after"] = machine.machine_load()
    meta["quiet_wait_s"] = quiet_budget - timing.quiet_budget_s
    document = {
        "meta": meta,
        "contenders": contenders,
        "dropped": dropped,
        "workloads": [w.describe() for w in workloads],
        "results": rows,
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{device.type}{'_quick' if args.quick else ''}"
    table = format_table(rows, copy_bw if device.type == "cuda" else None)
    versions = meta["versions"]
    header = (
        f"# {meta['device']} | torch {versions['torch']} | triton {versions['triton']} | "
        f"python {versions['python']} | nidl {versions['nidl']} | {meta['date']} | "
        f"{meta['host']}\n"
        f"# nidl: {nidl_origin}; git {machine.git_label(meta['git'])}\n"
        f"# copy bandwidth {copy_bw / 1e9:.1f} GB/s; {meta['timer']}\n"
        "# x nidl, x c-ref: their median / this row's median (> 1: this row is faster)\n"
        f"# GB/s: {meta['bytes_counted']}\n"
    )
    if any(r.get("faults_per_call") is not None for r in rows):
        header += (
            "# faults: minor page faults per call, each a first touch of 4 KiB of freshly "
            "allocated memory (the OS zeroes it)\n"
        )
    header += "".join(f"# {note}\n" for note in notes)
    if device.type == "cpu":
        disturbed = sum(1 for r in rows if (r["warning"] or "").startswith("disturbed"))
        header += (
            f"# waited {meta['quiet_wait_s']:.0f} s in all for other processes to leave the "
            f"CPUs; {disturbed} row(s) still measured while they took "
            f"> {timing.quiet_threshold} core\n"
        )
    if busy:
        header += f"# WARNING: {busy}\n"
    print(header + table)
    (out / f"{stem}.txt").write_text(header + table + "\n")
    write_json(out / f"{stem}.json", document)
    title = f"beta-VAE loss, size sweep: {meta['device']}"
    if "triton" in dropped:
        title += "\n(triton not run: " + (
            "CPU, interpreter only)" if device.type != "cuda" else f"{dropped['triton']})"
        )
    plotted = plot_sweep(out / f"{stem}.png", rows, contenders, copy_bw, title)
    written = [f"{stem}.json", f"{stem}.txt"] + ([f"{stem}.png"] if plotted else [])
    print(f"wrote {', '.join(str(out / f) for f in written)}")
    if "nidl" in dropped:
        print(f"!!!!!!!! NO NIDL COLUMN: {dropped['nidl']} ({nidl_origin})", file=sys.stderr)
    if busy:
        print(f"!!!!!!!! {busy}", file=sys.stderr)
    return document


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m perf.bench``.

    Parameters
    ----------
    argv : list of str or None
        Arguments; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 2 on a bad option.
    """
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
