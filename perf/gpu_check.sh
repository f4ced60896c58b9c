#!/usr/bin/env bash
# One prepared check for a lent GPU machine (torch, triton, pytest and hypothesis already
# installed; no pip, no network, no ruff). From the repository root:
#
#     bash perf/gpu_check.sh
#
# 1. Preflight: date, nvidia-smi, Python/torch/triton versions, torch.cuda.is_available(),
#    then one tiny Triton kernel compiled and run on the GPU and its result checked. Without
#    a CUDA device (or if that kernel fails) it stops at once, with a non-zero exit.
# 2. The test suite on the GPU, compiled kernels (TRITON_INTERPRET unset), file by file,
#    the quickest to fail first and the slow files last, `-x` per file, each under its own
#    timeout; the `gpu`-marked tests run (conftest selects them where CUDA is present).
# 3. A benchmark subset: `python -m perf.bench --quick --workloads W`, one run per workload
#    so that a timeout loses one workload only; the pseudo-workload `btcvae` runs
#    `python -m perf.btcvae --quick` at B 256, 1024, 4096 and D 32, 128 (β-TCVAE's kernels,
#    the split grid that fills the GPU at B = 256 included,
#    against the B×B×D formula, time and peak memory) and its bank axis (K = 0 … 65536 at
#    B = 64, D = 10); `btcvae-small` the sizes people train with, B 32, 64, 128 and D 6, 10,
#    16, ours eager and compiled against the compiled formula.
# 4. Every step's stdout+stderr, JUnit XML per test file and a summary table (status, exit
#    code, seconds, pytest counts per step) go under one folder, ${OUT:-perf/out/gpu}; the
#    summary is printed at the end. Exit status: 0 when every step that ran passed, 1 when
#    a step failed or timed out, 2 when the preflight stopped the run.
#
# The whole run keeps within GPU_CHECK_BUDGET_S seconds (default 540, so that it fits one
# 10-minute device command with room to spare; 690 keeps it under 12 minutes): each test
# file's timeout is cut to what is left minus GPU_CHECK_BENCH_RESERVE_S (default 200) for
# the benchmark, and a step with too little time left is recorded as SKIP (budget).
#
# Other settings: PYTHON (default: python3 if it imports torch, else .venv/bin/python);
# GPU_CHECK_FILES ("file.py:timeout_s ...", in order; default: all of tests/, see below);
# GPU_CHECK_BENCH_WORKLOADS (default "sprites mri sweep-2^28 btcvae btcvae-small"; empty: no
# benchmark, no reserve); GPU_CHECK_BENCH_ARGS (extra bench options, e.g. "--nidl PATH");
# GPU_CHECK_ALLOW_CPU=1 goes on without CUDA (only to try this script out on a CPU machine,
# where conftest then runs the kernels under the interpreter).
#
# Optional modules the machine may lack: without tqdm a minimal stand-in is put on
# PYTHONPATH (progress bars only); without numpy or matplotlib the test files that need
# them are recorded as SKIP (missing module), and a sweep benchmark keeps its JSON and
# table (no PNG).

set -u
set -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

OUT_DIR="${OUT:-perf/out/gpu}"
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
# This script's own files from an earlier run (nothing else in the folder is touched).
rm -rf "$OUT_DIR"/[0-9][0-9]-*.log "$OUT_DIR"/preflight.log "$OUT_DIR"/summary.txt \
    "$OUT_DIR"/summary-full.txt "$OUT_DIR/junit" "$OUT_DIR/bench"
SUMMARY="$OUT_DIR/summary.txt"
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"
BENCH_WORKLOADS="${GPU_CHECK_BENCH_WORKLOADS-sprites mri sweep-2^28 btcvae btcvae-small}"
BENCH_RESERVE_S="${GPU_CHECK_BENCH_RESERVE_S:-200}"
[ -z "${BENCH_WORKLOADS// /}" ] && BENCH_RESERVE_S=0
MIN_STEP_S=20

# Compiled kernels, the package's own backend choice, a clean Python path.
unset TRITON_INTERPRET BETAVAE_TRITON_BACKEND
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1

if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif python3 -c "import torch" >/dev/null 2>&1; then
    PY=python3
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY=python3
fi

TMP_DIR="$(mktemp -d)"
trap 'rm -rf "$TMP_DIR"' EXIT

now() { date '+%Y-%m-%d %H:%M:%S %Z'; }

# ---- 1. preflight ---------------------------------------------------------------------

cat >"$TMP_DIR/preflight.py" <<'PYEOF'
"""Versions, the CUDA device, and one tiny Triton kernel checked on it."""
import importlib.util
import os
import platform
import shutil
import sys

print(f"python   {sys.version.split()[0]} ({sys.executable})")
try:
    import torch
except Exception as err:  # noqa: BLE001
    print(f"GPU CHECK STOPPED: torch does not import: {err!r}")
    sys.exit(5)
print(f"torch    {torch.__version__} (CUDA build {torch.version.cuda})")
try:
    import triton
    import triton.language as tl
except Exception as err:  # noqa: BLE001
    print(f"GPU CHECK STOPPED: triton does not import: {err!r}")
    sys.exit(5)
print(f"triton   {triton.__version__}")
print(f"platform {platform.platform()}")
print(f"C compiler for Triton's launcher: {shutil.which('cc') or shutil.which('gcc') or 'NONE'}")
extra = {m: importlib.util.find_spec(m) is not None for m in ("numpy", "tqdm", "matplotlib", "nidl")}
print("optional modules: " + ", ".join(f"{m}={'yes' if ok else 'MISSING'}" for m, ok in extra.items()))
available = torch.cuda.is_available()
print(f"torch.cuda.is_available() = {available}")
if not available and os.environ.get("GPU_CHECK_ALLOW_CPU") == "1":
    print("GPU_CHECK_ALLOW_CPU=1: no CUDA device, going on to test this script on the CPU")
    sys.exit(0)
if not available:
    print(
        "GPU CHECK STOPPED: no CUDA device (torch.cuda.is_available() is False). This script "
        "runs the tests on a GPU with compiled Triton kernels; on a CPU-only machine run "
        "`make test` instead (the kernels under TRITON_INTERPRET=1). Nothing else was run."
    )
    sys.exit(3)
props = torch.cuda.get_device_properties(0)
print(
    f"device   {torch.cuda.get_device_name(0)}, sm_{props.major}{props.minor}, "
    f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
    f"{torch.cuda.device_count()} device(s)"
)


@triton.jit
def _axpy(x_ptr, y_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, alpha * x + y, mask=mask)


try:
    n = 10_000
    x = torch.arange(n, device="cuda", dtype=torch.float32)
    y = torch.full((n,), 0.5, device="cuda")
    out = torch.empty_like(x)
    _axpy[(triton.cdiv(n, 1024),)](x, y, out, n, 2.0, BLOCK=1024)
    torch.cuda.synchronize()
    expected = 2.0 * x + y
    if not torch.equal(out, expected):
        bad = (out != expected).nonzero()[:5].flatten().tolist()
        print(f"GPU CHECK STOPPED: the tiny Triton kernel gave wrong values at {bad}")
        sys.exit(4)
except Exception as err:  # noqa: BLE001
    print(f"GPU CHECK STOPPED: the tiny Triton kernel failed to compile or run: {err!r}")
    sys.exit(4)
print(f"tiny Triton kernel: compiled and ran on {torch.cuda.get_device_name(0)}, result exact")
PYEOF

{
    echo "gpu_check: preflight at $(now) on $(uname -n)"
    echo "repository $ROOT, output $OUT_DIR"
    echo "git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "($(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed paths)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi 2>&1
    else
        echo "nvidia-smi: not found"
    fi
} 2>&1 | tee "$OUT_DIR/preflight.log"
timeout --kill-after=10 180 "$PY" "$TMP_DIR/preflight.py" 2>&1 | tee -a "$OUT_DIR/preflight.log"
preflight_rc=$?
if [ "$preflight_rc" -ne 0 ]; then
    if [ "$preflight_rc" -eq 124 ] || [ "$preflight_rc" -eq 137 ]; then
        echo "GPU CHECK STOPPED: the preflight did not finish within 180 s" \
            | tee -a "$OUT_DIR/preflight.log"
    fi
    {
        printf 'step\tstatus\trc\tseconds\tdetail\n'
        printf 'preflight\tSTOPPED\t%s\t%s\tsee preflight.log\n' "$preflight_rc" "$SECONDS"
    } >"$SUMMARY"
    echo "gpu_check: stopped after the preflight (exit $preflight_rc); nothing else ran." \
        "Log: $OUT_DIR/preflight.log"
    exit 2
fi

missing="$("$PY" -c 'import importlib.util as u
print(" ".join(m for m in ("numpy", "tqdm", "matplotlib") if u.find_spec(m) is None))')"
has_module() { case " $missing " in *" $1 "*) return 1 ;; *) return 0 ;; esac; }
if ! has_module tqdm; then
    # A stand-in with what perf/bench.py and the demo call: progress bars only.
    mkdir -p "$TMP_DIR/shim"
    cat >"$TMP_DIR/shim/tqdm.py" <<'PYEOF'
"""Stand-in for tqdm (not installed on this machine): no progress bar."""
import sys


class tqdm:  # noqa: N801
    def __init__(self, iterable=None, *args, total=None, **kwargs):
        self.iterable, self.total, self.n = iterable, total, 0

    def __iter__(self):
        for item in self.iterable:
            self.n += 1
            yield item

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *args, **kwargs):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def close(self):
        pass

    @staticmethod
    def write(s, file=None, **kwargs):
        print(s, file=file or sys.stdout)
PYEOF
    export PYTHONPATH="$PYTHONPATH:$TMP_DIR/shim"
    echo "gpu_check: tqdm is not installed: a stand-in without progress bars is on PYTHONPATH" \
        | tee -a "$OUT_DIR/preflight.log"
fi

# ---- steps ----------------------------------------------------------------------------

declare -a ROWS=()
FAILED=0
STEP_NO=0

record() {  # name status rc seconds detail
    ROWS+=("$1"$'\t'"$2"$'\t'"$3"$'\t'"$4"$'\t'"$5")
    case "$2" in FAIL* | TIMEOUT*) FAILED=1 ;; esac
    printf '[%s] %-28s %-8s rc=%-4s %5ss  %s\n' "$(date +%H:%M:%S)" "$1" "$2" "$3" "$4" "$5"
}

remaining() { echo $((BUDGET_S - SECONDS)); }

pytest_counts() {  # the last pytest summary line of a log: "3 passed, 1 failed in 2.0s"
    grep -E '^=*.*[0-9]+ (passed|failed|error|errors|skipped|deselected)' "$1" | tail -n 1 \
        | sed -E 's/^=+ //; s/ =+$//'
}

run_step() {  # name timeout_s command...
    local name="$1" limit="$2"
    shift 2
    STEP_NO=$((STEP_NO + 1))
    local log
    log="$OUT_DIR/$(printf '%02d' "$STEP_NO")-$name.log"
    local start=$SECONDS
    {
        echo "# $name: $* (timeout ${limit}s) at $(now)"
        timeout --kill-after=15 "$limit" "$@"
    } >"$log" 2>&1
    local rc=$?
    STEP_RC=$rc
    STEP_LOG="$log"
    STEP_SECONDS=$((SECONDS - start))
    echo "# exit $rc after ${STEP_SECONDS}s" >>"$log"
}

pytest_file() {  # test file, its own timeout
    local file="$1" own="$2" name
    name="$(basename "$file" .py)"
    local needs=""
    case "$name" in
        test_demo) needs="numpy matplotlib" ;;
        test_perf) needs="matplotlib" ;;
    esac
    local m
    for m in $needs; do
        if ! has_module "$m"; then
            record "$name" "SKIP" "-" 0 "missing module $m"
            return
        fi
    done
    local left=$(($(remaining) - BENCH_RESERVE_S))
    if [ "$left" -lt "$MIN_STEP_S" ]; then
        record "$name" "SKIP" "-" 0 "budget: ${left}s left before the benchmark reserve"
        return
    fi
    local limit=$((own < left ? own : left))
    mkdir -p "$OUT_DIR/junit"
    run_step "$name" "$limit" "$PY" -m pytest "$file" -x -p no:cacheprovider -q -rfEs \
        --durations=10 --junitxml="$OUT_DIR/junit/$name.xml"
    local counts
    counts="$(pytest_counts "$STEP_LOG")"
    case "$STEP_RC" in
        0) record "$name" "PASS" 0 "$STEP_SECONDS" "$counts" ;;
        124 | 137) record "$name" "TIMEOUT" "$STEP_RC" "$STEP_SECONDS" "after ${limit}s${counts:+; $counts}" ;;
        *) record "$name" "FAIL" "$STEP_RC" "$STEP_SECONDS" "${counts:-see $(basename "$STEP_LOG")}" ;;
    esac
}

# ---- 2. the tests, quickest to fail first -----------------------------------------------

# FILE:TIMEOUT_S. Test files not named here run after the named quick ones, before the slow.
QUICK_FILES="test_api.py:120 test_triton_backend.py:180 test_examples.py:120
test_cpu_operator.py:90 test_properties.py:300 test_compile.py:300 test_compiled_step.py:180
test_extensions.py:120 test_readme.py:120"
SLOW_FILES="test_demo.py:240 test_perf.py:420"
if [ -n "${GPU_CHECK_FILES:-}" ]; then
    FILES="$GPU_CHECK_FILES"
else
    OTHER_FILES=""
    for path in tests/test_*.py; do
        case " $QUICK_FILES $SLOW_FILES " in
            *[[:space:]]"$(basename "$path")":*) ;;
            *) OTHER_FILES="$OTHER_FILES $(basename "$path"):240" ;;
        esac
    done
    FILES="$QUICK_FILES $OTHER_FILES $SLOW_FILES"
fi
echo "gpu_check: test files in order: $(echo $FILES | sed 's/:[0-9]*//g')" \
    | tee -a "$OUT_DIR/preflight.log"
for entry in $FILES; do
    file="${entry%%:*}"
    own="${entry##*:}"
    [ "$own" = "$entry" ] && own=300
    pytest_file "tests/$file" "$own"
done

# ---- 3. the benchmark subset --------------------------------------------------------------

read -r -a BENCH_EXTRA <<<"${GPU_CHECK_BENCH_ARGS:-}"
read -r -a BENCH_LIST <<<"$BENCH_WORKLOADS"
bench_left=${#BENCH_LIST[@]}
for workload in $BENCH_WORKLOADS; do
    tag="${workload//^/_}"
    name="bench-$tag"
    # An equal share of what is left for each workload still to run (the last gets it all).
    left=$((($(remaining) - 5) / bench_left))
    bench_left=$((bench_left - 1))
    if [ "$left" -lt 40 ]; then
        record "$name" "SKIP" "-" 0 "budget: ${left}s for it"
        continue
    fi
    if [ "$workload" = btcvae ]; then  # β-TCVAE's terms against the B×B×D formula
        run_step "$name" "$left" "$PY" -m perf.btcvae --quick --no-progress --batch 256 1024 4096 \
            --latent 32 128 --bank 0 4096 16384 65536 --out "$OUT_DIR/bench/$tag"
    elif [ "$workload" = btcvae-small ]; then  # where most β-TCVAE training happens
        run_step "$name" "$left" "$PY" -m perf.btcvae --quick --no-progress --batch 32 64 128 \
            --latent 6 10 16 --out "$OUT_DIR/bench/$tag"
    else
        run_step "$name" "$left" "$PY" -m perf.bench --quick --no-progress \
            --workloads "$workload" --out "$OUT_DIR/bench/$tag" \
            ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"}
    fi
    json="$(ls "$OUT_DIR/bench/$tag"/b*_*.json 2>/dev/null | head -n 1)"
    if [ "$STEP_RC" -eq 0 ]; then
        record "$name" "PASS" 0 "$STEP_SECONDS" "$(basename "${json:-no json}")"
    elif [ "$STEP_RC" -eq 124 ] || [ "$STEP_RC" -eq 137 ]; then
        record "$name" "TIMEOUT" "$STEP_RC" "$STEP_SECONDS" "after ${left}s"
    elif [ -n "$json" ] && ! has_module matplotlib \
        && grep -q "No module named 'matplotlib'" "$STEP_LOG"; then
        record "$name" "PASS" "$STEP_RC" "$STEP_SECONDS" "json and table written; no png (matplotlib missing)"
    else
        record "$name" "FAIL" "$STEP_RC" "$STEP_SECONDS" "see $(basename "$STEP_LOG")"
    fi
done

# ---- 4. summary -------------------------------------------------------------------------------

{
    printf 'step\tstatus\trc\tseconds\tdetail\n'
    printf 'preflight\tPASS\t0\t-\tsee preflight.log\n'
    [ "${#ROWS[@]}" -gt 0 ] && printf '%s\n' "${ROWS[@]}"
} >"$SUMMARY"
{
    echo
    echo "gpu_check summary ($(now), ${SECONDS}s in all, budget ${BUDGET_S}s); files in $OUT_DIR"
    column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
    for f in "$OUT_DIR"/bench/*/b*_*.txt; do
        [ -f "$f" ] && { echo; echo "== $(basename "$(dirname "$f")"): $f"; cat "$f"; }
    done
} | tee "$OUT_DIR/summary-full.txt"
if [ "$FAILED" -ne 0 ]; then
    echo "gpu_check: FAILED (see the logs above)"
    exit 1
fi
echo "gpu_check: every step that ran passed"
exit 0
