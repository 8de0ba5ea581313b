// CUDA kernels for the log-density cube of a diagonal-Gaussian mixture (no torch headers).
// Same contract as the CPU kernels: the arguments of csrc/kernel_args.h, every pointer device
// memory. The cube is never stored: besides the outputs, the kernels use a workspace of
// O((M + K) * D) bytes that the caller allocates (see *_workspace_bytes) and may reuse once the
// stream has passed the launch.
//
// Supported: float and double, 1 <= D <= kMaxDim (D == 0, M == 0 and K == 0 are handled too).
// Results are deterministic: no atomics; on one device, equal inputs give bitwise equal outputs
// (the launch plan depends on the device's multiprocessor count, so two devices may differ in the
// last bits).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../kernel_args.h"

namespace tcestim {
namespace cuda {

using tcestim::BackwardArgs;
using tcestim::ForwardArgs;

constexpr int64_t kMaxDim = kCudaMaxDim;

// What a launch needs besides the arguments.
struct Launch {
  void* workspace;  // *_workspace_bytes(args, num_sms) bytes of device memory, 256-byte aligned
  int num_sms;      // multiprocessor count of the device: sizes the grid (and the split of work)
  cudaStream_t stream;
};

// Bytes of workspace the launch needs (depends on M, K, D, num_sms and the dtype only).
template <typename T>
size_t forward_workspace_bytes(const ForwardArgs<T>& args, int num_sms);
template <typename T>
size_t backward_workspace_bytes(const BackwardArgs<T>& args, int num_sms);

// Enqueue the kernels on launch.stream. Returns cudaErrorInvalidValue for D > kMaxDim, negative
// sizes or (backward) grad_components outside [0, K], otherwise the result of cudaGetLastError()
// after the launches.
template <typename T>
cudaError_t launch_forward(const ForwardArgs<T>& args, const Launch& launch);
template <typename T>
cudaError_t launch_backward(const BackwardArgs<T>& args, const Launch& launch);

}  // namespace cuda
}  // namespace tcestim
