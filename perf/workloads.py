"""The benchmark's workloads (CONTRACT section 6) and their inputs.

Named workloads are the shapes of real training batches; the sweep is a ladder of normal-dist
inputs, 2^16 to 2^28 elements by factors of 4, shaped ``(8, N / 8)`` with 128 latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "MODES",
    "NAMED",
    "SWEEP_BATCH",
    "SWEEP_LATENT",
    "Workload",
    "make_input_sets",
    "quick_workloads",
    "select_workloads",
    "sweep_workloads",
]

#: Forward alone (inputs do not require grad) and forward + backward.
MODES = ("fwd", "fwd+bwd")

SWEEP_BATCH = 8
SWEEP_LATENT = 128


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


#: The named workloads: CONTRACT section 6, and issue 2's ``mri64``.
NAMED: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("sprites", (256, 1, 64, 64), "bernoulli", 10),
        Workload("faces", (128, 3, 64, 64), "normal", 32),
        Workload("mri", (8, 1, 128, 128, 128), "normal", 128),
        Workload("mri-bf16", (8, 1, 128, 128, 128), "normal", 128, torch.bfloat16),
        Workload("mri64", (8, 1, 64, 64, 64), "normal", 128),
    )
}


def sweep_workloads(log2_min: int = 16, log2_max: int = 28, step: int = 2) -> list[Workload]:
    """The size sweep: float32 normal-dist inputs of ``2^log2_min`` to ``2^log2_max`` elements.

    Parameters
    ----------
    log2_min, log2_max : int
        Smallest and largest sizes, as powers of two (inclusive).
    step : int, default=2
        Exponent step: 2 multiplies the size by 4 at each point.

    Returns
    -------
    workloads : list of Workload
        Named ``sweep-2^k``, shaped ``(8, 2^k / 8)``.
    """
    return [
        Workload(
            f"sweep-2^{k}", (SWEEP_BATCH, 2**k // SWEEP_BATCH), "normal", SWEEP_LATENT, sweep=True
        )
        for k in range(log2_min, log2_max + 1, step)
    ]


def quick_workloads() -> list[Workload]:
    """``--quick``: sprites and faces at an eighth of their batch, and a 3-point sweep."""
    return [
        Workload("sprites", (32, 1, 64, 64), "bernoulli", 10),
        Workload("faces", (16, 3, 64, 64), "normal", 32),
        *sweep_workloads(16, 20),
    ]


def select_workloads(names: list[str] | None, quick: bool, sweep_max: int) -> list[Workload]:
    """Resolve ``--workloads`` names into workloads.

    Parameters
    ----------
    names : list of str or None
        Named workloads, ``sweep`` (every sweep point) or ``sweep-2^k`` names; None takes
        the default set (every named workload and the sweep, or the quick subset).
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
    pool = quick_workloads() if quick else [*NAMED.values(), *sweep_workloads(16, sweep_max)]
    if quick:
        # Named workloads that --quick does not shrink stay available by name.
        pool += [w for w in NAMED.values() if w.name not in {q.name for q in pool}]
    by_name = {w.name: w for w in pool}
    if not names:
        return quick_workloads() if quick else pool
    chosen: list[Workload] = []
    for name in names:
        if name == "sweep":
            group = [w for w in pool if w.sweep]
        elif name in by_name:
            group = [by_name[name]]
        elif name.startswith("sweep-2^") and name.removeprefix("sweep-2^").isdigit():
            k = int(name.removeprefix("sweep-2^"))
            group = sweep_workloads(k, k)
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
