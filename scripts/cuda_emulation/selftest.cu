// The emulation's own checks, each shown to fire: converted by convert.py and built against
// fake_cuda/ like the kernels (ctest cuda_emulation_selftest). Exits non-zero if a check is silent.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>

namespace {

struct alignas(32) Quad4 {
  double v[4];
};

__device__ unsigned char* smem() {
  extern __shared__ __align__(32) unsigned char tcestim_dynamic_smem[];
  return tcestim_dynamic_smem;
}

// out[0]: shared memory address mod 32; out[1]: a never-written shared double; then a 32-byte
// aligned store and load of four doubles.
__global__ void __launch_bounds__(64) probe(double* out) {
  unsigned char* s = smem();
  if (threadIdx.x == 0) {
    out[0] = double(reinterpret_cast<uintptr_t>(s) % 32);
    out[1] = reinterpret_cast<double*>(s)[1];
    *reinterpret_cast<Quad4*>(s) = Quad4{{1, 2, 3, 4}};
    out[2] = reinterpret_cast<Quad4*>(s)->v[3];
  }
}

__global__ void unbounded(double* out) {
  if (threadIdx.x == 0) out[0] = 1;
}

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  failures += !ok;
}

}  // namespace

int main() {
  double* out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&out), 4 * sizeof(double));
  double host[4];
  cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost);
  expect(std::isnan(host[3]), "cudaMalloc'd memory reads as NaN");

  probe<<<1, 64, 64, nullptr>>>(out);
  expect(cudaGetLastError() == cudaSuccess, "64 threads under a launch bound of 64 launch");
  cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost);
  expect(host[0] == 0, "dynamic shared memory is 32-byte aligned");
  expect(std::isnan(host[1]), "unwritten shared memory reads as NaN");
  expect(host[2] == 4, "a 32-byte aligned store of four doubles");

  probe<<<1, 128, 64, nullptr>>>(out);
  expect(cudaGetLastError() == cudaErrorLaunchOutOfResources, "128 threads over a launch bound of 64 are refused");
  unbounded<<<1, 512, 0, nullptr>>>(out);
  expect(cudaGetLastError() == cudaErrorLaunchOutOfResources, "512 threads of a kernel without a bound are refused");
  unbounded<<<1, 256, 0, nullptr>>>(out);
  expect(cudaGetLastError() == cudaSuccess, "256 threads of a kernel without a bound launch");

  probe<<<1, 64, 64 * 1024, nullptr>>>(out);
  expect(cudaGetLastError() == cudaErrorInvalidValue, "64 KB of shared memory without the opt-in are refused");
  cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, 50 * 1024);
  probe<<<1, 64, 64 * 1024, nullptr>>>(out);
  expect(cudaGetLastError() == cudaErrorInvalidValue, "64 KB of shared memory with a 50 KB opt-in are refused");
  cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  probe<<<1, 64, 64 * 1024, nullptr>>>(out);
  expect(cudaGetLastError() == cudaSuccess, "64 KB of shared memory after the opt-in launch");
  cudaFree(out);
  return failures != 0;
}
