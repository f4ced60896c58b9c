"""``gather=True``: two gloo ranks, each with half the batch, give the loss and gradients of
one process given the whole batch.

The semantics checked (what DDP needs): each rank's loss is the mean over its own samples,
scored against the posteriors of the global batch, so the mean of the ranks' losses is the
single-process loss; the all-gather's backward sums over ranks the gradients of each
rank's posteriors, so a rank's gradients, divided by the number of ranks (DDP's average),
are the single-process gradients of its rows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _gather_worker as worker

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(tmp_path: Path, backend: str, *mode: str) -> list[dict]:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env["WORLD_SIZE"], env["OMP_NUM_THREADS"] = str(WORLD), "1"
    script = str(Path(worker.__file__))
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(tmp_path / f"rank{r}.pt"), backend, *mode],
            env=dict(env, RANK=str(r)),
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(WORLD)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path, backend):
    ranks = _run_ranks(tmp_path, backend)
    whole = worker.loss_and_grads(worker.global_inputs(), backend, gather=False)
    for name in ("loss", "rec", "mi", "tc", "dw_kl"):
        mean = sum(r[name] for r in ranks) / WORLD
        torch.testing.assert_close(mean, whole[name], rtol=1e-12, atol=1e-12)
    for name in ("grad_x", "grad_p", "grad_z", "grad_mu", "grad_sigma"):
        joined = torch.cat([r[name] for r in ranks]) / WORLD
        torch.testing.assert_close(joined, whole[name], rtol=1e-10, atol=1e-12)
    # Not a trivially equal split: the ranks' own terms differ from each other.
    assert not torch.equal(ranks[0]["tc"], ranks[1]["tc"])


def test_two_ranks_with_a_bank_equal_one_process_with_the_same_bank(tmp_path):
    """``BetaTCVAELoss(gather=True, bank_size=14)`` for 3 steps on two gloo ranks: every
    rank's bank holds the global batch's posteriors, the same as one process's on the
    concatenated batches, and the mean of the ranks' losses is that process's loss at every
    step (the banks in use from step 2 on)."""
    ranks = _run_ranks(tmp_path, "eager", "bank")
    whole = worker.bank_steps("eager", gather=False)
    for rank in ranks:
        torch.testing.assert_close(rank["bank"], whole["bank"], rtol=0, atol=0)
    mean = sum(r["losses"] for r in ranks) / WORLD
    torch.testing.assert_close(mean, whole["losses"], rtol=1e-12, atol=1e-12)


def test_gather_without_a_process_group_says_what_to_do():
    from betavae_triton import beta_tcvae_loss

    inputs = worker.global_inputs()
    args = (inputs["x"], inputs["p"], inputs["z"], inputs["mu"], inputs["sigma"])
    with pytest.raises(RuntimeError, match="init_process_group"):
        beta_tcvae_loss(*args, dataset_size=100, gather=True)
