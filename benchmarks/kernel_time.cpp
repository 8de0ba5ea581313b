// The fused CPU kernels alone, no torch: serial forward and backward time of the mixture
// log-density at one size, for every instruction set this CPU supports (csrc/cpu/kernel_table.h),
// and of the jackknife's sums (the same z as queries, the K components as the others).
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
  const int64_t R = D + 1;
  std::vector<float> shift(M * R), threshold(M * R), power_sums(M * R * tcestim::kJackknifeSeries);
  std::vector<float> g_power_sums(M * R * tcestim::kJackknifeSeries, 1.0f / M);
  std::vector<int64_t> big_index(M * R * tcestim::kJackknifeMaxBig), big_count(M * R);
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
    const tcestim::JackknifeArgs<float> jk{z.data(), mu.data(), logvar.data(), M, K, D, shift.data(),
                                           threshold.data(), big_index.data(), big_count.data(), power_sums.data()};
    const tcestim::JackknifeBackwardArgs<float> jk_bwd{g_power_sums.data(), z.data(), mu.data(), logvar.data(),
                                                       shift.data(), threshold.data(), M, K, D, owned,
                                                       grad_z.data(), grad_mu.data(), grad_logvar.data()};
    double best[4] = {1e30, 1e30, 1e30, 1e30};
    for (int trial = 0; trial < 7; ++trial) {
      const std::function<void()> calls[4] = {[&] { kernels.forward(fwd, serial); },
                                              [&] { kernels.backward(bwd, serial); },
                                              [&] { kernels.jackknife_forward(jk, serial); },
                                              [&] { kernels.jackknife_backward(jk_bwd, serial); }};
      for (int c = 0; c < 4; ++c) {
        const auto start = std::chrono::steady_clock::now();
        calls[c]();
        best[c] = std::min(best[c], seconds_since(start));
      }
    }
    std::printf("{\"isa\": \"%s\", \"M\": %lld, \"K\": %lld, \"D\": %lld, \"grad_components\": %lld, "
                "\"forward_ms\": %.3f, \"backward_ms\": %.3f, \"jackknife_forward_ms\": %.3f, "
                "\"jackknife_backward_ms\": %.3f}\n",
                tcestim::cpu::isa_name(isa), static_cast<long long>(M), static_cast<long long>(K),
                static_cast<long long>(D), static_cast<long long>(owned), best[0] * 1e3, best[1] * 1e3,
                best[2] * 1e3, best[3] * 1e3);
  }
  return 0;
}
