#!/usr/bin/env bash
# Runs the CUDA kernels (csrc/cuda/*.cu) on the CPU, without a GPU: every block becomes std::threads
# with a barrier for __syncthreads, shared memory and device allocations are filled with NaN bytes,
# and the build uses AddressSanitizer + UBSan (out-of-bounds, misaligned vector loads are checked
# too). It tests the kernels' logic -- indexing, tiling, shared-memory reductions, split launches,
# weights, -inf/NaN handling, the 48 KB shared-memory opt-in, launch bounds -- against a naive double
# reference; it cannot test what only hardware does (ex2.approx accuracy, timing, races the thread
# schedule never shows). `make test-cpp` builds and runs the quick set through CMake (ctest).
#     bash scripts/cuda_emulation/run.sh          # the full set, a few minutes on 2 cores
#     bash scripts/cuda_emulation/run.sh quick    # the CI set
#     TSAN=1 bash scripts/cuda_emulation/run.sh quick   # ThreadSanitizer instead (shared-memory races)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sources=()
for cu in "$root"/csrc/cuda/*.cu; do
  out="$work/$(basename "$cu" .cu)_emu.cpp"
  python3 "$here/convert.py" "$cu" "$out"
  sources+=("$out")
done
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
[ -n "${TSAN:-}" ] && sanitize="-fsanitize=thread"
g++ -std=c++20 -O1 -g $sanitize -I "$here/fake_cuda" -I "$root/csrc/cuda" -include cuda_runtime_api.h \
  -o "$work/driver" "$here/driver.cpp" "${sources[@]}" -lpthread
"$work/driver" "$@"
