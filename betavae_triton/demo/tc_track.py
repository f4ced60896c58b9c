"""The bias of the β-TCVAE's minibatch estimate of the total correlation *during* training,
with and without a bank of posteriors (``--tc-track``).

The after-training probe (:func:`.evaluate.tc_probe`) measures the bias of the minibatch
estimate at one model, the last. A bank of posteriors
(:class:`betavae_triton.BetaTCVAELoss` with ``bank_size``) changes the estimate the
optimiser sees while the model changes, and holds *stale* posteriors: those the encoder
gave K / B steps ago at most (fewer with ``--bank-refresh``: :mod:`.bank_slots`).
:class:`TCTracker` measures, every ``every`` steps, with the model of that step, on the
held-out sprites (one seeded sample ``z ~ q(z|x)`` each):

- ``full``: the estimate over all held-out posteriors at once (the probe's reference);
- ``batch``: the mean over chunks of the training batch size of the chunks' estimates,
  each against its own chunk (what the loss estimates without a bank);
- ``bank``: the same chunks, each also against the loss's bank as it is at that step
  (stale posteriors of training sprites: what the loss estimates with its bank);
- ``fresh``: the same chunks against the same training sprites' posteriors given by the
  model of this step (the bank without its staleness).

``bank - full`` against ``fresh - full`` is what staleness costs; ``batch - full`` is the
bias the bank is there to remove. The same two are measured with the most recently pushed
K / 16 and K / 4 posteriors of the bank alone (``sub_banks``): a smaller bank is fresher (its
posteriors are K / (16 B) steps old at most) but a smaller sample of q(z). Everything
under ``torch.no_grad``, eager, float64 on the CPU; the tracker's noise has its own
generator, so that tracking does not change the training run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from betavae_triton import BetaTCVAELoss, kl_decomposition

from .bank_slots import BankSlots, encode_posteriors
from .model import ConvVAE

__all__ = ["TCTracker"]

Tensor = torch.Tensor

# The parts of the bank also measured alone: its most recent K // f posteriors.
SUB_BANK_FRACTIONS = (16, 4)


@dataclass
class TCTracker:
    """Measure the minibatch TC estimate's bias every ``every`` steps of one training run.

    Parameters
    ----------
    every : int
        Steps between measurements (the last step is measured too).
    eval_images : torch.Tensor
        The held-out sprites, on the model's device.
    train_images : torch.Tensor
        The training sprites (the bank's posteriors are theirs), on the model's device.
    batch_size : int
        The training batch size: the chunks' size.
    dataset_size : int
        N of the estimator (the loss's ``dataset_size``).
    slots : BankSlots or None
        The mirror of the loss's bank that the training loop keeps
        (:class:`.bank_slots.BankSlots`; None: no bank, ``bank`` and ``fresh`` are None).
    seed : int
        Seed of the samples z (a generator of the tracker's own).

    Attributes
    ----------
    points : list of dict
        One per measurement: ``step`` (1-based, after its update), ``full``, ``batch``,
        ``bank``, ``fresh`` (nats; see the module docstring), ``bank_age`` (the mean
        number of updates since the bank's posteriors were computed: (K / B + 1) / 2 once
        the ring has turned, less with ``--bank-refresh``) and ``sub_banks`` (per part of
        the bank of :data:`SUB_BANK_FRACTIONS` at least a batch large: its ``size``,
        ``bank``, ``fresh`` and ``bank_age``).
    """

    every: int
    eval_images: Tensor
    train_images: Tensor
    batch_size: int
    dataset_size: int
    slots: BankSlots | None
    seed: int
    points: list[dict] = field(default_factory=list)

    def due(self, step: int, steps: int) -> bool:
        """Whether ``step`` (0-based) of ``steps`` is measured."""
        return (step + 1) % self.every == 0 or step + 1 == steps

    @torch.no_grad()
    def measure(self, step: int, model: ConvVAE, loss_fn: BetaTCVAELoss) -> dict:
        """Measure at ``step`` (0-based, after its update) and append to :attr:`points`."""
        device = self.eval_images.device
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        loc, scale = encode_posteriors(model, self.eval_images, dtype)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + step)
        noise = torch.randn(loc.shape, generator=generator, dtype=dtype).to(device)
        z = loc + scale * noise
        point = {"step": step + 1, "full": self._tc(z, loc, scale, None)}
        point["batch"] = self._chunked(z, loc, scale, None)
        point.update(bank=None, fresh=None, bank_age=None, sub_banks=[])
        bank, mirror = loss_fn.bank, self.slots
        if bank is not None and bank.filled and mirror is not None:
            stale = (bank.loc.to(dtype), bank.scale.to(dtype))
            fresh = encode_posteriors(model, self.train_images[mirror.index.to(device)], dtype)
            k = mirror.size
            for size in [k // f for f in SUB_BANK_FRACTIONS if k // f >= self.batch_size] + [k]:
                recent = mirror.recent(size)
                slots = recent.to(device)
                part = {
                    "size": size,
                    "bank": self._chunked(z, loc, scale, (stale[0][slots], stale[1][slots])),
                    "fresh": self._chunked(z, loc, scale, (fresh[0][slots], fresh[1][slots])),
                    "bank_age": mirror.age(recent, step),
                }
                if size == k:
                    point.update((name, part[name]) for name in ("bank", "fresh", "bank_age"))
                else:
                    point["sub_banks"].append(part)
        self.points.append(point)
        return point

    def _tc(self, z: Tensor, loc: Tensor, scale: Tensor, bank: tuple | None) -> float:
        """The "mss" estimate of the TC of these rows (against ``bank`` too)."""
        terms = kl_decomposition(
            z,
            loc,
            scale,
            self.dataset_size,
            "mss",
            bank_loc=None if bank is None else bank[0],
            bank_scale=None if bank is None else bank[1],
        )
        return float(terms[1])

    def _chunked(self, z: Tensor, loc: Tensor, scale: Tensor, bank: tuple | None) -> float:
        """The mean of the TC estimates of chunks of ``batch_size`` rows (remainder dropped)."""
        b, n = self.batch_size, z.shape[0]
        tcs = [
            self._tc(z[s : s + b], loc[s : s + b], scale[s : s + b], bank)
            for s in range(0, n - b + 1, b)
        ]
        return sum(tcs) / len(tcs)

    def record(self) -> dict:
        """What ``run.json`` keeps: the settings and :attr:`points`."""
        return {
            "every": self.every,
            "batch_size": self.batch_size,
            "dataset_size": self.dataset_size,
            "bank_size": 0 if self.slots is None else self.slots.size,
            "held_out": int(self.eval_images.shape[0]),
            "points": self.points,
        }
