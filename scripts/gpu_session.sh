#!/usr/bin/env bash
# A GPU session in two stages that ends within SESSION_S = 360 s of command time, so that a fix and
# a second run fit in one 15-minute lease. From the repository root, with the device tool:
#     run(command="bash scripts/gpu_session.sh", timeout_s=420)
#
# Stage 1 (STAGE1_S = 180 s): the extension builds for sm_90 in the background (MAX_JOBS=16) while
#   nvcc builds the torch-free driver (scripts/cuda_emulation/driver.cpp with csrc/cuda/*.cu: the
#   emulation's checks against the float64 reference, on the GPU), which then runs in full and, at
#   small sizes, under compute-sanitizer memcheck, racecheck and synccheck; then the CUDA cases of
#   tests/test_ops.py and tests/test_exact.py (-k cuda).
# Stage 2 (the rest, less SUMMARY_S): benchmarks/run_gpu.py, every row into $OUT as it is measured.
# Every step runs under `timeout` for what is left of its stage, and is skipped when less than its
# minimum is left, so no stage outlasts its budget; a failing step stops only the steps that need
# its output (test_cuda and the benchmark need the extension; the driver runs need the driver).
# The end prints a one-screen summary. Exit status 1 if a step failed or timed out.
#
# $OUT gets 8 files (the device tool returns at most 8): session.log (everything printed),
# build.log (extension and driver builds), ptxas.log (registers/spills per kernel, sm_90),
# checks.log (driver and sanitizers), test_cuda.log, bench.jsonl and bench.md (benchmark rows;
# bench.md becomes benchmarks/results/gpu-<device>-<date>.md), summary.txt.
#
# Rehearsal without a GPU (tests/test_gpu_session.py): TCESTIM_GPU_REHEARSAL=1 replaces each GPU
# step by a stand-in that prints what the real step's summary reads, and runs the benchmark with
# --rehearsal on the CPU. TCESTIM_REHEARSAL_FAIL=step,... makes stand-ins fail,
# TCESTIM_REHEARSAL_SLOW=step:seconds,... makes them sleep, TCESTIM_REHEARSAL_FAIL_ROWS=... makes
# benchmark rows raise (benchmarks/run_gpu.py); TCESTIM_REHEARSAL_REAL=driver_build runs the real
# nvcc build of the driver (no GPU needed); TCESTIM_SESSION_S and TCESTIM_STAGE1_S set the
# budgets. Steps: build driver_build driver memcheck racecheck synccheck test_cuda bench.
set -u
cd "$(dirname "$0")/.."
export ROOT=$PWD
export OUT=${OUT:-/tmp/tcestim-gpu-session}
mkdir -p "$OUT"
export REHEARSAL=${TCESTIM_GPU_REHEARSAL:-0}
export PY=${PYTHON:-python3}
SESSION_S=${TCESTIM_SESSION_S:-360}
STAGE1_S=${TCESTIM_STAGE1_S:-180}
SUMMARY_S=10
export WORK
WORK=$(mktemp -d)
STEPS=$WORK/steps  # stage|step|status|seconds|detail, one line per step
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
NVCC_FLAGS="-std=c++17 -O3 --use_fast_math -gencode arch=compute_90,code=sm_90 -lineinfo -I csrc/cuda"
export NVCC_FLAGS

# --- the GPU steps and their stand-ins ----------------------------------------------------------

# standin NAME LINE...: prints the lines a real step prints; fails or sleeps when asked to.
standin() {
  local name=$1 item
  shift
  for item in ${TCESTIM_REHEARSAL_SLOW//,/ }; do
    [ "${item%%:*}" = "$name" ] && sleep "${item#*:}"
  done
  for item in ${TCESTIM_REHEARSAL_FAIL//,/ }; do
    if [ "$item" = "$name" ]; then
      echo "rehearsal: injected failure of $name"
      return 1
    fi
  done
  printf '%s\n' "$@"
}

# rehearsed NAME: true where NAME runs as a stand-in.
rehearsed() { [ "$REHEARSAL" = 1 ] && [[ ",${TCESTIM_REHEARSAL_REAL:-}," != *",$1,"* ]]; }

build_extension() {
  [ "$REHEARSAL" = 1 ] && { standin build "CUDA kernels registered: True"; return; }
  export TCESTIM_CUDA=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
  if [ -z "${CUDA_HOME:-}" ] && [ -f /usr/local/cuda/include/cuda_runtime_api.h ]; then export CUDA_HOME=/usr/local/cuda; fi
  rm -rf build/temp.* tcestim/_C*.so
  if ! "$PY" setup.py build_ext --inplace > "$WORK/setup.log" 2>&1; then
    cat "$WORK/setup.log"
    # setuptools < 77 rejects pyproject.toml's license field: build from a copy without it.
    grep -qi "license" "$WORK/setup.log" || return 1
    echo "retrying without pyproject.toml"
    local tmp
    tmp=$(mktemp -d)
    cp -r setup.py csrc tcestim "$tmp"/ && (cd "$tmp" && "$PY" setup.py build_ext --inplace) \
      && cp "$tmp"/tcestim/_C*.so tcestim/ || return 1
  else
    tail -5 "$WORK/setup.log"
  fi
  "$PY" -c "import torch, tcestim; ok = torch._C._dispatch_has_kernel_for_dispatch_key('tcestim::mixture_logdensity', 'CUDA'); print('CUDA kernels registered:', ok); assert ok"
}

build_driver() {
  rehearsed driver_build && { standin driver_build "ptxas info    : Used 105 registers" > "$OUT/ptxas.log"; return; }
  local f pids=()
  for f in forward backward; do
    nvcc $NVCC_FLAGS -Xptxas -v -c "csrc/cuda/$f.cu" -o "$WORK/$f.o" > "$WORK/ptxas_$f.log" 2>&1 &
    pids+=($!)
  done
  nvcc $NVCC_FLAGS -c scripts/cuda_emulation/driver.cpp -o "$WORK/driver.o" || return 1
  for f in "${pids[@]}"; do wait "$f" || { cat "$WORK"/ptxas_*.log; return 1; }; done
  cat "$WORK"/ptxas_*.log > "$OUT/ptxas.log"
  nvcc $NVCC_FLAGS -o "$WORK/driver" "$WORK/driver.o" "$WORK/forward.o" "$WORK/backward.o"
}

run_driver() {
  [ "$REHEARSAL" = 1 ] && { standin driver "487188 checks, 0 failures, worst finite error 0.812 of tolerance"; return; }
  "$WORK/driver"
}

sanitize() {  # tool
  [ "$REHEARSAL" = 1 ] && { standin "$1" "========= ERROR SUMMARY: 0 errors"; return; }
  local cs
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  "$cs" --tool "$1" --error-exitcode 1 --print-limit 20 "$WORK/driver" small
}

# The CUDA cases of the one op suite (the cuda backend and the cuda-only tests).
CUDA_TESTS=(tests/test_ops.py tests/test_exact.py -k cuda -rs -p no:cacheprovider)

test_cuda() {
  if [ "$REHEARSAL" = 1 ]; then
    standin test_cuda || return 1
    # The real selection, collected only (its cases skip themselves without a GPU): proves the
    # selection names existing tests (0: collected, 5: none selected).
    "$PY" -m pytest "${CUDA_TESTS[@]}" -q --collect-only > /dev/null
    local status=$?
    [ $status = 0 ] || [ $status = 5 ]
    return
  fi
  "$PY" -m pytest "${CUDA_TESTS[@]}" -v --durations=8  # -v: a kill keeps the progress
}

bench() {  # budget in seconds
  local extra=()
  [ "$REHEARSAL" = 1 ] && { standin bench || return 1; extra=(--rehearsal); }
  "$PY" benchmarks/run_gpu.py --out "$OUT" --budget-s "$1" "${extra[@]}"
}
export -f standin rehearsed build_extension build_driver run_driver sanitize test_cuda bench

# --- steps, stages, budgets ---------------------------------------------------------------------

left() { echo $((STAGE_END - $(date +%s))); }

# step NAME MIN_S LOG KEY -- command...: runs the command (a function above) in a fresh bash under
# `timeout` for the stage's remaining seconds (at most STEP_CAP where set), output appended to LOG;
# records the status, the seconds and the last line of the output matching the regex KEY.
step() {
  local name=$1 min=$2 log=$3 key=$4
  shift 5
  [ "$REHEARSAL" = 1 ] && min=1
  local l
  l=$(left)
  if [ "$l" -lt "$min" ]; then
    echo "$STAGE|$name|skipped|0|${l} s left in stage $STAGE, needs ${min} s" >> "$STEPS"
    echo "== $name: skipped (${l} s left in stage $STAGE, needs ${min} s)"
    return 0
  fi
  echo "== $name ($l s left in stage $STAGE)"
  if [ -n "${STEP_CAP:-}" ] && [ "$STEP_CAP" -lt "$l" ]; then l=$STEP_CAP; fi
  echo "== $name" >> "$log"
  local t0 rc status detail
  t0=$(date +%s)
  timeout -k 5 "$l" bash -c "$*" > "$WORK/$name.out" 2>&1
  rc=$?
  cat "$WORK/$name.out" >> "$log"
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status="FAIL($rc)" ;;
  esac
  detail=$(grep -E "$key" "$WORK/$name.out" | tail -1 | cut -c1-110)
  echo "$STAGE|$name|$status|$(( $(date +%s) - t0 ))|$detail" >> "$STEPS"
  if [ "$status" = ok ]; then tail -2 "$WORK/$name.out"; else tail -15 "$WORK/$name.out"; fi
  echo "== $name: $status"
}

# needs NAME STEP...: records NAME as skipped unless every STEP is ok.
needs() {
  local name=$1 s
  shift
  for s in "$@"; do
    if ! grep -q "^[0-9]|$s|ok|" "$STEPS" 2>/dev/null; then
      echo "$STAGE|$name|skipped|0|needs $s" >> "$STEPS"
      echo "== $name: skipped (needs $s)"
      return 1
    fi
  done
}

stage1() {
  STAGE=1
  STAGE_END=$((START + STAGE1_S))
  echo "== machine"
  if [ "$REHEARSAL" = 1 ]; then
    echo "rehearsal: no GPU; stand-ins for the GPU steps"
  else
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    nvcc --version | tail -2
  fi
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  : > "$OUT/build.log"
  step build 60 "$WORK/build_ext.log" "CUDA kernels registered" -- build_extension &
  local build_pid=$!
  step driver_build 20 "$OUT/build.log" "error" -- build_driver
  if needs driver driver_build; then
    # Capped, so that they never hold back test_cuda once the extension is built.
    STEP_CAP=60 step driver 5 "$OUT/checks.log" "checks,|FATAL" -- run_driver
    for tool in memcheck racecheck synccheck; do
      STEP_CAP=45 step "$tool" 10 "$OUT/checks.log" "ERROR SUMMARY|FATAL" -- sanitize "$tool"
    done
  fi
  wait "$build_pid"
  cat "$WORK/build_ext.log" >> "$OUT/build.log" 2>/dev/null
  if needs test_cuda build; then
    step test_cuda 30 "$OUT/test_cuda.log" "passed|failed|skipped|error" -- test_cuda
  fi
}

stage2() {
  STAGE=2
  STAGE_END=$((START + SESSION_S - SUMMARY_S))
  if needs bench build; then
    local budget=$(( $(left) - 15 ))
    [ "$budget" -lt 1 ] && budget=1
    step bench 30 "$WORK/bench.log" "rows measured" -- bench "$budget"
  fi
}

summary() {
  echo "== summary: $(( $(date +%s) - START )) s of $SESSION_S (stage 1 budget $STAGE1_S s)$([ "$REHEARSAL" = 1 ] && echo ', REHEARSAL')"
  printf '%-5s %-13s %-10s %5s  %s\n' stage step status s detail
  while IFS='|' read -r stage name status seconds detail; do
    printf '%-5s %-13s %-10s %5s  %s\n' "$stage" "$name" "$status" "$seconds" "$detail"
  done < "$STEPS"
  if [ -s "$OUT/bench.jsonl" ]; then "$PY" benchmarks/run_gpu.py --summarize "$OUT/bench.jsonl"; fi
  if grep -q "Compiling entry" "$OUT/ptxas.log" 2>/dev/null; then
    echo "registers (sm_90): | kernel | registers | spill stores / loads (bytes) | stack (bytes) |"
    "$PY" scripts/ptxas_report.py "$OUT/ptxas.log" | grep -E "forward_kernel|backward_(rows|columns)_kernel"
  fi
  echo "files: $(cd "$OUT" && ls | tr '\n' ' ')"
}

main() {
  stage1
  stage2
  summary | tee "$OUT/summary.txt"
  ! grep -qE '\|(FAIL|timeout)' "$STEPS"
}

main 2>&1 | tee "$OUT/session.log"
status=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$status"
