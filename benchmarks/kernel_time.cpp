// The fused CPU kernels alone, no torch: serial forward and backward time of the mixture
// log-density at one size, for every instruction set this CPU supports (csrc/cpu/kernel_table.h).
//
//   kernel_time [M K D [GRAD_COMPONENTS]]   ->  one JSON line per instruction set
//
// float32, structured weights (dataset size 60 000), VAE-like encodings (z drawn from its own
// component, logvar in [-3, 0]), the TC's upstream gradients (1/M, -1/M). Best of 7 calls each;
// one thread, so that it compares with exp2_throughput's single-thread floor.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "kernel_table.h"

namespace {

using tcestim::cpu::Isa;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t M = argc > 1 ? std::atoll(argv[1]) : 2048;
  const int64_t K = argc > 2 ? std::atoll(argv[2]) : M;
  const int64_t D = argc > 3 ? std::atoll(argv[3]) : 32;
  const int64_t owned = argc > 4 ? std::atoll(argv[4]) : K;
  if (M < 1 || K < M || D < 1 || owned < 0 || owned > K) {
    std::fprintf(stderr,
                 "usage: kernel_time [M K D [GRAD_COMPONENTS]] with 1 <= M <= K, D >= 1, "
                 "0 <= GRAD_COMPONENTS <= K\n");
    return 2;
  }
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(-3.0f, 0.0f);
  std::vector<float> z(M * D), mu(K * D), logvar(K * D), log_qz(M), log_qzd(M * D);
  std::vector<float> g_qz(M, 1.0f / M), g_qzd(M * D, -1.0f / M), grad_z(M * D), grad_mu(K * D), grad_logvar(K * D);
  for (int64_t k = 0; k < K * D; ++k) {
    mu[k] = normal(gen);
    logvar[k] = uniform(gen);
  }
  for (int64_t k = 0; k < M * D; ++k) z[k] = mu[k] + normal(gen) * std::exp(0.5f * logvar[k]);
  const double n = 60000;
  const double log_self = -std::log(n), log_other = std::log((n - 1) / (n * (M - 1 > 0 ? M - 1 : 1)));
  const tcestim::cpu::ParallelFor serial = [](int64_t tasks, const std::function<void(int64_t, int64_t)>& fn) {
    fn(0, tasks);
  };

  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kDefault}) {
    if (!tcestim::cpu::isa_supported(isa)) continue;
    const auto& kernels = tcestim::cpu::kernels<float>(isa);
    const tcestim::ForwardArgs<float> fwd{z.data(), mu.data(), logvar.data(), nullptr, M, K, D,
                                          log_self, log_other, log_other, log_qz.data(), log_qzd.data()};
    const tcestim::BackwardArgs<float> bwd{g_qz.data(), g_qzd.data(), z.data(), mu.data(), logvar.data(), nullptr,
                                           log_qz.data(), log_qzd.data(), M, K, D, log_self, log_other, log_other,
                                           owned, grad_z.data(), grad_mu.data(), grad_logvar.data(), nullptr};
    double forward_s = 1e30, backward_s = 1e30;
    for (int trial = 0; trial < 7; ++trial) {
      auto start = std::chrono::steady_clock::now();
      kernels.forward(fwd, serial);
      forward_s = std::min(forward_s, seconds_since(start));
      start = std::chrono::steady_clock::now();
      kernels.backward(bwd, serial);
      backward_s = std::min(backward_s, seconds_since(start));
    }
    std::printf("{\"isa\": \"%s\", \"M\": %lld, \"K\": %lld, \"D\": %lld, \"grad_components\": %lld, "
                "\"forward_ms\": %.3f, \"backward_ms\": %.3f}\n",
                tcestim::cpu::isa_name(isa), static_cast<long long>(M), static_cast<long long>(K),
                static_cast<long long>(D), static_cast<long long>(owned), forward_s * 1e3, backward_s * 1e3);
  }
  return 0;
}
