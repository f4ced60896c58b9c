"""The layout of the package holds: one room per loss, shared modules named, perf on public
names, each loss's operators registered by its own ``ops.py`` on import of its subpackage.

These read the source (``ast``), not behaviour: a module that reaches into a sibling's
privates, or an operator registered in a second place, fails here by name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "betavae_triton"
PERF_DIR = ROOT / "perf"
#: The modules every part of the package may take private names from (the kernels are
#: ``_``-named by Triton's convention, and launched from each loss's ``launch.py``).
SHARED = {"_checks", "_constants", "_dispatch", "_device", "kernels"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path, module: str | None = None) -> list[str]:
    """Every dotted name ``path`` (the module ``module``, by default the one its place
    says) imports, relative imports resolved (``from .x import y`` in ``a.b`` gives
    ``a.x.y``)."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _violations(path: Path, module: str | None = None) -> list[str]:
    """The names ``path`` (the module ``module``) imports from ``betavae_triton`` that have
    a private part outside the module's own subpackage and outside the shared modules."""
    module = module or _module_name(path)
    own = module.split(".")[:2]  # betavae_triton.<subpackage or module>
    found = []
    for name in _imported_names(path, module):
        parts = name.split(".")
        if parts[0] != "betavae_triton" or len(parts) < 2 or parts[1] in SHARED:
            continue
        if parts[:2] == own and len(own) == 2 and (PACKAGE_DIR / own[1]).is_dir():
            continue  # inside its own subpackage
        if any(_private(part) for part in parts[1:]):
            found.append(name)
    return found


PACKAGE_FILES = sorted(p for p in PACKAGE_DIR.rglob("*.py") if "demo" not in p.parts)


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_takes_a_siblings_private_names(path):
    assert _violations(path) == []


def test_the_import_check_finds_a_private_import_across_rooms(tmp_path):
    # The same rule applied to a module of the tcvae room that takes a private helper of
    # the vae room, and to one that keeps to its room and the shared modules.
    bad, good = tmp_path / "bad.py", tmp_path / "good.py"
    bad.write_text("from ..vae.launch import _empty\nfrom .eager import _chunks\n")
    good.write_text("from .._constants import HALF_LOG_2PI\nfrom .eager import _chunks\n")
    module = "betavae_triton.tcvae.probe"
    assert _violations(bad, module) == ["betavae_triton.vae.launch._empty"]
    assert _violations(good, module) == []


@pytest.mark.parametrize(
    "path", sorted(PERF_DIR.glob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_perf_uses_public_names_only(path):
    module = _module_name(path)
    private = []
    for name in _imported_names(path):
        parts = name.split(".")
        if parts[0] == "betavae_triton" and any(_private(part) for part in parts[1:]):
            private.append(name)
        if parts[0] == "perf" and ".".join(parts[:2]) != module and _private(parts[-1]):
            private.append(name)  # a sibling perf module's private helper
    assert private == []


def _registrations() -> dict[str, list[str]]:
    """Module -> the ``betavae_triton::`` operators it registers (custom_op, triton_op)."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("custom_op", "triton_op") and isinstance(first, ast.Constant):
                found.setdefault(str(path.relative_to(PACKAGE_DIR)), []).append(first.value)
    return found


def test_each_loss_registers_its_operators_in_its_own_ops_module():
    found = _registrations()
    assert set(found) == {"vae/ops.py", "tcvae/ops.py"}, found
    assert all(op.startswith("betavae_triton::tc_") for op in found["tcvae/ops.py"])
    assert not any(op.startswith("betavae_triton::tc_") for op in found["vae/ops.py"])


@pytest.mark.parametrize(
    ("subpackage", "operator"),
    [("betavae_triton.vae", "loss_fwd_cpu"), ("betavae_triton.tcvae", "tc_log_densities_eager")],
)
def test_importing_a_subpackage_registers_its_operators(subpackage, operator):
    # In a fresh process, importing the loss's subpackage alone is enough (no reliance on
    # the order in which betavae_triton/__init__.py imports things).
    code = (
        "import sys, importlib, torch\n"
        f"importlib.import_module({subpackage!r})\n"
        f"op = getattr(torch.ops.betavae_triton, {operator!r})\n"
        "print(op.default.name())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"betavae_triton::{operator}"


@pytest.mark.parametrize("constant", ["HALF_LOG_2PI", "LOG_2", "ESTIMATOR_CODES"])
def test_shared_constants_are_defined_once(constant):
    places = []
    for path in PACKAGE_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                value = node.value
                # kernels/constants.py re-exports each as a tl.constexpr of the same value
                wraps = isinstance(value, ast.Call) and "constexpr" in ast.unparse(value.func)
                if constant in targets and not wraps:
                    places.append(str(path.relative_to(PACKAGE_DIR)))
    assert places == ["_constants.py"]


def _autograd_sites() -> dict[str, list[str]]:
    """Per module: each place that defines an autograd (an ``autograd.Function``
    subclass, a ``register_autograd`` call), by name."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base).endswith("autograd.Function") for base in node.bases
            ):
                found.setdefault(str(path.relative_to(PACKAGE_DIR)), []).append(node.name)
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(
                "register_autograd"
            ):
                found.setdefault(str(path.relative_to(PACKAGE_DIR)), []).append("register")
    return found


def test_each_operator_has_one_autograd():
    """The operators' autograd is registered on them (once per ops module: a loop over an
    operator's forms), and no ``autograd.Function`` wraps them a second time: the only
    Functions are the eager backend's elementwise losses, which call no operator."""
    found = _autograd_sites()
    assert found.pop("vae/ops.py") == ["register"]
    assert found.pop("tcvae/ops.py") == ["register"]
    assert set(found) == {"vae/eager.py"}, found
    eager_source = (PACKAGE_DIR / "vae" / "eager.py").read_text()
    assert "torch.ops" not in eager_source and "from .ops" not in eager_source


def test_the_loss_modules_are_siblings_over_one_base():
    """Each module derives from the shared base alone, so none inherits an option it
    does not honour (β-TCVAE has no ``reduction``; the capacity loss has no β)."""
    from betavae_triton import BetaTCVAELoss, BetaVAELoss, CapacityBetaVAELoss
    from betavae_triton.loss import _VAELossModule

    for cls in (BetaVAELoss, CapacityBetaVAELoss, BetaTCVAELoss):
        assert cls.__bases__ == (_VAELossModule,), cls
    tc = BetaTCVAELoss(dataset_size=10)
    assert not hasattr(tc, "reduction") and not hasattr(tc, "kl_per_dim")
    assert not hasattr(CapacityBetaVAELoss(), "beta")
    with pytest.raises(TypeError, match="reduction"):
        BetaTCVAELoss(dataset_size=10, reduction="none")


def test_the_estimators_weights_are_defined_once():
    """The log-weights' values come from tcvae/weights.py alone in Python (the C kernels and
    the chunked path are handed them); the Triton kernels derive them in-kernel from the
    same formulas, because a float argument reaches a kernel in float32."""
    places = []
    for path in PACKAGE_FILES:
        source = path.read_text()
        if "(n - m) / (n * m)" in source:
            places.append(str(path.relative_to(PACKAGE_DIR)))
    assert places == ["kernels/total_correlation.py", "tcvae/weights.py"], places
