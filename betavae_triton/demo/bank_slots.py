"""Which training sprite each slot of the β-TCVAE loss's bank holds, and a fresher bank.

The loss's bank (:class:`betavae_triton.tcvae.bank.PosteriorBank`) holds posteriors, not
the images they came from; the training loop knows both. :class:`BankSlots` mirrors the
bank's ring slot for slot (which sprite, computed by the model of which step), so that

- :class:`.tc_track.TCTracker` can re-encode the bank's sprites with the current model
  (the bank without its staleness) and state the bank's age;
- :func:`refresh_bank` (``--bank-refresh R``) can re-encode, after every update, the R
  posteriors computed longest ago and overwrite them in the bank
  (:meth:`~betavae_triton.tcvae.bank.PosteriorBank.refresh`).

A pushed posterior is K / B updates old when a push overwrites it; with R refreshed per
step besides the B pushed, every slot is rewritten every K / (B + R) updates at most (the
oldest first), so that its mean age is about K / (2 (B + R)): 8.5 updates at K = 4096,
B = 64, R = 192, against 32.5 without a refresh. What that buys is measured, not assumed:
the bank study (``perf/results/study-bank``) found the bank's staleness (its estimate minus
the re-encoded bank's) −0.113 nats without a refresh and −0.086 with R = 192. The price is
an encoder forward pass of R images per step, without a gradient.
"""

from __future__ import annotations

import torch

from betavae_triton import BetaTCVAELoss

from .model import ConvVAE

__all__ = ["BankSlots", "encode_posteriors", "refresh_bank"]

Tensor = torch.Tensor

# Images encoded at a time.
_CHUNK = 512


def encode_posteriors(model: ConvVAE, images: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The posteriors' means and standard deviations of ``images`` under ``model`` (in
    chunks of :data:`_CHUNK` images), in ``dtype``."""
    locs, scales = [], []
    weights = next(model.parameters()).dtype
    for start in range(0, images.shape[0], _CHUNK):
        mu, sd = model.encode(images[start : start + _CHUNK].to(weights))
        locs.append(mu.to(dtype))
        scales.append(sd.to(dtype))
    return torch.cat(locs), torch.cat(scales)


class BankSlots:
    """A mirror of a bank's ring: per slot, the training sprite whose posterior it holds
    and the step whose model computed it.

    Parameters
    ----------
    size : int
        K, the bank's size.

    Attributes
    ----------
    index : torch.Tensor
        (K,) int64: the training sprite of each slot.
    written : torch.Tensor
        (K,) int64: the number of updates the model had made when it computed the slot's
        posterior (a push at step s: s, 0-based; a refresh after step s's update: s + 1).
    next : int
        The slot the next push starts at.
    filled : bool
        Whether anything was pushed (the bank's ``filled``).
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.index = torch.zeros(self.size, dtype=torch.int64)
        self.written = torch.zeros(self.size, dtype=torch.int64)
        self.next = 0
        self.filled = False

    def push(self, step: int, indices: Tensor) -> None:
        """Record the training batch of ``step`` (0-based), whose posteriors the loss pushed
        (mirrors :meth:`~betavae_triton.tcvae.bank.PosteriorBank.push`: the first push
        fills the ring with copies; a batch larger than the bank keeps its last K)."""
        k = self.size
        kept = indices[-k:].cpu()
        if not self.filled:
            self.index.copy_(kept.repeat(-(-k // len(kept)))[:k])
            self.written.fill_(step)
            self.filled = True
        else:
            slots = (self.next + torch.arange(len(kept))) % k
            self.index[slots] = kept
            self.written[slots] = step
        self.next = (self.next + len(indices)) % k

    def recent(self, size: int) -> Tensor:
        """The ``size`` most recently pushed slots, oldest first."""
        return (self.next - size + torch.arange(size)) % self.size

    def stalest(self, count: int) -> Tensor:
        """The ``count`` slots whose posteriors were computed longest ago (ties: the lower
        slot first)."""
        return torch.argsort(self.written, stable=True)[:count]

    def age(self, slots: Tensor, step: int) -> float:
        """The mean number of updates since ``slots``' posteriors were computed, after
        ``step``'s (0-based) update."""
        return float(step + 1 - self.written[slots].double().mean())


@torch.no_grad()
def refresh_bank(
    loss_fn: BetaTCVAELoss,
    slots: BankSlots,
    model: ConvVAE,
    images: Tensor,
    count: int,
    step: int,
) -> None:
    """After ``step``'s (0-based) update, re-encode the ``count`` stalest posteriors of
    ``loss_fn``'s bank with ``model`` and overwrite them (nothing before the first push).

    Parameters
    ----------
    loss_fn : BetaTCVAELoss
        The training loss, with a bank.
    slots : BankSlots
        Its bank's mirror, up to date with ``step``'s push.
    model : ConvVAE
        The model after ``step``'s update (not DDP-wrapped).
    images : torch.Tensor
        The training sprites, on the model's device.
    count : int
        R, the posteriors re-encoded.
    step : int
        The step just taken.
    """
    bank = loss_fn.bank
    if bank is None or not slots.filled:
        return
    chosen = slots.stalest(count)
    device = images.device
    weights = next(model.parameters()).dtype
    loc, scale = encode_posteriors(model, images[slots.index[chosen].to(device)], weights)
    bank.refresh(chosen.to(device), loc, scale)
    slots.written[chosen] = step + 1
