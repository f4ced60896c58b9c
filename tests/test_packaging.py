"""What ``pip install .`` gives a library user (issue 24, items 1 and 3).

- The core package (everything but the demo) imports, and computes every loss, with its
  declared dependencies alone: a fresh process in which numpy, matplotlib, tqdm and the
  test tools cannot be imported (``_launch.py`` once imported numpy for one
  ``np.float32``). ``make wheel-check`` does the same from a built wheel in a clean venv.
- The project declares its licence as an SPDX expression with the licence file, ships
  that file, a ``py.typed`` marker and the C source compiled at run time, and keeps a
  changelog.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNDECLARED = ("numpy", "matplotlib", "tqdm", "hypothesis", "pytest", "reference")

WITHOUT_EXTRAS = f"""
import importlib, pkgutil, sys, warnings

warnings.simplefilter("ignore")  # torch warns that it runs without numpy
for name in {UNDECLARED!r}:
    sys.modules[name] = None  # as if not installed: an import raises ModuleNotFoundError
import torch
import betavae_triton
from torch.distributions import Normal

for module in pkgutil.walk_packages(betavae_triton.__path__, "betavae_triton."):
    if not module.name.startswith("betavae_triton.demo"):
        importlib.import_module(module.name)
x, p = torch.rand(6, 8).round(), torch.rand(6, 8)
mu, sigma = torch.randn(6, 3), torch.rand(6, 3) + 0.5
z = Normal(mu, sigma).rsample()
print(float(betavae_triton.beta_vae_loss(x, p, mu, sigma, dist="bernoulli")[0]))
print(float(betavae_triton.BetaTCVAELoss(dataset_size=100)(x, p, Normal(mu, sigma), z)["loss"]))
print(float(betavae_triton.CapacityBetaVAELoss()(x, p, Normal(mu, sigma))["loss"]))
loaded = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in {UNDECLARED!r}]
print(sorted(loaded))
"""


def test_core_package_imports_and_runs_with_its_declared_dependencies_alone():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    *losses, loaded = done.stdout.split("\n")[:4]
    assert len(losses) == 3 and all(float(v) == float(v) for v in losses), done.stdout
    assert loaded == "[]", loaded


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_licence_is_an_spdx_expression_with_its_file():
    project = _pyproject()["project"]
    assert project["license"] == "BSD-3-Clause"  # the SPDX string, not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    for clause in (
        "Redistributions of source code must retain",
        "Redistributions in binary form must reproduce",
        "Neither the name of the copyright holder",
    ):
        assert clause in text
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))


def test_the_wheel_ships_py_typed_and_the_c_source():
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]["betavae_triton"]
    assert "py.typed" in package_data and (ROOT / "betavae_triton" / "py.typed").is_file()
    assert "tcvae/*.c" in package_data and "tcvae/*.cpp" in package_data


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in text
    assert "default_dist" in text  # the breaking change of BetaTCVAELoss's default
