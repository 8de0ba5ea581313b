// CPU implementations of the tcestim operators: the checked calls of binding.h go to the kernels
// of kernel_table.h (best instruction set of this CPU), parallel over blocks with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "binding.h"
#include "kernel_table.h"

namespace tcestim {
namespace {

const cpu::ParallelFor kParallelFor = [](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  at::parallel_for(0, n, 1, fn);
};

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

}  // namespace
}  // namespace tcestim

TORCH_LIBRARY_IMPL(tcestim, CPU, m) { tcestim::binding::register_operators<tcestim::CpuBackend>(m); }
