"""A global batch too large for any B×B×D formula: ours in one process, and with
``gather=True`` over gloo ranks that share the CPUs, each rank a process of its own.

:func:`global_batch` times forward + backward in this process (every thread), then starts
:func:`gather_rank` in one subprocess per rank (``MASTER_ADDR``, ``MASTER_PORT``,
``WORLD_SIZE``, ``RANK`` set): each scores its share of the rows against every posterior
and writes its timings to a JSON file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from perf.memory import peak_extra_bytes
from perf.report import write_json
from perf.tcvae_contenders import make_input_sets, ours_terms, step
from perf.tcvae_formula import bbd_bytes, predicted_peak_bytes

__all__ = ["gather_rank", "global_batch"]

_ROOT = Path(__file__).resolve().parent.parent


def _global_inputs(batch: int, latent: int) -> tuple[torch.Tensor, ...]:
    """The global batch ``(z, q_loc, q_scale)``, float32, the same in every process."""
    return make_input_sets(batch, latent, torch.device("cpu"), 1, seed=1)[0]


def _timed_steps(terms: Callable, leaves: tuple, steps: int, device: torch.device) -> dict:
    """One warm-up step, the peak extra memory of one, then ``steps`` timed steps."""
    loss = float(step(terms, leaves))
    peak = peak_extra_bytes(lambda: step(terms, leaves), device)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step(terms, leaves)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {"loss": loss, "peak_extra_bytes": peak, "seconds": seconds}


def _gather_terms(z, q_loc, q_scale):
    return ours_terms(z, q_loc, q_scale, gather=True)


def gather_rank(batch: int, latent: int, steps: int, out: str) -> None:
    """One gloo rank of :func:`global_batch` (run in a process of its own).

    Parameters
    ----------
    batch, latent : int
        The global batch's B and D; this rank takes its share of the rows.
    steps : int
        Timed steps.
    out : str
        Where to write the timings, as JSON.
    """
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    rows = slice(rank * batch // world, (rank + 1) * batch // world)
    leaves = tuple(t[rows].detach().clone().requires_grad_() for t in _global_inputs(batch, latent))
    result = _timed_steps(_gather_terms, leaves, steps, torch.device("cpu"))
    result.update(rank=rank, threads=torch.get_num_threads())
    write_json(Path(out), result)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gather_processes(batch: int, latent: int, steps: int, ranks: int) -> list[dict]:
    """Run :func:`gather_rank` in ``ranks`` processes; their results, by rank."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env["WORLD_SIZE"] = str(ranks)
    env["PYTHONPATH"] = str(_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"rank{r}.json") for r in range(ranks)]
        procs = []
        for r in range(ranks):
            call = f"gather_rank({batch}, {latent}, {steps}, {outs[r]!r})"
            code = f"from perf.gather import gather_rank; {call}"
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


def global_batch(
    batch: int,
    latent: int,
    device: torch.device,
    ranks: int,
    progress: Callable[[str], None],
    steps: int = 2,
) -> dict:
    """Ours at a global batch where no B×B×D formula fits: forward + backward in one
    process, and, on a CPU, with ``gather=True`` over ``ranks`` gloo ranks.

    Parameters
    ----------
    batch, latent : int
        B and D.
    device : torch.device
        Where the single process runs (the ranks run on the CPU).
    ranks : int
        Gloo ranks, each its share of the rows, scored against every posterior.
    progress : callable
        Says what runs.
    steps : int, default=2
        Timed steps.

    Returns
    -------
    result : dict
        ``single`` and ``gather`` (per rank): seconds per step, peak extra memory, the
        loss (the ranks' mean is the single process's), threads; ``gather_note`` when the
        ranks did not run; what the formula would hold (``bbd_bytes``, predicted peaks).
    """
    progress(f"global batch B={batch} D={latent}: one process")
    leaves = tuple(t.to(device).detach().requires_grad_() for t in _global_inputs(batch, latent))
    single = _timed_steps(ours_terms, leaves, steps, device)
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
    progress(f"global batch B={batch} D={latent}: {ranks} gloo ranks, gather=True")
    try:
        result["gather"] = _gather_processes(batch, latent, steps, ranks)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        result["gather_note"] = f"{type(err).__name__}: {err}"
    return result
