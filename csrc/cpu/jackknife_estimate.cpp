// The jackknife estimate per row (JackknifeRows, kernel_args.h) and its hand-written backward.
//
// Per row, relative to top = max(log_a, log_shift) (0 where that is not finite): a = log_a - top,
// s[q] the small terms' power sums, v[e] the big terms, rest = s[1], total = sum v + rest,
// full = log(e^a + total) and theta = top + full. With o[e] the row's other big terms, exactly summed:
//   loo   = (sum_e L(1, o[e] + rest)  +  small(1, total, n_rest, s)) / n
//   pairs = (sum_{i<j} L(2, rem[i,j] + rest)  +  sum_e small(2, o[e] + rest, n_rest, s)
//            + small(2, total, n_rest (n_rest - 1) / 2, pair power sums of s)) / (n (n - 1) / 2)
// where L(m, kept) = log(e^a + scale_m kept) - full is one leave-out of m terms, rescaling the rest by
// scale_m = n / (n - m), and small(m, kept, c, p) = c (log y - full) + series(scale_m / y, p), with
// y = e^a + scale_m kept, is the sum over c leave-outs of small terms (one term, or the pair sums of
// two) from kept: log(y - scale_m w) = log y + log(1 - w scale_m / y), expanded through the power sums
// p of the w (series(r, p) = -sum_q r^q p_q / q). For the big pairs, sorted by v descending,
// rem[i,j] = o[i] - v[j], clamped at 0, except for the two largest, whose remainder is the sum from the
// third on. These are the formulas the PyTorch implementation used (tcestim/jackknife.py, before this
// kernel); with kept = total, log y - full is formed as log1p((scale_m - 1) total / e^full) (and
// differentiated as one difference): its c copies weigh up to 1e6 with the extrapolation weights of
// n ~ 1000, and the difference of two logarithms put 1e-9 of rounding into the estimate.
#include "jackknife_estimate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace tcestim {
namespace cpu {
namespace {

constexpr int64_t kRowsPerTask = 32;
constexpr double kInf = std::numeric_limits<double>::infinity();

double log_add_exp(double a, double b) {
  if (std::isinf(a) && a == b) return a;
  return std::max(a, b) + std::log1p(std::exp(-std::abs(a - b)));
}

// log(e^a + x), x >= 0, and its derivatives in a and x, as torch gives them for logaddexp(a, log(x))
// with a log that is -inf at 0 and has no gradient there (tcestim.jackknife._safe_log).
struct LogSum {
  double value, d_a, d_x;
};

// series(r, p) = -sum_q r^q p_q / q, q = 1..Q.
double series(double r, const double* p, int64_t Q) {
  double total = 0, power = r;
  for (int64_t q = 1; q <= Q; ++q, power *= r) total += power * p[q - 1] / double(q);
  return -total;
}

// One row: its inputs and what the estimate and its gradient are formed from.
class Row {
 public:
  Row(const JackknifeRows& in, std::vector<double>& buffer, std::vector<int64_t>& order, int64_t r)
      : Q_(in.series), count_(in.offsets[r + 1] - in.offsets[r]), order_(order) {
    const double la = in.log_a[r], ls = in.log_shift[r];
    top_ = std::isnan(la) || std::isnan(ls) ? 0.0 : std::max(la, ls);
    if (!std::isfinite(top_)) top_ = 0.0;
    a_ = la - top_;
    exp_a_ = std::exp(a_);
    sigma_ = std::exp(ls - top_);
    n_ = double(in.n);
    n_rest_ = double(in.n - count_);
    for (int m = 1; m <= 2; ++m) {
      scale_[m] = n_ / (n_ - m);
      excess_[m] = m / (n_ - m);
    }
    buffer.resize(4 * Q_ + 4 * count_);
    s_ = buffer.data();
    pair_sums_ = s_ + Q_;
    g_s_ = pair_sums_ + Q_;
    g_pair_sums_ = g_s_ + Q_;
    v_ = g_pair_sums_ + Q_;
    others_ = v_ + count_;
    g_v_ = others_ + count_;
    g_others_ = g_v_ + count_;
    double power = sigma_;
    for (int64_t q = 0; q < Q_; ++q, power *= sigma_) s_[q] = in.power_sums[r * Q_ + q] * power;
    rest_ = s_[0];
    has_rest_ = rest_ > 0;
    const double* log_big = in.log_big + in.offsets[r];
    total_ = 0;
    for (int64_t e = 0; e < count_; ++e) {
      v_[e] = std::exp(log_big[e] - top_);
      total_ += v_[e];
    }
    total_ += rest_;
    full_ = log_sum(total_);
    // The other big terms of each, summed exactly (a prefix and a suffix, no subtraction).
    double prefix = 0;
    for (int64_t e = 0; e < count_; ++e) {
      others_[e] = prefix;
      prefix += v_[e];
    }
    double suffix = 0;
    for (int64_t e = count_ - 1; e >= 0; --e) {
      others_[e] = count_ >= 2 ? others_[e] + suffix : 0.0;
      suffix += v_[e];
    }
    if (n_rest_ >= 2) {
      // sum_{j<k} (w_j + w_k)^q = (sum_i binom(q, i) p_i p_(q-i) - 2^q p_q) / 2 with p_0 = n_rest.
      for (int64_t q = 1; q <= Q_; ++q) {
        double sum = 0, binom = 1;
        for (int64_t i = 0; i <= q; ++i) {
          sum += binom * power_sum(i) * power_sum(q - i);
          binom = binom * double(q - i) / double(i + 1);
        }
        pair_sums_[q - 1] = 0.5 * (sum - std::ldexp(1.0, int(q)) * s_[q - 1]);
      }
    }
    if (count_ >= 2) {  // insertion sort, by v descending (stable, and no ordering needed of NaN)
      order_.resize(count_);
      for (int64_t e = 0; e < count_; ++e) {
        int64_t k = e;
        for (; k > 0 && v_[order_[k - 1]] < v_[e]; --k) order_[k] = order_[k - 1];
        order_[k] = e;
      }
    }
  }

  double theta() const { return top_ + full_.value; }

  double loo() const {
    double sum = 0;
    for (int64_t e = 0; e < count_; ++e) sum += log_sum(scale_[1] * (others_[e] + rest_)).value - full_.value;
    if (n_rest_ > 0) sum += small(1, total_, n_rest_, s_, true);
    return sum / n_;
  }

  double pairs() const {
    double sum = 0;
    for (int64_t i = 0; i < count_; ++i) {
      for (int64_t j = i + 1; j < count_; ++j) {
        sum += log_sum(scale_[2] * (std::max(remaining(i, j), 0.0) + rest_)).value - full_.value;
      }
    }
    if (n_rest_ > 0) {
      for (int64_t e = 0; e < count_; ++e) sum += small(2, others_[e] + rest_, n_rest_, s_, false);
    }
    if (n_rest_ >= 2) sum += small(2, total_, rest_pairs(), pair_sums_, true);
    return sum / pair_count();
  }

  // Accumulates the gradients of g_theta theta + g_loo loo + g_pairs pairs into g_a_, g_s_, g_v_.
  void backward(double g_theta, double g_loo, double g_pairs) {
    std::fill(g_s_, g_s_ + 2 * Q_, 0.0);
    std::fill(g_v_, g_v_ + 2 * count_, 0.0);
    g_a_ = 0;
    double g_full = g_theta, g_total = 0, g_rest = 0;
    if (g_loo != 0) {
      const double g = g_loo / n_;
      for (int64_t e = 0; e < count_; ++e) {
        g_full -= g;
        const double g_kept = leave_out_grad(g, scale_[1], others_[e] + rest_);
        g_others_[e] += g_kept;
        g_rest += g_kept;
      }
      if (n_rest_ > 0) g_total += small_grad(g, 1, total_, n_rest_, s_, g_s_, g_full, true);
    }
    if (g_pairs != 0) {
      const double g = g_pairs / pair_count();
      for (int64_t i = 0; i < count_; ++i) {
        for (int64_t j = i + 1; j < count_; ++j) {
          const double rem = remaining(i, j);
          g_full -= g;
          const double g_kept = leave_out_grad(g, scale_[2], std::max(rem, 0.0) + rest_);
          g_rest += g_kept;
          if (!(rem >= 0)) continue;  // clamped
          if (i == 0 && j == 1) {
            for (int64_t k = 2; k < count_; ++k) g_v_[order_[k]] += g_kept;
          } else {
            g_others_[order_[i]] += g_kept;
            g_v_[order_[j]] -= g_kept;
          }
        }
      }
      if (n_rest_ > 0) {
        for (int64_t e = 0; e < count_; ++e) {
          const double g_kept = small_grad(g, 2, others_[e] + rest_, n_rest_, s_, g_s_, g_full, false);
          g_others_[e] += g_kept;
          g_rest += g_kept;
        }
      }
      if (n_rest_ >= 2) {
        g_total += small_grad(g, 2, total_, rest_pairs(), pair_sums_, g_pair_sums_, g_full, true);
        for (int64_t k = 1; k <= Q_; ++k) {  // d pair_sums[q] / d p_k = binom(q, k) p_(q-k) - [k = q] 2^(q-1)
          double binom = 1;  // binom(q, k) from q = k on
          for (int64_t q = k; q <= Q_; ++q) {
            const double diagonal = q == k ? std::ldexp(1.0, int(q - 1)) : 0.0;
            g_s_[k - 1] += g_pair_sums_[q - 1] * (binom * power_sum(q - k) - diagonal);
            binom = binom * double(q + 1) / double(q + 1 - k);
          }
        }
      }
    }
    g_a_ += g_full * full_.d_a;
    g_total += g_full * full_.d_x;
    g_rest += g_total;
    double prefix = 0;  // each big term gets the others' g_others, summed exactly
    for (int64_t e = 0; e < count_; ++e) {
      g_v_[e] += g_total;
      if (count_ >= 2) g_v_[e] += prefix;
      prefix += g_others_[e];
    }
    double suffix = 0;
    for (int64_t e = count_ - 1; e >= 0 && count_ >= 2; --e) {
      g_v_[e] += suffix;
      suffix += g_others_[e];
    }
    g_s_[0] += g_rest;
  }

  double grad_log_a() const { return g_a_; }
  // The gradients with respect to power_sums, into out (Q).
  void grad_power_sums(double* out) const {
    double power = sigma_;
    for (int64_t q = 0; q < Q_; ++q, power *= sigma_) out[q] = g_s_[q] * power;
  }
  double grad_log_big(int64_t e) const { return g_v_[e] * v_[e]; }

 private:
  // p_i of the small terms: p_0 = n_rest.
  double power_sum(int64_t i) const { return i == 0 ? n_rest_ : s_[i - 1]; }
  double rest_pairs() const { return 0.5 * n_rest_ * (n_rest_ - 1.0); }
  double pair_count() const { return 0.5 * n_ * (n_ - 1.0); }

  // The remainder of the big terms when those at sorted places i < j are left out.
  double remaining(int64_t i, int64_t j) const {
    if (i == 0 && j == 1) {
      double sum = 0;
      for (int64_t k = 2; k < count_; ++k) sum += v_[order_[k]];
      return sum;
    }
    return others_[order_[i]] - v_[order_[j]];
  }

  LogSum log_sum(double x) const {
    if (x == 0) return {a_, 1.0 / (1.0 + std::exp(-kInf - a_)), 0.0};
    if (exp_a_ >= std::numeric_limits<double>::min() || a_ == -kInf) {  // e^a exact to rounding
      const double y = exp_a_ + x;
      return {std::log(y), exp_a_ / y, 1.0 / y};
    }
    const double value = log_add_exp(a_, std::log(x));
    return {value, std::exp(a_ - value), std::exp(-value)};
  }

  // The gradient of g (log(e^a + scale kept) - full): into g_a_; returns that of kept (full: the caller's).
  double leave_out_grad(double g, double scale, double kept) {
    const LogSum y = log_sum(scale * kept);
    g_a_ += g * y.d_a;
    return g * y.d_x * scale;
  }

  // scale / y of small(): d_x = 1 / y, as kept >= rest > 0 where there are small terms.
  double ratio(double scale, const LogSum& y) const { return has_rest_ ? scale * y.d_x : 0.0; }

  // With kept = total, log y - full = log1p((scale - 1) total e^-full), without the cancellation of
  // two logarithms (c of them weigh up to 1e6 with the extrapolation weights of n ~ 1000).
  double small(int m, double kept, double c, const double* p, bool kept_is_total) const {
    const LogSum y = log_sum(scale_[m] * kept);
    const double log_ratio = kept_is_total ? std::log1p(excess_[m] * kept * full_.d_x) : y.value - full_.value;
    return c * log_ratio + series(ratio(scale_[m], y), p, Q_);
  }

  // The gradient of g small(m, kept, c, p, kept_is_total): into g_p, g_a_ and g_full; returns that of
  // kept. With kept = total, log y - full is differentiated as one difference, for the same reason.
  double small_grad(double g, int m, double kept, double c, const double* p, double* g_p, double& g_full,
                    bool kept_is_total) {
    const double scale = scale_[m];
    const LogSum y = log_sum(scale * kept);
    const double r = ratio(scale, y);
    double d_r = 0, power = 1;  // d series / d r; r^(q - 1)
    for (int64_t q = 1; q <= Q_; ++q) {
      d_r -= power * p[q - 1];
      power *= r;
      g_p[q - 1] -= g * power / double(q);
    }
    double g_y = has_rest_ ? -g * d_r * r : 0.0, g_kept = 0;
    if (!kept_is_total) {
      g_full -= g * c;
      g_y += g * c;
    } else if (kept > 0) {  // d/d(a, total) of log(e^a + scale total) - log(e^a + total); none at total = 0
      const double share = excess_[m] * y.d_a * full_.d_x;  // (scale - 1) e^a / (y full)
      g_a_ -= g * c * share * kept;
      g_kept += g * c * share;
    }
    g_a_ += g_y * y.d_a;
    return g_kept + g_y * y.d_x * scale;
  }

  int64_t Q_, count_;
  std::vector<int64_t>& order_;
  double top_, a_, exp_a_, sigma_, n_, n_rest_, rest_, total_, g_a_ = 0;
  double scale_[3], excess_[3];  // n / (n - m) and m / (n - m) for m = 1, 2 left out
  LogSum full_;
  bool has_rest_;
  double *s_, *pair_sums_, *g_s_, *g_pair_sums_, *v_, *others_, *g_v_, *g_others_;
};

bool corrected(const JackknifeRows& in, int64_t o) { return in.loo_weights[o] != 0 || in.pair_weights[o] != 0; }

template <typename F>
void for_each_row(const JackknifeRows& in, const ParallelFor& parallel_for, F&& fn) {
  parallel_for((in.rows + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<double> buffer;
    std::vector<int64_t> order;
    for (int64_t r = begin * kRowsPerTask; r < std::min(in.rows, end * kRowsPerTask); ++r) {
      Row row(in, buffer, order, r);
      fn(row, r);
    }
  });
}

}  // namespace

void jackknife_estimate(const JackknifeEstimateArgs& a, const ParallelFor& parallel_for) {
  const JackknifeRows& in = a.in;
  bool any_loo = false, any_pairs = false;
  for (int64_t o = 0; o < in.orders; ++o) {
    any_loo |= corrected(in, o);
    any_pairs |= in.pair_weights[o] != 0;
  }
  for_each_row(in, parallel_for, [&](const Row& row, int64_t r) {
    const double theta = row.theta();
    const double loo = any_loo ? row.loo() : 0.0, pairs = any_pairs ? row.pairs() : 0.0;
    for (int64_t o = 0; o < in.orders; ++o) {
      const double w1 = in.loo_weights[o], w2 = in.pair_weights[o];
      double value = theta;
      if (corrected(in, o) && !(std::isinf(theta) && theta < 0)) {
        value = theta + w1 * loo + (w2 != 0 ? w2 * pairs : 0.0);
      }
      a.estimate[o * in.rows + r] = value;
    }
  });
}

void jackknife_estimate_backward(const JackknifeEstimateBackwardArgs& a, const ParallelFor& parallel_for) {
  const JackknifeRows& in = a.in;
  for_each_row(in, parallel_for, [&](Row& row, int64_t r) {
    const double theta = row.theta();
    const bool vanishing = std::isinf(theta) && theta < 0;  // q(z) = 0: no corrections, as in the forward
    double g_theta = 0, g_loo = 0, g_pairs = 0;
    for (int64_t o = 0; o < in.orders; ++o) {
      const double g = a.grad[o * in.rows + r];
      g_theta += g;
      if (corrected(in, o) && !vanishing) {
        g_loo += in.loo_weights[o] * g;
        g_pairs += in.pair_weights[o] * g;
      }
    }
    row.backward(g_theta, g_loo, g_pairs);
    a.grad_log_a[r] = row.grad_log_a();
    row.grad_power_sums(a.grad_power_sums + r * in.series);
    for (int64_t e = in.offsets[r]; e < in.offsets[r + 1]; ++e) a.grad_log_big[e] = row.grad_log_big(e - in.offsets[r]);
  });
}

}  // namespace cpu
}  // namespace tcestim
