"""The demo's optional dependencies (the ``demo`` extra) and the error when one is missing.

``pip install .`` installs the loss alone; the demo and the study also need numpy,
matplotlib and tqdm, which ``pip install "betavae-triton[demo]"`` adds. Without them the
entry points (``python -m betavae_triton.demo``, ``python -m
betavae_triton.demo.study``) exit with a message naming the extra instead of a traceback,
and an import of the demo's modules raises a ``ModuleNotFoundError`` that names it. This
module itself imports nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEMO_EXTRAS", "INSTALL_HINT", "demo_extras", "missing_extra_message"]

# What the "demo" extra of pyproject.toml adds (tests/test_cli.py checks they agree).
DEMO_EXTRAS = ("matplotlib", "numpy", "tqdm")
INSTALL_HINT = 'pip install "betavae-triton[demo]" (or pip install ".[demo]" from a checkout)'


def missing_extra_message(error: ModuleNotFoundError, what: str) -> str | None:
    """The message for a demo extra that cannot be imported.

    Parameters
    ----------
    error : ModuleNotFoundError
        The failed import.
    what : str
        What needs the module (a command, or a module of the demo).

    Returns
    -------
    message : str or None
        ``"<what> needs <module>, which the demo extra installs: pip install ..."``, or
        None when the missing module is no demo extra (another error, to raise as it is).
    """
    module = (error.name or "").partition(".")[0]
    if module not in DEMO_EXTRAS:
        return None
    return f"{what} needs {module}, which the demo extra installs: {INSTALL_HINT}"


@contextmanager
def demo_extras(what: str, *, entry_point: bool) -> Iterator[None]:
    """Turn the failed import of a demo extra inside the block into a clear error.

    Parameters
    ----------
    what : str
        What needs the extras, as the message names it: the command at an entry point
        (``python -m betavae_triton.demo``), else the module.
    entry_point : bool
        True where the block runs as a command (``__name__ == "__main__"``): exit with
        the message and status 1. False for an import: raise ``ModuleNotFoundError``
        with the message (chained to the original).

    Raises
    ------
    SystemExit
        With ``entry_point``, when the block fails to import a demo extra.
    ModuleNotFoundError
        Without ``entry_point``, when it does; and unchanged, for any other module.
    """
    try:
        yield
    except ModuleNotFoundError as error:
        message = missing_extra_message(error, what)
        if message is None:
            raise
        if entry_point:
            raise SystemExit(f"error: {message}") from None
        raise ModuleNotFoundError(message, name=error.name) from error
