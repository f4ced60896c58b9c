"""A bank of posteriors: the K most recent (μ, σ) a β-TCVAE loss has seen, detached.

The minibatch estimate of q(z) scores each sample against the posteriors at hand; with a
bank it scores them against the batch's and the bank's (:func:`.terms.minibatch_terms`,
"mss"'s bank weights in :mod:`.weights`), so that the estimate no longer depends on the
optimiser's batch alone, as a MoCo queue decouples a contrastive loss's negatives from
it. :class:`~betavae_triton.BetaTCVAELoss` with ``bank_size`` holds one.

The bank is a ring buffer of buffers (in the module's ``state_dict``: a resumed run
resumes its bank). Its shape never changes, so that a compiled step compiles at most
twice (before the first push and after) and needs no host sync:

- the first push fills every slot, with the batch's posteriors repeated (each slot holds
  a real earlier posterior from then on; the copies are overwritten, oldest first, by
  the next ``K / B`` pushes);
- each later push writes the batch into the next B slots, wrapping around (a batch
  larger than the bank keeps its last K posteriors).

A pushed posterior is as old as the encoder that gave it: K / B updates at most. A
training loop that holds the images can make the bank fresher: :meth:`PosteriorBank.refresh`
overwrites chosen slots with the same samples' posteriors under the current encoder
(``python -m betavae_triton.demo --bank-refresh R`` re-encodes the R stalest each step).
"""

from __future__ import annotations

import torch
from torch import nn

from .terms import _all_gather

Tensor = torch.Tensor


class PosteriorBank(nn.Module):
    """The last ``size`` posteriors (means and standard deviations) of ``latent_dim``
    dimensions, pushed a batch at a time.

    Parameters
    ----------
    size : int
        K, the number of posteriors kept (at least 1).
    latent_dim : int
        D, the posterior's dimensions.

    Attributes
    ----------
    loc, scale : torch.Tensor
        The posteriors, (K, D) buffers (float32 until the module is converted).
    next : torch.Tensor
        The slot the next push starts at (0-d int64).
    count : torch.Tensor
        The number of posteriors pushed so far (0-d int64).
    """

    loc: Tensor
    scale: Tensor
    next: Tensor
    count: Tensor

    def __init__(self, size: int, latent_dim: int) -> None:
        super().__init__()
        if size < 1 or latent_dim < 1:
            raise ValueError(f"a bank needs size ≥ 1 and latent_dim ≥ 1, got {size}, {latent_dim}")
        self.size, self.latent_dim = int(size), int(latent_dim)
        self.register_buffer("loc", torch.zeros(size, latent_dim))
        self.register_buffer("scale", torch.ones(size, latent_dim))
        self.register_buffer("next", torch.zeros((), dtype=torch.int64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        # Whether anything was pushed: a Python bool, read without a host sync (a compiled
        # step guards on it: one recompile, at the first push), set again on loading.
        self.filled = False
        self.register_load_state_dict_post_hook(_after_loading)

    def extra_repr(self) -> str:
        return f"size={self.size}, latent_dim={self.latent_dim}"

    def contents(self, like: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(loc, scale)`` in ``like``'s dtype, or None before the first push."""
        if not self.filled:
            return None
        return self.loc.to(like.dtype), self.scale.to(like.dtype)

    @torch.no_grad()
    def push(self, loc: Tensor, scale: Tensor, gather: bool = False, group=None) -> None:
        """Keep a batch's posteriors, (B, D) each (detached; see the module docstring);
        with ``gather``, the global batch's, all-gathered across ``group`` (the same bank
        on every rank)."""
        loc, scale = loc.detach(), scale.detach()
        if gather:
            both = _all_gather(torch.cat((loc, scale), dim=1), group)
            loc, scale = both.split(loc.shape[1], dim=1)
        batch, size = loc.shape[0], self.size
        if loc.shape[1] != self.latent_dim:
            raise ValueError(
                f"the bank holds posteriors of {self.latent_dim} dimensions, got {loc.shape[1]}"
            )
        if not self.filled:
            kept = min(batch, size)
            repeats = -(-size // kept)
            self.loc.copy_(loc[batch - kept :].repeat(repeats, 1)[:size])
            self.scale.copy_(scale[batch - kept :].repeat(repeats, 1)[:size])
            self.filled = True
        else:
            kept = min(batch, size)
            slots = (self.next + torch.arange(kept, device=self.next.device)) % size
            self.loc.index_copy_(0, slots, loc[batch - kept :].to(self.loc.dtype))
            self.scale.index_copy_(0, slots, scale[batch - kept :].to(self.scale.dtype))
        self.next.copy_((self.next + batch) % size)
        self.count.add_(batch)

    @torch.no_grad()
    def refresh(self, slots: Tensor, loc: Tensor, scale: Tensor) -> None:
        """Overwrite the posteriors in ``slots`` with newer ones of the same samples.

        The ring's order (:attr:`next`) and :attr:`count` are unchanged: a refreshed slot is
        overwritten by a push when its turn comes, as any other.

        Parameters
        ----------
        slots : torch.Tensor
            R distinct slot indices in ``[0, size)`` (int64, on the bank's device).
        loc, scale : torch.Tensor
            (R, D): the posteriors, under the current encoder, of the samples that those
            slots hold (detached).
        """
        if not self.filled:
            raise RuntimeError("refresh of an empty bank: push a batch first")
        if loc.shape != (slots.shape[0], self.latent_dim) or scale.shape != loc.shape:
            raise ValueError(
                f"refresh of {slots.shape[0]} slots needs posteriors of shape "
                f"({slots.shape[0]}, {self.latent_dim}), got {tuple(loc.shape)} and "
                f"{tuple(scale.shape)}"
            )
        self.loc.index_copy_(0, slots, loc.detach().to(self.loc.dtype))
        self.scale.index_copy_(0, slots, scale.detach().to(self.scale.dtype))


def _after_loading(module: nn.Module, incompatible_keys) -> None:
    """A loaded bank is filled if its saved one was (one host read, at loading)."""
    if isinstance(module, PosteriorBank):
        module.filled = bool(module.count.item() > 0)
