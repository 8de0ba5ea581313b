// CPU stand-in for the CUDA runtime (scripts/cuda_emulation, built by CMake for `make test`).
// A block runs as std::threads with a std::barrier for __syncthreads, the blocks one after another. Checks what a GPU would
// refuse or what a GPU run would hide:
//   - dynamic shared memory is 32-byte aligned (as the kernels declare it), NaN-filled per block,
//     and allocated to its exact size, so AddressSanitizer sees any read past it;
//   - "device" allocations (cudaMalloc) are NaN-filled, so a read of never-written workspace shows;
//   - a launch with more than 48 KB of dynamic shared memory fails unless cudaFuncSetAttribute
//     raised the kernel's limit that far first;
//   - a launch whose block exceeds the kernel's __launch_bounds__ fails (convert.py turns the bound
//     into a call of emu::check_launch_bounds at the top of the kernel body).
// A failed launch sets the error cudaGetLastError returns and prints why.
#pragma once
#include <atomic>
#include <barrier>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#define TCESTIM_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) alignas(n)
#define __shared__

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
typedef void* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };

namespace emu {
constexpr size_t kDefaultSmem = 48 * 1024;   // without the opt-in
constexpr size_t kMaxOptinSmem = 227 * 1024;  // sm_90
constexpr size_t kSmemAlign = 32;

inline thread_local uint3 t_threadIdx, t_blockIdx;
inline thread_local dim3 t_blockDim, t_gridDim;
inline thread_local std::barrier<>* t_barrier = nullptr;
inline thread_local unsigned char* t_smem = nullptr;
inline cudaError_t last_error = cudaSuccess;
inline size_t max_smem_seen = 0;
inline long launches = 0;
inline long refused = 0;  // launches refused by the checks above
inline std::map<const void*, size_t> smem_optin;  // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
inline std::atomic<int> bound_exceeded{0};       // the block size a kernel's launch bound refused
inline std::atomic<int> bound_limit{0};          // and that bound
inline unsigned char* smem_base() { return t_smem; }

inline void refuse(cudaError_t error, const char* why, size_t a, size_t b) {
  std::fprintf(stderr, "emulation: launch refused: %s (%zu > %zu)\n", why, a, b);
  last_error = error;
  ++refused;
}

inline void check_launch_bounds(int max_threads) {
  const int threads = int(t_blockDim.x * t_blockDim.y * t_blockDim.z);
  if (threads > max_threads) {
    bound_limit.store(max_threads);
    bound_exceeded.store(threads);
  }
}

struct FreeAligned {
  void operator()(unsigned char* p) const { std::free(p); }
};
inline std::unique_ptr<unsigned char, FreeAligned> nan_filled(size_t bytes, size_t align) {
  const size_t size = (bytes + align - 1) / align * align;
  auto* p = static_cast<unsigned char*>(std::aligned_alloc(align, size == 0 ? align : size));
  std::memset(p, 0xFF, size);  // 0xFF... is a NaN as float and as double
  return std::unique_ptr<unsigned char, FreeAligned>(p);
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t, Args... args) {
  ++launches;
  const size_t threads = size_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.y > 65535) {
    refuse(cudaErrorInvalidValue, "grid or block size", threads, 1024);
    return;
  }
  if (smem > max_smem_seen) max_smem_seen = smem;
  if (smem > kMaxOptinSmem) {
    refuse(cudaErrorInvalidValue, "dynamic shared memory over the device's maximum", smem, kMaxOptinSmem);
    return;
  }
  if (smem > kDefaultSmem) {
    const auto it = smem_optin.find(reinterpret_cast<const void*>(kernel));
    const size_t allowed = it == smem_optin.end() ? kDefaultSmem : it->second;
    if (smem > allowed) {
      refuse(cudaErrorInvalidValue, "dynamic shared memory over 48 KB without a large enough cudaFuncSetAttribute opt-in", smem, allowed);
      return;
    }
  }
  // One thread per block thread for the whole launch, walking the blocks in order. A block's
  // threads use a barrier of their own (a thread leaving the kernel drops out of it); `gate`
  // separates the blocks: the shared memory is refilled and the barrier renewed in between.
  bound_exceeded.store(0);
  auto buffer = nan_filled(smem, kSmemAlign);
  std::optional<std::barrier<>> bar;
  bar.emplace(std::ptrdiff_t(threads));
  std::barrier<> gate{std::ptrdiff_t(threads)};
  bool stop = false;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned tx = 0; tx < block.x; ++tx) {
    pool.emplace_back([&, tx]() {
      t_threadIdx = {tx, 0, 0};
      t_blockDim = block;
      t_gridDim = grid;
      t_smem = buffer.get();
      for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          t_blockIdx = {bx, by, 0};
          t_barrier = &*bar;
          kernel(args...);
          bar->arrive_and_drop();
          gate.arrive_and_wait();
          if (tx == 0) {
            stop = bound_exceeded.load() != 0;
            std::memset(buffer.get(), 0xFF, smem);
            bar.emplace(std::ptrdiff_t(threads));
          }
          gate.arrive_and_wait();
          if (stop) return;
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  if (const int n = bound_exceeded.load()) {
    refuse(cudaErrorLaunchOutOfResources, "block size over the kernel's __launch_bounds__", size_t(n), size_t(bound_limit.load()));
  }
}
}  // namespace emu

#define threadIdx (emu::t_threadIdx)
#define blockIdx (emu::t_blockIdx)
#define blockDim (emu::t_blockDim)
#define gridDim (emu::t_gridDim)
inline void __syncthreads() { emu::t_barrier->arrive_and_wait(); }

inline cudaError_t cudaGetLastError() { cudaError_t e = emu::last_error; emu::last_error = cudaSuccess; return e; }
inline cudaError_t cudaPeekAtLastError() { return emu::last_error; }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    default: return "unspecified launch failure";
  }
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F kernel, cudaFuncAttribute, int value) {
  if (value < 0 || size_t(value) > emu::kMaxOptinSmem) return cudaErrorInvalidValue;
  emu::smem_optin[reinterpret_cast<const void*>(kernel)] = size_t(value);
  return cudaSuccess;
}

// "Device" memory is host memory, NaN-filled, 256-byte aligned as cudaMalloc's.
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = emu::nan_filled(bytes, 256).release();
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = 132; return cudaSuccess; }
