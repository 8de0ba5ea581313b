#!/usr/bin/env bash
# One command for a GPU session: build tcestim with its CUDA kernels from source, run the CUDA
# tests and the rest of the suite, then the GPU benchmark; everything is logged into "$OUT".
#
# With the device tool (from the repository root; ~9 minutes, it stops itself before 10):
#     run(command="bash scripts/gpu_session.sh", timeout_s=600)              # no KeOps column
#     run(command="bash scripts/gpu_session.sh", timeout_s=600, carry=[".whl"])  # with KeOps
# Files that come back (7, under the tool's limit of 8): session.log (all output), build.log,
# ptxas.log (registers/spills of every kernel for sm_90), test_cuda.log, test_all.log,
# gpu-<device>-<date>.md and .json (copy those two into benchmarks/results/).
#
# KeOps is not installed on the GPU image and cannot be fetched there. Before the session, on the
# CPU machine, `bash scripts/gpu_session.sh prepare` builds pure-Python wheels of pykeops and
# keopscore 2.3 into .whl/ (ignored through .git/info/exclude); carry ".whl" and the session
# installs them into /tmp/site. KeOps compiles its formulas with nvrtc at first use (in the
# benchmark's first call, reported apart), and it runs last, within the benchmark's time budget.
set -u

if [ "${1:-}" = "prepare" ]; then
  set -e
  cd "$(dirname "$0")/.."
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  mkdir -p .whl
  tmp=$(mktemp -d)
  python3 -m pip download --no-deps --no-binary=:all: -d "$tmp" pykeops==2.3 keopscore==2.3
  python3 -m pip wheel --no-deps -w .whl "$tmp"/*.tar.gz
  rm -rf "$tmp"
  ls -la .whl
  exit 0
fi

cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tcestim-gpu-session}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
START=$(date +%s)
DEADLINE=$((START + ${SESSION_SECONDS:-540}))  # the device tool kills a command at 600 s
left() { echo $((DEADLINE - $(date +%s))); }
export PYTHONUNBUFFERED=1
# An in-place build is not installed: subprocesses (torchrun tests, the benchmark) import from here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

build() {
  # setup.py reads pyproject.toml, whose PEP 639 license field needs setuptools >= 77; with an
  # older setuptools the same build runs from a copy without pyproject.toml.
  if timeout 240 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then return 0; fi
  echo "build in place failed (tail of build.log below); retrying without pyproject.toml"
  tail -15 "$OUT/build.log"
  local tmp
  tmp=$(mktemp -d)
  cp -r setup.py csrc tcestim "$tmp"/
  (cd "$tmp" && timeout 240 "$PY" setup.py build_ext --inplace) >> "$OUT/build.log" 2>&1 \
    && cp "$tmp"/tcestim/_C*.so tcestim/
}

main() {
  echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import sys, torch, setuptools; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'setuptools', setuptools.__version__, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  which nvcc && nvcc --version | tail -2

  if ls .whl/*.whl > /dev/null 2>&1; then
    echo "== carried wheels"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi

  echo "== build ($(left) s left)"
  rm -rf build/temp.* tcestim/_C*.so
  export TCESTIM_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  if [ -z "${CUDA_HOME:-}" ] && [ -f /usr/local/cuda/include/cuda_runtime_api.h ]; then export CUDA_HOME=/usr/local/cuda; fi
  local t0
  t0=$(date +%s)
  if ! build; then
    tail -40 "$OUT/build.log"
    echo "BUILD FAILED after $(( $(date +%s) - t0 )) s"
    return 1
  fi
  echo "built in $(( $(date +%s) - t0 )) s"
  "$PY" -c "import torch, tcestim; print('CUDA kernels registered:', torch._C._dispatch_has_kernel_for_dispatch_key('tcestim::mixture_logdensity', 'CUDA'))"

  # Register and spill report of every kernel, on the CPU while the GPU runs the tests.
  ( nvcc -std=c++17 -O3 --use_fast_math -gencode arch=compute_90,code=sm_90 -Xptxas -v \
      -c csrc/cuda/mixture_logdensity_kernels.cu -o /tmp/tcestim_kernels_sm90.o > "$OUT/ptxas.log" 2>&1 ) &

  echo "== the cuda backend of the op suite ($(left) s left)"
  timeout 240 "$PY" -m pytest tests/test_ops.py tests/test_exact.py -k cuda -q -rs --durations=12 -p no:cacheprovider 2>&1 | tee "$OUT/test_cuda.log"

  echo "== the other tests ($(left) s left)"
  local other=$(( $(left) - 300 ))
  if [ "$other" -gt 30 ]; then
    timeout "$other" "$PY" -m pytest -q -p no:cacheprovider -k "not cuda" 2>&1 | tee "$OUT/test_all.log"
  else
    echo "skipped: too little time left" | tee "$OUT/test_all.log"
  fi

  echo "== benchmarks/run_gpu.py ($(left) s left)"
  local budget=$(( $(left) - 75 )) limit=$(( $(left) - 5 ))
  [ "$budget" -lt 30 ] && budget=30
  [ "$limit" -lt 60 ] && limit=60
  timeout "$limit" "$PY" benchmarks/run_gpu.py --out "$OUT" --budget-s "$budget"
  wait
  echo "== done in $(( $(date +%s) - START )) s"
  ls -la "$OUT"
}

main 2>&1 | tee "$OUT/session.log"
exit "${PIPESTATUS[0]}"
