"""Input checks shared by every backend (the README's "Bad input").

Everything here reads only metadata (shapes, dtypes, devices) and never synchronises with
the device, except the checks of values, which run only with argument validation on, in
eager mode (:func:`value_checks_run`): Bernoulli values in [0, 1]
(:func:`check_bernoulli_range`) and posterior scales above 0
(:func:`check_positive_scale`), one host sync each on a GPU. Loss weights
(:func:`check_weight`) are read only where that costs no sync: Python numbers, and
tensors on the CPU, in eager mode.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch
from torch.distributions import Distribution

from ._constants import ESTIMATOR_CODES
from ._dispatch import autograd_transform

DISTRIBUTIONS = ("normal", "laplace", "bernoulli")
REDUCTIONS = ("mean", "none")
ESTIMATORS = tuple(name for name in ESTIMATOR_CODES if name != "mss-bank")  # a user's
# dataset_size reaches the operators as a 64-bit integer: it must lie below this.
DATASET_SIZE_LIMIT = 2**63


def check_dist(dist: str) -> str:
    """Return ``dist`` if it names a decoder distribution, else raise ``ValueError``."""
    if dist not in DISTRIBUTIONS:
        raise ValueError(
            f"decoder distribution must be 'normal', 'laplace' or 'bernoulli', got {dist!r}"
        )
    return dist


def _check_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or "
            f"float64), got {t.dtype}"
        )
    return t


def check_reconstruction(p: torch.Tensor, x: torch.Tensor) -> None:
    """Check the decoder parameter ``p`` against the data ``x``.

    Raises
    ------
    TypeError
        If either is not a floating-point tensor.
    ValueError
        If their shapes or devices differ, or the batch is empty.
    """
    _check_float("p", p)
    _check_float("x", x)
    if p.shape != x.shape:
        raise ValueError(
            f"the decoder parameter has shape {tuple(p.shape)} but the data x has shape "
            f"{tuple(x.shape)}; they must be equal (no broadcasting)"
        )
    if p.device != x.device:
        raise ValueError(f"p is on {p.device} but x is on {x.device}; put them on one device")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension: shape (B, ...), got a scalar")
    if x.shape[0] == 0:
        raise ValueError(f"the batch is empty: x has shape {tuple(x.shape)}")


def broadcast_shapes(a: torch.Size, b: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes(a, b)``; in eager mode by plain Python on the sizes (torch's
    own costs tens of microseconds a call, a visible share of a small CPU step)."""
    if torch.compiler.is_compiling():
        return torch.broadcast_shapes(a, b)
    sizes = []
    for i in range(1, max(len(a), len(b)) + 1):
        m = a[-i] if i <= len(a) else 1
        n = b[-i] if i <= len(b) else 1
        if m != n and m != 1 and n != 1:
            raise RuntimeError(f"shapes {tuple(a)} and {tuple(b)} do not broadcast")
        sizes.append(n if m == 1 else m)
    return torch.Size(reversed(sizes))


def check_posterior(loc: torch.Tensor, scale: torch.Tensor) -> torch.Size:
    """Check the posterior's ``loc`` and ``scale``; return their broadcast shape.

    Raises
    ------
    TypeError
        If either is not a floating-point tensor.
    ValueError
        If they do not broadcast, differ in device, have no batch dimension or an empty one.
    """
    _check_float("q.loc", loc)
    _check_float("q.scale", scale)
    if loc.device != scale.device:
        raise ValueError(
            f"q.loc is on {loc.device} but q.scale is on {scale.device}; put them on one device"
        )
    try:
        shape = broadcast_shapes(loc.shape, scale.shape)
    except RuntimeError as err:
        raise ValueError(
            f"q.loc {tuple(loc.shape)} and q.scale {tuple(scale.shape)} do not broadcast"
        ) from err
    if len(shape) == 0:
        raise ValueError("the posterior must have a batch dimension: shape (B, ...), got scalars")
    if shape[0] == 0:
        raise ValueError(f"the posterior's batch is empty: shape {tuple(shape)}")
    return shape


def check_same_device(a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise ``ValueError`` if the data and the posterior live on different devices."""
    if a.device != b.device:
        raise ValueError(
            f"x is on {a.device} but the posterior is on {b.device}; put them on one device"
        )


def validation_enabled(validate_args: bool | None) -> bool:
    """Resolve ``validate_args``: ``None`` follows ``torch.distributions``' global default."""
    if validate_args is None:
        return bool(Distribution._validate_args)
    return bool(validate_args)


def value_checks_run(validate_args: bool | None, t: torch.Tensor) -> bool:
    """Whether the checks that read the values of ``t`` run: validation on, in eager mode
    (not inside ``torch.compile``, nor under a ``torch.func`` transform, where a branch
    on values cannot be taken, as torch's own losses skip theirs), not during a
    CUDA-graph capture, not on ``meta`` tensors. On a GPU each such check is a host
    synchronisation."""
    if not validation_enabled(validate_args) or torch.compiler.is_compiling():
        return False
    if autograd_transform() is not None:
        return False
    if t.device.type == "meta":
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def check_bernoulli_range(
    p: torch.Tensor | None, x: torch.Tensor, validate_args: bool | None
) -> None:
    """Raise ``ValueError`` if Bernoulli probabilities or targets leave [0, 1].

    ``p=None`` checks the targets alone (logits may be any real number).

    A host synchronisation on a GPU: it runs only when :func:`value_checks_run` (eager
    mode, validation on). Inside ``torch.compile`` or a CUDA-graph capture it is skipped
    and bad values give NaN. NaN itself is not "out of range": it propagates to the result.
    """
    if not value_checks_run(validate_args, x):
        return
    for name, t in (("probabilities p", p), ("targets x", x)):
        if t is None:
            continue
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(
                f"bernoulli {name} must lie in [0, 1]; found values outside it. Pass "
                "validate_args=False (or torch.distributions.Distribution."
                "set_default_validate_args(False)) to skip this check and get NaN instead."
            )


SCALE_MESSAGE = (
    "q.scale must be positive; found a value <= 0. Pass validate_args=False (or "
    "torch.distributions.Distribution.set_default_validate_args(False)) to skip this check."
)


def check_positive_scale(
    q_scale: torch.Tensor, q_is_logvar: bool, validate_args: bool | None, name: str = "q.scale"
) -> None:
    """Raise ``ValueError`` if a posterior scale σ (``name``) is ≤ 0 (the same check, and
    message, for every loss).

    Only when :func:`value_checks_run` (validation on, eager mode: a host sync on a GPU);
    never for a log-variance (any real number is one). NaN is not ≤ 0: it propagates.
    """
    if q_is_logvar or not value_checks_run(validate_args, q_scale):
        return
    if bool((q_scale <= 0).any()):
        raise ValueError(SCALE_MESSAGE.replace("q.scale", name, 1))


def check_dataset_size(dataset_size: object) -> int:
    """β-TCVAE's N as an ``int``: any integral number (``int``, a NumPy integer: anything
    with ``__index__``), not a bool. An ``int`` is returned as it is: under
    ``torch.compile`` a size that changes is a symbolic int, which ``operator.index``
    would specialise (a recompile per value).

    Raises
    ------
    TypeError
        If ``dataset_size`` is None, a bool or not integral (a float, say).
    ValueError
        If ``dataset_size`` is :data:`DATASET_SIZE_LIMIT` (2**63) or more: the operators
        take it as a 64-bit integer.
    """
    if dataset_size is None:
        raise TypeError("β-TCVAE needs dataset_size: the number of training samples")
    if isinstance(dataset_size, torch.SymInt):
        return dataset_size
    if isinstance(dataset_size, int) and not isinstance(dataset_size, bool):
        size = dataset_size
    else:
        try:
            if isinstance(dataset_size, bool):
                raise TypeError
            size = operator.index(dataset_size)
        except TypeError:
            raise TypeError(
                "dataset_size must be an integer (an int, a NumPy integer or any integral "
                f"type), got {dataset_size!r}"
            ) from None
    if size >= DATASET_SIZE_LIMIT:
        raise ValueError(
            f"dataset_size must be below 2**63 (a 64-bit integer), got {size}: it is the "
            "number of samples in the training set"
        )
    return size


def check_tcvae_inputs(
    z: torch.Tensor,
    q_loc: torch.Tensor,
    q_scale: torch.Tensor,
    dataset_size: int,
    estimator: str,
    q_is_logvar: bool,
    validate_args: bool | None,
    world_size: int = 1,
) -> int:
    """Check β-TCVAE's latent sample, posterior, dataset size and estimator; return the
    dataset size as an ``int``.

    Raises
    ------
    TypeError
        If a tensor is not floating point or ``dataset_size`` is not an integer.
    ValueError
        If z is not (B, D), the global batch (``world_size`` · B) holds fewer than 2
        samples or more than ``dataset_size``, μ or σ does not broadcast to z, the devices
        differ, the estimator is unknown, or (with validation on, eager mode only: one
        host sync) a σ is not positive.
    """
    dataset_size = check_dataset_size(dataset_size)
    _check_float("z", z)
    if z.dim() != 2:
        raise ValueError(f"z must have shape (B, D), got {tuple(z.shape)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    batch = z.shape[0] * world_size
    if batch < 2:
        raise ValueError(f"the β-TCVAE estimators need a batch of at least 2 samples, got {batch}")
    if dataset_size < batch:
        raise ValueError(
            f"dataset_size ({dataset_size}) is smaller than the batch ({batch}): it is the "
            "number of samples in the training set"
        )
    names = ("q.loc", "q.scale" if not q_is_logvar else "the log-variance")
    for name, t in zip(names, (q_loc, q_scale), strict=True):
        _check_float(name, t)
        if t.device != z.device:
            raise ValueError(f"{name} is on {t.device} but z is on {z.device}")
        try:
            shape = broadcast_shapes(t.shape, z.shape)
        except RuntimeError:
            shape = None
        if shape != z.shape:
            raise ValueError(f"{name} {tuple(t.shape)} does not broadcast to z {tuple(z.shape)}")
    check_positive_scale(q_scale, q_is_logvar, validate_args)
    return dataset_size


def check_bank(
    z: torch.Tensor,
    bank_loc: torch.Tensor | None,
    bank_scale: torch.Tensor | None,
    dataset_size: int,
    estimator: str,
    q_is_logvar: bool,
    validate_args: bool | None,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Check β-TCVAE's bank of posteriors; return ``(bank_loc, bank_scale)``, or None
    without a bank.

    Raises
    ------
    TypeError
        If one of the two is given without the other, or a bank tensor is not floating
        point.
    ValueError
        If the bank is not (K, D) for z's D, its dtype or device differs from z's, the
        estimator is not "mss", the global batch and the bank together exceed the data
        set, or (with validation on, eager mode only: one host sync) a σ is not positive.
    """
    if bank_loc is None and bank_scale is None:
        return None
    if bank_loc is None or bank_scale is None:
        raise TypeError("bank_loc and bank_scale go together: pass both, or neither")
    names = ("bank_loc", "bank_scale")
    for name, t in zip(names, (bank_loc, bank_scale), strict=True):
        _check_float(name, t)
        if t.dim() != 2 or t.shape[1] != z.shape[1] or t.shape != bank_loc.shape:
            raise ValueError(
                f"the bank must be two (K, D) tensors with z's D = {z.shape[1]}: got "
                f"bank_loc {tuple(bank_loc.shape)} and bank_scale {tuple(bank_scale.shape)}"
            )
        if t.dtype != z.dtype:
            raise ValueError(
                f"{name} is {t.dtype} but z is {z.dtype}: keep the bank in the batch's dtype"
            )
        if t.device != z.device:
            raise ValueError(f"{name} is on {t.device} but z is on {z.device}")
    if estimator != "mss":
        raise ValueError(
            f"a bank of posteriors needs estimator 'mss' (its weights with a bank make the "
            f"estimate exact when the batch and the bank hold the data set), got {estimator!r}"
        )
    global_batch = z.shape[0] * world_size
    if global_batch + bank_loc.shape[0] > dataset_size:
        raise ValueError(
            f"the batch ({global_batch}) and the bank ({bank_loc.shape[0]}) hold more "
            f"posteriors than the data set ({dataset_size}): the bank may hold at most "
            f"N − B = {dataset_size - global_batch}"
        )
    check_positive_scale(bank_scale, q_is_logvar, validate_args, "bank_scale")
    return bank_loc, bank_scale


WEIGHT_TYPES = "a real number (int, float, a NumPy number) or a one-element tensor"


def check_weight(name: str, weight: object, validate_args: bool | None) -> None:
    """Check a loss weight (β; α, γ; the capacity C): its type and size always; with
    validation on, in eager mode, that it is neither negative nor NaN.

    The value is read only where that costs no host sync: a Python number, or a tensor on
    the CPU (a tensor on a GPU is not read). Inside ``torch.compile`` values are not
    checked, as no value check is: dynamo turns a number that changes into a symbolic
    input, and reading it would specialise the graph on it (a recompile per value).

    Raises
    ------
    TypeError
        If ``weight`` is neither a real number nor a tensor (a string, a bool, None).
    ValueError
        If it is a tensor of more than one element, or (with validation on) negative or NaN.
    """
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1:
            raise ValueError(
                f"{name} must be {WEIGHT_TYPES}, got a tensor of shape {tuple(weight.shape)}"
            )
        if weight.device.type != "cpu" or not value_checks_run(validate_args, weight):
            return
        value = float(weight.detach().reshape(()))
    elif isinstance(weight, (numbers.Real, torch.SymInt, torch.SymFloat)) and not isinstance(
        weight, bool
    ):
        if not validation_enabled(validate_args) or torch.compiler.is_compiling():
            return
        value = float(weight)
    else:
        raise TypeError(
            f"{name} must be {WEIGHT_TYPES}, got {type(weight).__name__}: {weight!r:.40}"
        )
    if math.isnan(value) or value < 0:
        raise ValueError(
            f"{name} must be a non-negative weight, got {value}. Pass validate_args=False (or "
            "torch.distributions.Distribution.set_default_validate_args(False)) to skip this "
            "check."
        )


def loss_weight(
    weight: float | torch.Tensor, device: torch.device
) -> tuple[float, torch.Tensor | None]:
    """A loss weight (β) as ``(number, tensor)``: a one-element tensor stays a tensor (a CPU
    scalar moved to the data's device without a sync), a number stays a number (not
    ``float()``-ed: under ``torch.compile`` that would specialise the graph on its value)."""
    if not isinstance(weight, torch.Tensor):
        return weight, None
    if weight.numel() != 1:
        raise ValueError(
            f"a loss weight must be a number or a one-element tensor, got shape "
            f"{tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        weight = weight.to(torch.float64)
    if weight.device != device:
        if weight.device.type != "cpu":
            raise ValueError(
                f"a loss weight on {weight.device} cannot weigh data on {device}: put it on "
                "the data's device (or on the CPU)"
            )
        weight = weight.to(device, non_blocking=True)
    return 0.0, weight.reshape(())


def check_reduction(reduction: str) -> bool:
    """Whether ``reduction`` asks for per-sample terms; ``ValueError`` if unknown."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return reduction == "none"


def reconstruction_kind(dist: str, p_is_logits: bool) -> str:
    """The loss the kernels compute: ``dist``, or ``"bernoulli_logits"``."""
    check_dist(dist)
    if not p_is_logits:
        return dist
    if dist != "bernoulli":
        raise ValueError(f"p_is_logits=True needs dist='bernoulli', got dist={dist!r}")
    return "bernoulli_logits"


def check_decoder_scale(p_scale: torch.Tensor | None, kind: str, x: torch.Tensor) -> None:
    """The decoder scale of the full likelihood: normal or laplace, a floating tensor that
    broadcasts to x, on x's device."""
    if p_scale is None:
        return
    if kind not in ("normal", "laplace"):
        raise ValueError(f"p_scale needs dist='normal' or 'laplace', got {kind!r}")
    if not isinstance(p_scale, torch.Tensor) or not p_scale.is_floating_point():
        raise TypeError(f"p_scale must be a floating-point tensor, got {p_scale!r:.60}")
    if p_scale.device != x.device:
        raise ValueError(f"p_scale is on {p_scale.device} but x is on {x.device}")
    if p_scale.numel() == 0:
        raise ValueError("p_scale is empty")
    try:
        if torch.broadcast_shapes(p_scale.shape, x.shape) != x.shape:
            raise RuntimeError
    except RuntimeError as err:
        raise ValueError(
            f"p_scale {tuple(p_scale.shape)} does not broadcast to x {tuple(x.shape)}"
        ) from err


def check_bernoulli_values(
    kind: str, p: torch.Tensor, x: torch.Tensor, validate_args: bool | None
) -> None:
    """Validate bernoulli targets (and probabilities; logits may be any real)."""
    if kind == "bernoulli":
        check_bernoulli_range(p, x, validate_args)
    elif kind == "bernoulli_logits":
        check_bernoulli_range(None, x, validate_args)


def check_loss_inputs(
    x: torch.Tensor | None,
    p: torch.Tensor | None,
    q_loc: torch.Tensor | None,
    q_scale: torch.Tensor | None,
    *,
    dist: str = "normal",
    p_is_logits: bool = False,
    reduction: str = "mean",
    p_scale: torch.Tensor | None = None,
    q_is_logvar: bool = False,
    validate_args: bool | None = None,
) -> tuple[str, bool]:
    """Check the arguments of the β-VAE loss or of one of its terms (x and p None: the KL
    alone; q_loc and q_scale None: the reconstruction alone); return ``(kind,
    per_sample)``: the loss the kernels compute (``dist``, or ``"bernoulli_logits"``) and
    whether the reduction is per sample. With validation on, in eager mode, the values
    are checked too (bernoulli values in [0, 1], σ > 0 unless ``q_is_logvar``): a host
    sync each on a GPU."""
    kind = reconstruction_kind(dist, p_is_logits) if x is not None else dist
    per_sample = check_reduction(reduction)
    if x is None:
        check_posterior(q_loc, q_scale)
        check_positive_scale(q_scale, q_is_logvar, validate_args)
        return kind, per_sample
    check_reconstruction(p, x)
    if q_loc is not None:
        q_shape = check_posterior(q_loc, q_scale)
        check_same_device(x, q_loc)
        if per_sample and q_shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"reduction='none' needs the posterior's batch to be {x.shape[0]} (that of "
                f"x) or 1, got {q_shape[0]}"
            )
        check_positive_scale(q_scale, q_is_logvar, validate_args)
    check_bernoulli_values(kind, p, x, validate_args)
    check_decoder_scale(p_scale, kind, x)
    return kind, per_sample
