"""β-TCVAE's minibatch log-densities on a CPU, by the kernels of ``minibatch.c``.

The C kernels (the Triton kernels' algorithm, vectorised over the posteriors j) are
compiled at first use with the machine's C compiler (``$CC``, else ``gcc`` or ``cc``;
``-O3 -march=native -fopenmp``, no fast-math) into a cache folder
(``$BETAVAE_TRITON_CACHE_DIR``, else ``$XDG_CACHE_HOME/betavae_triton`` or
``~/.cache/betavae_triton``), keyed by the source, the compiler, the flags and the CPU, and
loaded with ``ctypes``. They run on torch's own OpenMP threads (the library links the
``libgomp.so.1`` that torch has loaded): the rows are split into
``torch.get_num_threads()`` ranges, and the backward pass's sums over the rows are partial
sums per range, added in range order, so that results are the same bit for bit run after
run at a given thread count.

Where no compiler works (or ``BETAVAE_TRITON_NATIVE=0``), :func:`kernels` returns None
and the eager backend runs the chunked torch algorithm of :mod:`.eager` instead, with
the reason in :func:`unavailable_reason`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .._constants import ESTIMATOR_CODES, HALF_LOG_2PI, MWS

Tensor = torch.Tensor
SOURCE = Path(__file__).with_name("minibatch.c")
FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared", "-std=c11")
ENV_SWITCH = "BETAVAE_TRITON_NATIVE"
_UNAVAILABLE: dict[torch.dtype, str] = {}


def _cache_dir() -> Path:
    if os.environ.get("BETAVAE_TRITON_CACHE_DIR"):
        return Path(os.environ["BETAVAE_TRITON_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "betavae_triton"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and its CPU's model and flags."""
    text = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        text = "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    return f"{platform.machine()}\n{text}"


def _build(compiler: str, double: bool, out: Path) -> None:
    """Compile the kernels for float (``double`` False) or double into ``out``: with
    ``-march=native`` and OpenMP, or without either where the compiler refuses it."""
    define = f"-DREAL_IS_DOUBLE={int(double)}"
    options = (
        ("-march=native", "-fopenmp"),
        ("-fopenmp",),
        ("-march=native",),
        (),
    )
    for arch in options:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            target = Path(tmp) / out.name
            cmd = [compiler, *FLAGS, *arch, define, str(SOURCE), "-o", str(target), "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.replace(target, out)  # atomic: a concurrent build finds one or the other
                return
            error = done.stderr.strip()[-2000:]
    raise RuntimeError(f"{compiler} failed: {error}")


@functools.cache
def _load(double: bool) -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join(
            (SOURCE.read_text(), compiler, version, " ".join(FLAGS), _cpu_signature())
        ).encode()
    ).hexdigest()[:24]
    path = _cache_dir() / f"minibatch_{'f64' if double else 'f32'}_{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _build(compiler, double, path)
    lib = ctypes.CDLL(str(path))
    real = ctypes.c_double if double else ctypes.c_float
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    suffix = "f64" if double else "f32"
    fwd = getattr(lib, f"minibatch_log_densities_fwd_{suffix}")
    fwd.argtypes = [p] * 7 + [i32] + [i64] * 4 + [i32, real, real, real]
    fwd.restype = None
    bwd = getattr(lib, f"minibatch_log_densities_bwd_{suffix}")
    bwd.argtypes = [p] * 11 + [i32] + [i64] * 4 + [i32, real, real, real]
    bwd.restype = None
    return lib


def kernels(dtype: torch.dtype):
    """``(fwd, bwd)`` C functions for ``dtype`` (float32 or float64), or None where they
    cannot be built here (the reason: :func:`unavailable_reason`)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        _UNAVAILABLE[dtype] = f"{ENV_SWITCH}=0"
        return None
    if dtype not in (torch.float32, torch.float64):
        _UNAVAILABLE[dtype] = f"no kernels for {dtype}"
        return None
    double = dtype == torch.float64
    try:
        lib = _load(double)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _UNAVAILABLE[dtype] = str(err)
        return None
    _UNAVAILABLE.pop(dtype, None)  # a reason of an earlier call (the switch was set) is stale
    suffix = "f64" if double else "f32"
    return (
        getattr(lib, f"minibatch_log_densities_fwd_{suffix}"),
        getattr(lib, f"minibatch_log_densities_bwd_{suffix}"),
    )


def unavailable_reason(dtype: torch.dtype = torch.float32) -> str | None:
    """Why :func:`kernels` returned None for ``dtype`` at its latest call (None if it did
    not, or was not asked)."""
    return _UNAVAILABLE.get(dtype)


def estimator_constants(batch: int, dataset_size: int, estimator: str) -> tuple[int, ...]:
    """``(code, own, strat, rest)``: the log-weights of ``kernels/total_correlation.py``'s
    ``estimator_constants``, in float64 (the C call rounds them to the data's dtype)."""
    code = ESTIMATOR_CODES[estimator]
    n, m = dataset_size, batch - 1
    if code == MWS:
        mws = -math.log(batch * n)
        return code, mws, mws, mws
    return code, -math.log(n), math.log((n - m) / (n * m)), -math.log(m)


def _parts(rows: int) -> int:
    """Row ranges: one per torch thread (fewer for few rows)."""
    return max(1, min(torch.get_num_threads(), rows))


def _posteriors(mu: Tensor, log_sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """μ, 1/σ and c = −½ log 2π − log σ, each transposed to (D, B), contiguous."""
    inv = torch.exp(-log_sigma)
    c = -HALF_LOG_2PI - log_sigma
    return tuple(t.t().contiguous() for t in (mu, inv, c))


def log_densities_fwd(
    fwd,
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor]:
    """``(log q(z_i), log q(z_id))`` by the C forward kernel ``fwd``; inputs contiguous,
    one dtype (float32 or float64), on the CPU."""
    n_rows, latent = z.shape
    batch = mu.shape[0]
    mu_t, inv_t, c_t = _posteriors(mu, log_sigma)
    log_qz = z.new_empty((n_rows,))
    log_prod = z.new_empty((n_rows, latent))
    parts = _parts(n_rows)
    scratch = z.new_empty((parts, 3, batch))
    tensors = (z, mu_t, inv_t, c_t, log_qz, log_prod, scratch)
    weights = estimator_constants(batch, dataset_size, estimator)
    fwd(*(t.data_ptr() for t in tensors), parts, n_rows, row_offset, batch, latent, *weights)
    return log_qz, log_prod


def log_densities_bwd(
    bwd,
    z: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    log_qz: Tensor,
    log_prod: Tensor,
    g_qz: Tensor,
    g_prod: Tensor,
    row_offset: int,
    dataset_size: int,
    estimator: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dz, dL/dμ, dL/d log σ)`` by the C backward kernel ``bwd``: dL/dz row by row,
    the posteriors' gradients from partial sums over ranges of rows, added in range
    order."""
    n_rows, latent = z.shape
    batch = mu.shape[0]
    mu_t, inv_t, c_t = _posteriors(mu, log_sigma)
    grad_z = torch.empty_like(z)
    parts = _parts(n_rows)
    partial = z.new_zeros((parts, 2, latent, batch))
    scratch = z.new_empty((parts, 2, batch))
    tensors = (z, mu_t, inv_t, c_t, log_qz, log_prod, g_qz, g_prod, grad_z, partial, scratch)
    weights = estimator_constants(batch, dataset_size, estimator)
    bwd(*(t.data_ptr() for t in tensors), parts, n_rows, row_offset, batch, latent, *weights)
    sums = partial[0]
    for k in range(1, parts):  # in range order
        sums += partial[k]
    grad_mu = (sums[0] * inv_t).t().contiguous()
    grad_log_sigma = sums[1].t().contiguous()
    return grad_z, grad_mu, grad_log_sigma
