"""The β-VAE suite's kinds of workload (one input shape; a size sweep; the set a suite
declares, with its ``--workloads`` names) and the input sets they are timed on.

``perf/bench.py`` declares the workloads themselves: named ones (the shapes of real training
batches) and the sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["MODES", "Sweep", "Workload", "Workloads", "make_input_sets"]

#: Forward alone (inputs do not require grad) and forward + backward.
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Workload:
    """One benchmark input: the data's shape and dtype, the decoder distribution, the latents.

    Parameters
    ----------
    name : str
        Name used on the command line, in the table and in the JSON file.
    shape : tuple of int
        Shape of ``x`` and ``p``; the batch is ``shape[0]``.
    dist : {"normal", "laplace", "bernoulli"}
        Decoder distribution.
    latent : int
        Latent dimensions: ``mu`` and ``scale`` have shape ``(shape[0], latent)``.
    dtype : torch.dtype
        dtype of every input.
    sweep : bool
        Whether the workload is a point of the size sweep.
    """

    name: str
    shape: tuple[int, ...]
    dist: str
    latent: int
    dtype: torch.dtype = torch.float32
    sweep: bool = False

    @property
    def numel(self) -> int:
        """Elements of ``x`` (and of ``p``)."""
        return math.prod(self.shape)

    @property
    def dtype_name(self) -> str:
        """``"float32"``, ``"bfloat16"``, ..."""
        return str(self.dtype).removeprefix("torch.")

    def min_bytes(self, mode: str) -> int:
        """Fewest bytes the step must move: read p and x (forward), and write p's gradient.

        The latent tensors (``mu``, ``scale`` and their gradients) are left out: they are
        at most 0.1 % of the traffic in every workload here.

        Parameters
        ----------
        mode : {"fwd", "fwd+bwd"}
            Forward alone, or forward and backward.

        Returns
        -------
        nbytes : int
            Bytes read and written.
        """
        size = self.dtype.itemsize
        return self.numel * size * (2 if mode == "fwd" else 3)

    def describe(self) -> dict:
        """The workload as plain JSON-able data."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "numel": self.numel,
            "dist": self.dist,
            "latent": self.latent,
            "dtype": self.dtype_name,
            "sweep": self.sweep,
        }


@dataclass(frozen=True)
class Sweep:
    """A ladder of sizes: float32 normal-dist inputs of ``2^log2_min`` to ``2^log2_max``
    elements, shaped ``(batch, N / batch)``.

    Parameters
    ----------
    batch : int
        First dimension of every point.
    latent : int
        Latent dimensions.
    log2_min, log2_max : int
        Smallest and largest sizes, as powers of two (inclusive); a run may lower the
        largest (``--sweep-max``).
    step : int, default=2
        Exponent step: 2 multiplies the size by 4 at each point.
    """

    batch: int
    latent: int
    log2_min: int
    log2_max: int
    step: int = 2

    def points(self, log2_min: int, log2_max: int) -> list[Workload]:
        """The points from ``2^log2_min`` to ``2^log2_max`` elements, named ``sweep-2^k``."""
        return [
            Workload(f"sweep-2^{k}", (self.batch, 2**k // self.batch), "normal", self.latent,
                     sweep=True)
            for k in range(log2_min, log2_max + 1, self.step)
        ]  # fmt: skip


@dataclass(frozen=True)
class Workloads:
    """What a suite can run: named workloads, their ``--quick`` versions, a size sweep.

    Parameters
    ----------
    named : tuple of Workload
        Every named workload, in the default order.
    quick : tuple of Workload
        ``--quick``'s named workloads (smaller versions of some of ``named``); the others
        stay available by name.
    sweep : Sweep
        The size sweep.
    quick_sweep_max : int
        ``--quick``'s largest sweep size, as a power of two.
    """

    named: tuple[Workload, ...]
    quick: tuple[Workload, ...]
    sweep: Sweep
    quick_sweep_max: int

    def defaults(self, quick: bool, sweep_max: int) -> list[Workload]:
        """Every named workload then the sweep up to ``2^sweep_max``; with ``quick``, the
        quick ones then the sweep up to ``2^quick_sweep_max``."""
        if quick:
            return [*self.quick, *self.sweep.points(self.sweep.log2_min, self.quick_sweep_max)]
        return [*self.named, *self.sweep.points(self.sweep.log2_min, sweep_max)]

    def select(self, names: list[str] | None, quick: bool, sweep_max: int) -> list[Workload]:
        """Resolve ``--workloads`` names into workloads.

        Parameters
        ----------
        names : list of str or None
            Named workloads, ``sweep`` (every sweep point) or ``sweep-2^k`` names; None
            takes :meth:`defaults`.
        quick : bool
            Take the reduced ``--quick`` shapes.
        sweep_max : int
            Largest sweep size, as a power of two.

        Returns
        -------
        workloads : list of Workload
            In the order asked, without duplicates.

        Raises
        ------
        ValueError
            On an unknown name.
        """
        pool = self.defaults(quick, sweep_max)
        if not names:
            return pool
        pool += [w for w in self.named if w.name not in {q.name for q in pool}]
        by_name = {w.name: w for w in pool}
        chosen: list[Workload] = []
        for name in names:
            if name == "sweep":
                group = [w for w in pool if w.sweep]
            elif name in by_name:
                group = [by_name[name]]
            elif name.startswith("sweep-2^") and name.removeprefix("sweep-2^").isdigit():
                k = int(name.removeprefix("sweep-2^"))
                group = self.sweep.points(k, k)
            else:
                known = ", ".join([*by_name, "sweep"])
                raise ValueError(f"unknown workload {name!r}; known: {known}")
            chosen += [w for w in group if w not in chosen]
        return chosen


def _decoder_output(w: Workload, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    if w.dist == "bernoulli":
        # Probabilities away from 0 and 1, as a sigmoid head gives.
        p = torch.rand(w.shape, generator=gen, device=device) * 0.98 + 0.01
    else:
        p = torch.randn(w.shape, generator=gen, device=device)
    return p.to(w.dtype)


def _data(w: Workload, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    if w.dist == "bernoulli":
        x = torch.rand(w.shape, generator=gen, device=device).round()
    else:
        x = torch.randn(w.shape, generator=gen, device=device)
    return x.to(w.dtype)


def make_input_sets(
    w: Workload,
    device: torch.device,
    requires_grad: bool,
    n_sets: int,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Distinct input sets ``(x, p, mu, scale)`` to rotate through while timing.

    Parameters
    ----------
    w : Workload
        What to build.
    device : torch.device
        Where.
    requires_grad : bool
        Whether ``p``, ``mu`` and ``scale`` require grad (forward + backward).
    n_sets : int
        How many sets.
    seed : int, default=0
        Seed of the generator; set ``i`` is the same in every run.

    Returns
    -------
    sets : list of tuple of torch.Tensor
        ``n_sets`` tuples ``(x, p, mu, scale)``.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        x = _data(w, device, gen)
        p = _decoder_output(w, device, gen)
        mu = torch.randn(w.shape[0], w.latent, generator=gen, device=device).to(w.dtype)
        scale = (torch.rand(w.shape[0], w.latent, generator=gen, device=device) + 0.5).to(w.dtype)
        for t in (p, mu, scale):
            t.requires_grad_(requires_grad)
        sets.append((x, p, mu, scale))
    return sets
