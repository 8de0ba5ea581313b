// CUDA implementations of the tcestim operators: argument checks, then the kernels of
// mixture_logdensity_kernels.h on the current stream (compiled by the host compiler; the kernels
// themselves are in the .cu file, which includes no torch headers).
//
// Only the c10/cuda headers are used (c10::cuda::getCurrentCUDAStream is what
// at::cuda::getCurrentCUDAStream names): ATen/cuda/CUDAContext.h would also pull in the cuBLAS,
// cuSPARSE and cuSOLVER headers, which a bare CUDA toolkit (nvcc + runtime) does not have.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <tuple>

#include "mixture_logdensity_kernels.h"

namespace tcestim {
namespace {

using at::Tensor;

void check_inputs(const char* op, const Tensor& z, const Tensor& mu, const Tensor& logvar) {
  TORCH_CHECK(z.dim() == 2, op, ": z must be 2-D (M, D), got shape ", z.sizes());
  TORCH_CHECK(mu.dim() == 2, op, ": mu must be 2-D (K, D), got shape ", mu.sizes());
  TORCH_CHECK(logvar.sizes() == mu.sizes(), op, ": logvar must have the shape of mu ", mu.sizes(),
              ", got ", logvar.sizes());
  TORCH_CHECK(z.size(1) == mu.size(1), op, ": z and mu must have the same number of columns D, got ",
              z.size(1), " and ", mu.size(1));
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, op,
              ": z must be float32 or float64, got ", z.scalar_type());
  TORCH_CHECK(mu.scalar_type() == z.scalar_type() && logvar.scalar_type() == z.scalar_type(), op,
              ": z, mu and logvar must share one dtype, got ", z.scalar_type(), ", ",
              mu.scalar_type(), ", ", logvar.scalar_type());
  TORCH_CHECK(z.is_cuda() && mu.is_cuda() && logvar.is_cuda(), op, ": expected CUDA tensors");
  TORCH_CHECK(mu.device() == z.device() && logvar.device() == z.device(), op,
              ": z, mu and logvar must be on one device, got ", z.device(), ", ", mu.device(),
              ", ", logvar.device());
  TORCH_CHECK(z.size(1) <= cuda::kMaxDim, op, ": the CUDA kernels support D <= ", cuda::kMaxDim,
              ", got D = ", z.size(1));
}

void check_log_weights(const char* op, const Tensor& log_weights, const Tensor& z, const Tensor& mu) {
  TORCH_CHECK(log_weights.dim() == 2 && log_weights.size(0) == z.size(0) &&
                  log_weights.size(1) == mu.size(0),
              op, ": log_weights must have shape (M, K) = (", z.size(0), ", ", mu.size(0), "), got ",
              log_weights.sizes());
  TORCH_CHECK(log_weights.scalar_type() == z.scalar_type(), op, ": log_weights must have dtype ",
              z.scalar_type(), ", got ", log_weights.scalar_type());
  TORCH_CHECK(log_weights.is_cuda() && log_weights.device() == z.device(), op,
              ": expected a CUDA tensor for log_weights on the device of z (", z.device(), "), got ",
              log_weights.device());
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
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

std::tuple<Tensor, Tensor> forward_impl(const char* op, const Tensor& z_in, const Tensor& mu_in,
                                        const Tensor& logvar_in, const Tensor* log_weights_in,
                                        double log_self, double log_next, double log_other) {
  check_inputs(op, z_in, mu_in, logvar_in);
  if (log_weights_in != nullptr) check_log_weights(op, *log_weights_in, z_in, mu_in);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const Tensor z = z_in.contiguous(), mu = mu_in.contiguous(), logvar = logvar_in.contiguous();
  const Tensor log_weights = log_weights_in != nullptr ? log_weights_in->contiguous() : Tensor();
  const int64_t M = z.size(0), K = mu.size(0), D = z.size(1);
  Tensor log_qz = at::empty({M}, z.options());
  Tensor log_qzd = at::empty({M, D}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "tcestim_cuda", [&] {
    cuda::ForwardArgs<scalar_t> args{
        z.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(),
        logvar.const_data_ptr<scalar_t>(),
        log_weights.defined() ? log_weights.const_data_ptr<scalar_t>() : nullptr,
        M, K, D, log_self, log_next, log_other,
        log_qz.mutable_data_ptr<scalar_t>(), log_qzd.mutable_data_ptr<scalar_t>(),
        nullptr, num_sms()};
    const Tensor ws = workspace(cuda::forward_workspace_bytes(args), z);
    args.workspace = ws.mutable_data_ptr();
    check_launch(op, cuda::launch_forward(args, c10::cuda::getCurrentCUDAStream().stream()));
  });
  return {log_qz, log_qzd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> backward_impl(
    const char* op, const Tensor& grad_qz_in, const Tensor& grad_qzd_in, const Tensor& z_in,
    const Tensor& mu_in, const Tensor& logvar_in, const Tensor* log_weights_in,
    const Tensor& log_qz_in, const Tensor& log_qzd_in, double log_self, double log_next,
    double log_other) {
  check_inputs(op, z_in, mu_in, logvar_in);
  const int64_t M = z_in.size(0), K = mu_in.size(0), D = z_in.size(1);
  for (const Tensor* t : {&grad_qz_in, &log_qz_in}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == M && t->scalar_type() == z_in.scalar_type() &&
                    t->is_cuda() && t->device() == z_in.device(),
                op, ": expected a CUDA ", z_in.scalar_type(), " tensor on ", z_in.device(),
                " of shape (", M, ",), got ", t->scalar_type(), " ", t->sizes(), " on ",
                t->device());
  }
  for (const Tensor* t : {&grad_qzd_in, &log_qzd_in}) {
    TORCH_CHECK(t->sizes() == z_in.sizes() && t->scalar_type() == z_in.scalar_type() &&
                    t->is_cuda() && t->device() == z_in.device(),
                op, ": expected a CUDA ", z_in.scalar_type(), " tensor on ", z_in.device(),
                " of shape ", z_in.sizes(), ", got ", t->scalar_type(), " ", t->sizes(), " on ",
                t->device());
  }
  if (log_weights_in != nullptr) check_log_weights(op, *log_weights_in, z_in, mu_in);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const Tensor z = z_in.contiguous(), mu = mu_in.contiguous(), logvar = logvar_in.contiguous();
  const Tensor grad_qz = grad_qz_in.contiguous(), grad_qzd = grad_qzd_in.contiguous();
  const Tensor log_qz = log_qz_in.contiguous(), log_qzd = log_qzd_in.contiguous();
  Tensor log_weights, grad_logw;
  if (log_weights_in != nullptr) {
    log_weights = log_weights_in->contiguous();
    grad_logw = at::empty({M, K}, z.options());
  }
  Tensor grad_z = at::empty({M, D}, z.options());
  Tensor grad_mu = at::empty({K, D}, z.options());
  Tensor grad_logvar = at::empty({K, D}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "tcestim_cuda", [&] {
    cuda::BackwardArgs<scalar_t> args{
        grad_qz.const_data_ptr<scalar_t>(), grad_qzd.const_data_ptr<scalar_t>(),
        z.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(),
        logvar.const_data_ptr<scalar_t>(),
        log_weights.defined() ? log_weights.const_data_ptr<scalar_t>() : nullptr,
        log_qz.const_data_ptr<scalar_t>(), log_qzd.const_data_ptr<scalar_t>(),
        M, K, D, log_self, log_next, log_other,
        grad_z.mutable_data_ptr<scalar_t>(), grad_mu.mutable_data_ptr<scalar_t>(),
        grad_logvar.mutable_data_ptr<scalar_t>(),
        grad_logw.defined() ? grad_logw.mutable_data_ptr<scalar_t>() : nullptr,
        nullptr, num_sms()};
    const Tensor ws = workspace(cuda::backward_workspace_bytes(args), z);
    args.workspace = ws.mutable_data_ptr();
    check_launch(op, cuda::launch_backward(args, c10::cuda::getCurrentCUDAStream().stream()));
  });
  return {grad_z, grad_mu, grad_logvar, grad_logw};
}

std::tuple<Tensor, Tensor> mixture_logdensity(const Tensor& z, const Tensor& mu, const Tensor& logvar,
                                              double log_self, double log_next, double log_other) {
  return forward_impl("mixture_logdensity", z, mu, logvar, nullptr, log_self, log_next, log_other);
}

std::tuple<Tensor, Tensor> mixture_logdensity_dense(const Tensor& z, const Tensor& mu,
                                                    const Tensor& logvar, const Tensor& log_weights) {
  return forward_impl("mixture_logdensity_dense", z, mu, logvar, &log_weights, 0, 0, 0);
}

std::tuple<Tensor, Tensor, Tensor> mixture_logdensity_backward(
    const Tensor& grad_qz, const Tensor& grad_qzd, const Tensor& z, const Tensor& mu,
    const Tensor& logvar, const Tensor& log_qz, const Tensor& log_qzd, double log_self,
    double log_next, double log_other) {
  auto grads = backward_impl("mixture_logdensity_backward", grad_qz, grad_qzd, z, mu, logvar,
                             nullptr, log_qz, log_qzd, log_self, log_next, log_other);
  return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> mixture_logdensity_dense_backward(
    const Tensor& grad_qz, const Tensor& grad_qzd, const Tensor& z, const Tensor& mu,
    const Tensor& logvar, const Tensor& log_weights, const Tensor& log_qz, const Tensor& log_qzd) {
  return backward_impl("mixture_logdensity_dense_backward", grad_qz, grad_qzd, z, mu, logvar,
                       &log_weights, log_qz, log_qzd, 0, 0, 0);
}

}  // namespace
}  // namespace tcestim

TORCH_LIBRARY_IMPL(tcestim, CUDA, m) {
  m.impl("mixture_logdensity", &tcestim::mixture_logdensity);
  m.impl("mixture_logdensity_dense", &tcestim::mixture_logdensity_dense);
  m.impl("mixture_logdensity_backward", &tcestim::mixture_logdensity_backward);
  m.impl("mixture_logdensity_dense_backward", &tcestim::mixture_logdensity_dense_backward);
}
