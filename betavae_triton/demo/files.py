"""Writing result files whole: :func:`write_json`, the one JSON writer of the demo, the
study and ``perf/``.

A reader (a resumed study, a test, a script polling for results) never sees half a file:
the document is written to a ``.partial`` sibling first and renamed over the target, so a
file that exists is complete. Standard library only, so that ``perf/`` can import it
without the demo's extra.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_json"]


def write_json(path: str | Path, document: object) -> Path:
    """Write ``document`` as JSON to ``path``, whole or not at all.

    Parameters
    ----------
    path : str or pathlib.Path
        The file to write; its folder must exist.
    document : object
        Anything :func:`json.dumps` takes.

    Returns
    -------
    path : pathlib.Path
        The file written.

    Notes
    -----
    The text is ``json.dumps(document, indent=2)`` and a newline, written to
    ``<path>.partial`` and then renamed to ``path`` (an atomic replace on one file system).
    Numbers are written as :mod:`json` writes them (a non-finite float as ``NaN`` or
    ``Infinity``): replace them first where a strict JSON reader must read the file.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(path)
    return path
