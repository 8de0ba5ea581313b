// CUDA kernels for the log-density cube of a diagonal-Gaussian mixture (no torch headers).
//
//   C[i,j,d]     = log N(z[i,d]; mu[j,d], exp(logvar[j,d]))
//   log_qz[i]    = logsumexp_j( logw[i,j] + sum_d C[i,j,d] )      (joint)
//   log_qzd[i,d] = logsumexp_j( logw[i,j] + C[i,j,d] )             (per-dimension marginals)
//
// Same contract as the CPU kernels (csrc/cpu/mixture_logdensity.h): z is (M, D) queries, mu/logvar
// are (K, D) components, log_weights is an (M, K) natural-log matrix or nullptr for the structured
// weights (log_self if j == i, log_next if j == (i + 1) mod M, log_other otherwise; self wins).
// All pointers are device memory, row-major and contiguous. The cube is never stored: besides the
// outputs, the kernels use a workspace of O((M + K) * D) bytes that the caller allocates (see
// *_workspace_bytes) and may reuse once the stream has passed the launch.
//
// Supported: float and double, 1 <= D <= kMaxDim (D == 0, M == 0 and K == 0 are handled too).
// Results are deterministic: no atomics; on one device, equal inputs give bitwise equal outputs
// (the launch plan depends on the device's multiprocessor count, so two devices may differ in the
// last bits).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tcestim {
namespace cuda {

// Largest D the kernels accept (a thread owns 4 dimensions, a block at most 512 threads).
constexpr int64_t kMaxDim = 2048;

template <typename T>
struct ForwardArgs {
  const T* z;            // (M, D)
  const T* mu;           // (K, D)
  const T* logvar;       // (K, D)
  const T* log_weights;  // (M, K) natural-log weights, or nullptr for the structured weights
  int64_t M, K, D;
  double log_self, log_next, log_other;  // structured weights (natural log), unused if dense
  T* log_qz;        // (M,)   output
  T* log_qzd;       // (M, D) output
  void* workspace;  // forward_workspace_bytes(args) bytes of device memory, 256-byte aligned
  int num_sms;      // multiprocessor count of the device: sizes the grid (and the split of work)
};

template <typename T>
struct BackwardArgs {
  const T* grad_qz;      // (M,)
  const T* grad_qzd;     // (M, D)
  const T* z;            // (M, D)
  const T* mu;           // (K, D)
  const T* logvar;       // (K, D)
  const T* log_weights;  // (M, K) or nullptr (structured)
  const T* log_qz;       // (M,)   saved forward output
  const T* log_qzd;      // (M, D) saved forward output
  int64_t M, K, D;
  double log_self, log_next, log_other;
  T* grad_z;       // (M, D) output
  T* grad_mu;      // (K, D) output
  T* grad_logvar;  // (K, D) output
  T* grad_logw;    // (M, K) output for dense weights (else ignored, may be nullptr)
  void* workspace;  // backward_workspace_bytes(args) bytes of device memory, 256-byte aligned
  int num_sms;
};

// Bytes of workspace the launch needs (depends on M, K, D, num_sms and the dtype only).
template <typename T>
size_t forward_workspace_bytes(const ForwardArgs<T>& args);
template <typename T>
size_t backward_workspace_bytes(const BackwardArgs<T>& args);

// Enqueue the kernels on `stream`. Returns cudaErrorInvalidValue for D > kMaxDim or negative
// sizes, otherwise the result of cudaGetLastError() after the launches.
template <typename T>
cudaError_t launch_forward(const ForwardArgs<T>& args, cudaStream_t stream);
template <typename T>
cudaError_t launch_backward(const BackwardArgs<T>& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace tcestim
