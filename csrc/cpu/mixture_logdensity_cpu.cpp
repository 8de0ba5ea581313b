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
#include "jackknife_estimate.h"
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

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> jackknife_sums(const Tensor& z, const Tensor& mu,
                                                                  const Tensor& logvar, int64_t grad_components) {
  constexpr const char* op = "jackknife_sums";
  check_jackknife_inputs(op, z, mu, logvar);
  binding::check_grad_components(op, grad_components, mu.size(0));
  const Tensor zc = z.contiguous(), muc = mu.contiguous(), lvc = logvar.contiguous();
  const int64_t M = z.size(0), K = mu.size(0), D = z.size(1), R = D + 1;
  Tensor shift = at::empty({M, R}, z.options());
  Tensor threshold = at::empty({M, R}, z.options());
  Tensor big = at::empty({M, R, kJackknifeMaxBig}, z.options().dtype(at::kLong));
  Tensor count = at::empty({M, R}, z.options().dtype(at::kLong));
  Tensor sums = at::empty({M, R, kJackknifeSeries}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), op, [&] {
    const JackknifeArgs<scalar_t> args{zc.const_data_ptr<scalar_t>(), muc.const_data_ptr<scalar_t>(),
                                       lvc.const_data_ptr<scalar_t>(), M, K, D,
                                       shift.mutable_data_ptr<scalar_t>(), threshold.mutable_data_ptr<scalar_t>(),
                                       big.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>(),
                                       sums.mutable_data_ptr<scalar_t>()};
    cpu::active_kernels<scalar_t>().jackknife_forward(args, kParallelFor);
  });
  return {shift, threshold, big, count, sums};
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

// The checked inputs of jackknife_estimate(_backward): JackknifeRows over contiguous tensors it keeps alive.
struct JackknifeRowsCall {
  Tensor log_a, log_shift, power_sums, log_big, offsets;
  std::vector<double> loo_weights, pair_weights;
  JackknifeRows rows;
};

void check_float64_cpu(const char* op, const char* name, const Tensor& t, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kDouble && t.dim() == dim, op, ": ", name,
              " must be a ", dim, "-D float64 CPU tensor, got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

JackknifeRowsCall prepare_jackknife_rows(const char* op, const Tensor& log_a, const Tensor& log_shift,
                                         const Tensor& power_sums, const Tensor& log_big, const Tensor& offsets,
                                         int64_t n, at::ArrayRef<double> loo_weights,
                                         at::ArrayRef<double> pair_weights) {
  check_float64_cpu(op, "log_a", log_a, 1);
  check_float64_cpu(op, "log_shift", log_shift, 1);
  check_float64_cpu(op, "power_sums", power_sums, 2);
  check_float64_cpu(op, "log_big", log_big, 1);
  const int64_t R = log_a.size(0), E = log_big.size(0);
  TORCH_CHECK(log_shift.size(0) == R && power_sums.size(0) == R && power_sums.size(1) >= 1, op,
              ": log_shift must have shape (R,) and power_sums (R, Q >= 1) for R = ", R, " rows, got ",
              log_shift.sizes(), " and ", power_sums.sizes());
  TORCH_CHECK(offsets.device().is_cpu() && offsets.scalar_type() == at::kLong && offsets.dim() == 1 &&
                  offsets.size(0) == R + 1,
              op, ": big_offsets must be an int64 CPU tensor of shape (R + 1,) = (", R + 1, ",), got ",
              offsets.scalar_type(), " ", offsets.sizes());
  TORCH_CHECK(n >= 2, op, ": needs n >= 2 other terms per row, got ", n);
  TORCH_CHECK(!loo_weights.empty() && loo_weights.size() == pair_weights.size(), op,
              ": loo_weights and pair_weights must be of one length >= 1, got ", loo_weights.size(), " and ",
              pair_weights.size());
  for (double w : pair_weights) TORCH_CHECK(w == 0 || n >= 3, op, ": pair_weights need n >= 3, got n = ", n);
  JackknifeRowsCall call;
  call.log_a = log_a.contiguous();
  call.log_shift = log_shift.contiguous();
  call.power_sums = power_sums.contiguous();
  call.log_big = log_big.contiguous();
  call.offsets = offsets.contiguous();
  const int64_t* off = call.offsets.const_data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[R] == E, op, ": big_offsets must run from 0 to E = ", E, ", got ", off[0], " to ",
              off[R]);
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK(off[r + 1] >= off[r] && off[r + 1] - off[r] <= n, op, ": row ", r, " has ", off[r + 1] - off[r],
                " big terms, expected 0 to n = ", n);
  }
  call.loo_weights.assign(loo_weights.begin(), loo_weights.end());
  call.pair_weights.assign(pair_weights.begin(), pair_weights.end());
  call.rows = JackknifeRows{call.log_a.const_data_ptr<double>(), call.log_shift.const_data_ptr<double>(),
                            call.power_sums.const_data_ptr<double>(), call.log_big.const_data_ptr<double>(), off,
                            call.loo_weights.data(), call.pair_weights.data(), R, power_sums.size(1), n,
                            static_cast<int64_t>(call.loo_weights.size())};
  return call;
}

Tensor jackknife_estimate(const Tensor& log_a, const Tensor& log_shift, const Tensor& power_sums,
                          const Tensor& log_big, const Tensor& offsets, int64_t n, at::ArrayRef<double> loo_weights,
                          at::ArrayRef<double> pair_weights) {
  JackknifeRowsCall call = prepare_jackknife_rows("jackknife_estimate", log_a, log_shift, power_sums, log_big,
                                                  offsets, n, loo_weights, pair_weights);
  Tensor estimate = at::empty({call.rows.orders, call.rows.rows}, log_a.options());
  cpu::jackknife_estimate(JackknifeEstimateArgs{call.rows, estimate.mutable_data_ptr<double>()}, kParallelFor);
  return estimate;
}

std::tuple<Tensor, Tensor, Tensor> jackknife_estimate_backward(
    const Tensor& grad, const Tensor& log_a, const Tensor& log_shift, const Tensor& power_sums, const Tensor& log_big,
    const Tensor& offsets, int64_t n, at::ArrayRef<double> loo_weights, at::ArrayRef<double> pair_weights) {
  constexpr const char* op = "jackknife_estimate_backward";
  JackknifeRowsCall call =
      prepare_jackknife_rows(op, log_a, log_shift, power_sums, log_big, offsets, n, loo_weights, pair_weights);
  check_float64_cpu(op, "grad", grad, 2);
  TORCH_CHECK(grad.size(0) == call.rows.orders && grad.size(1) == call.rows.rows, op,
              ": grad must have the estimate's shape (", call.rows.orders, ", ", call.rows.rows, "), got ",
              grad.sizes());
  const Tensor gc = grad.contiguous();
  Tensor grad_log_a = at::empty(call.log_a.sizes(), log_a.options());
  Tensor grad_sums = at::empty(call.power_sums.sizes(), log_a.options());
  Tensor grad_big = at::empty(call.log_big.sizes(), log_a.options());
  cpu::jackknife_estimate_backward(
      JackknifeEstimateBackwardArgs{call.rows, gc.const_data_ptr<double>(), grad_log_a.mutable_data_ptr<double>(),
                                    grad_sums.mutable_data_ptr<double>(), grad_big.mutable_data_ptr<double>()},
      kParallelFor);
  return {grad_log_a, grad_sums, grad_big};
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
  m.impl("jackknife_estimate", &tcestim::jackknife_estimate);
  m.impl("jackknife_estimate_backward", &tcestim::jackknife_estimate_backward);
}
