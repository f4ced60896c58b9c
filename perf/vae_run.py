"""How the β-VAE suite (``perf/bench.py``) runs: each workload's steps built once (compiled
ones freshly compiled) and raced forward alone and forward + backward, each row checked
against the float64 oracle and its effective bandwidth computed; then the header, the table,
the JSON and the bandwidth plot.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from perf import cli, machine
from perf.contenders import Contender, choose
from perf.nidl import NidlSource, load_nidl
from perf.race import Progress, Race, add_ratios, free, new_row, race, relative_error
from perf.report import plot_sweep, write_outputs
from perf.tables import vae_table
from perf.timing import Timing, cache_bytes, copy_bandwidth, rotation_count, timer_description
from perf.vae_contenders import Step, oracle_loss
from perf.workloads import Workload, Workloads, make_input_sets

__all__ = ["VaeSuite", "run"]


@dataclass(frozen=True)
class VaeSuite:
    """What ``perf/bench.py`` declares.

    Parameters
    ----------
    contenders : tuple of Contender
        In table order; each builds ``step(x, p, mu, scale) -> loss`` from the workload
        and nidl's class (:mod:`perf.vae_contenders`).
    workloads : Workloads
        Named workloads, their quick versions, the sweep.
    tolerance : mapping of torch.dtype to float
        Relative error against the float64 oracle above which a row is flagged.
    nidl_cache : pathlib.Path
        Where ``--nidl download`` keeps nidl's wheel.
    """

    contenders: tuple[Contender, ...]
    workloads: Workloads
    tolerance: Mapping[torch.dtype, float]
    nidl_cache: Path


def run(suite: VaeSuite, args: argparse.Namespace) -> dict:
    """Run the suite and write its outputs.

    Parameters
    ----------
    suite : VaeSuite
        The declarations.
    args : argparse.Namespace
        Options from ``perf/bench.py``'s command line.

    Returns
    -------
    document : dict
        Everything written to the JSON file.
    """
    device = cli.start_torch(args.device, args.threads)
    plan = _plan(suite, args, device)
    meta = machine.describe_run(device, args.quick)
    meta["versions"]["nidl"] = plan["nidl"].version
    busy = _announce(plan, meta, device)
    timing = plan["timing"]
    quiet_budget = timing.quiet_budget_s
    with _validation(args.validate_args):
        copy_bw = copy_bandwidth(device, timing)
    meta.update(_meta(args, plan, busy, copy_bw, device))
    print(f"device: {meta['device']}; copy bandwidth {copy_bw / 1e9:.1f} GB/s", file=sys.stderr)
    rows = _race_workloads(suite, args, plan, copy_bw, device)
    machine.finish_run(meta, timing, quiet_budget)
    document = {
        "meta": meta,
        "contenders": [c.name for c in plan["contenders"]],
        "dropped": plan["dropped"],
        "workloads": [w.describe() for w in plan["workloads"]],
        "results": rows,
    }
    _write(args.out, document, timing, busy, device)
    return document


def _plan(suite: VaeSuite, args: argparse.Namespace, device: torch.device) -> dict:
    """The run's budgets, rounds, workloads, nidl, and the contenders it races."""
    sweep_max = args.sweep_max or suite.workloads.sweep.log2_max
    wanted = args.contenders or [c.name for c in suite.contenders]
    nidl = NidlSource(None, "not asked for", None)
    if "nidl" in wanted:
        nidl = load_nidl(args.nidl, suite.nidl_cache)
    missing = {"nidl": "nidl's BetaVAELoss was not found (see --nidl)"} if nidl.cls is None else {}
    contenders, dropped = choose(suite.contenders, wanted, device, missing)
    return {
        "timing": Timing(args.quick, args.quiet_budget),
        "cache": cache_bytes(device),
        "rounds": args.rounds or (1 if args.quick else 3 if device.type == "cuda" else 2),
        "sweep_max": sweep_max,
        "workloads": suite.workloads.select(args.workloads, args.quick, sweep_max),
        "wanted": wanted,
        "nidl": nidl,
        "contenders": contenders,
        "dropped": dropped,
        "notes": [f"{name} left out: {reason}" for name, reason in dropped.items()],
    }


def _announce(plan: dict, meta: dict, device: torch.device) -> str | None:
    """Say on stderr what is left out and whether the machine is busy; the busy warning."""
    for name, reason in plan["dropped"].items():
        loud = "!" * 8 if name == "nidl" else "note:"
        print(f"{loud} contender {name!r} dropped: {reason}", file=sys.stderr)
    if "nidl" in plan["wanted"] and plan["nidl"].cls is None:
        print(f"!!!!!!!! nidl: {plan['nidl'].origin}", file=sys.stderr)
    return machine.warn_if_busy(meta, device)


def _meta(
    args: argparse.Namespace, plan: dict, busy: str | None, copy_bw: float, device: torch.device
) -> dict:
    """The suite's own fields of ``meta``, after :func:`perf.machine.describe_run`'s."""
    timing, cpu = plan["timing"], device.type == "cpu"
    return {
        "busy_warning": busy,
        "nidl": plan["nidl"].origin,
        "notes": plan["notes"],
        "validate_args": args.validate_args,
        "sweep_max_log2": plan["sweep_max"],
        "rounds": plan["rounds"],
        "cache_bytes_defeated": plan["cache"],
        "timer": timer_description(device, timing, plan["rounds"]),
        "bytes_counted": "fwd: read p and x; fwd+bwd: read p and x, write grad p "
        "(latent tensors left out)",
        "speedup": "their median time / this row's median time",
        "copy_bandwidth_Bps": copy_bw,
        "inductor_compile_threads": 1,
        "foreign_load_threshold_cores": timing.quiet_threshold if cpu else None,
    }


def _race_workloads(
    suite: VaeSuite, args: argparse.Namespace, plan: dict, copy_bw: float, device: torch.device
) -> list[dict]:
    """Every workload in every mode; the rows, with their ratios."""
    contenders, rounds = plan["contenders"], plan["rounds"]
    total = len(plan["workloads"]) * len(args.modes) * len(contenders) * (1 + rounds)
    progress = Progress(not args.no_progress, total)
    ctx = {
        "suite": suite,
        "race": Race(device, plan["timing"], rounds, progress, wall=device.type == "cuda"),
        "contenders": contenders,
        "modes": args.modes,
        "nidl_cls": plan["nidl"].cls,
        "cache": plan["cache"],
        "copy_bw": copy_bw,
    }
    rows: list[dict] = []
    with _validation(args.validate_args):
        for w in plan["workloads"]:
            rows += _race_workload(w, ctx)
    progress.close()
    add_ratios(rows, {"vs_nidl": "nidl", "vs_compiled_ref": "compiled-ref"}, ("workload", "mode"))
    return rows


def _race_workload(w: Workload, ctx: dict) -> list[dict]:
    """Both modes of one workload, with freshly built (and compiled) steps."""
    how: Race = ctx["race"]
    torch._dynamo.reset()
    steps, errors = {}, {}
    for c in ctx["contenders"]:
        try:
            steps[c.name] = c.build(w, ctx["nidl_cls"])
        except Exception as err:
            errors[c.name] = f"{type(err).__name__}: {err}"
    rows, oracle = [], None
    n_sets = rotation_count(w.min_bytes("fwd"), ctx["cache"], how.timing)
    for mode in ctx["modes"]:
        mode_errors, sets = dict(errors), None
        try:
            sets = make_input_sets(w, how.device, mode == "fwd+bwd", n_sets)
            if oracle is None:
                oracle = oracle_loss(w, *sets[0])
        except torch.OutOfMemoryError as err:
            every = [c.name for c in ctx["contenders"]]
            mode_errors = dict.fromkeys(every, f"inputs: OutOfMemoryError: {err}"[:200])
        mode_steps = {k: v for k, v in steps.items() if k not in mode_errors}
        rows += _race_mode(w, mode, mode_steps, mode_errors, sets, oracle, ctx)
        del sets
        free(how.device)
    return rows


def _race_mode(
    w: Workload,
    mode: str,
    steps: dict[str, Step],
    errors: dict[str, str],
    sets: list | None,
    oracle: float | None,
    ctx: dict,
) -> list[dict]:
    """Every contender on one workload and mode: raced, then checked."""
    how: Race = ctx["race"]
    rows = {}
    for c in ctx["contenders"]:
        identity = {k: v for k, v in w.describe().items() if k != "name"}
        identity.update(workload=w.name, mode=mode, contender=c.name)
        measured = {"n_sets": len(sets or ()), "bytes": w.min_bytes(mode)}
        rows[c.name] = new_row(identity, measured, {"error": errors.get(c.name), "warning": None})
    warm_ups = {
        name: functools.partial(_warm_up, mode, step, sets, how.device)
        for name, step in steps.items()
    }
    compiled = [c.name for c in ctx["contenders"] if c.compiled]
    race(rows, warm_ups, how, f"{w.name} {mode}", compiled)
    for row in rows.values():
        _check(row, w, oracle, ctx)
    return list(rows.values())


def _timed_fn(mode: str, step: Step, sets: list) -> Callable[[], None]:
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


def _warm_up(
    mode: str, step: Step, sets: list, device: torch.device, row: dict
) -> Callable[[], None]:
    """First call (compiles the compiled contenders), two more calls; the loss's value and
    the first call's time to ``row``; the call to time."""
    fn = _timed_fn(mode, step, sets)
    start = time.perf_counter()
    loss = step(*sets[0])
    if mode == "fwd+bwd":
        torch.autograd.grad(loss, sets[0][1:])
    _sync(device)
    row["first_call_s"] = time.perf_counter() - start
    for _ in range(2):
        fn()
    _sync(device)
    row["loss"] = float(loss.detach())
    return fn


def _check(row: dict, w: Workload, oracle: float | None, ctx: dict) -> None:
    """The row's error against the oracle, its warnings, its bandwidth."""
    how: Race = ctx["race"]
    row["oracle_loss"] = oracle
    if row["loss"] is not None and oracle:
        row["rel_err"] = relative_error(row["loss"], oracle)
        if not row["rel_err"] <= ctx["suite"].tolerance.get(w.dtype, 1e-3):
            row["warning"] = f"loss off by {row['rel_err']:.2g} (rel.)"
    foreign = row["foreign_load"]
    if foreign is not None and foreign > how.timing.quiet_threshold and not row["warning"]:
        row["warning"] = f"disturbed: other processes took {foreign:.1f} core"
    if row["error"] or row["warning"]:
        message = f"{w.name} {row['mode']} {row['contender']}: {row['error'] or row['warning']}"
        how.progress.write(message)
    secs = row["seconds"]
    ok = secs is not None and math.isfinite(secs) and secs > 0
    row["bandwidth"] = row["bytes"] / secs if ok else None
    copy_bw = ctx["copy_bw"]
    row["copy_share"] = row["bandwidth"] / copy_bw if ok and copy_bw else None


def _header(meta: dict, rows: list[dict], timing: Timing, busy: str | None) -> str:
    """The lines above the table: the run, the counting, the notes, the warnings."""
    v = meta["versions"]
    header = (
        f"# {meta['device']} | torch {v['torch']} | triton {v['triton']} | "
        f"python {v['python']} | nidl {v['nidl']} | {meta['date']} | {meta['host']}\n"
        f"# nidl: {meta['nidl']}; git {machine.git_label(meta['git'])}\n"
        f"# copy bandwidth {meta['copy_bandwidth_Bps'] / 1e9:.1f} GB/s; {meta['timer']}\n"
        "# x nidl, x c-ref: their median / this row's median (> 1: this row is faster)\n"
        f"# GB/s: {meta['bytes_counted']}\n"
    )
    if any(r.get("faults_per_call") is not None for r in rows):
        header += (
            "# faults: minor page faults per call, each a first touch of 4 KiB of freshly "
            "allocated memory (the OS zeroes it)\n"
        )
    header += "".join(f"# {note}\n" for note in meta["notes"])
    if meta["device_type"] == "cpu":
        disturbed = sum(1 for r in rows if (r["warning"] or "").startswith("disturbed"))
        header += (
            f"# waited {meta['quiet_wait_s']:.0f} s in all for other processes to leave the "
            f"CPUs; {disturbed} row(s) still measured while they took "
            f"> {timing.quiet_threshold} core\n"
        )
    if busy:
        header += f"# WARNING: {busy}\n"
    return header


def _write(
    out: Path, document: dict, timing: Timing, busy: str | None, device: torch.device
) -> None:
    """Print the header and table; write the text, the JSON and the plot; say where."""
    meta, rows, dropped = document["meta"], document["results"], document["dropped"]
    copy_bw = meta["copy_bandwidth_Bps"]
    stem = f"bench_{device.type}{'_quick' if meta['quick'] else ''}"
    text = _header(meta, rows, timing, busy)
    text += vae_table(rows, copy_bw if device.type == "cuda" else None)
    print(text)
    written = write_outputs(out, stem, text, document)
    title = f"beta-VAE loss, size sweep: {meta['device']}"
    if "triton" in dropped:  # the reason's first sentence (perf.contenders.why_not_here)
        title += f"\n(triton not run: {dropped['triton'].split('. ')[0]})"
    if plot_sweep(out / f"{stem}.png", rows, document["contenders"], copy_bw, title):
        written.append(out / f"{stem}.png")
    print(f"wrote {', '.join(str(path) for path in written)}")
    if "nidl" in dropped:
        print(f"!!!!!!!! NO NIDL COLUMN: {dropped['nidl']} ({meta['nidl']})", file=sys.stderr)
    if busy:
        print(f"!!!!!!!! {busy}", file=sys.stderr)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _validation(enabled: bool) -> Iterator[None]:
    """torch.distributions' argument validation on or off for the block."""
    from torch.distributions import Distribution

    before = Distribution._validate_args
    Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)
