// The jackknife's sums inside the fused CPU kernels (no torch headers): see JackknifeArgs in
// kernel_args.h for what is computed, tcestim/jackknife.py for how the estimate is formed from it.
//
// Forward, per block of kLanes queries, two passes over the components (the cube recomputed, never
// stored): (1) the maximum of each target's other terms and, online (rescaled when the maximum
// moves), the sum of the others but the largest, which sets the threshold; (2) the big terms'
// indices and the small terms' power sums. Backward: the same two sweeps as the mixture's backward
// (query blocks for grad_z, component blocks for grad_mu and grad_logvar, the latter for the
// components 0..grad_components-1 only), with the weight of term k of target r
//   W = sum_q q g[r,q] u[k]^q   (small terms; big terms and the own component weigh 0),
// added over the joint (every d) and the marginal of d. Terms are formed without FMA contraction
// (detail::jackknife_term), so that both sweeps classify every term exactly as the forward did.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../kernel_args.h"
#include "mixture_logdensity.h"

namespace tcestim {
namespace cpu {
inline namespace TCESTIM_ISA {
namespace detail {

constexpr int64_t kSeries = kJackknifeSeries;

// C2 = offset + quadratic * (z - mu)^2, rounded at each step (no contraction into FMAs).
template <typename T>
inline Vec<T> jackknife_term(Vec<T> z, Vec<T> mu, Vec<T> quad, Vec<T> off) {
  Vec<T> t = z - mu;
  Vec<T> tt = t * t;
  round_here(tt);
  Vec<T> q = quad * tt;
  round_here(q);
  Vec<T> c = off + q;
  round_here(c);
  return c;
}

// The weight sum_q q g_q u^q of one term (0 for big terms and the own component), Horner in u.
template <typename T>
inline Vec<T> jackknife_weight(Vec<T> x, Vec<T> shift, Vec<T> log2_threshold, const Vec<T>* coef) {
  const Vec<T> diff = x - shift;
  const Vec<T> u0 = vexp2<T>(diff);
  const Vec<T> u = diff > log2_threshold ? broadcast(T(0)) : u0;
  Vec<T> poly = coef[kSeries - 1];
  for (int64_t q = kSeries - 2; q >= 0; --q) poly = poly * u + coef[q];
  return poly * u;
}

// Per task of jackknife_forward: vector scratch and the big-term count of each lane and target.
template <typename T>
struct JackknifeScratch {
  VecBuffer<T> vectors;
  std::vector<int64_t> counts;
};

template <typename T>
void jackknife_forward_block(const JackknifeArgs<T>& a, const ComponentTable<T>& comp,
                             const StructuredWeights<T>& own, const LaneBlock& rows,
                             VecBuffer<T>& scratch, std::vector<int64_t>& counts) {
  using V = Vec<T>;
  constexpr int L = kLanes<T>;
  const int64_t M = a.M, K = a.K, D = a.D, R = D + 1;
  V* __restrict zt = scratch.reserve(2 * D + R * (4 + kSeries));
  V* __restrict cbuf = zt + D;
  V* __restrict x = cbuf + D;  // the terms of the current component, per target r
  V* __restrict max = x + R;
  V* __restrict sum = max + R;  // of the other terms but the (first) largest, relative to it
  V* __restrict thr = sum + R;
  V* __restrict ps = thr + R;  // (R, kSeries)
  gather_transposed(a.z, rows, M, D, zt);
  for (int64_t r = 0; r < R; ++r) {
    max[r] = broadcast(kNegInf<T>);
    sum[r] = broadcast(T(0));
  }
  for (int64_t k = 0; k < R * kSeries; ++k) ps[k] = broadcast(T(0));

  // x[0] the joint, x[1 + d] the marginals of component j (the own component: -inf).
  auto terms = [&](int64_t j) {
    const V lw = own.rows(rows, M, j);
    const T* mu = comp.mu + j * D;
    const T* quad = comp.quadratic.data() + j * D;
    const T* off = comp.offset.data() + j * D;
    V csum = broadcast(T(0));
    for (int64_t d = 0; d < D; ++d) {
      cbuf[d] = jackknife_term<T>(zt[d], broadcast(mu[d]), broadcast(quad[d]), broadcast(off[d]));
      csum += cbuf[d];
      x[1 + d] = lw + cbuf[d];
    }
    x[0] = lw + csum;
  };

  // Pass 1: maxima, and the sum of the other terms but the largest, rescaled when the maximum moves
  // (the previous maximum then joins the sum). One exp2 per term.
  for (int64_t j = 0; j < K; ++j) {
    terms(j);
    for (int64_t r = 0; r < R; ++r) {
      const auto better = x[r] > max[r];
      const V e0 = vexp2<T>(better ? max[r] - x[r] : x[r] - max[r]);
      const V e = x[r] == broadcast(kNegInf<T>) ? broadcast(T(0)) : e0;
      sum[r] = better ? (sum[r] + T(1)) * e : sum[r] + e;
      max[r] = better ? x[r] : max[r];
    }
  }
  for (int64_t r = 0; r < R; ++r) max[r] = finite_or_zero<T>(max[r]);
  for (int64_t r = 0; r < R; ++r) {
    for (int l = 0; l < L; ++l) {
      thr[r][l] = static_cast<T>(std::log2(kJackknifeBigFraction * static_cast<double>(sum[r][l])));
    }
  }

  // Pass 2: big terms listed, small terms into the power sums.
  counts.assign(static_cast<size_t>(L) * R, 0);
  for (int64_t l = 0; l < rows.valid; ++l) {
    std::fill_n(a.big_index + (rows.first + l) * R * kJackknifeMaxBig, R * kJackknifeMaxBig, int64_t(-1));
  }
  bool overflow[L] = {};
  for (int64_t j = 0; j < K; ++j) {
    terms(j);
    V any = broadcast(T(0));
    for (int64_t r = 0; r < R; ++r) {
      const V diff = x[r] - max[r];
      const auto big = diff > thr[r];
      any = big ? broadcast(T(1)) : any;
      V u = vexp2<T>(diff);
      u = big ? broadcast(T(0)) : u;
      V p = u;
      V* acc = ps + r * kSeries;
      acc[0] += p;
      for (int64_t q = 1; q < kSeries; ++q) {
        p *= u;
        acc[q] += p;
      }
    }
    for (int64_t l = 0; l < rows.valid; ++l) {
      if (any[l] == T(0)) continue;
      for (int64_t r = 0; r < R; ++r) {
        if (!(x[r][l] - max[r][l] > thr[r][l])) continue;
        int64_t& count = counts[l * R + r];
        if (count == kJackknifeMaxBig) {
          overflow[l] = true;  // cannot happen (see kJackknifeMaxBig); NaN rather than a wrong value
          continue;
        }
        a.big_index[((rows.first + l) * R + r) * kJackknifeMaxBig + count++] = j;
      }
    }
  }
  for (int64_t l = 0; l < rows.valid; ++l) {
    const int64_t i = rows.first + l;
    for (int64_t r = 0; r < R; ++r) {
      a.shift[i * R + r] = max[r][l];
      a.log2_threshold[i * R + r] = thr[r][l];
      for (int64_t q = 0; q < kSeries; ++q) {
        a.power_sums[(i * R + r) * kSeries + q] =
            overflow[l] ? std::numeric_limits<T>::quiet_NaN() : ps[r * kSeries + q][l];
      }
    }
  }
}

// The coefficients q g[r,q] (index q - 1) of query i's target r.
template <typename T>
struct JackknifeRowGrad {
  const T* grad;  // (M, R, kSeries)
  int64_t R;
  T coefficient(int64_t i, int64_t r, int64_t q) const { return T(q + 1) * grad[(i * R + r) * kSeries + q]; }
};

// Backward sweep over one block of queries: grad_z.
template <typename T>
void jackknife_rows_block(const JackknifeBackwardArgs<T>& a, const ComponentTable<T>& comp,
                          const StructuredWeights<T>& own, const LaneBlock& rows, VecBuffer<T>& scratch) {
  using V = Vec<T>;
  constexpr int L = kLanes<T>;
  const int64_t M = a.M, K = a.K, D = a.D, R = D + 1;
  V* __restrict zt = scratch.reserve(4 * D + R * (2 + kSeries));
  V* __restrict cbuf = zt + D;
  V* __restrict gz = cbuf + D;
  V* __restrict run = gz + D;
  V* __restrict shift = run + D;
  V* __restrict thr = shift + R;
  V* __restrict coef = thr + R;  // (R, kSeries)
  gather_transposed(a.z, rows, M, D, zt);
  const JackknifeRowGrad<T> g{a.grad_power_sums, R};
  for (int64_t r = 0; r < R; ++r) {
    for (int l = 0; l < L; ++l) {
      const int64_t i = rows.index(l, M);
      shift[r][l] = a.shift[i * R + r];
      thr[r][l] = a.log2_threshold[i * R + r];
      for (int64_t q = 0; q < kSeries; ++q) coef[r * kSeries + q][l] = g.coefficient(i, r, q);
    }
  }
  for (int64_t d = 0; d < D; ++d) gz[d] = broadcast(T(0));

  for (int64_t j = 0; j < K; ++j) {
    if (j % kRun == 0) {
      for (int64_t d = 0; d < D; ++d) run[d] = broadcast(T(0));
    }
    const V lw = own.rows(rows, M, j);
    const T* mu = comp.mu + j * D;
    const T* quad = comp.quadratic.data() + j * D;
    const T* off = comp.offset.data() + j * D;
    const T* prec = comp.precision.data() + j * D;
    V csum = broadcast(T(0));
    for (int64_t d = 0; d < D; ++d) {
      cbuf[d] = jackknife_term<T>(zt[d], broadcast(mu[d]), broadcast(quad[d]), broadcast(off[d]));
      csum += cbuf[d];
    }
    const V wj = jackknife_weight<T>(lw + csum, shift[0], thr[0], coef);
    for (int64_t d = 0; d < D; ++d) {
      const V w = wj + jackknife_weight<T>(lw + cbuf[d], shift[1 + d], thr[1 + d], coef + (1 + d) * kSeries);
      run[d] -= w * (zt[d] - mu[d]) * prec[d];  // dC/dz = -(z - mu) * precision
    }
    if (j % kRun == kRun - 1 || j == K - 1) {
      for (int64_t d = 0; d < D; ++d) gz[d] += run[d];
    }
  }
  scatter_transposed(gz, rows, D, a.grad_z);
}

// Backward sweep over one block of components: grad_mu and grad_logvar.
template <typename T>
void jackknife_columns_block(const JackknifeBackwardArgs<T>& a, const ComponentTable<T>& comp,
                             const StructuredWeights<T>& own, const LaneBlock& cols, VecBuffer<T>& scratch) {
  using V = Vec<T>;
  const int64_t M = a.M, K = a.K, D = a.D, R = D + 1;
  V* __restrict mut = scratch.reserve(9 * D + kSeries * R);
  V* __restrict pt = mut + D;
  V* __restrict qt = pt + D;
  V* __restrict ot = qt + D;
  V* __restrict cbuf = ot + D;
  V* __restrict gmu = cbuf + D;
  V* __restrict glv = gmu + D;
  V* __restrict run_mu = glv + D;
  V* __restrict run_lv = run_mu + D;
  V* __restrict coef = run_lv + D;  // (R, kSeries), broadcast for the current query
  gather_transposed(comp.mu, cols, K, D, mut);
  gather_transposed(comp.precision.data(), cols, K, D, pt);
  gather_transposed(comp.quadratic.data(), cols, K, D, qt);
  gather_transposed(comp.offset.data(), cols, K, D, ot);
  for (int64_t d = 0; d < 2 * D; ++d) gmu[d] = broadcast(T(0));
  const JackknifeRowGrad<T> g{a.grad_power_sums, R};
  const V half = broadcast(T(0.5));

  for (int64_t i = 0; i < M; ++i) {
    if (i % kRun == 0) {
      for (int64_t d = 0; d < D; ++d) run_mu[d] = run_lv[d] = broadcast(T(0));
    }
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t q = 0; q < kSeries; ++q) coef[r * kSeries + q] = broadcast(g.coefficient(i, r, q));
    }
    const V lw = own.columns(i, cols, K);
    const T* zi = a.z + i * D;
    const T* si = a.shift + i * R;
    const T* ti = a.log2_threshold + i * R;
    V csum = broadcast(T(0));
    for (int64_t d = 0; d < D; ++d) {
      cbuf[d] = jackknife_term<T>(broadcast(zi[d]), mut[d], qt[d], ot[d]);
      csum += cbuf[d];
    }
    const V wj = jackknife_weight<T>(lw + csum, broadcast(si[0]), broadcast(ti[0]), coef);
    for (int64_t d = 0; d < D; ++d) {
      const V w = wj + jackknife_weight<T>(lw + cbuf[d], broadcast(si[1 + d]), broadcast(ti[1 + d]),
                                           coef + (1 + d) * kSeries);
      const V t = zi[d] - mut[d];
      const V tp = t * pt[d];
      run_mu[d] += w * tp;                     // dC/dmu = (z - mu) * precision
      run_lv[d] += w * (half * t * tp - half);  // dC/dlogvar = 0.5 (z - mu)^2 precision - 0.5
    }
    if (i % kRun == kRun - 1 || i == M - 1) {
      for (int64_t d = 0; d < D; ++d) {
        gmu[d] += run_mu[d];
        glv[d] += run_lv[d];
      }
    }
  }
  scatter_transposed(gmu, cols, D, a.grad_mu);
  scatter_transposed(glv, cols, D, a.grad_logvar);
}

}  // namespace detail

// The own component (j == i) is left out through a weight of -inf; every other weighs 1 (log 0).
template <typename T>
StructuredWeights<T> jackknife_own_weights(int64_t M) {
  return StructuredWeights<T>(-std::numeric_limits<double>::infinity(), 0.0, 0.0, M);
}

template <typename T, typename ParallelFor>
void jackknife_forward(const JackknifeArgs<T>& a, ParallelFor&& parallel_for) {
  const ComponentTable<T> comp(a.mu, a.logvar, a.K, a.D);
  const StructuredWeights<T> own = jackknife_own_weights<T>(a.M);
  detail::for_each_lane_block<T, detail::JackknifeScratch<T>>(
      a.M, parallel_for, [&](const LaneBlock& rows, detail::JackknifeScratch<T>& scratch) {
        detail::jackknife_forward_block(a, comp, own, rows, scratch.vectors, scratch.counts);
      });
}

template <typename T, typename ParallelFor>
void jackknife_backward(const JackknifeBackwardArgs<T>& a, ParallelFor&& parallel_for) {
  const ComponentTable<T> comp(a.mu, a.logvar, a.K, a.D);
  const StructuredWeights<T> own = jackknife_own_weights<T>(a.M);
  detail::for_each_lane_block<T>(a.M, parallel_for, [&](const LaneBlock& rows, detail::VecBuffer<T>& scratch) {
    detail::jackknife_rows_block(a, comp, own, rows, scratch);
  });
  detail::for_each_lane_block<T>(detail::owned_components(a.grad_components, a.K), parallel_for,
                                 [&](const LaneBlock& cols, detail::VecBuffer<T>& scratch) {
    detail::jackknife_columns_block(a, comp, own, cols, scratch);
  });
}

}  // namespace TCESTIM_ISA
}  // namespace cpu
}  // namespace tcestim
