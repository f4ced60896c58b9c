"""``--help`` of every command-line entry point (issue 24, item 2): the demo, every ``perf``
module with a ``main``, ``tests/fuzz.py`` and ``tests/mutants.py``.

Each must exit 0 (``perf.btcvae --help`` once crashed on a ``%`` in a help string), name
its command in the usage line (``perf.codegen`` printed ``usage: codegen.py``), give a
description whose last sentence is complete (``tests/mutants.py``'s stopped
mid-sentence), and a help string for every option. One subprocess runs them all, each as
``python -m …`` or ``python path`` would (``runpy``, ``sys.argv`` set), recording the
parser whose help it prints.

Without the demo's extra (numpy, matplotlib, tqdm: a bare ``pip install .``) the demo's
commands exit with a message that names it, ``--help`` included (issue 31, item 7).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PERF_MAINS = sorted(
    p.stem
    for p in (ROOT / "perf").glob("*.py")
    if re.search(r"^def main\(", p.read_text(), re.MULTILINE)
)
# (what a user types, how runpy runs it, what it runs)
ENTRY_POINTS = [
    ("python -m betavae_triton.demo", "module", "betavae_triton.demo"),
    ("python -m betavae_triton.demo.study", "module", "betavae_triton.demo.study"),
    *((f"python -m perf.{name}", "module", f"perf.{name}") for name in PERF_MAINS),
    ("python tests/fuzz.py", "path", "tests/fuzz.py"),
    ("python tests/mutants.py", "path", "tests/mutants.py"),
]

DRIVER = r"""
import argparse, contextlib, io, json, runpy, sys, traceback

entries = json.loads(sys.argv[1])
shown = []
print_help = argparse.ArgumentParser.print_help


def recording(self, file=None):
    shown.append(self)
    return print_help(self, file)


argparse.ArgumentParser.print_help = recording
results = {}
for command, kind, target in entries:
    shown.clear()
    out, code, error = io.StringIO(), None, None
    sys.argv = [target, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    except BaseException:
        error = traceback.format_exc()
    parser = shown[-1] if shown else None
    results[command] = {
        "code": code,
        "error": error,
        "output": out.getvalue(),
        "description": parser.description if parser else None,
        "undocumented": [
            "/".join(action.option_strings) or action.dest
            for action in (parser._actions if parser else [])
            if not action.help
        ],
    }
sys.__stdout__.write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, dict]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(ENTRY_POINTS)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


COMMANDS = [command for command, _, _ in ENTRY_POINTS]


def _id(command: str) -> str:
    """A test id without spaces: ``perf.codegen``, ``tests/fuzz.py``."""
    return command.removeprefix("python ").removeprefix("-m ")


def test_every_perf_main_is_covered():
    assert {"bench", "btcvae", "codegen"} <= set(PERF_MAINS)


@pytest.mark.parametrize("command", COMMANDS, ids=_id)
def test_help_exits_0_and_names_the_command(helps, command):
    result = helps[command]
    assert result["error"] is None, result["error"]
    assert result["code"] in (0, None), (result["code"], result["output"][-2000:])
    assert result["output"].startswith(f"usage: {command} "), result["output"][:200]


@pytest.mark.parametrize(
    "command",
    COMMANDS,
    ids=_id,
)
def test_description_is_complete(helps, command):
    """The description's last sentence ends with a full stop, and the help shows it."""
    description = " ".join((helps[command]["description"] or "").split())
    assert description.endswith("."), description
    assert (
        description.split(".")[0].split()[:3]
        == helps[command]["output"].split("\n\n", 1)[1].split()[:3]
    )


@pytest.mark.parametrize("command", COMMANDS, ids=_id)
def test_every_option_has_help(helps, command):
    assert helps[command]["undocumented"] == [], helps[command]["undocumented"]


# ---- without the demo extra (issue 31, item 7) ----------------------------------------------

WITHOUT_DEMO_EXTRA = r"""
import runpy, sys, warnings

warnings.simplefilter("ignore")  # torch warns that it runs without numpy
for name in ("numpy", "matplotlib", "tqdm"):
    sys.modules[name] = None  # as after a bare `pip install .`: an import raises
kind, *args = sys.argv[1:]
if kind == "module":  # what `python -m args[0] args[1:]` does
    sys.argv = args
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)
else:  # a library import: the package itself imports, its demo names the extra
    import betavae_triton.demo
    try:
        from betavae_triton.demo import run
    except ModuleNotFoundError as error:
        print(error.name)
        print(error)
"""
INSTALL_DEMO = 'pip install "betavae-triton[demo]" (or pip install ".[demo]" from a checkout)'


def _without_demo_extra(*args: str) -> subprocess.CompletedProcess:
    # (triton's interpreter, which the tests switch on, imports numpy itself)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_DEMO_EXTRA, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "command", ["python -m betavae_triton.demo", "python -m betavae_triton.demo.study"], ids=_id
)
@pytest.mark.parametrize("args", [["--help"], []], ids=["help", "run"])
def test_without_the_demo_extra_the_commands_exit_naming_it(command, args):
    """After ``pip install .`` alone (no numpy, matplotlib, tqdm) the demo's commands died
    with a raw ``ModuleNotFoundError: numpy``: they now exit with status 1 and one line
    that names the missing module and the extra to install, no traceback."""
    done = _without_demo_extra("module", command.removeprefix("python -m "), *args)
    assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip() == (
        f"error: {command} needs numpy, which the demo extra installs: {INSTALL_DEMO}"
    )


def test_without_the_demo_extra_importing_the_demo_names_it():
    """``import betavae_triton.demo`` needs no extra; ``DemoConfig`` and ``run`` raise a
    ``ModuleNotFoundError`` that names the missing module and the extra."""
    done = _without_demo_extra("import")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "numpy",
        f"betavae_triton.demo.run needs numpy, which the demo extra installs: {INSTALL_DEMO}",
    ]


def test_the_demo_extras_are_the_demo_extra_of_pyproject():
    from betavae_triton.demo._extras import DEMO_EXTRAS, INSTALL_HINT

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["optional-dependencies"]["demo"]) == sorted(DEMO_EXTRAS)
    assert INSTALL_HINT == INSTALL_DEMO and f'"{project["name"]}[demo]"' in INSTALL_HINT


# ---- perf from another folder (issue 31, item 7) ---------------------------------------------


def test_perf_scripts_run_from_any_folder_and_default_to_the_repositorys_perf_out(tmp_path):
    """``python -m perf.…`` needs the repository's root folder (the README says so); the
    scripts run as paths from any other folder, and their ``--out`` defaults to the
    repository's ``perf/out/``, never to a ``perf/out`` of the current folder."""
    code = r"""
import contextlib, io, runpy, sys

for path in sys.argv[1:]:  # each as `python path --help` would run it, from here
    module = runpy.run_path(path, run_name="perf_script")
    shown = io.StringIO()
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(shown):
        module["main"](["--help"])
    print(shown.getvalue().startswith("usage: "), module["DEFAULT_OUT"])
"""
    scripts = [str(ROOT / "perf" / f"{name}.py") for name in PERF_MAINS]
    done = subprocess.run(
        [sys.executable, "-c", code, *scripts],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [f"True {ROOT / 'perf' / 'out'}"] * len(PERF_MAINS)
    assert list(tmp_path.iterdir()) == []
