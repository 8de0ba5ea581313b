// Operator schemas of the tcestim library and the Python module that loads them.
//
// Shapes: z (M, D) queries; mu, logvar (K, D) diagonal-Gaussian components; log_weights (M, K).
// Structured weights: logw[i,j] = log_self if j == i, log_next if j == (i+1) mod M, else log_other.
// Outputs: log_qz (M,) joint and log_qzd (M, D) per-dimension mixture log-densities, in nats.
// grad_components: only components 0..grad_components-1 are differentiated (-1: all K); the others
// are constants of the mixture (a bank's detached encodings) with gradient 0, which the backward
// does not compute. The forward's values do not depend on it.
#include <Python.h>
#include <string>
#include <vector>
#include <torch/library.h>

#include "cpu/kernel_table.h"
#include "kernel_args.h"

TORCH_LIBRARY(tcestim, m) {
  m.def("mixture_logdensity(Tensor z, Tensor mu, Tensor logvar, float log_self, float log_next, "
        "float log_other, SymInt grad_components=-1) -> (Tensor, Tensor)");
  // The same with the structured log-weights as a (3,) float64 CPU tensor (self, next, other).
  m.def("mixture_logdensity_tensor_weights(Tensor z, Tensor mu, Tensor logvar, Tensor log_weights, "
        "SymInt grad_components=-1) -> (Tensor, Tensor)");
  m.def("mixture_logdensity_tensor_weights_backward(Tensor grad_log_qz, Tensor grad_log_qzd, Tensor z, Tensor mu, "
        "Tensor logvar, Tensor log_qz, Tensor log_qzd, Tensor log_weights, SymInt grad_components=-1) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("mixture_logdensity_dense(Tensor z, Tensor mu, Tensor logvar, Tensor log_weights, "
        "SymInt grad_components=-1) -> (Tensor, Tensor)");
  m.def("mixture_logdensity_backward(Tensor grad_log_qz, Tensor grad_log_qzd, Tensor z, Tensor mu, "
        "Tensor logvar, Tensor log_qz, Tensor log_qzd, float log_self, float log_next, "
        "float log_other, SymInt grad_components=-1) -> (Tensor, Tensor, Tensor)");
  m.def("mixture_logdensity_dense_backward(Tensor grad_log_qz, Tensor grad_log_qzd, Tensor z, "
        "Tensor mu, Tensor logvar, Tensor log_weights, Tensor log_qz, Tensor log_qzd, "
        "SymInt grad_components=-1) -> (Tensor, Tensor, Tensor, Tensor)");
  // The jackknife's sums (kernel_args.h, JackknifeArgs; tcestim/jackknife.py), CPU only: the queries'
  // own components are mu[:M]. Outputs (shift, log2_threshold, big_index, big_count, power_sums).
  m.def("jackknife_sums(Tensor z, Tensor mu, Tensor logvar, SymInt grad_components=-1) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("jackknife_sums_backward(Tensor grad_power_sums, Tensor z, Tensor mu, Tensor logvar, Tensor shift, "
        "Tensor log2_threshold, SymInt grad_components=-1) -> (Tensor, Tensor, Tensor)");
  // The jackknife estimate from those sums (kernel_args.h, JackknifeRows), CPU only, float64: one row
  // per query and target, output (orders, R), one row per (loo_weights, pair_weights) pair.
  m.def("jackknife_estimate(Tensor log_a, Tensor log_shift, Tensor power_sums, Tensor log_big, Tensor big_offsets, "
        "int n, float[] loo_weights, float[] pair_weights) -> Tensor");
  m.def("jackknife_estimate_backward(Tensor grad, Tensor log_a, Tensor log_shift, Tensor power_sums, Tensor log_big, "
        "Tensor big_offsets, int n, float[] loo_weights, float[] pair_weights) -> (Tensor, Tensor, Tensor)");
  m.def("cpu_isa() -> str");
  m.def("supported_cpu_isas() -> str[]");
  m.def("set_cpu_isa(str name) -> ()");
}

namespace {

std::string cpu_isa() { return tcestim::cpu::isa_name(tcestim::cpu::active_isa()); }

std::vector<std::string> supported_cpu_isas() {
  using tcestim::cpu::Isa;
  std::vector<std::string> names;
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kDefault}) {
    if (tcestim::cpu::isa_supported(isa)) names.emplace_back(tcestim::cpu::isa_name(isa));
  }
  return names;
}

void set_cpu_isa(const std::string& name) {
  using tcestim::cpu::Isa;
  for (Isa isa : {Isa::kDefault, Isa::kAvx2, Isa::kAvx512}) {
    if (name == tcestim::cpu::isa_name(isa)) {
      TORCH_CHECK(tcestim::cpu::isa_supported(isa), "set_cpu_isa: '", name,
                  "' is not supported by this CPU or build");
      tcestim::cpu::set_active_isa(isa);
      return;
    }
  }
  TORCH_CHECK(false, "set_cpu_isa: name must be one of 'default', 'avx2', 'avx512', got '", name, "'");
}

}  // namespace

TORCH_LIBRARY_IMPL(tcestim, CompositeExplicitAutograd, m) {
  m.impl("cpu_isa", &cpu_isa);
  m.impl("supported_cpu_isas", &supported_cpu_isas);
  m.impl("set_cpu_isa", &set_cpu_isa);
}

// Importing tcestim._C registers the operators above (torch.ops.tcestim.*). CUDA_MAX_DIM is the
// largest D of the CUDA kernels, for the Python side's choice of kernel or fallback; JACKKNIFE_SERIES
// and JACKKNIFE_MAX_BIG the sizes of the jackknife_sums outputs (for the fake kernel).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr &&
      (PyModule_AddIntConstant(module, "CUDA_MAX_DIM", tcestim::kCudaMaxDim) != 0 ||
       PyModule_AddIntConstant(module, "JACKKNIFE_SERIES", tcestim::kJackknifeSeries) != 0 ||
       PyModule_AddIntConstant(module, "JACKKNIFE_MAX_BIG", tcestim::kJackknifeMaxBig) != 0)) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
