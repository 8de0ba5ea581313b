// Runs the CUDA kernels of csrc/cuda against a naive double reference: forward and backward, both
// weight modes, float and double, M != K, D from 0 to kMaxDim, split launches, -inf weights, NaN, far
// queries, and a bitwise rerun. One source, two builds: on the CPU under the emulation
// (fake_cuda/, CMake target cuda_emulation, run.sh) and with nvcc on a GPU (scripts/gpu_session.sh).
// Outputs start as 7 and workspaces as NaN bytes, so unwritten outputs and reads of unwritten
// workspace fail the comparison.
//     driver [quick|small]    quick: the CI set (without D = 1500 and 70 x 90 x 64);
//                             small: a few cases that reach every kernel, for compute-sanitizer
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "mixture_logdensity_kernels.h"

using namespace tcestim::cuda;

static int failures = 0, checks = 0;
static double worst = 0;

static void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::printf("FATAL %s: %s\n", what, cudaGetErrorString(err));
    std::exit(2);
  }
}

// Device memory holding a copy of a host vector (at least one element, so no null pointers).
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(const std::vector<T>& host) : n(host.size()) {
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
    check_cuda(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr); }
  std::vector<T> get() const {
    std::vector<T> host(n);
    check_cuda(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return host;
  }
};

// A workspace of NaN bytes (0xFF...).
struct Workspace {
  void* ptr = nullptr;
  explicit Workspace(size_t bytes) {
    check_cuda(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), "cudaMalloc");
    check_cuda(cudaMemset(ptr, 0xFF, bytes), "cudaMemset");
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() { cudaFree(ptr); }
};

// The launch's own error, then any error of the kernels themselves.
static cudaError_t finish(cudaError_t launched) {
  if (launched != cudaSuccess) return launched;
  return cudaDeviceSynchronize();
}

static bool close(double got, double want, double rtol, double atol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

struct Problem {
  int64_t M, K, D;
  std::vector<double> z, mu, lv, lw;  // lw dense (M, K) natural log (used also as structured matrix)
  bool dense;
  double ls, ln, lo;
};

static double structured_at(const Problem& p, int64_t i, int64_t j) {
  const int64_t nxt = (i + 1) % p.M;
  return j == i ? p.ls : (j == nxt ? p.ln : p.lo);
}
static double weight(const Problem& p, int64_t i, int64_t j) { return p.dense ? p.lw[i * p.K + j] : structured_at(p, i, j); }

static double cube(const Problem& p, int64_t i, int64_t j, int64_t d) {
  const double t = p.z[i * p.D + d] - p.mu[j * p.D + d];
  return -0.5 * (std::log(2 * M_PI) + p.lv[j * p.D + d] + t * t * std::exp(-p.lv[j * p.D + d]));
}

static double lse(const std::vector<double>& x) {
  double m = -INFINITY;
  for (double v : x) m = std::fmax(m, v);
  if (m == -INFINITY) m = 0;
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  return m + std::log(s);
}

static void reference_forward(const Problem& p, std::vector<double>& lqz, std::vector<double>& lqzd) {
  lqz.assign(p.M, 0);
  lqzd.assign(p.M * p.D, 0);
  std::vector<double> xs(p.K);
  for (int64_t i = 0; i < p.M; ++i) {
    for (int64_t j = 0; j < p.K; ++j) {
      double sum = 0;
      for (int64_t d = 0; d < p.D; ++d) sum += cube(p, i, j, d);
      xs[j] = weight(p, i, j) + sum;
    }
    lqz[i] = lse(xs);
    for (int64_t d = 0; d < p.D; ++d) {
      for (int64_t j = 0; j < p.K; ++j) xs[j] = weight(p, i, j) + cube(p, i, j, d);
      lqzd[i * p.D + d] = lse(xs);
    }
  }
}

static void reference_backward(const Problem& p, const std::vector<double>& g, const std::vector<double>& gd,
                               const std::vector<double>& lqz, const std::vector<double>& lqzd,
                               std::vector<double>& gz, std::vector<double>& gmu, std::vector<double>& glv,
                               std::vector<double>& gw) {
  gz.assign(p.M * p.D, 0);
  gmu.assign(p.K * p.D, 0);
  glv.assign(p.K * p.D, 0);
  gw.assign(p.M * p.K, 0);
  for (int64_t i = 0; i < p.M; ++i) {
    for (int64_t j = 0; j < p.K; ++j) {
      double sum = 0;
      for (int64_t d = 0; d < p.D; ++d) sum += cube(p, i, j, d);
      const double lw = weight(p, i, j);
      const double P = std::exp(lw + sum - lqz[i]);
      double gwij = g[i] * P;
      for (int64_t d = 0; d < p.D; ++d) {
        const double Q = std::exp(lw + cube(p, i, j, d) - lqzd[i * p.D + d]);
        const double W = g[i] * P + gd[i * p.D + d] * Q;
        gwij += gd[i * p.D + d] * Q;
        const double t = p.z[i * p.D + d] - p.mu[j * p.D + d], prec = std::exp(-p.lv[j * p.D + d]);
        gz[i * p.D + d] += -W * t * prec;
        gmu[j * p.D + d] += W * t * prec;
        glv[j * p.D + d] += W * (-0.5 + 0.5 * t * t * prec);
      }
      gw[i * p.K + j] = gwij;
    }
  }
}

static Problem make_problem(int64_t M, int64_t K, int64_t D, bool dense, unsigned seed, double shift = 0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> n01(0, 1);
  Problem p{M, K, D, {}, {}, {}, {}, dense, std::log(0.02), std::log(0.3), std::log(0.04)};
  for (int64_t k = 0; k < M * D; ++k) p.z.push_back(n01(rng) + shift);
  for (int64_t k = 0; k < K * D; ++k) p.mu.push_back(n01(rng));
  for (int64_t k = 0; k < K * D; ++k) p.lv.push_back(0.6 * n01(rng) - 0.3);
  for (int64_t k = 0; k < M * K; ++k) p.lw.push_back(0.5 * n01(rng) - std::log(double(std::max<int64_t>(K, 1))));
  return p;
}

template <typename T>
static std::vector<T> cast(const std::vector<double>& v) { return std::vector<T>(v.begin(), v.end()); }

template <typename T>
static void expect_all(const char* what, const std::string& tag, const std::vector<T>& got, const std::vector<double>& want, double rtol, double atol) {
  int bad = 0;
  for (size_t k = 0; k < want.size(); ++k) {
    ++checks;
    if (!close(double(got[k]), want[k], rtol, atol)) {
      if (bad < 3) std::printf("FAIL %s %s [%zu]: got %.10g want %.10g\n", tag.c_str(), what, k, double(got[k]), want[k]);
      ++bad;
    } else if (std::isfinite(want[k])) {
      worst = std::fmax(worst, std::fabs(double(got[k]) - want[k]) / (atol + rtol * std::fabs(want[k])));
    }
  }
  failures += bad;
}

template <typename T>
static void run_case(const Problem& p, int num_sms, bool check_backward = true, double backward_tol_scale = 1,
                     int64_t grad_components = -1) {
  const int64_t owned = grad_components < 0 ? p.K : grad_components;
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s M=%ld K=%ld D=%ld %s sms=%d grad_components=%ld", sizeof(T) == 4 ? "f32" : "f64", (long)p.M, (long)p.K, (long)p.D, p.dense ? "dense" : "struct", num_sms, (long)owned);
  const std::string tag = buf;
  const double rtol = sizeof(T) == 4 ? 2e-5 : 1e-11, atol = sizeof(T) == 4 ? 2e-5 : 1e-11;
  const DeviceArray<T> z(cast<T>(p.z)), mu(cast<T>(p.mu)), lv(cast<T>(p.lv)), lw(cast<T>(p.lw));
  DeviceArray<T> qz(std::vector<T>(p.M, T(7))), qzd(std::vector<T>(p.M * p.D, T(7)));
  ForwardArgs<T> fa{z.ptr, mu.ptr, lv.ptr, p.dense ? lw.ptr : nullptr, p.M, p.K, p.D, p.ls, p.ln, p.lo, qz.ptr, qzd.ptr};
  const Workspace ws(forward_workspace_bytes(fa, num_sms));
  if (finish(launch_forward(fa, Launch{ws.ptr, num_sms, nullptr})) != cudaSuccess) { std::printf("FAIL %s: forward launch error\n", tag.c_str()); ++failures; return; }
  const std::vector<T> lqz = qz.get(), lqzd = qzd.get();
  Problem pr = p;  // reference on the values the kernel saw (rounded to T)
  for (auto* v : {&pr.z, &pr.mu, &pr.lv, &pr.lw}) for (double& x : *v) x = double(T(x));
  std::vector<double> rqz, rqzd;
  reference_forward(pr, rqz, rqzd);
  expect_all("log_qz", tag, lqz, rqz, rtol, atol);
  expect_all("log_qzd", tag, lqzd, rqzd, rtol, atol);
  // Determinism: a second run is bitwise equal.
  DeviceArray<T> qz2(std::vector<T>(p.M, T(7))), qzd2(std::vector<T>(p.M * p.D, T(7)));
  fa.log_qz = qz2.ptr; fa.log_qzd = qzd2.ptr;
  const Workspace ws2(forward_workspace_bytes(fa, num_sms));
  finish(launch_forward(fa, Launch{ws2.ptr, num_sms, nullptr}));
  const std::vector<T> lqz2 = qz2.get();
  for (int64_t k = 0; k < p.M; ++k) if (std::memcmp(&lqz[k], &lqz2[k], sizeof(T))) { ++failures; std::printf("FAIL %s nondeterministic\n", tag.c_str()); break; }
  if (!check_backward) return;

  std::mt19937 rng(99);
  std::normal_distribution<double> n01(0, 1);
  std::vector<double> g(p.M), gd(p.M * p.D);
  for (auto& x : g) x = double(T(n01(rng)));
  for (auto& x : gd) x = double(T(n01(rng)));
  const DeviceArray<T> gT(cast<T>(g)), gdT(cast<T>(gd));
  // saved outputs: the reference's, rounded to T (what a correct forward returns)
  const std::vector<T> sqz = cast<T>(rqz), sqzd = cast<T>(rqzd);
  std::vector<double> sqzD(sqz.begin(), sqz.end()), sqzdD(sqzd.begin(), sqzd.end());
  const DeviceArray<T> sqzT(sqz), sqzdT(sqzd);
  DeviceArray<T> dgz(std::vector<T>(p.M * p.D, T(7))), dgmu(std::vector<T>(p.K * p.D, T(7))),
      dglv(std::vector<T>(p.K * p.D, T(7))), dgw(std::vector<T>(p.M * p.K, T(7)));
  BackwardArgs<T> ba{gT.ptr, gdT.ptr, z.ptr, mu.ptr, lv.ptr, p.dense ? lw.ptr : nullptr, sqzT.ptr, sqzdT.ptr,
                     p.M, p.K, p.D, p.ls, p.ln, p.lo, owned, dgz.ptr, dgmu.ptr, dglv.ptr, p.dense ? dgw.ptr : nullptr};
  const Workspace wsb(backward_workspace_bytes(ba, num_sms));
  if (finish(launch_backward(ba, Launch{wsb.ptr, num_sms, nullptr})) != cudaSuccess) { std::printf("FAIL %s: backward launch error\n", tag.c_str()); ++failures; return; }
  const std::vector<T> gz = dgz.get(), gmu = dgmu.get(), glv = dglv.get(), gw = dgw.get();
  std::vector<double> rgz, rgmu, rglv, rgw;
  reference_backward(pr, g, gd, sqzD, sqzdD, rgz, rgmu, rglv, rgw);
  const double brtol = (sizeof(T) == 4 ? 1e-4 : 1e-10) * backward_tol_scale, batol = brtol;
  expect_all("grad_z", tag, gz, rgz, brtol, batol);
  // Components from grad_components on are constants: their rows are not written (7 survives).
  for (int64_t k = owned * p.D; k < p.K * p.D; ++k) rgmu[k] = rglv[k] = 7.0;
  expect_all("grad_mu", tag, gmu, rgmu, brtol, batol);
  expect_all("grad_logvar", tag, glv, rglv, brtol, batol);
  if (p.dense) expect_all("grad_logw", tag, gw, rgw, brtol, batol);
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "small") {
    for (bool dense : {false, true}) {
      run_case<float>(make_problem(17, 17, 4, dense, 1), 132);
      run_case<double>(make_problem(9, 40, 11, dense, 2), 1);
    }
    run_case<float>(make_problem(6, 700, 6, true, 14), 132);   // split rows: forward merge, grad_z sums
    run_case<float>(make_problem(700, 6, 3, false, 16), 132);  // split columns: grad_mu/logvar sums
    run_case<double>(make_problem(2, 9, kMaxDim, false, 27), 1);    // *_large kernels, > 48 KB
    std::printf("%d checks, %d failures, worst finite error %.3g of tolerance\n", checks, failures, worst);
    return failures != 0;
  }
  const bool quick = mode == "quick";
  struct S { int64_t M, K, D; };
  std::vector<S> shapes = {{1, 1, 1}, {3, 5, 2}, {17, 17, 4}, {33, 20, 1}, {9, 40, 11}, {40, 9, 5}, {64, 64, 32}, {50, 37, 10}, {20, 30, 0}};
  if (!quick) shapes.push_back({70, 90, 64});
  for (const S& s : shapes) {
    for (bool dense : {false, true}) {
      for (int sms : {1, 132}) {
        run_case<float>(make_problem(s.M, s.K, s.D, dense, 1 + s.M + 7 * s.K + 31 * s.D), sms);
        run_case<double>(make_problem(s.M, s.K, s.D, dense, 2 + s.M + 7 * s.K + 31 * s.D), sms);
      }
    }
  }
  // large D (one group spans many warps), and D > 1024 (512-thread blocks, > 48 KB smem)
  run_case<float>(make_problem(5, 7, 300, false, 11), 132, false);  // float joint over 300 dims: ~1e-4
  run_case<double>(make_problem(5, 7, 300, false, 11), 132);
  run_case<double>(make_problem(4, 6, 300, true, 12), 132);
  run_case<float>(make_problem(2, 9, kMaxDim, true, 26), 132, false);
  run_case<double>(make_problem(2, 9, kMaxDim, false, 27), 1);
  {
    float x = 0;
    ForwardArgs<float> bad{&x, &x, &x, nullptr, 1, 1, kMaxDim + 1, 0, 0, 0, &x, &x};
    if (launch_forward(bad, Launch{nullptr, 1, nullptr}) != cudaErrorInvalidValue) { ++failures; std::printf("FAIL D > kMaxDim accepted\n"); }
  }
  if (!quick) {
    run_case<float>(make_problem(3, 20, 1500, false, 13), 132, false);
    run_case<double>(make_problem(3, 20, 1500, true, 13), 132);
  }
  // grad_components < K: a batch of 6 before 700 constant components (split rows), 0 and 1 of them
  run_case<float>(make_problem(6, 700, 6, false, 28), 132, true, 1, 6);
  run_case<double>(make_problem(6, 700, 6, true, 29), 132, true, 1, 6);
  run_case<double>(make_problem(40, 300, 5, false, 30), 1, true, 1, 40);
  run_case<double>(make_problem(9, 40, 11, false, 31), 132, true, 1, 0);
  run_case<float>(make_problem(17, 17, 4, true, 32), 1, true, 1, 1);
  {
    float x = 0;
    BackwardArgs<float> bad{&x, &x, &x, &x, &x, nullptr, &x, &x, 1, 1, 1, 0, 0, 0, 2, &x, &x, &x, nullptr};
    if (launch_backward(bad, Launch{nullptr, 1, nullptr}) != cudaErrorInvalidValue) { ++failures; std::printf("FAIL grad_components > K accepted\n"); }
  }
  // split path with many tiles: few queries, many components
  run_case<float>(make_problem(6, 700, 6, false, 14), 132);
  run_case<float>(make_problem(6, 700, 6, true, 15), 132);
  run_case<double>(make_problem(700, 6, 3, false, 16), 132);
  // far queries: every term underflows without the max shift
  // (float gradients there are ill-conditioned: compare them in double only)
  run_case<float>(make_problem(6, 5, 3, false, 17, 1000.0), 132, false);
  run_case<double>(make_problem(6, 5, 3, false, 17, 1000.0), 132, true, 100);  // 1e3-sigma queries: conditioning
  run_case<float>(make_problem(40, 50, 3, false, 18, 30.0), 1, false);
  run_case<double>(make_problem(40, 50, 3, true, 18, 30.0), 1);
  // structured with M != K and next wrapping into the last partial tile
  run_case<float>(make_problem(18, 17, 2, false, 19), 1);
  run_case<float>(make_problem(18, 40, 2, false, 20), 1);
  // -inf weights: empty mixture -> -inf (forward only; CPU gives NaN gradients there too)
  {
    Problem p = make_problem(5, 4, 2, false, 21);
    p.ls = p.ln = p.lo = -INFINITY;
    run_case<float>(p, 1, false);
    run_case<double>(p, 132, false);
    Problem q = make_problem(5, 40, 3, false, 22);
    q.lo = -INFINITY;  // only self and next count
    run_case<float>(q, 1);
    run_case<double>(q, 132);
    Problem r = make_problem(6, 30, 3, true, 23);
    for (int64_t j = 0; j < r.K; ++j) r.lw[2 * r.K + j] = -INFINITY;  // row 2 empty
    for (int64_t j = 0; j < 20; ++j) r.lw[4 * r.K + j] = -INFINITY;
    run_case<float>(r, 1, false);
  }
  // NaN propagates
  {
    Problem p = make_problem(7, 9, 3, false, 24);
    p.z[1 * 3 + 2] = NAN;
    run_case<float>(p, 1, false);
    Problem q = make_problem(7, 40, 3, false, 25);
    q.mu[5 * 3 + 1] = NAN;
    run_case<float>(q, 1, false);
  }
#ifdef TCESTIM_CUDA_EMULATION
  std::printf("emulation: %ld launches, %ld refused, max dynamic shared memory %zu bytes\n", emu::launches, emu::refused, emu::max_smem_seen);
  if (emu::refused != 0) ++failures;
#endif
  std::printf("%d checks, %d failures, worst finite error %.3g of tolerance\n", checks, failures, worst);
  return failures != 0;
}
