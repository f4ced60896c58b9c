"""The implementations the benchmark races, each as a step ``(x, p, mu, scale) -> loss``.

Every contender receives the same call a training script makes: the data ``x``, the decoder
output ``p`` as a tensor read by ``default_dist``, and the posterior ``Normal(mu, scale)``
built inside the step.

============== ================================================================================
``triton``     ``betavae_triton.BetaVAELoss(backend="triton")`` (GPU only)
``eager``      ``betavae_triton.BetaVAELoss(backend="eager")``
``eager+compile`` ``torch.compile`` of a step calling the eager backend
``nidl``       nidl 0.0.2's ``BetaVAELoss`` (``nidl/losses/beta_vae.py``), eager
``compiled-ref`` ``torch.compile`` of the reference's plain maths in the workload's dtype
============== ================================================================================
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributions import Normal

from betavae_triton import BetaVAELoss
from perf.refmath import beta_vae_loss_same_dtype
from perf.workloads import Workload

__all__ = [
    "BETA",
    "CONTENDERS",
    "NIDL_VERSION",
    "Step",
    "available_contenders",
    "build_step",
    "load_nidl",
    "oracle_loss",
]

#: Every contender, in table order.
CONTENDERS = ("triton", "eager", "eager+compile", "nidl", "compiled-ref")
#: Contenders that ``torch.compile`` builds (and recompiles for each workload).
COMPILED = frozenset({"eager+compile", "compiled-ref"})
BETA = 4.0
NIDL_VERSION = "0.0.2"
_NIDL_MODULE = "nidl/losses/beta_vae.py"

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _module_from_source(source: str, origin: str) -> types.ModuleType:
    module = types.ModuleType("nidl_losses_beta_vae")
    module.__file__ = origin
    exec(compile(source, origin, "exec"), module.__dict__)
    return module


def _load_nidl_file(path: Path) -> types.ModuleType:
    """nidl's ``beta_vae`` module from a ``beta_vae.py`` file or a nidl wheel."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            source = wheel.read(_NIDL_MODULE).decode("utf-8")
        return _module_from_source(source, f"{path}/{_NIDL_MODULE}")
    return _module_from_source(path.read_text(encoding="utf-8"), str(path))


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


def load_nidl(path: str | None, cache: Path) -> tuple[type | None, str]:
    """Find nidl's ``BetaVAELoss`` class.

    Tried in order: the path given (``--nidl``: a ``beta_vae.py`` file or a nidl ``.whl``,
    or ``none`` to leave nidl out); an installed ``nidl`` package (its ``__init__`` pulls
    heavy dependencies, so any failure to import falls through); a wheel cached in
    ``cache``; ``pip download nidl==0.0.2 --no-deps`` into ``cache``. The wheel is read
    with :mod:`zipfile` and the one module executed; nothing is installed.

    Parameters
    ----------
    path : str or None
        ``--nidl``'s value.
    cache : pathlib.Path
        Folder for the downloaded wheel.

    Returns
    -------
    cls : type or None
        nidl's ``BetaVAELoss``, or None when it could not be found.
    origin : str
        Where it came from, or why it is missing.

    Raises
    ------
    FileNotFoundError
        If ``path`` names no file.
    """
    if path is not None and path.lower() == "none":
        return None, "left out (--nidl none)"
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"--nidl {path}: no such file (a beta_vae.py or a .whl)")
        return _load_nidl_file(file).BetaVAELoss, str(file)
    try:
        module = importlib.import_module("nidl.losses.beta_vae")
        return module.BetaVAELoss, f"installed package ({module.__file__})"
    except Exception as err:  # nidl's __init__ imports heavy dependencies: anything goes.
        installed_error = f"{type(err).__name__}: {err}"
    try:
        wheel = _download_nidl(cache)
        return _load_nidl_file(wheel).BetaVAELoss, str(wheel)
    except Exception as err:
        detail = getattr(err, "stderr", None) or str(err)
        detail = " ".join(str(detail).split())[-300:]
        return None, (
            f"NOT FOUND: `import nidl.losses.beta_vae` failed ({installed_error}); "
            f"`pip download nidl=={NIDL_VERSION} --no-deps` failed ({type(err).__name__}: "
            f"{detail}). Pass --nidl PATH (beta_vae.py or nidl-{NIDL_VERSION}-*.whl)."
        )


def available_contenders(device: torch.device, nidl_cls: type | None) -> dict[str, str | None]:
    """Which contenders can run on ``device``: name -> None, or the reason it cannot.

    Parameters
    ----------
    device : torch.device
        The benchmark's device.
    nidl_cls : type or None
        nidl's ``BetaVAELoss``, if found.

    Returns
    -------
    status : dict
        Every name of :data:`CONTENDERS`, mapped to None when it runs.
    """
    status: dict[str, str | None] = dict.fromkeys(CONTENDERS)
    if device.type != "cuda":
        status["triton"] = (
            "CUDA only: on CPU the kernels run under TRITON_INTERPRET=1, meaningless for timing"
        )
    elif importlib.util.find_spec("triton") is None:
        status["triton"] = "triton is not importable"
    if nidl_cls is None:
        status["nidl"] = "nidl's BetaVAELoss was not found (see --nidl)"
    return status


def _loss_module_step(loss_fn: Callable) -> Step:
    def step(x, p, mu, scale):
        return loss_fn(x, p, Normal(mu, scale))["loss"]

    return step


def _reference_step(dist: str) -> Step:
    def step(x, p, mu, scale):
        return beta_vae_loss_same_dtype(x, p, mu, scale, BETA, dist)[0]

    return step


def build_step(name: str, w: Workload, nidl_cls: type | None = None) -> Step:
    """The contender ``name``'s step for workload ``w``.

    Compiled contenders are wrapped in a fresh ``torch.compile(dynamic=False)``: callers
    reset dynamo between workloads, so each workload compiles its own static graphs.

    Parameters
    ----------
    name : str
        One of :data:`CONTENDERS`.
    w : Workload
        Supplies the decoder distribution.
    nidl_cls : type or None, default=None
        nidl's ``BetaVAELoss`` (needed for ``"nidl"``).

    Returns
    -------
    step : callable
        ``step(x, p, mu, scale) -> loss``, a scalar tensor.
    """
    if name in ("triton", "eager"):
        return _loss_module_step(BetaVAELoss(BETA, w.dist, backend=name))
    if name == "eager+compile":
        step = _loss_module_step(BetaVAELoss(BETA, w.dist, backend="eager"))
        return torch.compile(step, dynamic=False)
    if name == "nidl":
        if nidl_cls is None:
            raise RuntimeError("nidl's BetaVAELoss was not loaded")
        return _loss_module_step(nidl_cls(beta=BETA, default_dist=w.dist))
    if name == "compiled-ref":
        return torch.compile(_reference_step(w.dist), dynamic=False)
    raise ValueError(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")


def oracle_loss(w: Workload, x, p, mu, scale) -> float:
    """The loss in float64, by ``reference/`` when it is importable, to check contenders.

    Parameters
    ----------
    w : Workload
        Supplies the decoder distribution.
    x, p, mu, scale : torch.Tensor
        One input set.

    Returns
    -------
    loss : float
        The float64 loss.
    """
    args = [t.detach().double() for t in (x, p, mu, scale)]
    try:
        from reference import reference_beta_vae_loss
    except ImportError:
        reference_beta_vae_loss = beta_vae_loss_same_dtype
    with torch.no_grad():
        return float(reference_beta_vae_loss(*args, BETA, w.dist)[0])
