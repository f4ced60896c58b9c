"""nidl's ``BetaVAELoss``, read at run time and never vendored: from the installed package, a
wheel, its ``beta_vae.py``, a folder holding the package, or a wheel that ``pip download``
leaves in a cache (``--nidl``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import NamedTuple

__all__ = ["NIDL_VERSION", "NidlSource", "load_nidl"]

NIDL_VERSION = "0.0.2"
_NIDL_MODULE = "nidl/losses/beta_vae.py"
_IN_PACKAGE = "losses/beta_vae.py"


class NidlSource(NamedTuple):
    """nidl's ``BetaVAELoss`` and where it came from.

    Attributes
    ----------
    cls : type or None
        The class, or None when nidl was not found (or left out).
    origin : str
        The file, wheel or package it was read from, or why it is missing.
    version : str or None
        nidl's version, when known.
    """

    cls: type | None
    origin: str
    version: str | None


def _module_from_source(source: str, origin: str) -> types.ModuleType:
    module = types.ModuleType("nidl_losses_beta_vae")
    module.__file__ = origin
    exec(compile(source, origin, "exec"), module.__dict__)
    return module


def _version_near(module_file: Path) -> str | None:
    """nidl's version from the ``info.py`` of the package that holds ``losses/beta_vae.py``."""
    info = module_file.parent.parent / "info.py"
    with contextlib.suppress(OSError):
        namespace: dict = {}
        exec(compile(info.read_text(encoding="utf-8"), str(info), "exec"), namespace)
        return str(namespace.get("__version__")) or None
    return None


def _from_wheel(path: Path) -> NidlSource:
    with zipfile.ZipFile(path) as wheel:
        source = wheel.read(_NIDL_MODULE).decode("utf-8")
        metadata = next((n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")), None)
        version = None
        if metadata is not None:
            for line in wheel.read(metadata).decode("utf-8").splitlines():
                if line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                    break
    module = _module_from_source(source, f"{path}/{_NIDL_MODULE}")
    return NidlSource(module.BetaVAELoss, str(path), version)


def _from_path(path: Path) -> NidlSource:
    """From a wheel, a ``beta_vae.py`` file, the ``nidl`` package folder or a folder that
    holds it (a site-packages, an unpacked wheel)."""
    if path.is_file() and path.suffix == ".whl":
        return _from_wheel(path)
    if path.is_dir():
        for candidate in (path / _NIDL_MODULE, path / _IN_PACKAGE):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise FileNotFoundError(f"--nidl {path}: no {_NIDL_MODULE} in this folder")
    if not path.is_file():
        raise FileNotFoundError(
            f"--nidl {path}: no such file (a beta_vae.py, a nidl .whl or a folder holding "
            f"{_NIDL_MODULE})"
        )
    module = _module_from_source(path.read_text(encoding="utf-8"), str(path))
    return NidlSource(module.BetaVAELoss, str(path), _version_near(path.resolve()))


def _installed() -> NidlSource:
    """The installed ``nidl`` package's ``beta_vae.py``, read without running nidl's
    ``__init__`` (which imports heavy dependencies the loss does not need)."""
    spec = importlib.util.find_spec("nidl")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("no installed nidl package")
    package = Path(next(iter(spec.submodule_search_locations)))
    try:
        version = importlib.metadata.version("nidl")
    except importlib.metadata.PackageNotFoundError:
        version = _version_near(package / _IN_PACKAGE)
    source = _from_path(package / _IN_PACKAGE)
    return NidlSource(source.cls, f"installed package ({source.origin})", version)


def _download_nidl(cache: Path, timeout: float = 120.0) -> Path:
    """``pip download nidl==0.0.2 --no-deps`` into ``cache``; the wheel's path."""
    cached = sorted(cache.glob(f"nidl-{NIDL_VERSION}-*.whl"))
    if cached:
        return cached[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"nidl=={NIDL_VERSION}", "--no-deps"]
    cmd += ["--only-binary", ":all:", "--timeout", "20", "--retries", "1", "-d", str(cache)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    cached = sorted(cache.glob(f"nidl-{NIDL_VERSION}-*.whl"))
    if not cached:
        raise FileNotFoundError(f"pip download left no nidl wheel in {cache}")
    return cached[0]


def load_nidl(path: str | None, cache: Path) -> NidlSource:
    """Find nidl's ``BetaVAELoss``: nidl's own code, read at run time, never vendored.

    ``path`` (``--nidl``) may be: a nidl ``.whl`` (read with :mod:`zipfile`, nothing
    installed), nidl's ``beta_vae.py``, the ``nidl`` package folder or a folder holding it;
    ``none`` to leave nidl out; ``download`` to ``pip download nidl==0.0.2 --no-deps``
    into ``cache`` (once) and read that wheel. Without ``path``: the installed ``nidl``
    package, else a wheel that ``download`` left in ``cache``; nothing is fetched.

    Parameters
    ----------
    path : str or None
        ``--nidl``'s value.
    cache : pathlib.Path
        Folder for the downloaded wheel.

    Returns
    -------
    source : NidlSource
        The class (None when not found), its origin (or why it is missing), its version.

    Raises
    ------
    FileNotFoundError
        If ``path`` names nothing that holds nidl's loss.
    """
    if path is not None and path.lower() == "none":
        return NidlSource(None, "left out (--nidl none)", None)
    if path is not None and path.lower() == "download":
        try:
            return _from_wheel(_download_nidl(cache))
        except Exception as err:
            detail = getattr(err, "stderr", None) or str(err)
            detail = " ".join(str(detail).split())[-300:]
            return NidlSource(
                None,
                f"NOT FOUND: `pip download nidl=={NIDL_VERSION} --no-deps` failed "
                f"({type(err).__name__}: {detail})",
                None,
            )
    if path is not None:
        return _from_path(Path(path).expanduser())
    try:
        return _installed()
    except Exception as err:
        installed_error = f"{type(err).__name__}: {err}"
    cached = sorted(cache.glob(f"nidl-{NIDL_VERSION}-*.whl"))
    if cached:
        return _from_wheel(cached[0])
    return NidlSource(
        None,
        f"NOT FOUND: no installed nidl ({installed_error}). Pass --nidl PATH (a nidl-"
        f"{NIDL_VERSION}-*.whl, beta_vae.py or nidl folder) or --nidl download.",
        None,
    )
