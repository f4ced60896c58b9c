"""Test-session set-up: the Triton interpreter on CPU, Hypothesis profiles, an example count.

- Without a GPU, ``TRITON_INTERPRET=1`` is set before anything imports triton, so the
  Triton backend's tests run its kernels under the interpreter on CPU (CI) and compiled on
  a GPU: the same tests either way. An explicit ``TRITON_INTERPRET`` is left alone.
- Hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE`` (default ``ci``): ``ci`` is small
  and derandomized (reproducible CI: a red CI means a change broke something),
  ``thorough`` runs 2000 examples per property, and ``fuzz`` (what ``make fuzz`` runs, see
  ``tests/fuzz.py``) draws ``FUZZ_EXAMPLES`` fresh random examples per property, keeps
  every failing one in ``.hypothesis/`` to replay, and runs the property tests only.
- At the end, a line ``hypothesis: profile=NAME examples=N`` reports how many examples the
  property tests ran in all (every call of a property's body, counted by wrapping it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# `reference/` lives at the repository root and is no installed package.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(HYPOTHESIS_PROFILE)

_examples = {"count": 0, "tests": 0}


def _counting(inner):
    def run_example(*args, **kwargs):
        _examples["count"] += 1
        return inner(*args, **kwargs)

    run_example._counts_examples = True
    return run_example


def pytest_configure(config: pytest.Config) -> None:
    # Under the interpreter, Triton runs kernels with numpy, which warns where the kernels
    # compute log(0) or inf - inf on purpose (clamped or masked right after).
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")


def _handle(item: pytest.Item):
    """The Hypothesis handle of a property test (None for a plain test)."""
    handle = getattr(getattr(item, "obj", None), "hypothesis", None)
    return handle if hasattr(handle, "inner_test") else None


_deselected_gpu: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``gpu``-marked tests without a CUDA device (said in the summary, never
    silently passed), and wrap the body of every Hypothesis test so that each example it runs
    is counted."""
    if not torch.cuda.is_available():
        gpu_only = [item for item in items if item.get_closest_marker("gpu") is not None]
        if gpu_only:
            _deselected_gpu.extend(item.nodeid for item in gpu_only)
            config.hook.pytest_deselected(items=gpu_only)
            items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
    if HYPOTHESIS_PROFILE == "fuzz":
        plain = [item for item in items if _handle(item) is None]
        config.hook.pytest_deselected(items=plain)
        items[:] = [item for item in items if _handle(item) is not None]
    for item in items:
        handle = _handle(item)
        if handle is not None and not getattr(handle.inner_test, "_counts_examples", False):
            handle.inner_test = _counting(handle.inner_test)


def pytest_runtest_call(item: pytest.Item) -> None:
    if _handle(item) is not None:
        _examples["tests"] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    if _deselected_gpu:
        terminalreporter.write_line(
            f"gpu: {len(_deselected_gpu)} tests marked gpu deselected (no CUDA device); "
            "they run where torch.cuda.is_available()"
        )
    terminalreporter.write_line(
        f"hypothesis: profile={HYPOTHESIS_PROFILE} examples={_examples['count']} "
        f"(in {_examples['tests']} property test runs)"
    )


@pytest.fixture
def one_thread():
    """One intra-op thread for a tiny in-process run (the demo's, the study's): no OpenMP
    barrier waits on a busy machine (the torchrun ranks get ``OMP_NUM_THREADS=1``
    likewise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_validation():
    """Start the test with ``torch.distributions``' global validation default on, as a fresh
    process has it, and put back the value it found afterwards.

    A test that reads the default cannot assume it is on: the process's first
    ``torch.compile`` (a README block, a compiled demo run, any test before) switches it off
    for good. That is PyTorch's doing: ``torch.compile`` runs Dynamo's
    ``TorchPatcher.patch()`` (``torch/_dynamo/eval_frame.py``, once per process), which
    calls ``Distribution.set_default_validate_args(False)``. The value found is put back, not
    the default on: Dynamo does not switch it off a second time, and later compiled
    functions that build distributions rely on it being off.
    """
    from torch.distributions import Distribution

    saved = Distribution._validate_args
    Distribution.set_default_validate_args(True)
    yield
    Distribution.set_default_validate_args(saved)
