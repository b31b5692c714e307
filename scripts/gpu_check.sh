#!/usr/bin/env bash
# gpu_check.sh OUTDIR: the one-call check of tfm-kernels on a bare CUDA machine.
#
# Uses the machine's python3 with its preinstalled numpy, cupy, torch, pybind11, pytest (no venv, no
# network, no build isolation). Steps, each capped with `timeout` and recorded, never stopping the run:
#   1. build    TFM_CUDA_ARCHS=90 python3 setup.py build_ext --inplace (nvcc; ptxas -v reports kept)
#   2. then, side by side (16 cores; separate processes, separate CUDA contexts):
#      tests     every GPU test file in its own pytest process (GPU tests run on both backends),
#                one log, junit XML and progress file per file and pass: after a kernel fault
#                loses the CUDA context, conftest.py skips the rest of the file and lists it; after
#                a pass is killed by its cap, the progress file says what never started; either
#                way that gets a fresh process (up to 4 passes). Merged into OUTDIR/junit.xml,
#                each test once.
#      memcheck  compute-sanitizer --tool memcheck  on scripts/sanitize_cases.py (every variant once,
#      racecheck compute-sanitizer --tool racecheck  small awkward shapes, both backends; the cases
#      synccheck compute-sanitizer --tool synccheck  run in child processes, the same way). synccheck:
#                a __syncthreads or named barrier that only part of a block reaches
#      check     tfm-kernels check --quick --isolate (every variant, both backends, against
#                numpy_ref; never-run variants last; a lost context's leftovers in a fresh process)
#   3. bench    tfm-kernels bench --quick --isolate, alone on the GPU so the timings are clean,
#               without the variants that failed above (scripts/gpu_verdicts.py --failed: a fault
#               would lose the context and every figure after it); a fault there anyway costs only
#               its variant (the rest is measured in a fresh process from the case it happened in)
#      profile_matmul, profile_attention  Nsight Compute (ncu), one launch each
#               (scripts/profile_cases.py): matmul 8 and 14 (fp32), 11 and 13 (fp16) at 4096^3;
#               fp16 attention forward 13 beside SDPA's flash kernel; the wgmma attention forward 14
#               and backward 13 (profile_hopper). Each starts only if the check can still end by
#               470 s. Issue slots, pipes, L2 and
#               shared-memory throughput, stall reasons: what the docs' open questions rest on
#   4. summary  scripts/gpu_summary.py: OUTDIR/summary.md + summary.json (GPU, driver, CUDA, commit, date, pass/fail per op and
#               backend, sanitizer verdicts, bench table, profile; then scripts/gpu_verdicts.py's
#               table: each variant passed / FAILED / not run, and the unverified marks to clear),
#               printed last.
# Budget: under 8 minutes on an H200 (caps: build 130 s, parallel phase 200 s, bench 75 s, profiles
# 3 x 40 s, each started only while the check can still end by 470 s). Run 1 took
# 183 s (tests 100 s, the slowest file test_matmul_tc 85 s); since then the tensor-core test files also
# disassemble the extension (cuobjdump, ~20 s each) and more variants run, hence the wider caps.
# OUTDIR gets at most 8 files: summary.md, summary.json, junit.xml, bench.md, bench.json, logs.tar.gz
# (every log, the ptxas reports, check.json, all plots) and up to two plots. Without a GPU it still
# builds, runs the build tests, and writes a summary that says plainly that no GPU was usable.
set -u
OUT="${1:?usage: scripts/gpu_check.sh OUTDIR}"
cd "$(dirname "$0")/.."
ROOT="$PWD"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
W="$(mktemp -d /tmp/tfm_gpu_check.XXXXXX)"
LOGS="$W/logs"
mkdir -p "$LOGS" "$W/junit" "$W/bench"
PY="${PYTHON:-python3}"
export TFM_CUDA_ARCHS="${TFM_CUDA_ARCHS:-90}"
export TFM_BUILD_KEEP_GOING=1  # a source nvcc rejects is reported; the other kernels still get built
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
STEPS="$W/steps.tsv"   # name <tab> exit code <tab> seconds <tab> log
: > "$STEPS"

step() {  # step NAME CAP_SECONDS LOG cmd...: run with a cap, record the exit code, never fail the script
    local name="$1" cap="$2" log="$3"; shift 3
    local t=$(date +%s)
    echo "== $name (cap ${cap}s): $*" | tee -a "$LOGS/gpu_check.txt"
    timeout --kill-after=10 "$cap" "$@" > "$log" 2>&1
    local rc=$?
    local dt=$(( $(date +%s) - t ))
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$(basename "$log")" >> "$STEPS"
    echo "   $name: exit $rc after ${dt}s" | tee -a "$LOGS/gpu_check.txt"
    return 0
}

# --- 0. environment -----------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(hostname)"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    command -v nvcc && nvcc --version
    command -v compute-sanitizer && compute-sanitizer --version | head -3
    "$PY" -c "import sys, numpy; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"
    "$PY" -c "import cupy; print('cupy', cupy.__version__)" 2>&1
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" 2>&1
    "$PY" -c "import pybind11, setuptools; print('pybind11', pybind11.__version__, 'setuptools', setuptools.__version__)" 2>&1
} > "$LOGS/env.txt" 2>&1

# --- 1. build -----------------------------------------------------------------------------------
step build 130 "$LOGS/build.txt" "$PY" setup.py build_ext --inplace
"$PY" -m tfm_kernels info --json > "$W/info.json" 2> "$LOGS/info.txt"
GPU_OK=$("$PY" -c "import json,sys; print(int(json.load(open(sys.argv[1]))['device']['ok']))" "$W/info.json" 2>/dev/null || echo 0)
# TFM_PRETEND_GPU=1: take every GPU branch anyway (sanitizers, bench, profiles), to test this script's
# own plumbing on a machine without one, with stand-in compute-sanitizer and ncu on PATH; every GPU
# step then fails fast with "no usable CUDA device", and the summary must still say so plainly.
[ "${TFM_PRETEND_GPU:-0}" = 1 ] && GPU_OK=1

# --- 2. tests, sanitizers, check: side by side ----------------------------------------------------
# The GPU test files (those with a test taking the `backend` fixture) and test_build.py (NVRTC with
# this machine's NVRTC and CuPy's real options); the CPU-only tests (the reference, the SASS reads,
# the host emulation) are CI's job and would only compete. GPU_TESTS is the one rule; the summary
# below reads it too.
export GPU_TESTS='def test_\w*\([^)]*\bbackend\b'
# A kernel fault loses the process's CUDA context; conftest.py then skips the rest of the file as
# "CUDA context lost" (first-run variants' tests come last) and lists them in a lost file; they get
# a fresh process, up to 4 passes per file, each pass with its own log and junit XML (FILE.PASS).
run_file() {  # run_file tests/test_x.py: the passes of one file, all ending by $TESTS_END
    local b pass=1 left cap rc
    b=$(basename "$1" .py)
    local args=("$1")
    while :; do
        left=$(( TESTS_END - $(date +%s) ))
        [ "$left" -lt 15 ] && { echo "$b: no time left for pass $pass"; break; }
        cap=$(( left < 180 ? left : 180 ))
        timeout --kill-after=5 "$cap" "$PY" -m pytest -q -rs -p no:cacheprovider "${args[@]}" \
            --junitxml="$W/junit/$b.$pass.xml" --tfm-lost-file="$W/lost/$b.$pass" \
            --tfm-progress-file="$W/progress/$b.$pass.jsonl" > "$LOGS/pytest_$b.$pass.txt" 2>&1
        rc=$?
        echo "$b pass $pass: exit $rc"
        [ "$pass" -lt 4 ] || break
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            # killed by its cap: no junit; the progress file says what ran and what was running
            # (reported as failed); the tests it never started get the next pass
            "$PY" scripts/gpu_summary.py --remaining "$W/progress/$b.$pass.jsonl" | grep -v '^$' > "$W/lost/$b.$pass"
            echo "$b: pass $pass was killed after ${cap}s; $(wc -l < "$W/lost/$b.$pass") tests never started"
        fi
        [ -s "$W/lost/$b.$pass" ] || break
        mapfile -t args < "$W/lost/$b.$pass"
        echo "$b: ${#args[@]} tests go to pass $((pass + 1)) (a lost CUDA context or a killed pass)"
        pass=$((pass + 1))
    done
}
run_tests() {  # one file per process chain, 6 files at a time
    mkdir -p "$W/lost" "$W/progress"
    { echo tests/test_build.py; grep -l -E "$GPU_TESTS" tests/test_*.py; } | sort -u \
        | xargs -P 6 -I{} bash -c 'run_file "$1"' _ {}
}
export -f run_file run_tests
export PY W LOGS
export TESTS_END=$(( $(date +%s) + 195 ))
SAN=""
SAN_ARGS="--error-exitcode 99 --print-limit 30"
if [ "$GPU_OK" = 1 ] && command -v compute-sanitizer > /dev/null; then
    # scripts/sanitize_cases.py drives: the cases run under the sanitizer in child processes, so a
    # fault in a first-run kernel ends only its own process (the rest get a fresh one).
    SAN=1
    step memcheck 180 "$LOGS/memcheck.txt" "$PY" scripts/sanitize_cases.py --budget 170 \
        --sanitizer "compute-sanitizer --tool memcheck --leak-check no $SAN_ARGS" &
    step racecheck 180 "$LOGS/racecheck.txt" "$PY" scripts/sanitize_cases.py --budget 170 \
        --sanitizer "compute-sanitizer --tool racecheck $SAN_ARGS" &
    step synccheck 180 "$LOGS/synccheck.txt" "$PY" scripts/sanitize_cases.py --budget 170 \
        --sanitizer "compute-sanitizer --tool synccheck $SAN_ARGS" &
fi
step check 180 "$LOGS/check.txt" "$PY" -m tfm_kernels check --quick --isolate --budget 140 --json "$W/check.json" &
step tests 200 "$LOGS/tests.txt" bash -c run_tests &
wait

# --- 3. bench, alone ----------------------------------------------------------------------------
# A variant that failed its tests or check above is not timed or profiled: if it faults here, it
# loses the CUDA context and every figure after it (scripts/gpu_verdicts.py --failed).
FAILED=$("$PY" scripts/gpu_verdicts.py --failed --check "$W/check.json" --junit-dir "$W/junit" \
         2> "$LOGS/failed_before_bench.txt")
echo "$FAILED" >> "$LOGS/failed_before_bench.txt"
SKIP=()
for q in $FAILED; do SKIP+=("--skip=$q"); done
if [ "$GPU_OK" = 1 ]; then
    step bench 75 "$LOGS/bench.txt" "$PY" -m tfm_kernels bench --quick --isolate --budget 55 --out "$W/bench" \
        ${SKIP[@]+"${SKIP[@]}"}
fi
if [ "$GPU_OK" = 1 ] && command -v ncu > /dev/null; then
    # The section identifiers this ncu knows, kept for whoever has to fix a refused --section.
    { ncu --version; ncu --list-sections; } > "$LOGS/ncu_sections.txt" 2>&1
    # One ncu process per op, so a profile cut off by its cap loses only its own report. Each starts
    # only while the whole check can still end by 470 s (the 8-minute budget, less the summary).
    for op in matmul attention hopper; do
        case $op in
            matmul) kernels='matmul_(cp_async|iter|mma|wgmma)' ;;
            attention) kernels='attn_fwd_tc|flash_fwd' ;;
            hopper) kernels='attn_fwd_wgmma|attn_bwd_wgmma' ;;
        esac
        if [ $(( $(date +%s) - T0 + 40 )) -gt 470 ]; then
            printf '%s\t%s\t%s\t%s\n' "profile_$op" "skipped: time budget" 0 "-" >> "$STEPS"
            continue
        fi
        step "profile_$op" 40 "$LOGS/profile_$op.csv" ncu --kernel-name regex:"$kernels" \
            --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats \
            --section WarpStateStats --section MemoryWorkloadAnalysis_Tables --section InstructionStats \
            --csv --page details "$PY" scripts/profile_cases.py "$op" ${SKIP[@]+"${SKIP[@]}"}
    done
fi

# --- 4. summary ---------------------------------------------------------------------------------
cp -r build/ptxas "$W/ptxas" 2>/dev/null
# summary.md, summary.json, and junit.xml (every pass's junit merged: each test once, by its last
# real outcome): scripts/gpu_summary.py
"$PY" scripts/gpu_summary.py "$W" "$OUT" "$ROOT" "$T0" "${SAN:-0}" "$GPU_OK" > "$LOGS/summary_py.txt" 2>&1
# Per variant: passed / FAILED / not run, and which registry "unverified" marks this run can clear.
{ echo; "$PY" scripts/gpu_verdicts.py "$OUT/summary.json" --junit "$OUT/junit.xml"; } >> "$OUT/summary.md" \
    2>> "$LOGS/summary_py.txt" || echo "(scripts/gpu_verdicts.py failed: logs/summary_py.txt)" >> "$OUT/summary.md"
cp "$W/bench/bench.md" "$W/bench/bench.json" "$OUT/" 2>/dev/null
# two plots at the top (softmax's when there are any); every plot is in logs.tar.gz
ls "$W"/bench/*.png 2>/dev/null | grep -i softmax | head -2 | xargs -r -I{} cp {} "$OUT/"
[ -z "$(ls "$OUT"/*.png 2>/dev/null)" ] && ls "$W"/bench/*.png 2>/dev/null | head -2 | xargs -r -I{} cp {} "$OUT/"
cp "$W/check.json" "$W/info.json" "$STEPS" "$LOGS/" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$W" logs ptxas bench junit $( [ -d "$W/lost" ] && echo lost progress ) 2>/dev/null
RC=0
awk -F'\t' '$2 != 0 && $2 !~ /^skipped/ { bad = 1 } END { exit bad }' "$STEPS" || RC=1
rm -rf "$W"
echo
cat "$OUT/summary.md" 2>/dev/null || { echo "summary failed; see $OUT/logs.tar.gz (logs/summary_py.txt)"; RC=1; }
exit $RC
