"""The command line of every suite: options declared as data, one parser, one entry point.

A suite lists its options as :func:`option` values, in the order ``--help`` shows them;
:func:`parse` builds the parser from them and :func:`exit_status` runs the suite, turning a
bad option value into exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch._inductor.config

from perf.report import DEFAULT_OUT

__all__ = ["DEVICE", "OUT", "Option", "exit_status", "option", "parse", "start_torch"]


class Option(NamedTuple):
    """One command-line option: ``argparse.ArgumentParser.add_argument``'s arguments."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]


def option(*flags: str, **kwargs: Any) -> Option:
    """An option, as ``parser.add_argument(*flags, **kwargs)`` would declare it.

    Parameters
    ----------
    *flags : str
        ``"--quick"``, ...
    **kwargs
        ``help``, ``type``, ``nargs``, ... (``help`` is required: every option has one).

    Returns
    -------
    option : Option
        The declaration.
    """
    if not kwargs.get("help"):
        raise ValueError(f"option {flags[0]} has no help")
    return Option(flags, kwargs)


#: The options that read the same in every suite.
DEVICE = option("--device", help="cpu or cuda[:N] (default: cuda when available)")
OUT = option("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: perf/out/)")


def parse(
    prog: str | None,
    description: str,
    options: Sequence[Option],
    argv: list[str] | None = None,
    raw: bool = True,
) -> argparse.Namespace:
    """Parse ``argv`` with a parser built from ``options``.

    Parameters
    ----------
    prog : str or None
        The command, as the usage line names it (``python -m perf.bench``); None names
        the script's file instead (``codegen.py``), which no suite wants.
    description : str
        Shown under the usage line.
    options : sequence of Option
        In the order ``--help`` lists them.
    argv : list of str or None, default=None
        Arguments; None reads ``sys.argv``.
    raw : bool, default=True
        Keep the description's line breaks (False: wrap it to the terminal).

    Returns
    -------
    args : argparse.Namespace
        Parsed options.
    """
    formatter = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=formatter)
    for declared in options:
        parser.add_argument(*declared.flags, **declared.kwargs)
    return parser.parse_args(argv)


def start_torch(device_name: str | None, threads: int | None) -> torch.device:
    """The run's device (``--device``; cuda when available), torch's CPU threads
    (``--threads``; None keeps torch's), and inductor compiling in this process: a pool
    of compile workers starting up in the background would steal the CPUs from whatever
    is being timed meanwhile.

    Parameters
    ----------
    device_name : str or None
        ``cpu``, ``cuda`` or ``cuda:N``.
    threads : int or None
        CPU threads for torch.

    Returns
    -------
    device : torch.device
        Where the suite runs (made the current CUDA device when it names an index).
    """
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch._inductor.config.compile_threads = 1
    return device


def exit_status(
    run: Callable[[argparse.Namespace], object],
    args: argparse.Namespace,
    bad_input: tuple[type[Exception], ...] = (),
) -> int:
    """Run a suite; its exit status.

    Parameters
    ----------
    run : callable
        The suite's run, given the parsed options.
    args : argparse.Namespace
        The options.
    bad_input : tuple of exception types, default=()
        Errors that mean a bad option value (a workload's name, a missing path): printed
        as ``error: ...``, exit status 2.

    Returns
    -------
    status : int
        0 on success, 2 on a bad option value.
    """
    try:
        run(args)
    except bad_input as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
