// Entry points of the CPU kernels, one copy per instruction set, chosen at run time.
// No torch headers: the torch binding and the C++ unit tests both call through this table.
#pragma once

#include <cstdint>
#include <functional>

#include "../kernel_args.h"

namespace tcestim {
namespace cpu {

// Runs fn(begin, end) over disjoint ranges covering [0, num_tasks), possibly in parallel.
using ParallelFor = std::function<void(int64_t num_tasks, const std::function<void(int64_t, int64_t)>& fn)>;

using tcestim::BackwardArgs;
using tcestim::ForwardArgs;
using tcestim::JackknifeArgs;
using tcestim::JackknifeBackwardArgs;

template <typename T>
struct KernelTable {
  void (*forward)(const ForwardArgs<T>&, const ParallelFor&);
  void (*backward)(const BackwardArgs<T>&, const ParallelFor&);
  void (*jackknife_forward)(const JackknifeArgs<T>&, const ParallelFor&);
  void (*jackknife_backward)(const JackknifeBackwardArgs<T>&, const ParallelFor&);
};

enum class Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // by this CPU and operating system
Isa best_isa();
Isa active_isa();             // best_isa() unless overridden
void set_active_isa(Isa isa);  // throws std::invalid_argument if unsupported

template <typename T>
const KernelTable<T>& kernels(Isa isa);

template <typename T>
const KernelTable<T>& active_kernels() {
  return kernels<T>(active_isa());
}

}  // namespace cpu
}  // namespace tcestim
