// CUDA implementations of the tcestim operators: argument checks, then the kernels of
// mixture_logdensity_kernels.h on the current stream (compiled by the host compiler; the kernels
// themselves are in forward.cu and backward.cu, which include no torch headers).
//
// Only the c10/cuda headers are used (c10::cuda::getCurrentCUDAStream is what
// at::cuda::getCurrentCUDAStream names): ATen/cuda/CUDAContext.h would also pull in the cuBLAS,
// cuSPARSE and cuSOLVER headers, which a bare CUDA toolkit (nvcc + runtime) does not have.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime_api.h>

#include "binding.h"
#include "mixture_logdensity_kernels.h"

namespace tcestim {
namespace {

using at::Tensor;

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
}

void check_dimension(const char* op, int64_t D) {
  TORCH_CHECK(D <= cuda::kMaxDim, op, ": the CUDA kernels support D <= ", cuda::kMaxDim, ", got D = ", D);
}

Tensor workspace(size_t bytes, const Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

// Multiprocessors of the current device (sizes the launch grid).
int num_sms() {
  int device = 0, count = 0;
  check_launch("tcestim", cudaGetDevice(&device));
  check_launch("tcestim", cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

struct CudaBackend {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;

  static void forward(const char* op, binding::ForwardCall& c) {
    check_dimension(op, c.D);
    const c10::cuda::CUDAGuard guard(c.z.device());
    AT_DISPATCH_FLOATING_TYPES(c.z.scalar_type(), "tcestim_cuda", [&] {
      const auto args = binding::kernel_args<scalar_t>(c);
      const int sms = num_sms();
      const Tensor ws = workspace(cuda::forward_workspace_bytes(args, sms), c.z);
      const cuda::Launch launch{ws.mutable_data_ptr(), sms, c10::cuda::getCurrentCUDAStream().stream()};
      check_launch(op, cuda::launch_forward(args, launch));
    });
  }

  static void backward(const char* op, binding::BackwardCall& c) {
    check_dimension(op, c.D);
    const c10::cuda::CUDAGuard guard(c.z.device());
    AT_DISPATCH_FLOATING_TYPES(c.z.scalar_type(), "tcestim_cuda", [&] {
      const auto args = binding::kernel_args<scalar_t>(c);
      const int sms = num_sms();
      const Tensor ws = workspace(cuda::backward_workspace_bytes(args, sms), c.z);
      const cuda::Launch launch{ws.mutable_data_ptr(), sms, c10::cuda::getCurrentCUDAStream().stream()};
      check_launch(op, cuda::launch_backward(args, launch));
    });
  }
};

}  // namespace
}  // namespace tcestim

TORCH_LIBRARY_IMPL(tcestim, CUDA, m) { tcestim::binding::register_operators<tcestim::CudaBackend>(m); }
