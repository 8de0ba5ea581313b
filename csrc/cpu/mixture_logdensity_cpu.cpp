// CPU implementations of the tcestim operators: the checked calls of binding.h go to the kernels
// of kernel_table.h (best instruction set of this CPU), parallel over blocks with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "binding.h"
#include "kernel_table.h"

namespace tcestim {
namespace {

// How many distinct threads ran the most recent parallel region of the kernels: lets a test tell
// a build whose at::parallel_for silently runs serially (no -fopenmp) from a parallel one.
std::atomic<int64_t> g_last_region_threads{0};

const cpu::ParallelFor kParallelFor = [](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  std::mutex mutex;
  std::vector<std::thread::id> threads;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    {
      const std::lock_guard<std::mutex> lock(mutex);
      const std::thread::id self = std::this_thread::get_id();
      if (std::find(threads.begin(), threads.end(), self) == threads.end()) threads.push_back(self);
    }
    fn(begin, end);
  });
  g_last_region_threads.store(static_cast<int64_t>(threads.size()));
};

int64_t last_parallel_region_threads() { return g_last_region_threads.load(); }

struct CpuBackend {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;

  static void forward(const char*, binding::ForwardCall& c) {
    AT_DISPATCH_FLOATING_TYPES(c.z.scalar_type(), "tcestim_cpu", [&] {
      cpu::active_kernels<scalar_t>().forward(binding::kernel_args<scalar_t>(c), kParallelFor);
    });
  }

  static void backward(const char*, binding::BackwardCall& c) {
    AT_DISPATCH_FLOATING_TYPES(c.z.scalar_type(), "tcestim_cpu", [&] {
      cpu::active_kernels<scalar_t>().backward(binding::kernel_args<scalar_t>(c), kParallelFor);
    });
  }
};

using at::Tensor;

void check_jackknife_inputs(const char* op, const Tensor& z, const Tensor& mu, const Tensor& logvar) {
  binding::check_inputs(op, z, mu, logvar, c10::DeviceType::CPU);
  TORCH_CHECK(mu.size(0) >= z.size(0), op, ": the queries' own components come first: needs K >= M, got K = ",
              mu.size(0), " and M = ", z.size(0));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> jackknife_sums(const Tensor& z, const Tensor& mu, const Tensor& logvar,
                                                          int64_t grad_components) {
  constexpr const char* op = "jackknife_sums";
  check_jackknife_inputs(op, z, mu, logvar);
  binding::check_grad_components(op, grad_components, mu.size(0));
  const Tensor zc = z.contiguous(), muc = mu.contiguous(), lvc = logvar.contiguous();
  const int64_t M = z.size(0), K = mu.size(0), D = z.size(1), R = D + 1;
  Tensor shift = at::empty({M, R}, z.options());
  Tensor threshold = at::empty({M, R}, z.options());
  Tensor big = at::empty({M, R, kJackknifeMaxBig}, z.options().dtype(at::kLong));
  Tensor sums = at::empty({M, R, kJackknifeSeries}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), op, [&] {
    const JackknifeArgs<scalar_t> args{zc.const_data_ptr<scalar_t>(), muc.const_data_ptr<scalar_t>(),
                                       lvc.const_data_ptr<scalar_t>(), M, K, D,
                                       shift.mutable_data_ptr<scalar_t>(), threshold.mutable_data_ptr<scalar_t>(),
                                       big.mutable_data_ptr<int64_t>(), sums.mutable_data_ptr<scalar_t>()};
    cpu::active_kernels<scalar_t>().jackknife_forward(args, kParallelFor);
  });
  return {shift, threshold, big, sums};
}

std::tuple<Tensor, Tensor, Tensor> jackknife_sums_backward(const Tensor& grad_sums, const Tensor& z, const Tensor& mu,
                                                           const Tensor& logvar, const Tensor& shift,
                                                           const Tensor& threshold, int64_t grad_components) {
  constexpr const char* op = "jackknife_sums_backward";
  check_jackknife_inputs(op, z, mu, logvar);
  const int64_t M = z.size(0), K = mu.size(0), D = z.size(1), R = D + 1;
  const int64_t owned = binding::check_grad_components(op, grad_components, K);
  binding::check_saved(op, "shift", shift, z, {M, R}, c10::DeviceType::CPU);
  binding::check_saved(op, "log2_threshold", threshold, z, {M, R}, c10::DeviceType::CPU);
  binding::check_saved(op, "grad_power_sums", grad_sums, z, {M, R, kJackknifeSeries}, c10::DeviceType::CPU);
  const Tensor zc = z.contiguous(), muc = mu.contiguous(), lvc = logvar.contiguous();
  const Tensor gc = grad_sums.contiguous(), sc = shift.contiguous(), tc = threshold.contiguous();
  Tensor grad_z = at::empty({M, D}, z.options());
  Tensor grad_mu = at::empty({K, D}, z.options());
  Tensor grad_logvar = at::empty({K, D}, z.options());
  if (owned < K) {  // constants of the mixture: gradient 0, not computed
    grad_mu.narrow(0, owned, K - owned).zero_();
    grad_logvar.narrow(0, owned, K - owned).zero_();
  }
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), op, [&] {
    const JackknifeBackwardArgs<scalar_t> args{
        gc.const_data_ptr<scalar_t>(), zc.const_data_ptr<scalar_t>(), muc.const_data_ptr<scalar_t>(),
        lvc.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), tc.const_data_ptr<scalar_t>(), M, K, D, owned,
        grad_z.mutable_data_ptr<scalar_t>(), grad_mu.mutable_data_ptr<scalar_t>(),
        grad_logvar.mutable_data_ptr<scalar_t>()};
    cpu::active_kernels<scalar_t>().jackknife_backward(args, kParallelFor);
  });
  return {grad_z, grad_mu, grad_logvar};
}

}  // namespace
}  // namespace tcestim

TORCH_LIBRARY_FRAGMENT(tcestim, m) {
  m.def("cpu_last_region_threads() -> int", &tcestim::last_parallel_region_threads);
}

TORCH_LIBRARY_IMPL(tcestim, CPU, m) {
  tcestim::binding::register_operators<tcestim::CpuBackend>(m);
  m.impl("jackknife_sums", &tcestim::jackknife_sums);
  m.impl("jackknife_sums_backward", &tcestim::jackknife_sums_backward);
}
