// The jackknife's sums inside the fused CPU kernels (no torch headers): see JackknifeArgs in
// kernel_args.h for what is computed, tcestim/jackknife.py for how the estimate is formed from it.
//
// Forward, per block of kLanes queries, the cube recomputed, never stored: a sweep over the first
// kPrefix components sums their terms for a lower bound of the final sum; then one sweep over all
// components forms each term once and takes u = 2^(x - s) against a reference s near the running
// maximum (the maximum m itself is known only at the end). A term surely below the final threshold
// (below 1/64 of a lower bound of the sum of the others but the largest) goes into the running sum
// and the power sums as it passes; the few others are logged and classified when the sum is known,
// the sums rescaled from s to m. Backward: two sweeps, each recomputing the cube
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
#include <type_traits>
#include <vector>

#include "../kernel_args.h"
#include "mixture_logdensity.h"

namespace tcestim {
namespace cpu {
inline namespace TCESTIM_ISA {
namespace detail {

constexpr int64_t kSeries = kJackknifeSeries;

// The least log2_threshold: exp2 gives u = 0 (flushed) below 2^(lowest + 1), and such terms are small
// whatever the sum of the others (which may itself have been flushed to 0).
template <typename T>
constexpr T kThresholdFloor = tcestim::detail::Exp2Constants<T>::kLowest + 1;

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

// The forward's candidate big terms. A term goes into the power sums as it passes when
// u <= limit, kAbsorbed times a lower bound of the sum of the others but the largest: it is then below
// the final threshold by 1e-4 relative, more than the rounding of exp2, of the rescalings and of the
// threshold in float (1e-5), and the final test x - m > log2_threshold finds it small as well. The
// others (candidates) are logged until the sum is known. At most 1 / kAbsorbed + 1 per target stand
// above the bound at any time, so the log, when full, is pruned against the current bounds.
constexpr double kAbsorbed = kJackknifeBigFraction * (1 - 1e-4);
// Lower bounds of that sum: the sum over the first kPrefix components but their largest, swept once
// before, then the sum of all terms so far but the largest (raised whenever candidates are logged),
// and the running sum of the terms absorbed so far divided by 1 + kJackknifeBigFraction (it may hold
// the largest term, which was then at most that fraction of it). Without the prefix nearly every
// early term would be a candidate; 1024 components measured fastest (4352 components, D = 8 and 32:
// 512 and 2048 slower).
constexpr int64_t kPrefix = 1024;
constexpr double kAbsorbedOfRunning = kAbsorbed / (1 + kJackknifeBigFraction);
constexpr int64_t kLogCapacity = 16384;  // entries before the first pruning
// The sweep forms the terms of kChunk components, then goes through them target by target (the
// target's sums in registers, the bounds updated once per chunk).
constexpr int64_t kChunk = 16;
// The sweep takes u = 2^(x - s) against a reference s, as the maximum m is known only at its end: the
// prefix's maximum, raised to a chunk's maximum where that lies more than kAboveReference above s (so
// u <= 2^8 and u^8 <= 2^64). At the end the sums are rescaled by 2^(q (s - m)), s <= m <= s + 8.
constexpr int kAboveReference = 8;

template <typename T>
struct Candidate {
  int64_t j;       // component
  int32_t target;  // lane * R + r
  int32_t lane;
  T x;             // the term, base 2
};

// Per task of jackknife_forward: vector scratch, the candidate log, and per lane and target (L, R)
// the candidates' sum relative to m and whether the first largest was among them.
template <typename T>
struct JackknifeScratch {
  VecBuffer<T> vectors;
  std::vector<Candidate<T>> log;
  std::vector<double> candidates;
  std::vector<char> largest_logged;
  std::vector<int64_t> count;
};

// Adds u^1..u^8 to the power sums ps, the products as a tree (three multiplications deep, not seven).
template <typename V>
inline void add_powers(V* ps, V u) {
  static_assert(kSeries == 8, "the tree of products is written for 8 powers");
  const V u2 = u * u, u3 = u2 * u, u4 = u2 * u2;
  ps[0] += u;
  ps[1] += u2;
  ps[2] += u3;
  ps[3] += u4;
  ps[4] += u4 * u;
  ps[5] += u4 * u2;
  ps[6] += u4 * u3;
  ps[7] += u4 * u4;
}

template <typename T>
void jackknife_forward_block(const JackknifeArgs<T>& a, const ComponentTable<T>& comp,
                             const StructuredWeights<T>& own, const LaneBlock& rows, JackknifeScratch<T>& scratch) {
  using V = Vec<T>;
  using Bits = typename Simd<T>::Bits;
  using BitWord = typename tcestim::detail::Exp2Constants<T>::Bits;
  using Mask = decltype(V{} > V{});
  static_assert(kChunk <= 8 * static_cast<int64_t>(sizeof(BitWord)), "a lane's bit word holds a chunk");
  constexpr int L = kLanes<T>;
  const int64_t M = a.M, K = a.K, D = a.D, R = D + 1;
  V* __restrict zt = scratch.vectors.reserve(D + kChunk + R * (kChunk + 4 + kSeries));
  V* __restrict u = zt + D;       // (kChunk): one target's 2^(x - s) in the current chunk
  V* __restrict x = u + kChunk;   // (kChunk, R): the terms of a chunk of components
  V* __restrict max = x + kChunk * R;
  V* __restrict ref = max + R;    // s (-inf until a finite term was seen)
  V* __restrict bound = ref + R;  // kAbsorbed * a lower bound of the final sum (see below), relative to s
  V* __restrict logged = bound + R;  // the logged candidates' sum, relative to s
  // (R, kSeries), relative to s: the power sums of the absorbed terms (the first, their running sum);
  // in the prefix's sweep the first holds the prefix's sum.
  V* __restrict ps = logged + R;
  const V zero = broadcast(T(0)), absorbed = broadcast(static_cast<T>(kAbsorbed));
  const V of_running = broadcast(static_cast<T>(kAbsorbedOfRunning)), above = broadcast(T(kAboveReference));
  gather_transposed(a.z, rows, M, D, zt);

  // out[0] the joint, out[1 + d] the marginals of component j (the own component: -inf).
  // with_weights false: no own component in the chunk, so every weight is 1 (jackknife_own_weights:
  // log2_other = 0) and is left out.
  auto terms = [&](int64_t j, V* __restrict out, auto with_weights) {
    const T* mu = comp.mu + j * D;
    const T* quad = comp.quadratic.data() + j * D;
    const T* off = comp.offset.data() + j * D;
    const V lw = decltype(with_weights)::value ? own.rows(rows, M, j) : zero;
    V csum = zero;
    for (int64_t d = 0; d < D; ++d) {
      const V c = jackknife_term<T>(zt[d], broadcast(mu[d]), broadcast(quad[d]), broadcast(off[d]));
      csum += c;
      out[1 + d] = decltype(with_weights)::value ? lw + c : c;
    }
    out[0] = decltype(with_weights)::value ? lw + csum : csum;
  };
  // Takes a chunk's maximum `top` of target r into its running maximum and, where top lies more than
  // kAboveReference above the reference, raises the reference to it and rescales the sums.
  // The rescaling goes in two half steps: 2^(s - top) flushes to 0 from 127 bits (float) on, which
  // would lose absorbed terms that still count (up to 8 above s, so from 119 bits below the new s on);
  // halved, a sum is lost only where its rescaled value lies below 2^-126, under the threshold's floor.
  auto reach = [&](int64_t r, V top) {
    max[r] = vmax<T>(top, max[r]);
    const auto raise = top > ref[r] + above;
    if (!any_lane(raise)) return;
    const V raised = raise ? top : ref[r];
    // 1 where not raised (-inf - -inf would be NaN), 0 where ref was -inf (the sums were 0 there)
    const V half = raise ? vexp2<T>((ref[r] - top) * T(0.5)) : broadcast(T(1));
    bound[r] = bound[r] * half * half;
    logged[r] = logged[r] * half * half;
    V p = half;
    for (int64_t q = 0; q < kSeries; ++q, p *= half) ps[r * kSeries + q] = ps[r * kSeries + q] * p * p;
    ref[r] = raised;
  };
  // The largest of a chunk's terms of target r; NaN terms are passed over (vmax keeps its second
  // argument then), as in max.
  auto chunk_maximum = [&](int64_t r, int64_t n) {
    V top = broadcast(kNegInf<T>);
    for (int64_t jj = 0; jj < n; ++jj) top = vmax<T>(x[jj * R + r], top);
    return top;
  };
  // The terms of components j0..j0+n-1 into x, and every target's maximum and reference reach them.
  auto chunk = [&](int64_t j0, int64_t n) {
    V lw;
    const bool uniform = own.uniform_rows(rows, j0, n, &lw);
    for (int64_t jj = 0; jj < n; ++jj) {
      if (uniform) {
        terms(j0 + jj, x + jj * R, std::false_type{});
      } else {
        terms(j0 + jj, x + jj * R, std::true_type{});
      }
    }
    for (int64_t r = 0; r < R; ++r) reach(r, chunk_maximum(r, n));
  };
  for (int64_t r = 0; r < R; ++r) {
    max[r] = ref[r] = broadcast(kNegInf<T>);
    bound[r] = logged[r] = zero;
    for (int64_t q = 0; q < kSeries; ++q) ps[r * kSeries + q] = zero;
  }

  // The lower bounds of the final sum (of the others but the largest) from sums of terms seen so far:
  // their sum less the largest so far, less a rounding allowance (kPrefix roundings of the sum, each
  // within epsilon, and exp2's; for the longer sums of the sweep, a typical error, sqrt(K) epsilon,
  // lies far below it).
  const double allowance = 2.0 * kPrefix * std::numeric_limits<T>::epsilon();
  // The prefix: the sum of its terms.
  const int64_t prefix = std::min(K, kPrefix);
  for (int64_t j0 = 0; j0 < prefix; j0 += kChunk) {
    const int64_t n = std::min(kChunk, prefix - j0);
    chunk(j0, n);
    for (int64_t r = 0; r < R; ++r) {
      const V s = finite_or_zero<T>(ref[r]);
      V total = ps[r * kSeries];
      for (int64_t jj = 0; jj < n; ++jj) total += vexp2_not_above_highest<T>(x[jj * R + r] - s);
      ps[r * kSeries] = total;
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int l = 0; l < L; ++l) {
      if (ref[r][l] == kNegInf<T>) continue;
      const double all = ps[r * kSeries][l];
      const double lower = all - fast_exp2<double>(static_cast<double>(max[r][l]) - ref[r][l]) - all * allowance;
      bound[r][l] = static_cast<T>(kAbsorbed * std::max(lower, 0.0));
    }
    ps[r * kSeries] = zero;
  }

  // Absorbs the logged candidates that fell below the current bounds (raised since they were logged),
  // and sums the others afresh.
  auto prune = [&] {
    for (int64_t r = 0; r < R; ++r) logged[r] = zero;
    size_t kept = 0;
    for (const Candidate<T>& c : scratch.log) {
      const int64_t r = c.target - c.lane * R;
      const T v = fast_exp2<T>(c.x - finite_or_zero<T>(ref[r])[c.lane]);
      const T sum = ps[r * kSeries][c.lane];
      if (!(v > std::max(static_cast<T>(kAbsorbedOfRunning) * sum, bound[r][c.lane]))) {
        T p = v;
        for (int64_t q = 0; q < kSeries; ++q, p *= v) ps[r * kSeries + q][c.lane] += p;
      } else {
        logged[r][c.lane] += v;
        scratch.log[kept++] = c;
      }
    }
    scratch.log.resize(kept);
  };

  // The sweep: u = 2^(x - s) of every term once; those surely small into the sum and the power sums,
  // the others into the log.
  scratch.log.clear();
  scratch.log.reserve(kLogCapacity);
  size_t capacity = kLogCapacity;
  for (int64_t j0 = 0; j0 < K; j0 += kChunk) {
    const int64_t n = std::min(kChunk, K - j0);
    chunk(j0, n);
    for (int64_t r = 0; r < R; ++r) {
      const V s = finite_or_zero<T>(ref[r]);
      const V limit = vmax<T>(of_running * ps[r * kSeries], bound[r]);
      V acc[kSeries];
      Mask any{};
      for (int64_t q = 0; q < kSeries; ++q) acc[q] = ps[r * kSeries + q];
      for (int64_t jj = 0; jj < n; ++jj) {
        const V v = vexp2_not_above_highest<T>(x[jj * R + r] - s);  // x - s <= kAboveReference
        const auto keep = v > limit;
        any |= keep;
        const V small = keep ? zero : v;
        add_powers<V>(acc, small);
        u[jj] = v;
      }
      for (int64_t q = 0; q < kSeries; ++q) ps[r * kSeries + q] = acc[q];
      if (!any_lane(any)) continue;
      // Bit jj of a lane: the chunk's term jj is a candidate there.
      Bits kept{};
      V added = zero;
      for (int64_t jj = 0; jj < n; ++jj) {
        const auto keep = u[jj] > limit;
        kept |= reinterpret_cast<const Bits&>(keep) & (Bits{} + (BitWord(1) << jj));
        added += keep ? u[jj] : zero;
      }
      for (int l = 0; l < rows.valid; ++l) {
        for (BitWord bits = kept[l]; bits != 0; bits &= bits - 1) {
          const int jj = __builtin_ctzll(bits);
          scratch.log.push_back(Candidate<T>{j0 + jj, static_cast<int32_t>(l * R + r), l, x[jj * R + r][l]});
        }
      }
      // The sum of all terms so far but the largest bounds the final one from below.
      logged[r] += added;
      const V all = ps[r * kSeries] + logged[r];
      const V lower = all - vexp2<T>(max[r] - s) - all * static_cast<T>(allowance);
      bound[r] = vmax<T>(bound[r], absorbed * vmax<T>(lower, zero));
    }
    if (scratch.log.size() >= capacity) {
      prune();
      capacity = std::max<size_t>(kLogCapacity, 2 * scratch.log.size());
    }
  }

  // The sum of the others but the first largest, relative to m: the absorbed terms' rescaled, plus the
  // candidates' but the first at m; less 1 if that was absorbed (it then was at most 1/64 of the sum).
  scratch.candidates.assign(static_cast<size_t>(L) * R, 0.0);
  scratch.largest_logged.assign(static_cast<size_t>(L) * R, 0);
  scratch.count.assign(static_cast<size_t>(L) * R, 0);
  for (int64_t r = 0; r < R; ++r) max[r] = finite_or_zero<T>(max[r]);
  for (const Candidate<T>& c : scratch.log) {
    const T m = max[c.target - c.lane * R][c.lane];
    if (c.x == m && !scratch.largest_logged[c.target]) {
      scratch.largest_logged[c.target] = 1;
    } else {
      scratch.candidates[c.target] += fast_exp2<double>(static_cast<double>(c.x) - static_cast<double>(m));
    }
  }
  double rescale[L][kSeries];  // per lane of the current target: 2^(q (s - m)), q = 1..kSeries
  for (int64_t r = 0; r < R; ++r) {
    for (int l = 0; l < rows.valid; ++l) {
      const int64_t i = rows.first + l, t = l * R + r;
      const double m = max[r][l];
      const bool seen = ref[r][l] != kNegInf<T>;  // some finite term
      const double f = seen ? fast_exp2<double>(static_cast<double>(ref[r][l]) - m) : 0.0;
      double others = ps[r * kSeries][l] * f + scratch.candidates[t];
      if (seen && !scratch.largest_logged[t]) others -= 1;
      a.shift[i * R + r] = max[r][l];
      a.log2_threshold[i * R + r] =
          std::max(static_cast<T>(std::log2(kJackknifeBigFraction * others)), kThresholdFloor<T>);
      std::fill_n(a.big_index + (i * R + r) * kJackknifeMaxBig, kJackknifeMaxBig, int64_t(-1));
      double p = f;
      for (int64_t q = 0; q < kSeries; ++q, p *= f) rescale[l][q] = p;
      for (int64_t q = 0; q < kSeries; ++q) {
        a.power_sums[(i * R + r) * kSeries + q] = static_cast<T>(ps[r * kSeries + q][l] * rescale[l][q]);
      }
    }
  }
  // Each candidate either listed as big (in the order of j) or added to the power sums.
  bool overflow[L] = {};
  for (const Candidate<T>& c : scratch.log) {
    const int l = c.lane;
    const int64_t r = c.target - l * R, i = rows.first + l;
    const T diff = c.x - max[r][l];
    if (!(diff > a.log2_threshold[i * R + r])) {
      T* out = a.power_sums + (i * R + r) * kSeries;
      const T v = fast_exp2<T>(diff);
      T p = v;
      for (int64_t q = 0; q < kSeries; ++q, p *= v) out[q] += p;
    } else if (scratch.count[c.target] == kJackknifeMaxBig) {
      overflow[l] = true;  // cannot happen (see kJackknifeMaxBig); NaN rather than a wrong value
    } else {
      a.big_index[(i * R + r) * kJackknifeMaxBig + scratch.count[c.target]++] = c.j;
    }
  }
  for (int l = 0; l < rows.valid; ++l) {
    const int64_t i = rows.first + l;
    for (int64_t r = 0; r < R; ++r) {
      a.big_count[i * R + r] = scratch.count[l * R + r];
      if (!overflow[l]) continue;
      std::fill_n(a.power_sums + (i * R + r) * kSeries, kSeries, std::numeric_limits<T>::quiet_NaN());
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
        detail::jackknife_forward_block(a, comp, own, rows, scratch);
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
