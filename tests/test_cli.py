"""``--help`` of every command-line entry point (issue 24, item 2): the demo, every ``perf``
module with a ``main``, ``tests/fuzz.py`` and ``tests/mutants.py``.

Each must exit 0 (``perf.btcvae --help`` once crashed on a ``%`` in a help string), name
its command in the usage line (``perf.codegen`` printed ``usage: codegen.py``), give a
description whose last sentence is complete (``tests/mutants.py``'s stopped
mid-sentence), and a help string for every option. One subprocess runs them all, each as
``python -m …`` or ``python path`` would (``runpy``, ``sys.argv`` set), recording the
parser whose help it prints.
"""

from __future__ import annotations

import json
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
