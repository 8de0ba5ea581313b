// C++ unit tests for the CPU kernels, against a naive double-precision reference written here.
// Built and run by CMake/ctest without Python or torch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kernel_table.h"

namespace {

using tcestim::cpu::BackwardArgs;
using tcestim::cpu::ForwardArgs;
using tcestim::cpu::Isa;

int g_failures = 0;
Isa g_isa = Isa::kDefault;

void expect_close(const char* what, double got, double want, double rtol, double atol) {
  if (!(std::fabs(got - want) <= atol + rtol * std::fabs(want))) {
    std::printf("FAIL %s: got %.17g want %.17g\n", what, got, want);
    ++g_failures;
  }
}

struct Problem {
  int64_t M, K, D;
  std::vector<double> z, mu, logvar, logw;  // logw is the dense (M, K) natural-log matrix
};

// d loss / d (p.*field)[k] by a central difference of step 1e-6.
template <typename Loss>
double central_difference(const Problem& p, const Loss& loss, std::vector<double> Problem::*field, int64_t k) {
  const double h = 1e-6;
  Problem plus = p, minus = p;
  (plus.*field)[k] += h;
  (minus.*field)[k] -= h;
  return (loss(plus) - loss(minus)) / (2 * h);
}

Problem make_problem(int64_t M, int64_t K, int64_t D, unsigned seed, bool structured,
                     double ls, double ln, double lo) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Problem p{M, K, D, {}, {}, {}, {}};
  for (int64_t k = 0; k < M * D; ++k) p.z.push_back(normal(rng));
  for (int64_t k = 0; k < K * D; ++k) p.mu.push_back(normal(rng));
  for (int64_t k = 0; k < K * D; ++k) p.logvar.push_back(0.5 * normal(rng) - 0.5);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < K; ++j) {
      if (structured) {
        const int64_t next = (i + 1) % M;
        p.logw.push_back(j == i ? ls : (j == next ? ln : lo));
      } else {
        p.logw.push_back(0.3 * normal(rng) - std::log(double(K)));
      }
    }
  return p;
}

double log_normal(double z, double mu, double logvar) {
  return -0.5 * (std::log(2 * M_PI) + logvar + (z - mu) * (z - mu) * std::exp(-logvar));
}

double logsumexp(const std::vector<double>& v) {
  double m = -INFINITY;
  for (double x : v) m = std::max(m, x);
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}

// Reference forward and the scalar loss L = sum_i a_i log_qz[i] + sum_id b_id log_qzd[i,d].
void reference_forward(const Problem& p, std::vector<double>& lqz, std::vector<double>& lqzd) {
  lqz.assign(p.M, 0);
  lqzd.assign(p.M * p.D, 0);
  for (int64_t i = 0; i < p.M; ++i) {
    std::vector<double> joint(p.K);
    for (int64_t j = 0; j < p.K; ++j) {
      joint[j] = p.logw[i * p.K + j];
      for (int64_t d = 0; d < p.D; ++d)
        joint[j] += log_normal(p.z[i * p.D + d], p.mu[j * p.D + d], p.logvar[j * p.D + d]);
    }
    lqz[i] = logsumexp(joint);
    for (int64_t d = 0; d < p.D; ++d) {
      std::vector<double> marg(p.K);
      for (int64_t j = 0; j < p.K; ++j)
        marg[j] = p.logw[i * p.K + j] +
                  log_normal(p.z[i * p.D + d], p.mu[j * p.D + d], p.logvar[j * p.D + d]);
      lqzd[i * p.D + d] = logsumexp(marg);
    }
  }
}

// Two uneven chunks, to exercise the task split.
const tcestim::cpu::ParallelFor serial = [](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  fn(0, n / 3);
  fn(n / 3, n);
};

// Three threads at once, one task range each.
const tcestim::cpu::ParallelFor threaded = [](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < 3; ++t) threads.emplace_back(fn, n * t / 3, n * (t + 1) / 3);
  for (auto& thread : threads) thread.join();
};

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
void check_forward(const std::string& name, const Problem& p, bool structured, double ls, double ln,
                   double lo, double rtol, double atol) {
  std::vector<double> want_qz, want_qzd;
  reference_forward(p, want_qz, want_qzd);
  auto z = cast<T>(p.z), mu = cast<T>(p.mu), lv = cast<T>(p.logvar), lw = cast<T>(p.logw);
  std::vector<T> qz(p.M), qzd(p.M * p.D);
  const ForwardArgs<T> args{z.data(), mu.data(), lv.data(), structured ? nullptr : lw.data(),
                            p.M, p.K, p.D, ls, ln, lo, qz.data(), qzd.data()};
  tcestim::cpu::kernels<T>(g_isa).forward(args, serial);
  for (int64_t i = 0; i < p.M; ++i) expect_close((name + " log_qz").c_str(), qz[i], want_qz[i], rtol, atol);
  for (int64_t k = 0; k < p.M * p.D; ++k)
    expect_close((name + " log_qzd").c_str(), qzd[k], want_qzd[k], rtol, atol);
}

// Backward in double against central finite differences of the reference forward.
void check_backward(const std::string& name, Problem p, bool structured, double ls, double ln, double lo) {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> a(p.M), b(p.M * p.D);
  for (auto& x : a) x = normal(rng);
  for (auto& x : b) x = normal(rng);
  auto loss = [&](const Problem& q) {
    std::vector<double> lqz, lqzd;
    reference_forward(q, lqz, lqzd);
    double s = 0;
    for (int64_t i = 0; i < q.M; ++i) s += a[i] * lqz[i];
    for (int64_t k = 0; k < q.M * q.D; ++k) s += b[k] * lqzd[k];
    return s;
  };
  std::vector<double> lqz, lqzd;
  reference_forward(p, lqz, lqzd);
  std::vector<double> gz(p.M * p.D), gmu(p.K * p.D), glv(p.K * p.D), glw(p.M * p.K);
  const BackwardArgs<double> args{a.data(), b.data(), p.z.data(), p.mu.data(), p.logvar.data(),
                                   structured ? nullptr : p.logw.data(), lqz.data(), lqzd.data(),
                                   p.M, p.K, p.D, ls, ln, lo, p.K, gz.data(), gmu.data(), glv.data(),
                                   structured ? nullptr : glw.data()};
  tcestim::cpu::kernels<double>(g_isa).backward(args, serial);
  auto fd = [&](std::vector<double> Problem::*field, int64_t k) { return central_difference(p, loss, field, k); };
  for (int64_t k = 0; k < p.M * p.D; ++k) expect_close((name + " grad_z").c_str(), gz[k], fd(&Problem::z, k), 1e-6, 1e-7);
  for (int64_t k = 0; k < p.K * p.D; ++k) {
    expect_close((name + " grad_mu").c_str(), gmu[k], fd(&Problem::mu, k), 1e-6, 1e-7);
    expect_close((name + " grad_logvar").c_str(), glv[k], fd(&Problem::logvar, k), 1e-6, 1e-7);
  }
  if (!structured)
    for (int64_t k = 0; k < p.M * p.K; ++k)
      expect_close((name + " grad_logw").c_str(), glw[k], fd(&Problem::logw, k), 1e-6, 1e-7);
}

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Forward and backward on three threads give bitwise the results of the serial split.
template <typename T>
void check_threads_bitwise(const std::string& name, const Problem& p, bool structured, double ls,
                           double ln, double lo) {
  auto z = cast<T>(p.z), mu = cast<T>(p.mu), lv = cast<T>(p.logvar), lw = cast<T>(p.logw);
  std::vector<T> a(p.M), b(p.M * p.D);
  for (int64_t k = 0; k < p.M; ++k) a[k] = T(std::sin(0.7 * k));
  for (int64_t k = 0; k < p.M * p.D; ++k) b[k] = T(std::cos(0.3 * k));
  std::vector<std::vector<T>> outs[2];
  int run = 0;
  for (const auto* parallel_for : {&serial, &threaded}) {
    std::vector<T> qz(p.M), qzd(p.M * p.D), gz(p.M * p.D), gmu(p.K * p.D), glv(p.K * p.D), glw(p.M * p.K);
    const ForwardArgs<T> fwd{z.data(), mu.data(), lv.data(), structured ? nullptr : lw.data(),
                             p.M, p.K, p.D, ls, ln, lo, qz.data(), qzd.data()};
    tcestim::cpu::kernels<T>(g_isa).forward(fwd, *parallel_for);
    const BackwardArgs<T> bwd{a.data(), b.data(), z.data(), mu.data(), lv.data(),
                              structured ? nullptr : lw.data(), qz.data(), qzd.data(), p.M, p.K, p.D,
                              ls, ln, lo, p.K, gz.data(), gmu.data(), glv.data(),
                              structured ? nullptr : glw.data()};
    tcestim::cpu::kernels<T>(g_isa).backward(bwd, *parallel_for);
    outs[run++] = {qz, qzd, gz, gmu, glv, glw};
  }
  for (size_t k = 0; k < outs[0].size(); ++k) {
    if (!bitwise_equal(outs[0][k], outs[1][k])) {
      std::printf("FAIL %s: output %zu differs between the serial and the threaded run\n", name.c_str(), k);
      ++g_failures;
    }
  }
}

// grad_components < K: grad_z and the leading rows of grad_mu / grad_logvar are bitwise those of the
// full backward; the other rows are not written (their sentinel survives).
template <typename T>
void check_grad_components(const std::string& name, const Problem& p, bool structured, double ls,
                           double ln, double lo) {
  auto z = cast<T>(p.z), mu = cast<T>(p.mu), lv = cast<T>(p.logvar), lw = cast<T>(p.logw);
  std::vector<T> a(p.M), b(p.M * p.D), qz(p.M), qzd(p.M * p.D);
  for (int64_t k = 0; k < p.M; ++k) a[k] = T(std::sin(0.7 * k));
  for (int64_t k = 0; k < p.M * p.D; ++k) b[k] = T(std::cos(0.3 * k));
  const ForwardArgs<T> fwd{z.data(), mu.data(), lv.data(), structured ? nullptr : lw.data(),
                           p.M, p.K, p.D, ls, ln, lo, qz.data(), qzd.data()};
  tcestim::cpu::kernels<T>(g_isa).forward(fwd, threaded);
  std::vector<std::vector<T>> outs[2];
  const T sentinel = T(7);
  for (int run = 0; run < 2; ++run) {
    const int64_t owned = run == 0 ? p.K : std::min<int64_t>(p.M, p.K) / 2 + 1;
    std::vector<T> gz(p.M * p.D, sentinel), gmu(p.K * p.D, sentinel), glv(p.K * p.D, sentinel),
        glw(p.M * p.K, sentinel);
    const BackwardArgs<T> bwd{a.data(), b.data(), z.data(), mu.data(), lv.data(),
                              structured ? nullptr : lw.data(), qz.data(), qzd.data(), p.M, p.K, p.D,
                              ls, ln, lo, owned, gz.data(), gmu.data(), glv.data(),
                              structured ? nullptr : glw.data()};
    tcestim::cpu::kernels<T>(g_isa).backward(bwd, threaded);
    outs[run] = {gz, gmu, glv, glw};
    if (run == 1) {
      const int64_t head = owned * p.D;
      for (int k : {1, 2}) {
        const std::vector<T>& full = outs[0][k];
        const std::vector<T>& part = outs[1][k];
        if (std::memcmp(full.data(), part.data(), head * sizeof(T)) != 0) {
          std::printf("FAIL %s: leading component gradients differ from the full backward\n", name.c_str());
          ++g_failures;
        }
        for (int64_t q = head; q < p.K * p.D; ++q) {
          if (part[q] != sentinel) {
            std::printf("FAIL %s: component row %ld written\n", name.c_str(), long(q / p.D));
            ++g_failures;
            break;
          }
        }
      }
      for (int k : {0, 3}) {
        if (!bitwise_equal(outs[0][k], outs[1][k])) {
          std::printf("FAIL %s: output %d depends on grad_components\n", name.c_str(), k);
          ++g_failures;
        }
      }
    }
  }
}

// The jackknife's sums (JackknifeArgs) against a naive double computation: the terms of query i's
// target r over components k != i (natural log), their maximum m, the sum of the others but the
// first largest, the threshold log2(S / 64) (floored at -1022), the big terms above it and the power
// sums of the rest; then the
// backward against central differences of sum g * power_sums with the shift and the classification
// of the forward held fixed.
void naive_jackknife_sums(const Problem& p, const std::vector<double>* shift_nats,
                          const std::vector<char>* big_fixed, std::vector<double>& shift,
                          std::vector<std::vector<int64_t>>& big, std::vector<double>& sums,
                          std::vector<char>& is_big, std::vector<double>& threshold) {
  const int64_t R = p.D + 1, Q = tcestim::kJackknifeSeries;
  shift.assign(p.M * R, 0);
  threshold.assign(p.M * R, 0);
  big.assign(p.M * R, {});
  sums.assign(p.M * R * Q, 0);
  is_big.assign(p.M * R * p.K, 0);
  for (int64_t i = 0; i < p.M; ++i) {
    for (int64_t r = 0; r < R; ++r) {
      std::vector<double> x(p.K, -INFINITY);
      for (int64_t k = 0; k < p.K; ++k) {
        if (k == i) continue;
        double s = 0;
        for (int64_t d = 0; d < p.D; ++d) {
          if (r == 0 || d == r - 1) s += log_normal(p.z[i * p.D + d], p.mu[k * p.D + d], p.logvar[k * p.D + d]);
        }
        x[k] = s;
      }
      int64_t arg = 0;
      for (int64_t k = 1; k < p.K; ++k) if (x[k] > x[arg]) arg = k;
      const double m = shift_nats ? (*shift_nats)[i * R + r] : x[arg];
      double rest = 0;
      for (int64_t k = 0; k < p.K; ++k) if (k != arg) rest += std::exp(x[k] - m);
      shift[i * R + r] = m;
      // The threshold's floor (kernel_args.h): 2^-1022 of the largest, where exp2 flushes to 0.
      threshold[i * R + r] = std::max(std::log2(tcestim::kJackknifeBigFraction * rest), -1022.0);
      for (int64_t k = 0; k < p.K; ++k) {
        const bool b = big_fixed ? (*big_fixed)[(i * R + r) * p.K + k] != 0
                                 : (x[k] - m) / std::log(2.0) > threshold[i * R + r];
        is_big[(i * R + r) * p.K + k] = b;
        if (b) {
          big[i * R + r].push_back(k);
          continue;
        }
        const double u = std::exp(x[k] - m);
        double power = u;
        for (int64_t q = 0; q < Q; ++q, power *= u) sums[(i * R + r) * Q + q] += power;
      }
    }
  }
}

void check_jackknife(const std::string& name, Problem p) {
  const int64_t M = p.M, K = p.K, D = p.D, R = D + 1, Q = tcestim::kJackknifeSeries, B = tcestim::kJackknifeMaxBig;
  std::vector<double> shift(M * R), thr(M * R), sums(M * R * Q);
  std::vector<int64_t> big(M * R * B), count(M * R);
  const tcestim::JackknifeArgs<double> args{p.z.data(), p.mu.data(), p.logvar.data(), M, K, D,
                                            shift.data(), thr.data(), big.data(), count.data(), sums.data()};
  tcestim::cpu::kernels<double>(g_isa).jackknife_forward(args, threaded);
  std::vector<double> want_shift, want_sums, want_threshold;
  std::vector<std::vector<int64_t>> want_big;
  std::vector<char> is_big;
  naive_jackknife_sums(p, nullptr, nullptr, want_shift, want_big, want_sums, is_big, want_threshold);
  for (int64_t row = 0; row < M * R; ++row) {
    expect_close((name + " shift").c_str(), shift[row] * 0.69314718055994530942, want_shift[row], 1e-13, 1e-13);
    expect_close((name + " threshold").c_str(), thr[row], want_threshold[row], 1e-12, 1e-12);
    std::vector<int64_t> got;
    for (int64_t b = 0; b < B && big[row * B + b] >= 0; ++b) got.push_back(big[row * B + b]);
    if (got != want_big[row] || count[row] != static_cast<int64_t>(got.size())) {
      std::printf("FAIL %s: big terms of row %ld differ (%zu vs %zu)\n", name.c_str(), long(row), got.size(),
                  want_big[row].size());
      ++g_failures;
    }
    for (int64_t q = 0; q < Q; ++q)
      expect_close((name + " power sums").c_str(), sums[row * Q + q], want_sums[row * Q + q], 1e-11, 1e-300);
  }
  // Backward, the components from K / 2 on constant (grad_components).
  std::mt19937 rng(5);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> g(M * R * Q);
  for (auto& v : g) v = normal(rng);
  const int64_t owned = K / 2;
  std::vector<double> gz(M * D), gmu(K * D, 7.0), glv(K * D, 7.0);
  const tcestim::JackknifeBackwardArgs<double> bwd{g.data(), p.z.data(), p.mu.data(), p.logvar.data(),
                                                   shift.data(), thr.data(), M, K, D, owned,
                                                   gz.data(), gmu.data(), glv.data()};
  tcestim::cpu::kernels<double>(g_isa).jackknife_backward(bwd, threaded);
  std::vector<double> fixed_shift(want_shift);
  auto loss = [&](const Problem& q) {
    std::vector<double> s, sm, th;
    std::vector<std::vector<int64_t>> bg;
    std::vector<char> ib;
    naive_jackknife_sums(q, &fixed_shift, &is_big, s, bg, sm, ib, th);
    double total = 0;
    for (size_t k = 0; k < sm.size(); ++k) total += g[k] * sm[k];
    return total;
  };
  auto fd = [&](std::vector<double> Problem::*field, int64_t k) { return central_difference(p, loss, field, k); };
  for (int64_t k = 0; k < M * D; ++k) expect_close((name + " jackknife grad_z").c_str(), gz[k], fd(&Problem::z, k), 1e-6, 1e-7);
  for (int64_t k = 0; k < K * D; ++k) {
    if (k < owned * D) {
      expect_close((name + " jackknife grad_mu").c_str(), gmu[k], fd(&Problem::mu, k), 1e-6, 1e-7);
      expect_close((name + " jackknife grad_logvar").c_str(), glv[k], fd(&Problem::logvar, k), 1e-6, 1e-7);
    } else if (gmu[k] != 7.0 || glv[k] != 7.0) {
      std::printf("FAIL %s: jackknife gradient of a constant component written\n", name.c_str());
      ++g_failures;
    }
  }
}

}  // namespace

void run_all_checks() {
  const double ls = std::log(0.01), ln = std::log(0.3), lo = std::log(0.05);
  // Sizes straddle the lane width (8 doubles, 16 floats); M != K; D == 1.
  const int64_t sizes[][3] = {{1, 1, 1}, {5, 7, 3}, {17, 17, 4}, {33, 20, 1}, {9, 40, 11}};
  for (const auto& s : sizes) {
    for (bool structured : {true, false}) {
      const std::string name = std::string(structured ? "structured" : "dense") + " M=" +
                               std::to_string(s[0]) + " K=" + std::to_string(s[1]) +
                               " D=" + std::to_string(s[2]);
      Problem p = make_problem(s[0], s[1], s[2], 1234u + unsigned(s[0]), structured, ls, ln, lo);
      check_forward<double>(name + " f64", p, structured, ls, ln, lo, 1e-12, 1e-12);
      check_forward<float>(name + " f32", p, structured, ls, ln, lo, 2e-6, 2e-5);
      if (s[0] * s[1] * s[2] <= 800) check_backward(name + " f64", p, structured, ls, ln, lo);
      check_threads_bitwise<float>(name + " f32 threads", p, structured, ls, ln, lo);
      check_threads_bitwise<double>(name + " f64 threads", p, structured, ls, ln, lo);
      check_grad_components<float>(name + " f32 grad_components", p, structured, ls, ln, lo);
      check_grad_components<double>(name + " f64 grad_components", p, structured, ls, ln, lo);
    }
  }
  // The jackknife's sums: few components (every other term big), many (most in the power sums), and
  // narrow components (a few dominate).
  check_jackknife("jackknife M=5 K=9 D=3", make_problem(5, 9, 3, 31u, true, 0, 0, 0));
  check_jackknife("jackknife M=9 K=150 D=2", make_problem(9, 150, 2, 32u, true, 0, 0, 0));
  {
    Problem p = make_problem(4, 90, 2, 33u, true, 0, 0, 0);
    for (double& v : p.logvar) v -= 4.0;
    check_jackknife("jackknife narrow M=4 K=90 D=2", p);
  }
  {  // Every other term but the largest more than 708 nats (2^-1022) below it: their sum flushes to 0.
    Problem p = make_problem(4, 100, 4, 34u, true, 0, 0, 0);
    for (double& v : p.logvar) v -= 16.0;
    check_jackknife("jackknife separated M=4 K=100 D=4", p);
  }
  // A zero weight everywhere gives -inf (empty mixture), not NaN.
  {
    Problem p = make_problem(3, 4, 2, 9u, true, -INFINITY, -INFINITY, -INFINITY);
    std::vector<double> qz(3), qzd(6);
    const ForwardArgs<double> args{p.z.data(), p.mu.data(), p.logvar.data(), nullptr, 3, 4, 2,
                                   -INFINITY, -INFINITY, -INFINITY, qz.data(), qzd.data()};
    tcestim::cpu::kernels<double>(g_isa).forward(args, serial);
    for (double v : qz) if (!(std::isinf(v) && v < 0)) { std::printf("FAIL all -inf weights: %g\n", v); ++g_failures; }
    for (double v : qzd) if (!(std::isinf(v) && v < 0)) { std::printf("FAIL all -inf weights: %g\n", v); ++g_failures; }
  }
}

int main() {
  for (Isa isa : {Isa::kDefault, Isa::kAvx2, Isa::kAvx512}) {
    if (!tcestim::cpu::isa_supported(isa)) {
      std::printf("skip %s: not supported here\n", tcestim::cpu::isa_name(isa));
      continue;
    }
    g_isa = isa;
    const int before = g_failures;
    run_all_checks();
    std::printf("%s: %s\n", tcestim::cpu::isa_name(isa), g_failures == before ? "passed" : "FAILED");
  }
  if (g_failures) {
    std::printf("%d failures\n", g_failures);
    return 1;
  }
  return 0;
}
