"""One rank of ``tests/test_tcvae_gather.py``: β-TCVAE with ``gather=True`` on its share.

Run as ``python tests/_gather_worker.py OUT BACKEND [bank]`` with ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set (gloo). Every rank draws the same
global batch from one seed, keeps its rows, computes the loss with ``gather=True`` and
saves the loss, the terms and the gradients of its own leaves to ``OUT``. With ``bank``:
``BetaTCVAELoss(gather=True, bank_size=BANK)`` for ``STEPS`` steps (every rank pushes the
global batch), saving each step's loss and the bank.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

BATCH, LATENT, PIXELS, DATASET = 10, 3, 6, 200  # the global batch, split over the ranks
WEIGHTS = (0.5, 6.0, 2.0)
BANK, STEPS = 14, 3


def global_inputs(seed: int = 1234) -> dict[str, torch.Tensor]:
    """The concatenated batch: data, decoder output, posterior and sample, float64."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(BATCH, LATENT, generator=gen, dtype=torch.float64)
    sigma = torch.rand(BATCH, LATENT, generator=gen, dtype=torch.float64) + 0.3
    return {
        "x": torch.rand(BATCH, PIXELS, generator=gen, dtype=torch.float64).round(),
        "p": torch.rand(BATCH, PIXELS, generator=gen, dtype=torch.float64) * 0.9 + 0.05,
        "z": mu + sigma * torch.randn(BATCH, LATENT, generator=gen, dtype=torch.float64),
        "mu": mu,
        "sigma": sigma,
    }


def loss_and_grads(inputs: dict, backend: str, gather: bool) -> dict[str, torch.Tensor]:
    """The loss, its terms and the gradients of every input."""
    from betavae_triton import beta_tcvae_loss

    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    x, p, z, mu, sigma = (leaves[k] for k in ("x", "p", "z", "mu", "sigma"))
    terms = beta_tcvae_loss(
        x, p, z, mu, sigma, *WEIGHTS, DATASET, "bernoulli", "mss", backend=backend, gather=gather
    )
    terms[0].backward()
    out = dict(zip(("loss", "rec", "mi", "tc", "dw_kl"), (t.detach() for t in terms), strict=True))
    out.update({f"grad_{k}": v.grad for k, v in leaves.items()})
    return out


def bank_steps(backend: str, gather: bool, rows: slice = slice(None)) -> dict:
    """``STEPS`` steps of a module with a bank on ``rows`` of each step's global batch:
    the losses, and the bank after them."""
    from torch.distributions import Normal

    from betavae_triton import BetaTCVAELoss

    loss_fn = BetaTCVAELoss(
        *WEIGHTS, DATASET, "bernoulli", backend=backend, gather=gather, bank_size=BANK,
        latent_dim=LATENT,
    ).double()  # fmt: skip
    losses = []
    for step in range(STEPS):
        b = {k: v[rows] for k, v in global_inputs(seed=step).items()}
        losses.append(loss_fn(b["x"], b["p"], Normal(b["mu"], b["sigma"]), b["z"])["loss"])
    return {"losses": torch.stack(losses).detach(), "bank": loss_fn.bank.loc.clone()}


def main() -> None:
    out, backend = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    if sys.argv[3:] == ["bank"]:
        torch.save(bank_steps(backend, gather=True, rows=rows), out)
    else:
        local = {k: v[rows] for k, v in global_inputs().items()}
        torch.save(loss_and_grads(local, backend, gather=True), out)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
