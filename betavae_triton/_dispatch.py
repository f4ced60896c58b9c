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
import torch.autograd.forward_ad as fwAD

# Private classes, needed to tell that autograd's backward is being traced (by
# AOTAutograd's fake and functional tensors) rather than run.
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

BACKENDS = ("auto", "triton", "eager")
ENV_VAR = "BETAVAE_TRITON_BACKEND"


def check_backend(backend: str) -> str:
    """Return ``backend`` if it names a backend, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@torch.compiler.assume_constant_result
def _backend_variable() -> str:
    """``BETAVAE_TRITON_BACKEND`` now, ``""`` where it is unset. A constant to
    ``torch.compile`` where a call is traced: dynamo guards on no environment variable's
    value (nor did it when this was read inline: a change after compiling takes effect at
    the next compile), and reading it inline cost every compiled call a dozen guards on
    ``os.environ``'s internals."""
    return os.environ.get(ENV_VAR, "")


def default_backend() -> str:
    """The backend named by ``BETAVAE_TRITON_BACKEND``, or ``"auto"`` when it is unset."""
    name = _backend_variable().strip().lower() or "auto"
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


def autograd_transform(*tensors: torch.Tensor | None) -> str | None:
    """The autograd feature active around this call that only plain PyTorch autograd
    serves, in words, or None: a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``,
    ``jvp``, ``hessian`` …), or forward-mode AD with a tangent on one of ``tensors``.

    The operators (:mod:`.vae.ops`, :mod:`.tcvae.ops`) are ``torch.library`` custom ops,
    whose autograd torch runs for reverse mode only: torch.func cannot enter them, and
    forward-mode AD would treat their outputs as constants. Inside ``torch.compile`` the
    answer is None (the compiled graph has no transform of ours to serve).
    """
    if torch.compiler.is_compiling():
        return None
    if torch._C._are_functorch_transforms_active():
        return "a torch.func transform (grad, vmap, jacrev, jvp, hessian, ...)"
    if fwAD._current_level >= 0 and any(
        t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors
    ):
        return "forward-mode AD (torch.autograd.forward_ad, torch.func.jvp)"
    return None


def backward_is_traced(t: torch.Tensor) -> bool:
    """Whether autograd's backward is being traced (torch.compile, export, opcheck)
    rather than run, judged from a saved tensor."""
    return (
        torch.compiler.is_compiling()
        or isinstance(t, FunctionalTensor)
        or isinstance(t, FakeTensor)
    )


def create_graph_requested(saved: torch.Tensor) -> bool:
    """Whether a backward pass runs with ``create_graph=True`` (a second derivative is
    being built: grad mode is on inside it), judged in eager mode (traced backward
    passes are AOTAutograd's, which refuses double backward itself)."""
    return torch.is_grad_enabled() and not backward_is_traced(saved)


def resolve_backend(backend: str, device: torch.device, transform: str | None = None) -> str:
    """Turn a requested backend into the one that runs: ``"triton"`` or ``"eager"``.

    Parameters
    ----------
    backend : {"auto", "triton", "eager"}
        The requested backend.
    device : torch.device
        Where the tensors live.
    transform : str or None, default=None
        The autograd transform active around the call (:func:`autograd_transform`):
        ``"auto"`` then picks the eager backend, and ``"triton"`` raises.

    Returns
    -------
    name : {"triton", "eager"}
        The implementation that computes the loss.

    Raises
    ------
    RuntimeError
        If ``"triton"`` is asked for where the kernels cannot run, or under an autograd
        transform that they do not serve.
    """
    check_backend(backend)
    on_gpu = device.type == "cuda"
    if backend == "eager":
        return "eager"
    if backend == "auto":
        return "triton" if on_gpu and triton_available() and transform is None else "eager"
    if transform is not None:
        raise RuntimeError(
            f"backend='triton' cannot run under {transform}: its kernels are torch.library "
            "operators, which torch differentiates in reverse mode only. Use "
            "backend='eager' (or 'auto', which picks it under such a transform): plain "
            "PyTorch, differentiable in every mode."
        )
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


def resolved_backend(backend: str, device: torch.device | str) -> str:
    """The implementation that a loss built with ``backend`` runs on ``device``'s tensors.

    The README's "Backends" rule, for a caller that records what ran (a benchmark, the
    demo's ``run.json``): ``"auto"`` is resolved as the losses resolve it, the Triton
    kernels for CUDA tensors when ``triton`` is importable and the eager path otherwise;
    ``"triton"`` and ``"eager"`` are returned as named. Whether the kernels can run there
    is checked when the loss runs (``backend="triton"`` raises a ``RuntimeError`` then),
    not here.

    Parameters
    ----------
    backend : {"auto", "triton", "eager"}
        The backend a loss was built with (its ``backend`` attribute).
    device : torch.device or str
        Where the loss's tensors live.

    Returns
    -------
    name : {"triton", "eager"}
        What computes the loss.

    Raises
    ------
    ValueError
        If ``backend`` names no backend.

    Examples
    --------
    >>> import torch, betavae_triton
    >>> betavae_triton.resolved_backend("auto", torch.device("cpu"))
    'eager'
    """
    if check_backend(backend) != "auto":
        return backend
    return resolve_backend(backend, torch.device(device))
