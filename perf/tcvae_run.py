"""How the β-TCVAE suite (``perf/btcvae.py``) runs: the memory counter checked, each (B, D)
raced with each contender's peak extra memory counted (the formula skipped where its
predicted peak exceeds the cap), the global batch, the targets; then the header, the tables
and the JSON.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from perf import cli, machine
from perf.bank import bank_axis, format_bank
from perf.contenders import Contender, choose
from perf.gather import global_batch
from perf.memory import memory_check, peak_extra_bytes
from perf.race import Progress, Race, add_ratios, new_row, race, relative_error
from perf.report import write_outputs
from perf.tables import format_global_batch, format_memory_check, tcvae_table
from perf.targets import check_targets, format_targets
from perf.tcvae_contenders import (
    ALPHA,
    BETA,
    DATASET_SIZE,
    ESTIMATOR,
    GAMMA,
    make_input_sets,
    memory_cases,
    oracle_loss,
    step,
)
from perf.tcvae_formula import PEAK_FACTORS, bbd_bytes, predicted_peak_bytes
from perf.timing import Timing, cache_bytes, rotation_count, timer_description

__all__ = ["TcvaeSuite", "run"]


@dataclass(frozen=True)
class TcvaeSuite:
    """What ``perf/btcvae.py`` declares.

    Parameters
    ----------
    contenders : tuple of Contender
        In table order; each builds ``(z, q_loc, q_scale) -> (mi, tc, dw_kl)``
        (:mod:`perf.tcvae_contenders`).
    ours_on_gpu, ours_on_cpu : str
        The contender that stands for ours on each kind of device (the targets' subject).
    small_cases : tuple of (int, int)
        (B, D) timed before the grid (with ``--quick`` too) unless ``--batch`` or
        ``--latent`` narrows the run.
    batches, latents : tuple of int
        The grid.
    quick_batches, quick_latents : tuple of int
        ``--quick``'s grid.
    global_batch : tuple of int
        (B, D) of the global batch (not with ``--quick``).
    gather_ranks : int
        Gloo ranks of the global batch's ``gather=True`` run.
    memory_target : tuple of int
        (B, D, bytes): ours' peak extra memory there stays below this.
    bank_case : tuple of int
        (B, D) of the bank axis (:mod:`perf.bank`).
    bank_sizes : tuple of int
        Its bank sizes K (not with ``--quick``, unless ``--bank`` names them).
    bank_target_bytes : int
        Ours' peak extra memory at the largest K stays below this.
    cpu_memory_cap_gib : float
        Default ``--memory-cap`` on a CPU: the most a predicted peak may take.
    gpu_memory_cap_share : float
        On a GPU: this share of the device's memory.
    """

    contenders: tuple[Contender, ...]
    ours_on_gpu: str
    ours_on_cpu: str
    small_cases: tuple[tuple[int, int], ...]
    batches: tuple[int, ...]
    latents: tuple[int, ...]
    quick_batches: tuple[int, ...]
    quick_latents: tuple[int, ...]
    global_batch: tuple[int, int]
    gather_ranks: int
    memory_target: tuple[int, int, int]
    bank_case: tuple[int, int]
    bank_sizes: tuple[int, ...]
    bank_target_bytes: int
    cpu_memory_cap_gib: float
    gpu_memory_cap_share: float

    def ours(self, device: torch.device) -> str:
        """The contender that stands for ours on ``device``."""
        return self.ours_on_gpu if device.type == "cuda" else self.ours_on_cpu

    def cases(self, args: argparse.Namespace) -> list[tuple[int, int]]:
        """The (B, D) to race: the small cases, then the grid (``--batch``, ``--latent``)."""
        batches = args.batch or (self.quick_batches if args.quick else self.batches)
        latents = args.latent or (self.quick_latents if args.quick else self.latents)
        cases = [] if args.batch or args.latent else list(self.small_cases)
        return cases + [(batch, latent) for batch in batches for latent in latents]


def run(suite: TcvaeSuite, args: argparse.Namespace) -> dict:
    """Run the suite, print its report and write its outputs.

    Parameters
    ----------
    suite : TcvaeSuite
        The declarations.
    args : argparse.Namespace
        Options from ``perf/btcvae.py``'s command line.

    Returns
    -------
    document : dict
        Everything written to the JSON file.
    """
    device = cli.start_torch(args.device, args.threads)
    ctx = _context(suite, args, device)
    meta = _meta(suite, ctx)
    busy = machine.warn_if_busy(meta, device)
    for name, reason in ctx["dropped"].items():
        print(f"note: contender {name!r} left out: {reason}", file=sys.stderr)
    checks = memory_check(device, None if args.quick else memory_cases)
    quiet_budget, start = ctx["timing"].quiet_budget_s, time.perf_counter()
    rows: list[dict] = []
    for batch, latent in suite.cases(args):
        rows += _race_case(batch, latent, ctx)
    add_ratios(rows, {"formula_over_this": "formula", "compiled_over_this": "formula-compiled"},
               ("batch", "latent"))  # fmt: skip
    bank = _bank_rows(suite, args, ctx)
    size = args.global_batch or (None if args.quick else suite.global_batch)
    big = None
    if size and all(size):
        big = global_batch(*size, device, suite.gather_ranks, ctx["race"].progress.show)
    meta["elapsed_s"] = time.perf_counter() - start
    machine.finish_run(meta, ctx["timing"], quiet_budget)
    targets = check_targets(rows, suite.ours(device), suite.memory_target)
    document = {
        "meta": meta,
        "contenders": [c.name for c in ctx["contenders"]],
        "dropped": ctx["dropped"],
        "memory_check": checks,
        "targets": targets,
        "results": rows,
        "global_batch": big,
        "bank": bank,
        "bank_target_bytes": suite.bank_target_bytes,
    }
    _write(args, document, busy)
    return document


def _bank_rows(suite: TcvaeSuite, args: argparse.Namespace, ctx: dict) -> list[dict]:
    """The bank axis (:mod:`perf.bank`): ``--bank``'s sizes, else the suite's (none with
    ``--quick``)."""
    sizes = suite.bank_sizes if args.bank is None and not args.quick else args.bank or ()
    how: Race = ctx["race"]
    backend = suite.ours(how.device).removeprefix("ours-")
    return bank_axis(suite.bank_case, tuple(sizes), backend, how.device, how.timing, how.progress)


def _context(suite: TcvaeSuite, args: argparse.Namespace, device: torch.device) -> dict:
    """The run's budgets, rounds, contenders, memory cap."""
    contenders, dropped = choose(suite.contenders, args.contenders, device)
    if args.memory_cap is not None:
        cap = int(args.memory_cap * 2**30)
    elif device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        cap = int(suite.gpu_memory_cap_share * total)
    else:
        cap = int(suite.cpu_memory_cap_gib * 2**30)
    timing = Timing(args.quick, args.quiet_budget)
    rounds = args.rounds or (1 if args.quick else 2)
    return {
        "device": device,
        "quick": args.quick,
        "timing": timing,
        "race": Race(device, timing, rounds, Progress(not args.no_progress)),
        "ours": suite.ours(device),
        "contenders": contenders,
        "dropped": dropped,
        "cap": cap,
        "cache": cache_bytes(device),
    }


def _meta(suite: TcvaeSuite, ctx: dict) -> dict:
    """The run's ``meta``: :func:`perf.machine.describe_run`'s fields, then the suite's."""
    device, rounds = ctx["device"], ctx["race"].rounds
    return {
        **machine.describe_run(device, ctx["quick"]),
        "loss": f"{ALPHA:g}*mi + {BETA:g}*tc + {GAMMA:g}*dw_kl, then .backward() "
        "(gradients set to None before each step)",
        "ours": ctx["ours"],
        "memory_cap_bytes": ctx["cap"],
        "peak_factors": {k: list(v) for k, v in PEAK_FACTORS.items()},
        "rounds": rounds,
        "timer": timer_description(device, ctx["timing"], rounds),
        "memory_counter": (
            "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            if device.type == "cuda"
            else "torch.profiler profile_memory=True: allocation events summed in time order"
        ),
        "inductor_compile_threads": 1,
    }


def _new_row(batch: int, latent: int, name: str, cap: int) -> dict:
    """A row before the race; ``skipped`` when the predicted peak exceeds ``cap``."""
    predicted = predicted_peak_bytes(name, batch, latent)
    skipped = None
    if predicted is not None and predicted > cap:
        skipped = f"skipped: predicted peak {predicted / 2**30:.1f} GiB > cap {cap / 2**30:.0f} GiB"
    identity = {"batch": batch, "latent": latent, "contender": name, "dtype": "float32"}
    identity.update(estimator=ESTIMATOR, dataset_size=DATASET_SIZE)
    measured = {
        "compile_s": None,
        "peak_extra_bytes": None,
        "bbd_bytes": bbd_bytes(batch, latent),
        "predicted_peak_bytes": predicted,
        "peak_over_bbd": None,
    }
    tail = {"formula_over_this": None, "compiled_over_this": None, "skipped": skipped}
    return new_row(identity, measured, {**tail, "error": None})


def _race_case(batch: int, latent: int, ctx: dict) -> list[dict]:
    """Every contender at one (B, D): warm-up and memory count for each, then the race."""
    how: Race = ctx["race"]
    torch._dynamo.reset()
    rows = {c.name: _new_row(batch, latent, c.name, ctx["cap"]) for c in ctx["contenders"]}
    n_sets = rotation_count(3 * batch * latent * 4, ctx["cache"], how.timing)
    sets = make_input_sets(batch, latent, how.device, n_sets)
    oracle = None
    if predicted_peak_bytes("oracle", batch, latent) <= ctx["cap"]:
        oracle = oracle_loss(sets[0])
    warm_ups = {
        c.name: functools.partial(_warm_up, c.build, sets, how.device)
        for c in ctx["contenders"]
        if not rows[c.name]["skipped"]
    }
    compiled = [c.name for c in ctx["contenders"] if c.compiled]
    race(rows, warm_ups, how, f"B={batch} D={latent}", compiled)
    for row in rows.values():
        secs = row["seconds"]
        if row["contender"] in compiled and secs and row["first_call_s"]:
            row["compile_s"] = max(0.0, row["first_call_s"] - secs)  # less one fwd + bwd
        row["oracle_loss"] = oracle
        row["rel_err"] = relative_error(row["loss"], oracle)
    return list(rows.values())


def _warm_up(
    build: Callable[[], Callable], sets: list, device: torch.device, row: dict
) -> Callable[[], object]:
    """Build a contender, warm it up (the first call compiles), then count its peak memory;
    the call to time."""
    terms = build()
    cycle = itertools.cycle(sets)
    start = time.perf_counter()
    row["loss"] = float(step(terms, sets[0]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row["first_call_s"] = time.perf_counter() - start
    step(terms, sets[0])
    for t in sets[0]:
        t.grad = None
    row["peak_extra_bytes"] = peak_extra_bytes(lambda: step(terms, sets[0]), device)
    row["peak_over_bbd"] = row["peak_extra_bytes"] / row["bbd_bytes"]
    return lambda: step(terms, next(cycle))


def _header(meta: dict, busy: str | None) -> str:
    """The lines above the table: the run, the step, the timer, the columns."""
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


def _write(args: argparse.Namespace, document: dict, busy: str | None) -> None:
    """Print the report; write the text and the JSON; say where."""
    meta = document["meta"]
    text = _header(meta, busy) + tcvae_table(document["results"]) + "\n\n"
    text += format_targets(document["targets"]) + "\n"
    text += format_memory_check(document["memory_check"])
    if document["global_batch"] is not None:
        text += "\n" + format_global_batch(document["global_batch"])
    if document["bank"]:
        text += "\n" + format_bank(document["bank"], document["bank_target_bytes"])
    print(text)
    stem = f"btcvae_{meta['device_type']}{'_quick' if args.quick else ''}"
    written = write_outputs(args.out, stem, text, document)
    print(f"wrote {', '.join(str(path) for path in written)}")
