"""The β-TCVAE C kernels' build (``betavae_triton/tcvae/cpu.py``, issue 31 item 6): how it
fails, how often it runs the compiler, what it says, how its cache is keyed, and one case
of the kernels' arithmetic that only the C code has.

- No compiler, a compiler that fails, a cache folder that cannot be created: the eager
  backend falls back to the torch algorithm, runs the compiler (or its ``--version``) at
  the first call only, warns once with the reason and the fix, and
  ``betavae_triton.tcvae_cpu_kernels()`` says ``"torch"`` with that reason.
- A successful build runs no subprocess after the first call; a later process loads the
  cached library without building; ``BETAVAE_TRITON_NATIVE=0`` is read at every call and
  chooses the torch algorithm without a warning.
- The cache file's name covers the source (a stale library after an upgrade), the
  compiler, the flags and what ``-march=native`` means here (another CPU sharing a home
  folder), with the CPU's ``/proc/cpuinfo`` flags on every architecture as the fallback.
- Two processes building into one empty folder at once both load one library.
- The C log-sum-exp of a row whose pairwise log-densities in one dimension are all −inf
  is −inf, as in the float64 oracle (not the NaN of (−inf) − (−inf)).

Every test starts from a fresh per-process state (the ``fresh`` fixture): the module's
caches emptied, a cache folder of its own, no ``CC`` and no switch.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import betavae_triton
from betavae_triton.tcvae import cpu
from reference.beta_tcvae import log_importance_weights

ROOT = Path(__file__).resolve().parent.parent
GCC = shutil.which("gcc") or shutil.which("cc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="no C compiler here")


def _reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new process, as the build sees it: every per-process cache empty."""
    monkeypatch.setattr(cpu, "_UNAVAILABLE", {})
    monkeypatch.setattr(cpu, "_TOOLCHAINS", {})
    monkeypatch.setattr(cpu, "_LIBRARIES", {})
    monkeypatch.setattr(cpu, "_WARNED", set())


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A fresh per-process state, an empty cache folder (returned), no CC, no switch."""
    _reset(monkeypatch)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv(cpu.ENV_SWITCH, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(cpu.CACHE_ENV, str(cache))
    return cache


def _fake_cc(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """A compiler script that logs each run (its arguments, a line) then runs ``body``;
    returns the script and its log."""
    log = tmp_path / "cc.log"
    log.touch()
    script = tmp_path / "fake-cc"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n{body}\n')
    script.chmod(0o755)
    return script, log


def _runs(log: Path) -> list[str]:
    return log.read_text().splitlines()


def _calls(dtype: torch.dtype, n: int = 10) -> list[warnings.WarningMessage]:
    """``n`` calls of the eager backend's look-up, all None or all kernels; the
    NativeBuildWarnings they gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = {cpu.kernels(dtype) is None for _ in range(n)}
    assert len(got) == 1
    return [w for w in caught if issubclass(w.category, cpu.NativeBuildWarning)]


def _kernel_libraries(folder: Path) -> list[str]:
    """The C kernels' libraries in ``folder`` (the operators' library may be there too:
    it is built once per process, by whichever test first needs it)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("minibatch_f"))


def _check_warned_once(caught: list[warnings.WarningMessage], reason: str) -> None:
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert reason in message
    fixes = ("C compiler", "C++ compiler", "CC", "CXX", cpu.CACHE_ENV, f"{cpu.ENV_SWITCH}=0")
    for fix in (*fixes, "tcvae_cpu_kernels"):
        assert fix in message, fix


def test_no_compiler(fresh, monkeypatch, tmp_path):
    """CC names nothing and PATH holds no gcc nor cc: the torch algorithm, one warning in
    ten calls, and the public answer says why."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    caught = _calls(torch.float32)
    reason = cpu.unavailable_reason(torch.float32)
    assert reason is not None and "no C compiler" in reason
    _check_warned_once(caught, reason)
    assert betavae_triton.tcvae_cpu_kernels() == ("torch", reason, None)
    assert _calls(torch.float64) == []  # once per process, whatever the dtype
    assert betavae_triton.tcvae_cpu_kernels(torch.float64).path == "torch"


def test_a_failing_compiler_runs_once_per_library(fresh, monkeypatch, tmp_path):
    """A compiler that exits 1 on everything: the first call runs it for its version,
    for -march=native and once per build variant; the nine calls after it run nothing
    (the build once retried at every call: 100 compiler runs in 10 training steps)."""
    script, log = _fake_cc(tmp_path, "exit 1")
    monkeypatch.setenv("CC", str(script))
    caught = _calls(torch.float32, n=1)
    first = _runs(log)
    builds = [run for run in first if "minibatch.c" in run]
    assert len(builds) == len(cpu.VARIANTS)
    assert len(first) == 2 + len(cpu.VARIANTS)  # --version, -### -march=native, the builds
    caught += _calls(torch.float32, n=9)
    assert _runs(log) == first
    reason = cpu.unavailable_reason(torch.float32)
    assert reason is not None and "failed" in reason
    _check_warned_once(caught, reason)
    assert betavae_triton.tcvae_cpu_kernels() == ("torch", reason, None)
    # float64 is a library of its own: built once too, the toolchain not asked again.
    assert _calls(torch.float64) == []
    runs = _runs(log)
    assert len(runs) == len(first) + len(cpu.VARIANTS)
    assert all("minibatch.c" in run for run in runs[len(first) :])


@needs_gcc
def test_a_cache_folder_that_cannot_be_created(fresh, monkeypatch, tmp_path):
    """The cache folder lies under a regular file (unusable for root too, where chmod
    stops nothing): the compiler is asked for its version and its -march=native once in
    the process, then never again (once: a ``cc --version`` at every call)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cpu.CACHE_ENV, str(blocker / "sub"))
    script, log = _fake_cc(tmp_path, f'exec "{GCC}" "$@"')
    monkeypatch.setenv("CC", str(script))
    caught = _calls(torch.float32)
    runs = _runs(log)
    assert len(runs) == 2 and runs[0] == "--version" and "-###" in runs[1]
    reason = cpu.unavailable_reason(torch.float32)
    assert reason is not None and "cache folder" in reason and str(blocker) in reason
    _check_warned_once(caught, reason)
    assert betavae_triton.tcvae_cpu_kernels() == ("torch", reason, None)
    assert _calls(torch.float64) == []
    assert _runs(log) == runs


@needs_gcc
def test_a_build_runs_no_subprocess_after_the_first_call(fresh, monkeypatch, tmp_path):
    """Built at the first call (one compile), then ten calls per dtype run nothing; a new
    process asks the compiler its version and target, and loads the cached library
    without compiling."""
    script, log = _fake_cc(tmp_path, f'exec "{GCC}" "$@"')
    monkeypatch.setenv("CC", str(script))
    with warnings.catch_warnings():
        warnings.simplefilter("error", cpu.NativeBuildWarning)
        assert cpu.kernels(torch.float32) is not None
        first = _runs(log)
        assert len(first) == 3 and sum("minibatch.c" in run for run in first) == 1
        assert _calls(torch.float32) == [] and _runs(log) == first
        answer = betavae_triton.tcvae_cpu_kernels()
        assert answer.path == "c" and answer.reason is None
        assert answer.library.parent == fresh and answer.library.is_file()
        assert "f32" in answer.library.name
        _reset(monkeypatch)  # a new process
        assert betavae_triton.tcvae_cpu_kernels() == answer
        runs = _runs(log)
        assert len(runs) == 5 and not any("minibatch.c" in run for run in runs[3:])
    assert _kernel_libraries(fresh) == [answer.library.name]


@needs_gcc
def test_the_switch_is_read_at_every_call_and_does_not_warn(fresh, monkeypatch):
    """BETAVAE_TRITON_NATIVE=0 chooses the torch algorithm on purpose: no warning, no
    compiler run; unset, the C kernels; set again after they loaded, torch again."""
    monkeypatch.setenv(cpu.ENV_SWITCH, "0")
    assert _calls(torch.float32) == []
    assert cpu._TOOLCHAINS == {} and cpu._LIBRARIES == {}
    off = ("torch", f"{cpu.ENV_SWITCH}=0", None)
    assert betavae_triton.tcvae_cpu_kernels() == off
    monkeypatch.delenv(cpu.ENV_SWITCH)
    assert betavae_triton.tcvae_cpu_kernels().path == "c"
    assert cpu.kernels(torch.float32) is not None and cpu.unavailable_reason() is None
    monkeypatch.setenv(cpu.ENV_SWITCH, "0")
    assert cpu.kernels(torch.float32) is None
    assert betavae_triton.tcvae_cpu_kernels() == off


def test_a_dtype_without_kernels_is_answered_without_a_warning(fresh):
    assert _calls(torch.float16, n=2) == []
    answer = betavae_triton.tcvae_cpu_kernels(torch.float16)
    assert answer.path == "torch" and "float16" in answer.reason


def _fresh_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operators' library as a new process sees it: not loaded (the one this process
    loaded comes back when the test ends; its kernels cannot be registered twice)."""
    monkeypatch.setattr(cpu, "_OPERATORS", {})


@needs_gcc
def test_a_failing_cxx_compiler_runs_once_per_process(fresh, monkeypatch, tmp_path):
    """The C kernels build, the operators' C++ does not: the torch algorithm, with the
    C++ compiler's failure as the reason, warned once; the compiler ran for its version
    and once per C++ standard, at the first call only, whatever the dtype."""
    _fresh_operators(monkeypatch)
    script, log = _fake_cc(tmp_path, "exit 1")
    monkeypatch.setenv("CXX", str(script))
    caught = _calls(torch.float32)
    first = _runs(log)
    assert len(first) == 1 + len(cpu.CXX_STANDARDS)
    assert first[0] == "--version" and all("minibatch_ops.cpp" in run for run in first[1:])
    reason = cpu.unavailable_reason(torch.float32)
    assert reason is not None and "failed on minibatch_ops.cpp" in reason
    _check_warned_once(caught, reason)
    assert betavae_triton.tcvae_cpu_kernels() == ("torch", reason, None)
    assert _calls(torch.float64) == [] and _runs(log) == first
    assert betavae_triton.tcvae_cpu_kernels(torch.float64).path == "torch"


@needs_gcc
def test_no_cxx_compiler(fresh, monkeypatch, tmp_path):
    """gcc on PATH (with its assembler and linker) but no g++ (nor c++, nor CXX): the torch
    algorithm, and the reason says what is missing."""
    _fresh_operators(monkeypatch)
    only_gcc = tmp_path / "bin"
    only_gcc.mkdir()
    for tool in ("gcc", "as", "ld"):
        (only_gcc / tool).symlink_to(shutil.which(tool) or tool)
    monkeypatch.setenv("PATH", str(only_gcc))
    monkeypatch.delenv("CXX", raising=False)
    caught = _calls(torch.float32)
    reason = cpu.unavailable_reason(torch.float32)
    assert reason is not None and "no C++ compiler" in reason
    _check_warned_once(caught, reason)


@pytest.mark.parametrize("change", ["source", "compiler", "version", "torch", "abi", "flags"])
def test_the_operators_cache_key_covers_the_source_the_compiler_and_torch(
    fresh, monkeypatch, tmp_path, change
):
    """The operators' library is built against torch's headers: another torch (version,
    C++ ABI), source, compiler or set of flags names another library, never one built for
    the torch of another environment sharing the cache folder."""
    base = cpu._operators_path("/usr/bin/c++", "c++ 1.0")
    assert base.parent == fresh and base.name.startswith("minibatch_ops_")
    compiler, version = "/usr/bin/c++", "c++ 1.0"
    if change == "source":
        changed = tmp_path / "minibatch_ops.cpp"
        changed.write_text(cpu.OPS_SOURCE.read_text() + "\n// upgraded\n")
        monkeypatch.setattr(cpu, "OPS_SOURCE", changed)
    elif change == "compiler":
        compiler = "/usr/bin/clang++"
    elif change == "version":
        version = "c++ 2.0"
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", torch.__version__ + ".post1")
    elif change == "abi":
        monkeypatch.setattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", not torch._C._GLIBCXX_USE_CXX11_ABI)
    else:
        monkeypatch.setattr(cpu, "CXX_STANDARDS", cpu.CXX_STANDARDS[1:])
    assert cpu._operators_path(compiler, version) != base


_WORKER = """
import sys, torch, betavae_triton
answer = betavae_triton.tcvae_cpu_kernels(torch.float64)
print(answer.path, answer.library)
"""


@needs_gcc
def test_two_processes_building_into_one_empty_folder_at_once(fresh, tmp_path):
    """Each builds in a temporary folder of its own and renames the library into place:
    both load it, and the folder holds that one file (each compile slowed by a second, so
    that both find the folder empty)."""
    fresh.mkdir()
    slow = f'case "$*" in *minibatch.c*) sleep 1 ;; esac\nexec "{GCC}" "$@"'
    script, log = _fake_cc(tmp_path, slow)
    env = {
        **os.environ,
        "CC": str(script),
        cpu.CACHE_ENV: str(fresh),
        "PYTHONPATH": str(ROOT),
    }
    env.pop(cpu.ENV_SWITCH, None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=300)[0].split() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outs[0] == outs[1] and outs[0][0] == "c", outs
    assert _kernel_libraries(fresh) == [Path(outs[0][1]).name]
    assert sum("minibatch.c" in run for run in _runs(log)) in (1, 2)


@needs_gcc
def test_the_cache_key_covers_the_kernel_source(fresh, monkeypatch, tmp_path):
    """A changed minibatch.c (here a comment: an upgrade of the package) names another
    library, which is built: never the stale one in the cache."""
    script, log = _fake_cc(tmp_path, f'exec "{GCC}" "$@"')
    monkeypatch.setenv("CC", str(script))
    old = betavae_triton.tcvae_cpu_kernels().library
    assert old is not None
    changed = tmp_path / "minibatch.c"
    text = cpu.SOURCE.read_text()
    changed.write_text(text.replace("/* β-TCVAE's", "/* (upgraded) β-TCVAE's", 1))
    assert changed.read_text() != text
    monkeypatch.setattr(cpu, "SOURCE", changed)
    _reset(monkeypatch)  # a new process, after the upgrade
    new = betavae_triton.tcvae_cpu_kernels().library
    assert new is not None and new != old and new.is_file() and old.is_file()
    assert sum("minibatch.c" in run for run in _runs(log)) == 2


def _tools() -> cpu._Toolchain:
    return cpu._Toolchain("/usr/bin/cc", "cc 1.0", "-march=znver3 -mavx2")


@pytest.mark.parametrize(
    "change",
    ["compiler", "version", "target", "flags", "variants"],
)
def test_the_cache_key_covers_the_compiler_the_flags_and_the_target(fresh, monkeypatch, change):
    """Another compiler, version, set of flags or -march=native target (another CPU
    generation sharing the home folder: SIGILL before any fallback) names another
    library."""
    tools = _tools()
    base = cpu._library_path(False, tools)
    assert base.parent == fresh and base != cpu._library_path(True, tools)
    if change == "flags":
        monkeypatch.setattr(cpu, "FLAGS", (*cpu.FLAGS, "-g"))
    elif change == "variants":
        monkeypatch.setattr(cpu, "VARIANTS", cpu.VARIANTS[1:])
    else:
        tools = tools._replace(**{change: getattr(tools, change) + "x"})
    assert cpu._library_path(False, tools) != base


ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""


def test_the_cpu_signature_reads_the_flags_of_every_architecture():
    """Where the compiler does not resolve -march=native, /proc/cpuinfo decides: on ARM
    its "Features" and "CPU part" lines (once only x86's "flags" was read, so that every
    aarch64 CPU had one key), on x86 "flags" and "model name"; not the clock."""
    sig = cpu._cpu_signature(ARM)
    assert "asimd" in sig and "0xd0c" in sig
    assert cpu._cpu_signature(ARM.replace(" sha2", " sha2 sve")) != sig
    assert cpu._cpu_signature(ARM.replace("0xd0c", "0xd40")) != sig
    assert cpu._cpu_signature(ARM.replace("50.00", "48.00")) == sig
    x86 = "model name\t: AMD EPYC\ncpu MHz\t\t: 2450.000\nflags\t\t: fpu sse2 avx2\n"
    assert cpu._cpu_signature(x86) != cpu._cpu_signature(x86.replace("avx2", "avx512f"))
    assert cpu._cpu_signature(x86) == cpu._cpu_signature(x86.replace("2450", "3100"))
    assert cpu._cpu_signature(x86) != cpu._cpu_signature(x86.replace("EPYC", "EPYC 9"))


@needs_gcc
def test_march_native_is_resolved_by_the_compiler():
    """This machine's compiler says what -march=native means (gcc and clang expand it in
    the driver): that string, not "native", keys the cache; a compiler that does not run
    leaves the CPU's signature to it."""
    target = cpu._native_target(GCC)
    assert target is not None and "native" not in target
    assert "-march=" in target or "-target-cpu" in target
    assert cpu._native_target(GCC) == target  # no temporary file names in it
    assert cpu._native_target("/nonexistent/cc") is None


def _oracle(z, mu, log_sigma, dataset_size, estimator):
    """``(log q(z_i), log q(z_id))`` from the full pairwise tensor, in float64."""
    z, mu, log_sigma = (t.double() for t in (z, mu, log_sigma))
    log_w = log_importance_weights(z.shape[0], dataset_size, estimator)
    t = (z[:, None, :] - mu[None]) * torch.exp(-log_sigma[None])
    pair = -0.5 * math.log(2 * math.pi) - log_sigma[None] - 0.5 * t**2
    log_qz = torch.logsumexp(pair.sum(2) + log_w, 1)
    log_prod = torch.logsumexp(pair + log_w[:, :, None], 1)
    return log_qz, log_prod


@pytest.mark.parametrize(("dtype", "far"), [(torch.float64, 1e200), (torch.float32, 1e30)])
def test_c_log_sum_exp_where_every_pair_of_a_dimension_is_minus_inf(monkeypatch, dtype, far):
    """z_41 so far from every posterior that (z − μ)²/σ² overflows: log N(z_41; μ_j1, σ_j1)
    = −inf for every j, so the running maximum of that log-sum-exp (and of row 4's joint)
    stays −inf, and the C kernels return −inf there as the oracle does (the shift by a −inf
    maximum would give (−inf) − (−inf) = NaN), every other value unchanged. B = 20 covers
    the vector loop (16 lanes) and its tail."""
    monkeypatch.delenv(cpu.ENV_SWITCH, raising=False)
    assert cpu.kernels(dtype) is not None, cpu.unavailable_reason(dtype)
    gen = torch.Generator().manual_seed(4)
    z, mu = (torch.randn(20, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    log_sigma = torch.rand(20, 3, generator=gen, dtype=torch.float64) - 0.5
    z[4, 1] = far
    z, mu, log_sigma = (t.to(dtype) for t in (z, mu, log_sigma))
    op = torch.ops.betavae_triton.tc_log_densities_eager
    for estimator in ("mss", "mws"):
        log_qz, log_prod, _ = op(z, mu, log_sigma, 0, 100, estimator)
        want_qz, want_prod = _oracle(z, mu, log_sigma, 100, estimator)
        if dtype == torch.float64:  # the oracle overflows as the kernels do
            assert want_qz[4] == -math.inf and want_prod[4, 1] == -math.inf
        want_qz[4] = want_prod[4, 1] = -math.inf
        assert log_qz[4] == -math.inf and log_prod[4, 1] == -math.inf
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(log_qz.double(), want_qz, rtol=tol, atol=tol)
        torch.testing.assert_close(log_prod.double(), want_prod, rtol=tol, atol=tol)
