"""The layout of the package holds: one room per loss, shared modules named, perf on public
names, each loss's operators registered by its own ``ops.py`` on import of its subpackage.

These read the source (``ast``), not behaviour: a module that reaches into a sibling's
privates, or an operator registered in a second place, fails here by name.
"""

from __future__ import annotations

import ast
import inspect
import re
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
    """Module -> the ``betavae_triton::`` operators it registers (custom_op, triton_op, or a
    schema of its own: ``torch.library.define``)."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("custom_op", "triton_op", "define") and isinstance(first, ast.Constant):
                found.setdefault(str(path.relative_to(PACKAGE_DIR)), []).append(first.value)
    return found


def test_each_loss_registers_its_operators_in_its_own_ops_module():
    found = _registrations()
    assert set(found) == {"vae/ops.py", "tcvae/ops.py"}, found
    assert all(op.startswith("betavae_triton::tc_") for op in found["tcvae/ops.py"])
    assert "betavae_triton::tc_log_densities_c" in found["tcvae/ops.py"]  # the C kernels'
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
    operator's forms), and no ``autograd.Function`` defines a second one: the eager
    backend's elementwise losses call no operator, and β-TCVAE's untraced eager entries
    (``_EagerPairwise``, the operator without the dispatcher; ``_EagerTerms``, the same
    from σ to the three terms) are made of the registered functions themselves: one
    forward (``_forward``), one backward (``_pairwise_backward``). The C kernels' forward
    with gradients (``tc_terms_and_gradients_c``, what a compiled step calls) has one
    autograd, ``_TermsWithGradients``, whose backward weighs the gradients its forward
    returned."""
    from betavae_triton.tcvae import ops as tc_ops

    found = _autograd_sites()
    assert found.pop("vae/ops.py") == ["register"]
    assert found.pop("tcvae/ops.py") == [
        "_EagerPairwise",
        "_EagerTerms",
        "_TermsWithGradients",
        "register",
    ]
    assert set(found) == {"vae/eager.py"}, found
    assert tc_ops._EagerPairwise.backward is tc_ops._backward
    forward = inspect.getsource(tc_ops._EagerPairwise.forward)
    assert "_forward(" in forward and "_setup_context(ctx" in forward, forward
    assert "_forward(" in inspect.getsource(tc_ops._EagerTerms.forward)
    for backward in (tc_ops._backward, tc_ops._EagerTerms.backward):
        source = inspect.getsource(backward)
        assert "_pairwise_backward(" in source and "_backward_impl(" not in source, source
    # The C kernels' forward with gradients: its operator's one autograd, which weighs the
    # gradients that operator returned (no backward operator, no recomputation).
    with_gradients = inspect.getsource(tc_ops._TermsWithGradients)
    assert "terms_and_gradients(" in with_gradients and "ctx.saved_tensors" in with_gradients
    assert "_backward_impl(" not in with_gradients and "_pairwise_backward(" not in with_gradients
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


# ---- the demo, the study and perf/: one idea per file, one helper per job ----------------

DEMO_DIR = PACKAGE_DIR / "demo"
#: The modules the rules below read: the demo's and the study's, and the benchmarks'.
DEMO_PERF_FILES = sorted(DEMO_DIR.rglob("*.py")) + sorted(PERF_DIR.glob("*.py"))
#: A function longer than this usually holds two ideas (shared/STYLE.md, "size").
MAX_FUNCTION_LINES = 60
#: What a perf suite (a module with a top-level ``def main``) may define besides its
#: assignments: its entry point, its options and its cases, each short.
SUITE_FUNCTIONS = {"main", "parse_args", "cases"}
MAX_SUITE_FUNCTION_LINES = 12
#: The one JSON writer (a ``.partial`` sibling renamed over the target) and the one place
#: that says why Triton is not timed on a CPU.
JSON_WRITER = DEMO_DIR / "files.py"
TRITON_REASON = PERF_DIR / "contenders.py"
#: A file of the repository named in a module's text.
_REPO_PATH = re.compile(
    r"\b(?:betavae_triton|perf|reference|tests|docs)/[\w/.-]*\w\.(?:py|md|c|sh)\b"
)


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def _long_functions(source: str) -> list[str]:
    """Every function (nested ones too) longer than :data:`MAX_FUNCTION_LINES`, from its
    ``def`` line through the end of its body."""
    return [
        f"{node.name} (line {node.lineno}): {_lines(node)} lines"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and _lines(node) > MAX_FUNCTION_LINES
    ]


def _is_suite(source: str) -> bool:
    return any(
        isinstance(node, ast.FunctionDef) and node.name == "main" for node in ast.parse(source).body
    )


def _suite_violations(source: str) -> list[str]:
    """What a suite holds beyond its docstring, imports, ``__name__``/``__package__``
    guards, assignments and short ``main``/``parse_args``/``cases``."""
    found = []
    for i, node in enumerate(ast.parse(source).body):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign)):
            continue
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.If) and {"__name__", "__package__"} & {
            n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)
        }:
            continue
        if (
            isinstance(node, ast.FunctionDef)
            and node.name in SUITE_FUNCTIONS
            and _lines(node) <= MAX_SUITE_FUNCTION_LINES
        ):
            continue
        found.append(f"{type(node).__name__} {getattr(node, 'name', '')} (line {node.lineno})")
    return found


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """The ``id`` of each docstring's constant in ``tree``."""
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, owners)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _json_writes(source: str) -> list[str]:
    """Where ``source`` writes a JSON file or renames a partial file itself: ``json.dump``,
    ``write_text``/``write`` of ``json.dumps``, ``os.replace``/``os.rename``, or a
    ``".partial"`` name (a docstring may mention one)."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            inner = {
                ast.unparse(n.func)
                for a in node.args
                for n in ast.walk(a)
                if isinstance(n, ast.Call)
            }
            if func in ("json.dump", "os.replace", "os.rename"):
                found.append(f"{func}(...) (line {node.lineno})")
            elif func.endswith((".write_text", ".write")) and "json.dumps" in inner:
                found.append(f"{func}(json.dumps(...)) (line {node.lineno})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if ".partial" in node.value and id(node) not in docstrings:
                found.append(f"{node.value!r} (line {node.lineno})")
    return found


def _backend_rules(source: str) -> list[str]:
    """Where ``source`` works out a backend itself: it imports ``triton``, asks
    ``find_spec`` or calls ``triton_available``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "triton"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "triton":
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func.endswith(("find_spec", "triton_available")):
                found.append(f"{func}(...) (line {node.lineno})")
    return found


@pytest.mark.parametrize("path", DEMO_PERF_FILES, ids=_ids)
def test_no_demo_or_perf_function_is_longer_than_a_screen(path):
    assert _long_functions(path.read_text()) == [], (
        f"split the functions of {_ids(path)} longer than {MAX_FUNCTION_LINES} lines"
    )


@pytest.mark.parametrize("path", DEMO_PERF_FILES, ids=_ids)
def test_every_demo_and_perf_module_says_what_it_holds(path):
    assert ast.get_docstring(ast.parse(path.read_text())), f"{_ids(path)} has no docstring"


def test_perf_suites_declare_workloads_and_contenders_only():
    """A suite (``perf/bench.py``, ``perf/btcvae.py``, ``perf/codegen.py``: a module with a
    top-level ``def main``) names its workloads and contenders; the timing, the tables and
    the files are the harness's (``perf/cli.py``, ``perf/race.py``, ...)."""
    suites = {p.name: p.read_text() for p in PERF_DIR.glob("*.py") if _is_suite(p.read_text())}
    assert {"bench.py", "btcvae.py", "codegen.py"} <= set(suites), sorted(suites)
    found = {name: _suite_violations(source) for name, source in suites.items()}
    assert {name: bad for name, bad in found.items() if bad} == {}


def test_one_perf_module_says_why_triton_is_not_timed_on_a_cpu():
    places = [p.name for p in sorted(PERF_DIR.glob("*.py")) if "TRITON_INTERPRET" in p.read_text()]
    assert places == [TRITON_REASON.name]


def test_one_json_writer_for_the_demo_the_study_and_perf():
    """Every result file is written whole by ``betavae_triton/demo/files.py``'s
    ``write_json``; no other module dumps JSON to a file or renames a partial one."""
    found = {_ids(p): _json_writes(p.read_text()) for p in DEMO_PERF_FILES}
    assert found.pop(_ids(JSON_WRITER)), "the writer itself is no longer found by the check"
    assert {path: bad for path, bad in found.items() if bad} == {}


def test_the_demo_records_the_packages_backend_rule():
    """The demo records the backend by :func:`betavae_triton.resolved_backend`, the
    package's own rule; it does not work one out again (``find_spec("triton")``)."""
    demo = sorted(DEMO_DIR.rglob("*.py"))
    found = {_ids(p): _backend_rules(p.read_text()) for p in demo}
    assert {path: bad for path, bad in found.items() if bad} == {}
    assert any("resolved_backend(" in p.read_text() for p in demo)


@pytest.mark.parametrize(
    ("check", "source", "expected"),
    [
        (_long_functions, "def f():\n" + "    x = 1\n" * 60, ["f (line 1): 61 lines"]),
        (_long_functions, "def f():\n" + "    x = 1\n" * 59, []),
        (_suite_violations, '"""Doc."""\nimport a\nX = 1\ndef cases():\n    pass\n', []),
        (_suite_violations, "class Row:\n    pass\n", ["ClassDef Row (line 1)"]),
        (_suite_violations, "def helper():\n    pass\n", ["FunctionDef helper (line 1)"]),
        (_suite_violations, "if __name__ == '__main__':\n    main()\n", []),
        (_json_writes, "p.write_text(json.dumps(d))", ["p.write_text(json.dumps(...)) (line 1)"]),
        (_json_writes, "json.dump(d, f)", ["json.dump(...) (line 1)"]),
        (_json_writes, 'q = out / "run.json.partial"', ["'run.json.partial' (line 1)"]),
        (_json_writes, '"""Written to a ``.partial`` sibling."""\nprint(json.dumps(d))', []),
        (
            _backend_rules,
            'importlib.util.find_spec("triton")',
            ["importlib.util.find_spec(...) (line 1)"],
        ),
        (_backend_rules, "import triton.language as tl", ["import triton.language"]),
        (_backend_rules, "resolved_backend('auto', device)", []),
    ],
)
def test_the_demo_and_perf_checks_find_what_they_should(check, source, expected):
    assert check(source) == expected


@pytest.mark.parametrize("path", DEMO_PERF_FILES, ids=_ids)
def test_demo_and_perf_name_only_files_that_exist(path):
    """A file of the repository that a module's docstrings or comments name exists (the
    split into one idea per file moved many)."""
    missing = [name for name in _REPO_PATH.findall(path.read_text()) if not (ROOT / name).exists()]
    assert missing == []
