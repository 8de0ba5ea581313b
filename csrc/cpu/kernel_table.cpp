#include "kernel_table.h"

#include <atomic>
#include <stdexcept>
#include <string>

namespace tcestim {
namespace cpu {

#define TCESTIM_DECLARE_TABLES(isa)          \
  inline namespace isa {                     \
  const KernelTable<float>& table_f32();     \
  const KernelTable<double>& table_f64();    \
  }
TCESTIM_DECLARE_TABLES(isa_default)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TCESTIM_HAVE_X86_VARIANTS 1
TCESTIM_DECLARE_TABLES(isa_avx2)
TCESTIM_DECLARE_TABLES(isa_avx512)
#endif
#undef TCESTIM_DECLARE_TABLES

namespace {
std::atomic<int> g_active{-1};
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    default: return "default";
  }
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kDefault: return true;
#ifdef TCESTIM_HAVE_X86_VARIANTS
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("fma");
#endif
    default: return false;
  }
}

Isa best_isa() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (isa_supported(isa)) return isa;
  }
  return Isa::kDefault;
}

Isa active_isa() {
  int active = g_active.load();
  if (active < 0) {
    int expected = -1;
    // A concurrent set_active_isa() wins: only the unset value is replaced by the default.
    g_active.compare_exchange_strong(expected, static_cast<int>(best_isa()));
    active = g_active.load();
  }
  return static_cast<Isa>(active);
}

void set_active_isa(Isa isa) {
  if (!isa_supported(isa)) {
    throw std::invalid_argument(std::string("instruction set '") + isa_name(isa) +
                                "' is not supported by this CPU or build");
  }
  g_active.store(static_cast<int>(isa));
}

template <>
const KernelTable<float>& kernels<float>(Isa isa) {
  switch (isa) {
#ifdef TCESTIM_HAVE_X86_VARIANTS
    case Isa::kAvx512: return isa_avx512::table_f32();
    case Isa::kAvx2: return isa_avx2::table_f32();
#endif
    default: return isa_default::table_f32();
  }
}

template <>
const KernelTable<double>& kernels<double>(Isa isa) {
  switch (isa) {
#ifdef TCESTIM_HAVE_X86_VARIANTS
    case Isa::kAvx512: return isa_avx512::table_f64();
    case Isa::kAvx2: return isa_avx2::table_f64();
#endif
    default: return isa_default::table_f64();
  }
}

}  // namespace cpu
}  // namespace tcestim
