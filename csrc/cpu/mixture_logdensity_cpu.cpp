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

}  // namespace
}  // namespace tcestim

TORCH_LIBRARY_FRAGMENT(tcestim, m) {
  m.def("cpu_last_region_threads() -> int", &tcestim::last_parallel_region_threads);
}

TORCH_LIBRARY_IMPL(tcestim, CPU, m) { tcestim::binding::register_operators<tcestim::CpuBackend>(m); }
