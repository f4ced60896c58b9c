"""Backend selection: which implementation computes the loss for given tensors.

``"auto"`` picks the Triton kernels for tensors on a GPU (when Triton is importable) and
the eager PyTorch path otherwise; ``"triton"`` insists on the kernels; ``"eager"`` insists
on plain PyTorch. ``BETAVAE_TRITON_BACKEND`` sets the default. Shared by both losses
(:mod:`.vae`, :mod:`.tcvae`), with how a kernel is launched under the interpreter.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "eager")
ENV_VAR = "BETAVAE_TRITON_BACKEND"


def check_backend(backend: str) -> str:
    """Return ``backend`` if it names a backend, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def default_backend() -> str:
    """The backend named by ``BETAVAE_TRITON_BACKEND``, or ``"auto"`` when it is unset."""
    name = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {name!r}")
    return name


def requested_backend(backend: str | None) -> str:
    """The backend a call asks for: ``backend`` checked, or the default when it is None."""
    return check_backend(backend) if backend else default_backend()


_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported here."""
    return _TRITON_AVAILABLE


def interpreter_enabled() -> bool:
    """Whether Triton kernels run on the CPU under ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreter_launch(kernel):
    """How a kernel is launched under Triton's interpreter: the kernel itself, indexed by
    its grid (on CUDA, the operators launch through ``torch.library.wrap_triton``)."""
    return kernel


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn a requested backend into the one that runs: ``"triton"`` or ``"eager"``.

    Parameters
    ----------
    backend : {"auto", "triton", "eager"}
        The requested backend.
    device : torch.device
        Where the tensors live.

    Returns
    -------
    name : {"triton", "eager"}
        The implementation that computes the loss.

    Raises
    ------
    RuntimeError
        If ``"triton"`` is asked for where the kernels cannot run.
    """
    check_backend(backend)
    on_gpu = device.type == "cuda"
    if backend == "eager":
        return "eager"
    if backend == "auto":
        return "triton" if on_gpu and triton_available() else "eager"
    if not triton_available():
        raise RuntimeError(
            "backend='triton' needs the `triton` package, which is not importable here; "
            "install it (`pip install triton`, Linux only) or use backend='eager'."
        )
    if not on_gpu and not (device.type == "cpu" and interpreter_enabled()):
        raise RuntimeError(
            f"backend='triton' cannot run on {device.type} tensors: move them to a CUDA "
            "device, use backend='eager' (or 'auto'), or set TRITON_INTERPRET=1 before "
            "triton is first imported to run the kernels under Triton's CPU interpreter."
        )
    return "triton"
