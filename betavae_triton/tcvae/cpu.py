"""β-TCVAE's minibatch log-densities on a CPU, by the kernels of ``minibatch.c``.

The C kernels (the Triton kernels' algorithm, vectorised over the posteriors j) are
compiled at first use with the machine's C compiler (``$CC``, else ``gcc`` or ``cc``;
``-O3 -march=native -fopenmp``, no fast-math) into a cache folder
(``$BETAVAE_TRITON_CACHE_DIR``, else ``$XDG_CACHE_HOME/betavae_triton`` or
``~/.cache/betavae_triton``), keyed by the source, the compiler (path and version), the
flags and what ``-march=native`` resolves to (the options the compiler's driver passes on
for it, ``cc -### -march=native``; where it does not say, the CPU's model and feature
flags from ``/proc/cpuinfo``). They run on torch's own OpenMP threads (the library links
the ``libgomp.so.1`` that torch has loaded): the rows are split into
``torch.get_num_threads()`` ranges, and the backward pass's sums over the rows are
partial sums per range, added in range order, so that results are the same bit for bit
run after run at a given thread count.

They are called as the CPU kernels of two operators,
``betavae_triton::tc_log_densities_c`` and its ``_backward`` (schemas in :mod:`.call`,
defined in :mod:`.ops`), so that a call costs torch's C++ dispatch and not a Python function's, in
eager mode and in a compiled graph alike. Those kernels are ``minibatch_ops.cpp``, compiled
once per machine and torch with the C++ compiler (``$CXX``, else ``g++`` or ``c++``)
against torch's headers into the same cache folder (keyed by its source, the compiler,
torch's version, headers and C++ ABI), loaded once per process
(``torch.ops.load_library``), and handed the C kernels' addresses for each dtype once
those load (``ctypes``): its build does not depend on the C kernels' source or target.

The compilers are asked once per process (their version, and ``-march=native``), each
library (float32, float64, the operators') is built or loaded once per process, and a
failure is remembered for the rest of the process: no call after the first runs a
subprocess. Where no compiler works (or the cache folder cannot be written), :func:`kernels`
returns None, the eager backend runs the chunked torch algorithm of :mod:`.eager` instead,
and a :class:`NativeBuildWarning` says why, once per process; ``BETAVAE_TRITON_NATIVE=0``
chooses the torch algorithm on purpose (read at every call, no warning).
:func:`tcvae_cpu_kernels` says which runs, and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from .call import PairwiseCall, PairwiseSaved
from .weights import estimator_weights

Tensor = torch.Tensor
SOURCE = Path(__file__).with_name("minibatch.c")
FLAGS = ("-O3", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared", "-std=c11")
#: The operators' CPU kernels (C++, against torch's headers) and how they are compiled:
#: the C++ standards tried in turn (torch's headers ask for C++20 from 2.10 on).
OPS_SOURCE = Path(__file__).with_name("minibatch_ops.cpp")
CXX_FLAGS = ("-O2", "-fPIC", "-shared")
CXX_STANDARDS = ("-std=c++20", "-std=c++17")
# The builds tried in turn: with -march=native and OpenMP, else without either where the
# compiler refuses it.
VARIANTS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())
ENV_SWITCH = "BETAVAE_TRITON_NATIVE"
CACHE_ENV = "BETAVAE_TRITON_CACHE_DIR"
# /proc/cpuinfo lines that tell a CPU's generation and instruction sets, on any
# architecture: x86 ("model name", "flags"), ARM ("CPU implementer", "CPU part",
# "Features"), RISC-V ("isa", "uarch"), POWER ("cpu"), s390 ("features").
CPUINFO_KEYS = (
    "model name",
    "flags",
    "features",
    "cpu implementer",
    "cpu architecture",
    "cpu variant",
    "cpu part",
    "cpu model",
    "isa",
    "uarch",
    "cpu",
)


class NativeBuildWarning(RuntimeWarning):
    """The β-TCVAE C kernels could not be built or loaded: the eager backend runs the
    slower chunked torch algorithm on the CPU instead (warned once per process)."""


class CpuKernels(NamedTuple):
    """Which implementation computes β-TCVAE's minibatch log-densities on a CPU.

    Attributes
    ----------
    path : {"c", "torch"}
        ``"c"``: the C kernels of ``tcvae/minibatch.c``, compiled for this machine;
        ``"torch"``: the chunked torch algorithm (6–8× slower on a CPU).
    reason : str or None
        Why the torch algorithm runs (None where the C kernels do): no C compiler, a
        failed build, a cache folder that cannot be written, ``BETAVAE_TRITON_NATIVE=0``,
        or a dtype the kernels do not cover.
    library : pathlib.Path or None
        The compiled library in use (None on the torch path).
    """

    path: Literal["c", "torch"]
    reason: str | None
    library: Path | None


class _Toolchain(NamedTuple):
    compiler: str  # the compiler's absolute path
    version: str  # what `compiler --version` printed
    target: str  # what -march=native stands for here (or the CPU's signature)


class _Native(NamedTuple):
    path: Path  # the C kernels' library
    library: ctypes.CDLL  # it, loaded (kept: the operators call into it)


# Per process: the reason of each dtype's latest call (None where the kernels ran), each
# compiler's toolchain (or why it failed), each library (float64 or not) once loaded (or
# why it failed), and whether the warning was given; and the operators' library, loaded
# (or why not) once per process: its kernels cannot be registered twice.
_UNAVAILABLE: dict[torch.dtype, str] = {}
_TOOLCHAINS: dict[str, _Toolchain | str] = {}
_LIBRARIES: dict[bool, _Native | str] = {}
_WARNED: set[str] = set()
_OPERATORS: dict[str, ctypes.CDLL | str] = {}
# The operators' namespace (its operators resolved at each call): read by a compiled call
# without a ``torch`` of this module's (see terms.py's ``_is_compiling``).
_OPS = torch.ops.betavae_triton


def _cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "betavae_triton"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature(cpuinfo: str | None = None) -> str:
    """The machine and its CPU's model and feature flags (the ``/proc/cpuinfo`` lines of
    :data:`CPUINFO_KEYS`, on every architecture): the fallback for :func:`_native_target`."""
    if cpuinfo is None:
        cpuinfo = ""
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    lines = set()
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in CPUINFO_KEYS:
            lines.add(f"{name.strip().lower()}: {' '.join(sorted(value.split()))}")
    return "\n".join([platform.machine(), *sorted(lines)])


def _native_target(compiler: str) -> str | None:
    """What ``-march=native`` resolves to for ``compiler``: the target options its driver
    passes to the compiler proper (``cc -### -march=native``: gcc's ``-march=znver3
    -mavx2 … --param l1-cache-size=…``, clang's ``-target-cpu``/``-target-feature``), or
    None where the compiler does not say (or leaves ``native`` unresolved)."""
    cmd = [compiler, "-###", "-march=native", "-x", "c", "-c", os.devnull]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    kept: list[str] = []
    for line in (done.stderr + done.stdout).splitlines():
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = [t.strip("\"'") for t in line.split()]
        take_next = False
        for token in tokens:
            if take_next:
                kept.append(token)
                take_next = False
            elif token in ("-target-cpu", "-target-feature", "-tune-cpu", "--param"):
                kept.append(token)
                take_next = True
            elif token.startswith("-m"):
                kept.append(token)
    if not kept or any("native" in token for token in kept):
        return None
    return " ".join(kept)


def _toolchain() -> _Toolchain:
    """The compiler, its version and its ``-march=native``: asked once per process per
    compiler (a failure too). Raises RuntimeError where no compiler is found."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    known = _TOOLCHAINS.get(compiler)
    if known is None:
        try:
            done = subprocess.run(
                [compiler, "--version"], capture_output=True, text=True, timeout=60
            )
            version = f"{done.returncode}\n{done.stdout}"
            target = _native_target(compiler) or _cpu_signature()
            known = _Toolchain(compiler, version, target)
        except (OSError, subprocess.SubprocessError) as err:
            known = f"{compiler} does not run: {err}"
        _TOOLCHAINS[compiler] = known
    if isinstance(known, str):
        raise RuntimeError(known)
    return known


def _library_path(double: bool, tools: _Toolchain) -> Path:
    """The cache file of the float64 (``double``) or float32 library: named by a hash of
    the source, the compiler, the flags and the target, so that a change of any of them
    (an upgrade, another CPU sharing the home folder) builds a library of its own."""
    key = hashlib.sha256(
        "\0".join(
            (
                SOURCE.read_text(),
                tools.compiler,
                tools.version,
                " ".join(FLAGS),
                repr(VARIANTS),
                tools.target,
            )
        ).encode()
    ).hexdigest()[:24]
    return _cache_dir() / f"minibatch_{'f64' if double else 'f32'}_{key}.so"


def _compile_into(out: Path, commands: list[Callable[[Path], list[str]]], failure: str) -> None:
    """Build the library ``out`` in the cache folder (created here) by the first of
    ``commands`` (each given the temporary file to write) that succeeds, then rename it into
    place; raises RuntimeError with ``failure`` and the last compiler error otherwise."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RuntimeError(f"the cache folder {out.parent} cannot be created: {err}") from err
    for command in commands:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            target = Path(tmp) / out.name
            done = subprocess.run(command(target), capture_output=True, text=True, timeout=600)
            if done.returncode == 0:
                os.replace(target, out)  # atomic: a concurrent build finds one or the other
                return
            error = done.stderr.strip()[-2000:]
    raise RuntimeError(f"{failure}: {error}")


def _build(compiler: str, double: bool, out: Path) -> None:
    """Compile the kernels for float (``double`` False) or double into ``out``: the
    first of :data:`VARIANTS` the compiler accepts."""
    define = f"-DREAL_IS_DOUBLE={int(double)}"

    def variant(arch: tuple[str, ...]) -> Callable[[Path], list[str]]:
        return lambda target: [
            compiler, *FLAGS, *arch, define, str(SOURCE), "-o", str(target), "-lm"
        ]  # fmt: skip

    _compile_into(out, [variant(arch) for arch in VARIANTS], f"{compiler} failed")


def _load(double: bool) -> _Native:
    """Build (where the cache lacks it) and load one library, and hand its kernels to the
    operators; raises on failure."""
    tools = _toolchain()
    path = _library_path(double, tools)
    if not path.exists():
        _build(tools.compiler, double, path)
    lib = ctypes.CDLL(str(path))
    suffix = "f64" if double else "f32"
    names = ("fwd", "bwd", "fwd_workspace", "bwd_workspace", "fwd_grad", "fwd_grad_workspace")
    addresses = [
        ctypes.cast(getattr(lib, f"minibatch_log_densities_{name}_{suffix}"), ctypes.c_void_p)
        for name in names
    ]
    _operators().betavae_triton_bind_kernels(ctypes.c_int(int(double)), *addresses)
    return _Native(path, lib)


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _torch_paths() -> tuple[Path, Path]:
    """torch's C++ headers and libraries."""
    root = Path(torch.__file__).resolve().parent
    return root / "include", root / "lib"


def _operators_path(compiler: str, version: str) -> Path:
    """The cache file of the operators' library: named by a hash of its source, the C++
    compiler, the flags, and the torch it is built against (version, headers, C++ ABI)."""
    include, _ = _torch_paths()
    key = hashlib.sha256(
        "\0".join(
            (
                OPS_SOURCE.read_text(),
                compiler,
                version,
                " ".join((*CXX_FLAGS, *CXX_STANDARDS)),
                torch.__version__,
                str(include),
                str(torch._C._GLIBCXX_USE_CXX11_ABI),
            )
        ).encode()
    ).hexdigest()[:24]
    return _cache_dir() / f"minibatch_ops_{key}.so"


def _build_operators(compiler: str, out: Path) -> None:
    """Compile the operators' kernels into ``out``: with the first of
    :data:`CXX_STANDARDS` the compiler accepts."""
    include, lib = _torch_paths()
    torch_flags = (
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{include}",
        f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}",
    )
    link = (f"-L{lib}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{lib}")

    def standard(std: str) -> Callable[[Path], list[str]]:
        return lambda target: [
            compiler, *CXX_FLAGS, std, *torch_flags, str(OPS_SOURCE), "-o", str(target), *link
        ]  # fmt: skip

    failure = f"{compiler} failed on {OPS_SOURCE.name}"
    _compile_into(out, [standard(std) for std in CXX_STANDARDS], failure)


def _operators() -> ctypes.CDLL:
    """The operators' library, built (where the cache lacks it) and loaded once per
    process, its kernels registered; raises RuntimeError (every time) where it cannot."""
    known = _OPERATORS.get("library")
    if known is None:
        try:
            known = _load_operators()
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            known = str(err) or type(err).__name__
        _OPERATORS["library"] = known
    if isinstance(known, str):
        raise RuntimeError(known)
    return known


def _load_operators() -> ctypes.CDLL:
    compiler = _cxx_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    path = _operators_path(compiler, f"{done.returncode}\n{done.stdout}")
    if not path.exists():
        _build_operators(compiler, path)
    torch.ops.load_library(str(path))
    return ctypes.CDLL(str(path))


def _native(dtype: torch.dtype) -> _Native | str:
    """The loaded kernels for ``dtype``, or why there are none (the switch read now; the
    build tried once per process, its outcome kept)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    if dtype not in (torch.float32, torch.float64):
        return f"no kernels for {dtype}"
    double = dtype == torch.float64
    known = _LIBRARIES.get(double)
    if known is None:
        try:
            known = _load(double)
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            known = str(err) or type(err).__name__
        _LIBRARIES[double] = known
    return known


def _warn(dtype: torch.dtype, reason: str) -> None:
    """Say once per process that the build failed, why, and what to do."""
    if "build" in _WARNED:
        return
    _WARNED.add("build")
    warnings.warn(
        f"betavae_triton: the β-TCVAE C kernels for {dtype} are unavailable ({reason}); "
        "the eager backend runs the chunked torch algorithm on the CPU instead, 6-8x "
        "slower. To fix: install a C compiler and a C++ compiler (gcc and g++, or clang) "
        "or point CC and CXX to them; set "
        f"{CACHE_ENV} to a writable folder; or set {ENV_SWITCH}=0 to choose the torch "
        "algorithm and silence this warning. betavae_triton.tcvae_cpu_kernels() tells "
        "which runs.",
        NativeBuildWarning,
        stacklevel=3,
    )


def kernels(dtype: torch.dtype) -> _Native | None:
    """The C functions for ``dtype`` (float32 or float64), or None where they
    cannot be built here (the reason: :func:`unavailable_reason`; a failed build warns
    once per process)."""
    native = _native(dtype)
    if isinstance(native, str):
        _UNAVAILABLE[dtype] = native
        if dtype in (torch.float32, torch.float64) and native != f"{ENV_SWITCH}=0":
            _warn(dtype, native)
        return None
    _UNAVAILABLE.pop(dtype, None)  # a reason of an earlier call (the switch was set) is stale
    return native


@torch.compiler.assume_constant_result
def kernels_ready(dtype: torch.dtype) -> bool:
    """Whether the C kernels compute a call of ``dtype`` now: the switch read now, the
    kernels built or loaded once per process (:func:`kernels`). Traced by
    ``torch.compile``, the answer is a constant: dynamo guards on no environment
    variable's value (a change of the switch after compiling takes effect at the next
    compile, as it did when the switch was read inline), and the inline read cost every
    compiled call a dozen guards on ``os.environ``'s internals."""
    return os.environ.get(ENV_SWITCH, "1") != "0" and kernels(dtype) is not None


def unavailable_reason(dtype: torch.dtype = torch.float32) -> str | None:
    """Why :func:`kernels` returned None for ``dtype`` at its latest call (None if it did
    not, or was not asked)."""
    return _UNAVAILABLE.get(dtype)


def tcvae_cpu_kernels(dtype: torch.dtype = torch.float32) -> CpuKernels:
    """Which implementation of β-TCVAE's minibatch log-densities runs on the CPU.

    The eager backend (every β-TCVAE loss on CPU tensors) runs C kernels compiled at first
    use for this machine, or, where they cannot be built, a chunked torch algorithm 6–8×
    slower. This answers for the current settings: it builds or loads the kernels if no
    call did yet in this process (a few seconds, once), and reads ``BETAVAE_TRITON_NATIVE``
    now. It does not warn (the loss warns once, with :class:`NativeBuildWarning`).

    Parameters
    ----------
    dtype : torch.dtype, default=torch.float32
        The dtype of the tensors (the kernels exist for float32 and float64).

    Returns
    -------
    CpuKernels
        ``(path, reason, library)``: ``"c"`` with the compiled library's path, or
        ``"torch"`` with the reason.

    Examples
    --------
    >>> import betavae_triton
    >>> betavae_triton.tcvae_cpu_kernels().path in ("c", "torch")
    True
    """
    native = _native(dtype)
    if isinstance(native, str):
        return CpuKernels("torch", native, None)
    return CpuKernels("c", None, native.path)


def log_densities_fwd(call: PairwiseCall) -> tuple[Tensor, Tensor, Tensor]:
    """``(log q(z_i), log q(z_id), [mi, tc, dw_kl])`` of ``call`` (contiguous, one dtype:
    float32 or float64, on the CPU, the kernels loaded) by the C forward kernel: the terms
    from the per-sample parts it sums per range of rows (in float64), added in range
    order."""
    weights = estimator_weights(call.mu.shape[0], call.dataset_size, call.estimator)
    return torch.ops.betavae_triton.tc_log_densities_c.default(
        call.z, call.mu, call.log_sigma, call.row_offset, *weights
    )


def log_densities_bwd(call: PairwiseCall, saved: PairwiseSaved) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dz, dL/dμ, dL/d log σ)`` by the C backward kernel: dL/dz row by row, the
    posteriors' gradients from partial sums over ranges of rows, added in range order;
    the terms' incoming gradients ``saved.g_terms`` become constants of the kernel (their
    shares of log q(z_i) and log q(z_id), and the samples' own parts)."""
    weights = estimator_weights(call.mu.shape[0], call.dataset_size, call.estimator)
    return torch.ops.betavae_triton.tc_log_densities_c_backward.default(
        call.z, call.mu, call.log_sigma, *saved, call.row_offset, *weights
    )


def terms_and_gradients(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    row_offset: int,
    weights: tuple,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``([mi, tc, dw_kl], d/dz, d/dμ, d/d log σ)`` of the samples ``z`` (rows
    ``row_offset`` … of the batch; contiguous) against the posteriors (μ, log σ), by the C
    forward kernel that keeps each row's t and exponentials for the gradients (one pass
    over the posteriors, no backward kernel), with the estimator's ``weights``
    (:func:`.weights.estimator_weights`: its code and log-weights): the terms (3,) and,
    term by term, the pairwise parts of their gradients (3, B_l, D), (3, B, D), (3, B, D),
    without the samples' own parts (:func:`.decomposition.add_own_gradients` adds them);
    the posteriors' from partial sums over ranges of rows, added in range order."""
    return _OPS.tc_terms_and_gradients_c.default(z, mu, log_sigma, row_offset, *weights)
