"""The command-line options of both commands, each defined once.

``python -m betavae_triton.demo`` (:mod:`.__main__`) and ``python -m
betavae_triton.demo.study`` (:mod:`.study_cli`) build their parsers from these: the
argument types that check a value as it is read (:func:`positive_int`, :func:`device`,
:func:`seeds`, ...), and the options that both take (:data:`SHARED`: the output folder,
the device, the learning rate, the data and model sizes, compilation), which
:func:`add_shared` adds with the command's own default and help text. Standard library
and torch only.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "SHARED",
    "Command",
    "SharedOption",
    "add_shared",
    "device",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "seeds",
    "shard",
]

Command = Literal["demo", "study"]


def _int(text: str, *, allow_zero: bool) -> int:
    kind = "non-negative" if allow_zero else "positive"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"must be a {kind} integer, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer above 0 (an ``argparse`` type: a bad value is a usage error)."""
    return _int(text, allow_zero=False)


def non_negative_int(text: str) -> int:
    """An integer of 0 or more (an ``argparse`` type)."""
    return _int(text, allow_zero=True)


def _float(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    if value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise argparse.ArgumentTypeError(f"must be {kind}, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more (an ``argparse`` type)."""
    return _float(text, allow_zero=True)


def positive_float(text: str) -> float:
    """A finite number above 0 (an ``argparse`` type)."""
    return _float(text, allow_zero=False)


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, where CUDA (and device N) is present (an
    ``argparse`` type)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r} asked for, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); use --device cpu"
            )
        index = torch.device(text).index
        if index is not None and index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return text


def seeds(text: str) -> tuple[int, ...]:
    """``"0-4"``, ``"5,7,9"`` or a mix (``"0-2,8"``) as a tuple of distinct seeds (an
    ``argparse`` type)."""
    found: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            found.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seeds like 0-4 or 0,2,5, got {text!r}"
        ) from None
    if not found or min(found) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative seeds, got {text!r}")
    return tuple(dict.fromkeys(found))


def shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (``0 <= K < N``) as ``(K, N)`` (an ``argparse`` type)."""
    k, sep, n = text.partition("/")
    try:
        parsed = (int(k), int(n))
    except ValueError:
        parsed = (-1, 0)
    if not sep or not 0 <= parsed[0] < parsed[1]:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return parsed


@dataclass(frozen=True)
class SharedOption:
    """An option that both commands take.

    Attributes
    ----------
    keywords : mapping
        How ``argparse`` reads it (``type`` or ``action``), the same in both commands.
    help : mapping of Command to str
        Its help text in each command: the demo's one run, or every run of the study.
    """

    keywords: Mapping[str, object]
    help: Mapping[Command, str]


SHARED: dict[str, SharedOption] = {
    "--out": SharedOption(
        {"type": Path},
        {
            "demo": "output folder",
            "study": "the study's folder (the default lies beside the demo's own output, in "
            "the current folder; the README's study is in perf/results/study)",
        },
    ),
    "--device": SharedOption(
        {"type": device},
        {
            "demo": "cpu, cuda or cuda:N; the default is cuda when present, else cpu. On "
            "CUDA the loss runs its Triton kernels, on cpu its eager path, fused by "
            "torch.compile",
            "study": "cpu, cuda or cuda:N",
        },
    ),
    "--lr": SharedOption(
        {"type": positive_float},
        {"demo": "Adam learning rate", "study": "Adam's learning rate"},
    ),
    "--n-train": SharedOption(
        {"type": positive_int},
        {"demo": "training sprites per rank", "study": "training sprites"},
    ),
    "--n-eval": SharedOption(
        {"type": positive_int},
        {"demo": "held-out sprites for MIG and KL", "study": "held-out sprites (MIG, TC probe)"},
    ),
    "--latent-dim": SharedOption(
        {"type": positive_int}, {"demo": "latent dimensions", "study": "latents"}
    ),
    "--channels": SharedOption(
        {"type": positive_int},
        {"demo": "convolution channels", "study": "the model's convolution width"},
    ),
    "--compile": SharedOption(
        {"action": argparse.BooleanOptionalAction},
        {
            "demo": "run the loss step under torch.compile; --no-compile runs it eagerly",
            "study": "compile each run's loss step (--no-compile: eager)",
        },
    ),
}


def add_shared(
    container: argparse._ActionsContainer, flag: str, command: Command, default: object
) -> argparse.Action:
    """Add the shared option ``flag`` (a key of :data:`SHARED`) to a parser or a group.

    Parameters
    ----------
    container : argparse.ArgumentParser or argument group
        Where the option goes.
    flag : str
        The option, e.g. ``"--lr"``.
    command : {"demo", "study"}
        Whose help text it shows.
    default : object
        Its default in that command.

    Returns
    -------
    action : argparse.Action
        What ``add_argument`` returns.
    """
    option = SHARED[flag]
    return container.add_argument(
        flag, **option.keywords, default=default, help=option.help[command]
    )
