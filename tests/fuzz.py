"""Fuzz the property tests for a time budget: ``make fuzz MINUTES=30``.

Runs every Hypothesis property test under the ``fuzz`` profile (fresh random examples,
``FUZZ_EXAMPLES`` per property and round; see ``conftest.py``) round after round until the
budget is spent, and prints one line per round and a summary: rounds, minutes, examples,
failures. A failing example is printed with its reproduction blob and kept in
``.hypothesis/`` (the example database), so the next round replays it first; turn it into
an ``@example`` or a plain test once fixed. Not part of CI, which runs the fast,
derandomised ``ci`` profile.

Usage: ``python tests/fuzz.py --minutes 30 [-- extra pytest arguments]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = re.compile(r"hypothesis: profile=fuzz examples=(\d+)")
OUTCOME = re.compile(r"(\d+) (passed|failed|error)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/fuzz.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="time budget (default 30)")
    parser.add_argument("--examples", type=int, default=300, help="examples per property/round")
    parser.add_argument(
        "--log",
        type=Path,
        default=ROOT / "perf" / "out" / "fuzz.log",
        help="file for every round's pytest output (default: perf/out/fuzz.log)",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    env = dict(os.environ, HYPOTHESIS_PROFILE="fuzz", FUZZ_EXAMPLES=str(args.examples))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests",
        *args.pytest_args,
    ]
    args.log.parent.mkdir(parents=True, exist_ok=True)
    start, deadline = time.monotonic(), time.monotonic() + 60 * args.minutes
    rounds = examples = failures = 0
    with args.log.open("w") as log:
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            try:
                run = subprocess.run(
                    cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left + 5
                )
            except subprocess.TimeoutExpired:
                print(f"round {rounds + 1}: budget spent mid-round (not counted)")
                break
            rounds += 1
            out = run.stdout + run.stderr
            log.write(f"==== round {rounds}\n{out}\n")
            log.flush()
            found = EXAMPLES.search(out)
            examples += int(found.group(1)) if found else 0
            counts = {kind: int(n) for n, kind in OUTCOME.findall(out.splitlines()[-1])}
            failed = counts.get("failed", 0) + counts.get("error", 0)
            failures += failed
            elapsed = (time.monotonic() - start) / 60
            print(
                f"round {rounds}: {counts.get('passed', 0)} passed, {failed} failed, "
                f"{int(found.group(1)) if found else 0} examples ({elapsed:.1f} min)",
                flush=True,
            )
            if run.returncode not in (0, 1):
                print(out[-3000:])
                return run.returncode
            if failed:
                print(out[-6000:])
    minutes = (time.monotonic() - start) / 60
    print(
        f"fuzz: {rounds} rounds, {minutes:.1f} min, {examples} examples, "
        f"{failures} failures (log: {args.log})"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
