// CUDA implementations of the tcestim operators: argument checks, then the kernels of
// mixture_logdensity_kernels.h on the current stream (compiled by the host compiler; the kernels
// themselves are in the .cu file, which includes no torch headers).
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
      cuda::ForwardArgs<scalar_t> args{
          c.z.const_data_ptr<scalar_t>(), c.mu.const_data_ptr<scalar_t>(),
          c.logvar.const_data_ptr<scalar_t>(), binding::data_or_null<scalar_t>(c.log_weights),
          c.M, c.K, c.D, c.log_self, c.log_next, c.log_other,
          c.log_qz.mutable_data_ptr<scalar_t>(), c.log_qzd.mutable_data_ptr<scalar_t>(),
          nullptr, num_sms()};
      const Tensor ws = workspace(cuda::forward_workspace_bytes(args), c.z);
      args.workspace = ws.mutable_data_ptr();
      check_launch(op, cuda::launch_forward(args, c10::cuda::getCurrentCUDAStream().stream()));
    });
  }

  static void backward(const char* op, binding::BackwardCall& c) {
    check_dimension(op, c.D);
    const c10::cuda::CUDAGuard guard(c.z.device());
    AT_DISPATCH_FLOATING_TYPES(c.z.scalar_type(), "tcestim_cuda", [&] {
      cuda::BackwardArgs<scalar_t> args{
          c.grad_qz.const_data_ptr<scalar_t>(), c.grad_qzd.const_data_ptr<scalar_t>(),
          c.z.const_data_ptr<scalar_t>(), c.mu.const_data_ptr<scalar_t>(),
          c.logvar.const_data_ptr<scalar_t>(), binding::data_or_null<scalar_t>(c.log_weights),
          c.log_qz.const_data_ptr<scalar_t>(), c.log_qzd.const_data_ptr<scalar_t>(),
          c.M, c.K, c.D, c.log_self, c.log_next, c.log_other,
          c.grad_z.mutable_data_ptr<scalar_t>(), c.grad_mu.mutable_data_ptr<scalar_t>(),
          c.grad_logvar.mutable_data_ptr<scalar_t>(), binding::mutable_data_or_null<scalar_t>(c.grad_logw),
          nullptr, num_sms()};
      const Tensor ws = workspace(cuda::backward_workspace_bytes(args), c.z);
      args.workspace = ws.mutable_data_ptr();
      check_launch(op, cuda::launch_backward(args, c10::cuda::getCurrentCUDAStream().stream()));
    });
  }
};

}  // namespace
}  // namespace tcestim

TORCH_LIBRARY_IMPL(tcestim, CUDA, m) { tcestim::binding::register_operators<tcestim::CudaBackend>(m); }
