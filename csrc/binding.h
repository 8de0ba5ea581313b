// The torch side shared by every device's binding: argument checks (one wording on every device)
// and the four operator entry points. A backend only turns a checked call into kernel launches:
//
//   struct Backend {
//     static constexpr c10::DeviceType kDevice = ...;
//     static void forward(const char* op, ForwardCall& call);    // fills log_qz, log_qzd
//     static void backward(const char* op, BackwardCall& call);  // fills the grads
//   };
//   TORCH_LIBRARY_IMPL(tcestim, CPU, m) { binding::register_operators<Backend>(m); }
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "kernel_args.h"

namespace tcestim {
namespace binding {

using at::Tensor;

// One forward call: contiguous inputs and freshly allocated outputs.
struct ForwardCall {
  Tensor z, mu, logvar;
  Tensor log_weights;  // (M, K), or undefined for the structured weights
  int64_t M, K, D;
  double log_self, log_next, log_other;
  Tensor log_qz, log_qzd;  // outputs (M,), (M, D)
};

// One backward call: contiguous inputs and saved outputs, freshly allocated gradients.
struct BackwardCall {
  Tensor grad_qz, grad_qzd, z, mu, logvar;
  Tensor log_weights;  // (M, K), or undefined for the structured weights
  Tensor log_qz, log_qzd;
  int64_t M, K, D;
  double log_self, log_next, log_other;
  int64_t grad_components;  // leading components that get gradients (kernel_args.h); the rest get 0
  Tensor grad_z, grad_mu, grad_logvar;
  Tensor grad_logw;  // (M, K) for dense weights, else undefined
};

inline void check_on_device(const char* op, const char* name, const Tensor& t, const Tensor& z,
                            c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device && t.device() == z.device(), op, ": expected ", name,
              " on the ", device, " device of z (", z.device(), "), got ", t.device());
}

inline void check_inputs(const char* op, const Tensor& z, const Tensor& mu, const Tensor& logvar,
                         c10::DeviceType device) {
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
  TORCH_CHECK(z.device().type() == device, op, ": expected ", device, " tensors, got z on ", z.device());
  check_on_device(op, "mu", mu, z, device);
  check_on_device(op, "logvar", logvar, z, device);
}

inline void check_log_weights(const char* op, const Tensor& log_weights, const Tensor& z,
                              const Tensor& mu, c10::DeviceType device) {
  TORCH_CHECK(log_weights.dim() == 2 && log_weights.size(0) == z.size(0) &&
                  log_weights.size(1) == mu.size(0),
              op, ": log_weights must have shape (M, K) = (", z.size(0), ", ", mu.size(0), "), got ",
              log_weights.sizes());
  TORCH_CHECK(log_weights.scalar_type() == z.scalar_type(), op, ": log_weights must have dtype ",
              z.scalar_type(), ", got ", log_weights.scalar_type());
  check_on_device(op, "log_weights", log_weights, z, device);
}

// grad_components: the number of leading components that get gradients, in [0, K], or -1 for all K.
inline int64_t check_grad_components(const char* op, int64_t grad_components, int64_t K) {
  TORCH_CHECK(grad_components >= -1 && grad_components <= K, op,
              ": grad_components must be -1 (all) or in [0, K = ", K, "], got ", grad_components);
  return grad_components < 0 ? K : grad_components;
}

// grad_log_qz / log_qz of shape (M,) and grad_log_qzd / log_qzd of the shape of z.
inline void check_saved(const char* op, const char* name, const Tensor& t, const Tensor& z,
                        at::IntArrayRef shape, c10::DeviceType device) {
  TORCH_CHECK(t.sizes() == shape && t.scalar_type() == z.scalar_type(), op, ": ", name,
              " must be a ", z.scalar_type(), " tensor of shape ", shape, ", got ", t.scalar_type(),
              " ", t.sizes());
  check_on_device(op, name, t, z, device);
}

inline ForwardCall prepare_forward(const char* op, const Tensor& z, const Tensor& mu,
                                   const Tensor& logvar, const Tensor* log_weights, double log_self,
                                   double log_next, double log_other, c10::DeviceType device) {
  check_inputs(op, z, mu, logvar, device);
  if (log_weights != nullptr) check_log_weights(op, *log_weights, z, mu, device);
  ForwardCall call;
  call.z = z.contiguous();
  call.mu = mu.contiguous();
  call.logvar = logvar.contiguous();
  if (log_weights != nullptr) call.log_weights = log_weights->contiguous();
  call.M = z.size(0);
  call.K = mu.size(0);
  call.D = z.size(1);
  call.log_self = log_self;
  call.log_next = log_next;
  call.log_other = log_other;
  call.log_qz = at::empty({call.M}, z.options());
  call.log_qzd = at::empty({call.M, call.D}, z.options());
  return call;
}

inline BackwardCall prepare_backward(const char* op, const Tensor& grad_qz, const Tensor& grad_qzd,
                                     const Tensor& z, const Tensor& mu, const Tensor& logvar,
                                     const Tensor* log_weights, const Tensor& log_qz,
                                     const Tensor& log_qzd, double log_self, double log_next,
                                     double log_other, int64_t grad_components,
                                     c10::DeviceType device) {
  check_inputs(op, z, mu, logvar, device);
  const int64_t M = z.size(0), K = mu.size(0), D = z.size(1);
  const int64_t owned = check_grad_components(op, grad_components, K);
  check_saved(op, "grad_log_qz", grad_qz, z, {M}, device);
  check_saved(op, "log_qz", log_qz, z, {M}, device);
  check_saved(op, "grad_log_qzd", grad_qzd, z, z.sizes(), device);
  check_saved(op, "log_qzd", log_qzd, z, z.sizes(), device);
  if (log_weights != nullptr) check_log_weights(op, *log_weights, z, mu, device);
  BackwardCall call;
  call.grad_qz = grad_qz.contiguous();
  call.grad_qzd = grad_qzd.contiguous();
  call.z = z.contiguous();
  call.mu = mu.contiguous();
  call.logvar = logvar.contiguous();
  call.log_qz = log_qz.contiguous();
  call.log_qzd = log_qzd.contiguous();
  if (log_weights != nullptr) {
    call.log_weights = log_weights->contiguous();
    call.grad_logw = at::empty({M, K}, z.options());
  }
  call.M = M;
  call.K = K;
  call.D = D;
  call.log_self = log_self;
  call.log_next = log_next;
  call.log_other = log_other;
  call.grad_components = owned;
  call.grad_z = at::empty({M, D}, z.options());
  call.grad_mu = at::empty({K, D}, z.options());
  call.grad_logvar = at::empty({K, D}, z.options());
  if (owned < K) {  // the kernels leave these rows unwritten: constants have gradient 0
    call.grad_mu.narrow(0, owned, K - owned).zero_();
    call.grad_logvar.narrow(0, owned, K - owned).zero_();
  }
  return call;
}

template <typename Backend>
struct Operators {
  // grad_components only tells autograd (tcestim/_ops.py) which components get gradients; the
  // forward checks it and computes the same values whatever it is.
  static std::tuple<Tensor, Tensor> structured(const Tensor& z, const Tensor& mu, const Tensor& logvar,
                                               double log_self, double log_next, double log_other,
                                               int64_t grad_components) {
    constexpr const char* op = "mixture_logdensity";
    ForwardCall call = prepare_forward(op, z, mu, logvar, nullptr, log_self, log_next, log_other,
                                       Backend::kDevice);
    check_grad_components(op, grad_components, call.K);
    Backend::forward(op, call);
    return {call.log_qz, call.log_qzd};
  }

  static std::tuple<Tensor, Tensor> dense(const Tensor& z, const Tensor& mu, const Tensor& logvar,
                                          const Tensor& log_weights, int64_t grad_components) {
    constexpr const char* op = "mixture_logdensity_dense";
    ForwardCall call = prepare_forward(op, z, mu, logvar, &log_weights, 0, 0, 0, Backend::kDevice);
    check_grad_components(op, grad_components, call.K);
    Backend::forward(op, call);
    return {call.log_qz, call.log_qzd};
  }

  static std::tuple<Tensor, Tensor, Tensor> structured_backward(
      const Tensor& grad_qz, const Tensor& grad_qzd, const Tensor& z, const Tensor& mu,
      const Tensor& logvar, const Tensor& log_qz, const Tensor& log_qzd, double log_self,
      double log_next, double log_other, int64_t grad_components) {
    constexpr const char* op = "mixture_logdensity_backward";
    BackwardCall call = prepare_backward(op, grad_qz, grad_qzd, z, mu, logvar, nullptr, log_qz,
                                         log_qzd, log_self, log_next, log_other, grad_components,
                                         Backend::kDevice);
    Backend::backward(op, call);
    return {call.grad_z, call.grad_mu, call.grad_logvar};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> dense_backward(
      const Tensor& grad_qz, const Tensor& grad_qzd, const Tensor& z, const Tensor& mu,
      const Tensor& logvar, const Tensor& log_weights, const Tensor& log_qz, const Tensor& log_qzd,
      int64_t grad_components) {
    constexpr const char* op = "mixture_logdensity_dense_backward";
    BackwardCall call = prepare_backward(op, grad_qz, grad_qzd, z, mu, logvar, &log_weights, log_qz,
                                         log_qzd, 0, 0, 0, grad_components, Backend::kDevice);
    Backend::backward(op, call);
    return {call.grad_z, call.grad_mu, call.grad_logvar, call.grad_logw};
  }
};

// The three structured log-weights (self, next, other) from a (3,) float64 CPU tensor: the overloads
// that take them as a tensor let torch.compile compute them from symbolic sizes without recompiling.
inline std::array<double, 3> structured_weights(const Tensor& log_weights) {
  TORCH_CHECK(log_weights.dim() == 1 && log_weights.numel() == 3 && log_weights.device().is_cpu() &&
                  log_weights.scalar_type() == at::kDouble,
              "structured log_weights must be a (3,) float64 CPU tensor (self, next, other), got ",
              log_weights.sizes(), " ", log_weights.scalar_type(), " on ", log_weights.device());
  const Tensor w = log_weights.contiguous();
  const double* p = w.const_data_ptr<double>();
  return {p[0], p[1], p[2]};
}

template <typename Backend>
std::tuple<Tensor, Tensor> structured_tensor_weights(const Tensor& z, const Tensor& mu, const Tensor& logvar,
                                                     const Tensor& log_weights, int64_t grad_components) {
  const auto w = structured_weights(log_weights);
  return Operators<Backend>::structured(z, mu, logvar, w[0], w[1], w[2], grad_components);
}

template <typename Backend>
std::tuple<Tensor, Tensor, Tensor> structured_tensor_weights_backward(
    const Tensor& grad_qz, const Tensor& grad_qzd, const Tensor& z, const Tensor& mu, const Tensor& logvar,
    const Tensor& log_qz, const Tensor& log_qzd, const Tensor& log_weights, int64_t grad_components) {
  const auto w = structured_weights(log_weights);
  return Operators<Backend>::structured_backward(grad_qz, grad_qzd, z, mu, logvar, log_qz, log_qzd, w[0], w[1],
                                                 w[2], grad_components);
}

template <typename Backend>
void register_operators(torch::Library& m) {
  m.impl("mixture_logdensity_tensor_weights", &structured_tensor_weights<Backend>);
  m.impl("mixture_logdensity_tensor_weights_backward", &structured_tensor_weights_backward<Backend>);
  m.impl("mixture_logdensity", &Operators<Backend>::structured);
  m.impl("mixture_logdensity_dense", &Operators<Backend>::dense);
  m.impl("mixture_logdensity_backward", &Operators<Backend>::structured_backward);
  m.impl("mixture_logdensity_dense_backward", &Operators<Backend>::dense_backward);
}

// Typed data pointer, or nullptr for an undefined (optional) tensor.
template <typename T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mutable_data_or_null(Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// The kernels' arguments (kernel_args.h) for a checked call: pointers into its tensors.
template <typename T>
ForwardArgs<T> kernel_args(ForwardCall& c) {
  return ForwardArgs<T>{c.z.const_data_ptr<T>(), c.mu.const_data_ptr<T>(),
                        c.logvar.const_data_ptr<T>(), data_or_null<T>(c.log_weights),
                        c.M, c.K, c.D, c.log_self, c.log_next, c.log_other,
                        c.log_qz.mutable_data_ptr<T>(), c.log_qzd.mutable_data_ptr<T>()};
}

template <typename T>
BackwardArgs<T> kernel_args(BackwardCall& c) {
  return BackwardArgs<T>{c.grad_qz.const_data_ptr<T>(), c.grad_qzd.const_data_ptr<T>(),
                         c.z.const_data_ptr<T>(), c.mu.const_data_ptr<T>(),
                         c.logvar.const_data_ptr<T>(), data_or_null<T>(c.log_weights),
                         c.log_qz.const_data_ptr<T>(), c.log_qzd.const_data_ptr<T>(),
                         c.M, c.K, c.D, c.log_self, c.log_next, c.log_other, c.grad_components,
                         c.grad_z.mutable_data_ptr<T>(), c.grad_mu.mutable_data_ptr<T>(),
                         c.grad_logvar.mutable_data_ptr<T>(), mutable_data_or_null<T>(c.grad_logw)};
}

}  // namespace binding
}  // namespace tcestim
