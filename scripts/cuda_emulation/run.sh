#!/usr/bin/env bash
# Runs the CUDA kernels (csrc/cuda/mixture_logdensity_kernels.cu) on the CPU, without a GPU:
# every block becomes std::threads with a barrier for __syncthreads, shared memory is filled with
# NaN garbage, and the build uses AddressSanitizer + UBSan (out-of-bounds, misaligned vector loads
# are checked too). It tests the kernels' logic -- indexing, tiling, shared-memory reductions,
# split launches, weights, -inf/NaN handling -- against a naive double reference; it cannot test
# what only hardware does (ex2.approx accuracy, timing, races the thread schedule never shows).
#     bash scripts/cuda_emulation/run.sh          # about 2-3 minutes on 2 cores
#     bash scripts/cuda_emulation/run.sh quick    # about 1 minute
#     TSAN=1 bash scripts/cuda_emulation/run.sh quick   # ThreadSanitizer instead (shared-memory races)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$here/convert.py" "$root/csrc/cuda/mixture_logdensity_kernels.cu" "$work/kernels_emu.cpp"
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
[ -n "${TSAN:-}" ] && sanitize="-fsanitize=thread"
g++ -std=c++20 -O1 -g $sanitize -I "$here/fake_cuda" -I "$root/csrc/cuda" -include cuda_runtime_api.h \
  -o "$work/driver" "$here/driver.cpp" "$work/kernels_emu.cpp" -lpthread
"$work/driver" "$@"
