"""The β-TCVAE suite's contenders, each ``(z, q_loc, q_scale) -> (mi, tc, dw_kl)``, the
training step they are timed in, their inputs and their oracle.

The step: loss = α·mi + β·tc + γ·dw_kl (α = 1, β = 6, γ = 1; estimator "mss"; N = 60000),
gradients set to None, then ``.backward()``. Builders take nothing and return fresh terms
(a fresh compile for the compiled ones); ``perf/btcvae.py`` declares which builder is which
contender.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from betavae_triton import kl_decomposition
from perf.memory import Check
from perf.tcvae_formula import formula_terms

__all__ = [
    "ALPHA",
    "BETA",
    "DATASET_SIZE",
    "ESTIMATOR",
    "GAMMA",
    "MEMORY_CHECK_CASE",
    "formula",
    "formula_compiled",
    "make_input_sets",
    "memory_cases",
    "oracle_loss",
    "ours",
    "ours_compiled",
    "ours_terms",
    "step",
]

ALPHA, BETA, GAMMA = 1.0, 6.0, 1.0
DATASET_SIZE = 60000
ESTIMATOR = "mss"
#: (B, D) of the contenders' steps in the memory counter's check (:func:`memory_cases`).
MEMORY_CHECK_CASE = (1024, 32)

Terms = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def ours_terms(
    z: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    backend: str | None = None,
    gather: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``betavae_triton.kl_decomposition`` at this suite's N and estimator, without
    argument validation (no host sync for the σ > 0 check, as in a compiled step).

    Parameters
    ----------
    z, q_loc, q_scale : torch.Tensor
        Samples, posterior means and standard deviations, shape (B, D).
    backend : str or None, default=None
        ``"triton"``, ``"eager"``, or None for the device's default.
    gather : bool, default=False
        Score this process's rows against every rank's posteriors.

    Returns
    -------
    mi, tc, dw_kl : torch.Tensor
        Batch means.
    """
    return kl_decomposition(
        z, q_loc, q_scale, DATASET_SIZE, ESTIMATOR, backend=backend, validate_args=False,
        gather=gather,
    )  # fmt: skip


def ours(backend: str) -> Callable[[], Terms]:
    """The builder of ours with ``backend`` (``"triton"``, ``"eager"``)."""

    def build() -> Terms:
        return functools.partial(ours_terms, backend=backend)

    build.__name__ = f"ours_{backend}"
    return build


def ours_compiled() -> Terms:
    """``torch.compile`` of a function that calls ours (the default backend: the kernels of
    the device), what a user's compiled training step runs."""
    return torch.compile(ours_terms, dynamic=False)


def formula() -> Terms:
    """The B×B×D formula (:func:`perf.tcvae_formula.formula_terms`), float32."""
    return functools.partial(formula_terms, dataset_size=DATASET_SIZE)


def formula_compiled() -> Terms:
    """``torch.compile`` (inductor) of :func:`formula`."""
    return torch.compile(formula(), dynamic=False)


def make_input_sets(
    batch: int, latent: int, device: torch.device, n_sets: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``n_sets`` leaves ``(z, q_loc, q_scale)`` requiring grad, float32: q_loc ~ N(0, 1),
    q_scale ~ U(0.5, 1.5), z = q_loc + q_scale · ε.

    Parameters
    ----------
    batch, latent : int
        B and D.
    device : torch.device
        Where.
    n_sets : int
        How many sets.
    seed : int, default=0
        Seed of the generator; set ``i`` is the same in every run.

    Returns
    -------
    sets : list of tuple of torch.Tensor
        ``n_sets`` tuples ``(z, q_loc, q_scale)``.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        loc = torch.randn(batch, latent, generator=gen, device=device)
        scale = torch.rand(batch, latent, generator=gen, device=device) + 0.5
        z = loc + scale * torch.randn(batch, latent, generator=gen, device=device)
        sets.append(tuple(t.requires_grad_() for t in (z, loc, scale)))
    return sets


def step(terms: Terms, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One training step's worth: gradients cleared (set to None), forward, backward.

    Parameters
    ----------
    terms : callable
        A contender.
    inputs : tuple of torch.Tensor
        ``(z, q_loc, q_scale)``, leaves requiring grad.

    Returns
    -------
    loss : torch.Tensor
        The step's loss, detached.
    """
    for t in inputs:
        t.grad = None
    mi, tc, dw_kl = terms(*inputs)
    loss = ALPHA * mi + BETA * tc + GAMMA * dw_kl
    loss.backward()
    return loss.detach()


def oracle_loss(inputs: tuple[torch.Tensor, ...]) -> float:
    """The loss from the float64 oracle (``reference/beta_tcvae.py``), not timed."""
    from reference.beta_tcvae import reference_beta_tcvae_terms

    with torch.no_grad():
        mi, tc, dw_kl = reference_beta_tcvae_terms(*inputs, DATASET_SIZE, ESTIMATOR)
    return float(ALPHA * mi + BETA * tc + GAMMA * dw_kl)


def memory_cases(device: torch.device) -> list[Check]:
    """The CPU contenders' steps at :data:`MEMORY_CHECK_CASE`, warmed up, for the memory
    counter's check (:func:`perf.memory.memory_check`; peaks not known by hand).

    Parameters
    ----------
    device : torch.device
        Where.

    Returns
    -------
    cases : list of tuple
        ``(case, fn, None)`` for ours (eager), the formula and the compiled formula.
    """
    batch, latent = MEMORY_CHECK_CASE
    (inputs,) = make_input_sets(batch, latent, device, 1)
    builders = (("ours-eager", ours("eager")), ("formula", formula))
    cases: list[Check] = []
    for name, build in (*builders, ("formula-compiled", formula_compiled)):
        terms = build()
        for _ in range(2):
            step(terms, inputs)
        fn = functools.partial(step, terms, inputs)
        cases.append((f"{name} step at B={batch}, D={latent}", fn, None))
    return cases
