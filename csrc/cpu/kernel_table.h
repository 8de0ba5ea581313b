// Entry points of the CPU kernels, one copy per instruction set, chosen at run time.
// No torch headers: the torch binding and the C++ unit tests both call through this table.
#pragma once

#include <cstdint>
#include <functional>

namespace tcestim {
namespace cpu {

// Runs fn(begin, end) over disjoint ranges covering [0, num_tasks), possibly in parallel.
using ParallelFor = std::function<void(int64_t num_tasks, const std::function<void(int64_t, int64_t)>& fn)>;

// log_weights == nullptr selects the structured weights (log_self, log_next, log_other).
template <typename T>
struct ForwardArgs {
  const T* z;            // (M, D)
  const T* mu;           // (K, D)
  const T* logvar;       // (K, D)
  const T* log_weights;  // (M, K) or nullptr
  int64_t M, K, D;
  double log_self, log_next, log_other;
  T* log_qz;   // (M,)   output
  T* log_qzd;  // (M, D) output
};

template <typename T>
struct BackwardArgs {
  const T* grad_qz;      // (M,)
  const T* grad_qzd;     // (M, D)
  const T* z;            // (M, D)
  const T* mu;           // (K, D)
  const T* logvar;       // (K, D)
  const T* log_weights;  // (M, K) or nullptr
  const T* log_qz;       // (M,)   saved forward output
  const T* log_qzd;      // (M, D) saved forward output
  int64_t M, K, D;
  double log_self, log_next, log_other;
  T* grad_z;       // (M, D) output
  T* grad_mu;      // (K, D) output
  T* grad_logvar;  // (K, D) output
  T* grad_logw;    // (M, K) output, dense weights only (else nullptr)
};

template <typename T>
struct KernelTable {
  void (*forward)(const ForwardArgs<T>&, const ParallelFor&);
  void (*backward)(const BackwardArgs<T>&, const ParallelFor&);
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
