"""A contender as a suite declares it, and the one rule that says why one cannot be timed here.

A suite lists its contenders in table order, each with what builds its step, whether
``torch.compile`` builds it (it is recompiled for each workload, and its first call
compiles) and what it needs beyond torch: ``"triton"`` (the package's Triton kernels,
timed on a GPU only) or the name of something found at run time (``"nidl"``).
:func:`choose` keeps those that can be timed here and says why each other one cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from betavae_triton import triton_available

__all__ = ["TRITON_ON_CPU", "Contender", "choose", "names", "why_not_here"]

#: Why the Triton kernels are not timed on a CPU (in the table's notes and the JSON).
TRITON_ON_CPU = (
    "not timed on a CPU. The Triton kernels run on CPU tensors only under the "
    "interpreter (TRITON_INTERPRET=1), which executes them in numpy, block by block: "
    "a correctness tool whose timings say nothing about the kernels' speed"
)


@dataclass(frozen=True)
class Contender:
    """One implementation a suite races.

    Parameters
    ----------
    name : str
        Its name on the command line, in the table and in the JSON file.
    build : callable
        Builds the step the suite times (the suite says with what arguments).
    compiled : bool, default=False
        Whether ``torch.compile`` builds it.
    needs : str or None, default=None
        ``"triton"`` for the Triton kernels (a CUDA device and triton), or the name of
        something found at run time (``"nidl"``), None for nothing beyond torch.
    """

    name: str
    build: Callable[..., Callable]
    compiled: bool = False
    needs: str | None = None


def names(contenders: Sequence[Contender]) -> tuple[str, ...]:
    """The contenders' names, in table order."""
    return tuple(c.name for c in contenders)


def why_not_here(
    contender: Contender, device: torch.device, missing: Mapping[str, str]
) -> str | None:
    """Why ``contender`` cannot be timed on ``device``; None when it can.

    Parameters
    ----------
    contender : Contender
        What it needs.
    device : torch.device
        The run's device.
    missing : mapping of str to str
        For each thing found at run time that is missing (``"nidl"``), why.

    Returns
    -------
    reason : str or None
        The reason, as the table's notes and the JSON's ``dropped`` give it.
    """
    if contender.needs == "triton":
        if device.type != "cuda":
            return TRITON_ON_CPU
        if not triton_available():
            return "triton is not importable"
        return None
    return missing.get(contender.needs or "")


def choose(
    contenders: Sequence[Contender],
    wanted: Sequence[str] | None,
    device: torch.device,
    missing: Mapping[str, str] | None = None,
) -> tuple[list[Contender], dict[str, str]]:
    """The contenders to race, and why each other one asked for is left out.

    Parameters
    ----------
    contenders : sequence of Contender
        The suite's, in table order.
    wanted : sequence of str or None
        ``--contenders``; None asks for every one.
    device : torch.device
        The run's device.
    missing : mapping of str to str or None, default=None
        See :func:`why_not_here`.

    Returns
    -------
    raced : list of Contender
        Those asked for that can be timed here, in table order.
    dropped : dict of str to str
        Those asked for that cannot, by name (in the order asked), with the reason.
    """
    wanted = list(wanted or names(contenders))
    by_name = {c.name: c for c in contenders}
    reasons = {name: why_not_here(by_name[name], device, missing or {}) for name in wanted}
    raced = [c for c in contenders if c.name in wanted and reasons[c.name] is None]
    return raced, {name: why for name, why in reasons.items() if why is not None}
