// Throughput of the kernels' own exp2 (csrc/cpu/exp2.h) on this machine: the "exp floor" that
// benchmarks/run_threads.py compares the kernels with. No torch.
//
//   exp2_throughput THREADS [float|double]   ->  one JSON line
//
// Each thread evaluates sum += exp2(x - c) over an L1-resident array of arguments in [-24, 0] with
// eight independent accumulators (load, subtract, exp2, add: the innermost work of the kernels'
// sums, nothing else). Built with -march=native, so the vectors are as wide as the kernels' best
// instruction set here. The result is the best of several trials: evaluations per second over all
// threads, from the first thread's start to the last thread's end.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "exp2.h"

namespace {

using namespace tcestim;

constexpr int kArrayBytes = 16 * 1024;
constexpr int kAccumulators = 8;
constexpr int kTrials = 7;
constexpr double kTrialSeconds = 0.4;

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float Vec __attribute__((vector_size(TCESTIM_VECTOR_BYTES)));
  typedef uint32_t Bits __attribute__((vector_size(TCESTIM_VECTOR_BYTES)));
};
template <>
struct Simd<double> {
  typedef double Vec __attribute__((vector_size(TCESTIM_VECTOR_BYTES)));
  typedef uint64_t Bits __attribute__((vector_size(TCESTIM_VECTOR_BYTES)));
};

// exp2 evaluations done by `reps` sweeps over the array; the sum is returned so it is not dropped.
template <typename T>
double sweep(const std::vector<T>& args, int64_t reps, int64_t* evaluations) {
  using V = typename Simd<T>::Vec;
  using B = typename Simd<T>::Bits;
  constexpr int kLanes = TCESTIM_VECTOR_BYTES / sizeof(T);
  const int64_t vectors = static_cast<int64_t>(args.size()) / kLanes;
  V acc[kAccumulators] = {};
  const V shift = detail::splat<V>(T(0.25));
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t v = 0; v < vectors; v += kAccumulators) {
      for (int a = 0; a < kAccumulators; ++a) {
        V x;
        std::memcpy(&x, args.data() + (v + a) * kLanes, sizeof(V));
        acc[a] += fast_exp2<T, V, B>(x - shift);
      }
    }
  }
  *evaluations = reps * vectors * kLanes;
  double total = 0;
  for (int a = 0; a < kAccumulators; ++a)
    for (int l = 0; l < kLanes; ++l) total += acc[a][l];
  return total;
}

template <typename T>
double evaluations_per_second(int threads) {
  std::vector<T> args(kArrayBytes / sizeof(T));
  for (size_t k = 0; k < args.size(); ++k) args[k] = T(-24.0 * double(k % 997) / 997.0);

  // Calibrate the repetitions so that one trial takes about kTrialSeconds on one thread.
  int64_t reps = 64, evaluations = 0;
  double sink = 0;
  for (;;) {
    const auto start = std::chrono::steady_clock::now();
    sink += sweep(args, reps, &evaluations);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (s > kTrialSeconds / 4) {
      reps = std::max<int64_t>(1, int64_t(reps * kTrialSeconds / s));
      break;
    }
    reps *= 4;
  }

  double best = 0;
  std::vector<double> sums(threads);
  for (int trial = 0; trial < kTrials; ++trial) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    std::vector<int64_t> counts(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        ready.fetch_add(1);
        while (!go.load()) {
        }
        sums[t] += sweep(args, reps, &counts[t]);
      });
    }
    while (ready.load() < threads) {
    }
    const auto start = std::chrono::steady_clock::now();
    go.store(true);
    for (auto& thread : pool) thread.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int64_t total = 0;
    for (int64_t c : counts) total += c;
    best = std::max(best, double(total) / s);
  }
  for (double s : sums) sink += s;
  if (sink == -1.0) std::printf("%g\n", sink);  // keeps the sums observable
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const std::string dtype = argc > 2 ? argv[2] : "float";
  if (threads < 1 || (dtype != "float" && dtype != "double")) {
    std::fprintf(stderr, "usage: %s THREADS [float|double]\n", argv[0]);
    return 2;
  }
  const double rate = dtype == "float" ? evaluations_per_second<float>(threads)
                                       : evaluations_per_second<double>(threads);
  std::printf("{\"threads\": %d, \"dtype\": \"%s\", \"vector_bytes\": %d, \"exp2_per_s\": %.6g}\n",
              threads, dtype.c_str(), TCESTIM_VECTOR_BYTES, rate);
  return 0;
}
