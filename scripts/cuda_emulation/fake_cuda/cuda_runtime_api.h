// CPU stand-in for the CUDA runtime: each block runs as std::threads with a std::barrier for
// __syncthreads and NaN-filled shared memory (dev tool of scripts/cuda_emulation, never built by CI).

#pragma once
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#include <memory>
#include <cmath>
#include <cfloat>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 2 };
typedef void* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };

namespace emu {
inline thread_local uint3 t_threadIdx, t_blockIdx;
inline thread_local dim3 t_blockDim, t_gridDim;
inline thread_local std::barrier<>* t_barrier = nullptr;
inline thread_local unsigned char* t_smem = nullptr;
inline cudaError_t last_error = cudaSuccess;
inline size_t max_smem_seen = 0;
inline long launches = 0;
inline unsigned char* smem_base() { return t_smem; }

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t, Args... args) {
  ++launches;
  if (block.x == 0 || block.x > 1024 || grid.x == 0 || grid.y == 0 || grid.y > 65535) {
    last_error = cudaErrorLaunchFailure;
    return;
  }
  if (smem > 48 * 1024 && smem > max_smem_seen) max_smem_seen = smem;
  if (smem > 227 * 1024) { last_error = cudaErrorLaunchFailure; return; }
  std::vector<unsigned char> buffer(smem + 64);
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::memset(buffer.data(), 0xFF, buffer.size());  // NaN garbage: catches uninitialised reads
      std::barrier<> bar(block.x);
      std::vector<std::thread> threads;
      threads.reserve(block.x);
      for (unsigned tx = 0; tx < block.x; ++tx) {
        threads.emplace_back([&, tx]() {
          t_threadIdx = {tx, 0, 0};
          t_blockIdx = {bx, by, 0};
          t_blockDim = block;
          t_gridDim = grid;
          t_barrier = &bar;
          t_smem = buffer.data();
          kernel(args...);
          bar.arrive_and_drop();
        });
      }
      for (auto& t : threads) t.join();
    }
  }
}
}  // namespace emu

#define threadIdx (emu::t_threadIdx)
#define blockIdx (emu::t_blockIdx)
#define blockDim (emu::t_blockDim)
#define gridDim (emu::t_gridDim)
inline void __syncthreads() { emu::t_barrier->arrive_and_wait(); }

inline cudaError_t cudaGetLastError() { cudaError_t e = emu::last_error; emu::last_error = cudaSuccess; return e; }
template <typename F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
