// The jackknife's sums inside the fused CPU kernels (no torch headers): see JackknifeArgs in
// kernel_args.h for what is computed, tcestim/jackknife.py for how the estimate is formed from it.
//
// Forward, per block of kLanes queries, the cube recomputed, never stored: pass 1 finds each target's
// maximum m of the other terms and where it first occurs; pass 2 takes u = 2^(x - m) of every term
// once. Its sum (of the others but the first largest) sets the threshold at the end; on the way, a
// term surely below it (below 1/64 of a lower bound of that sum: the sum so far, or the sum over the
// first kPrefix components, swept once before) goes into the power sums, and the few others are
// logged and classified when the sum is known. Backward: two sweeps, each recomputing the cube
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
// u <= kAbsorbed * (a lower bound of the sum of the others but the largest): it is then below the final
// threshold by 1e-4 relative, more than the rounding of exp2 and of the threshold in float (1e-5), and
// the final test x - m > log2_threshold finds it small as well. The others (candidates) are logged
// until the sum is known. At most 1 / kAbsorbed + 1 per target stand above the bound at any time, so
// the log, when full, is pruned against the current bounds.
constexpr double kAbsorbed = kJackknifeBigFraction * (1 - 1e-4);
constexpr int64_t kLogCapacity = 16384;  // entries before the first pruning
// The sum over the first kPrefix components bounds the final one from the start: without it every
// early term would be a candidate (4352 components, D = 8: 60 per target; with it 8).
constexpr int64_t kPrefix = 512;
// Pass 2 forms the terms of kChunk components, then goes through them target by target (the target's
// sums in registers, the bound updated once per chunk).
constexpr int64_t kChunk = 16;

template <typename T>
struct Candidate {
  int64_t j;       // component
  int32_t target;  // lane * R + r
  T diff, u;       // x - m, 2^(x - m)
};

// The first largest term of target r in lane `lane` is component j.
struct Largest {
  int64_t j, r;
  int lane;
};

// Per task of jackknife_forward: vector scratch, the candidate log, the power sums of the candidates
// found small, the big terms' counts and the first largest terms by component.
template <typename T>
struct JackknifeScratch {
  VecBuffer<T> vectors;
  std::vector<Candidate<T>> log;
  std::vector<Largest> largest;
  std::vector<T> small;        // (L, R, kSeries)
  std::vector<int64_t> count;  // (L, R)
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
  static_assert(kChunk <= 8 * static_cast<int64_t>(sizeof(BitWord)), "a lane's bit word holds a chunk");
  static_assert(sizeof(Bits) == sizeof(V), "index vectors share the scratch");
  constexpr int L = kLanes<T>;
  const int64_t M = a.M, K = a.K, D = a.D, R = D + 1;
  V* __restrict zt = scratch.vectors.reserve(2 * D + R * (kChunk + 5 + kSeries));
  V* __restrict cbuf = zt + D;
  V* __restrict x = cbuf + D;  // (kChunk, R): the terms of a chunk of components
  V* __restrict max = x + kChunk * R;
  V* __restrict sum = max + R;  // of the other terms but the (first) largest, relative to it
  V* __restrict bound = sum + R;  // kAbsorbed * the sum over the prefix
  V* __restrict ps = bound + R;  // (R, kSeries)
  Bits* __restrict largest = reinterpret_cast<Bits*>(ps + R * kSeries);  // the first largest's component
  Bits* __restrict first = largest + R;  // bit jj of a lane: the current chunk's term jj is its first largest
  const V zero = broadcast(T(0)), absorbed = broadcast(static_cast<T>(kAbsorbed));
  gather_transposed(a.z, rows, M, D, zt);
  for (int64_t r = 0; r < R; ++r) {
    max[r] = broadcast(kNegInf<T>);
    sum[r] = zero;
    largest[r] = Bits{} + BitWord(K);  // none: all -inf
  }
  for (int64_t k = 0; k < R * kSeries; ++k) ps[k] = zero;
  scratch.log.clear();
  scratch.log.reserve(kLogCapacity);
  scratch.small.assign(static_cast<size_t>(L) * R * kSeries, T(0));
  scratch.count.assign(static_cast<size_t>(L) * R, 0);

  // out[0] the joint, out[1 + d] the marginals of component j (the own component: -inf).
  auto terms = [&](int64_t j, V* __restrict out) {
    const V lw = own.rows(rows, M, j);
    const T* mu = comp.mu + j * D;
    const T* quad = comp.quadratic.data() + j * D;
    const T* off = comp.offset.data() + j * D;
    V csum = zero;
    for (int64_t d = 0; d < D; ++d) {
      cbuf[d] = jackknife_term<T>(zt[d], broadcast(mu[d]), broadcast(quad[d]), broadcast(off[d]));
      csum += cbuf[d];
      out[1 + d] = lw + cbuf[d];
    }
    out[0] = lw + csum;
  };

  // Pass 1: the maxima and where each first occurs.
  for (int64_t j = 0; j < K; ++j) {
    terms(j, x);
    const Bits index = Bits{} + BitWord(j);
    for (int64_t r = 0; r < R; ++r) {
      const auto larger = x[r] > max[r];
      largest[r] = larger ? index : largest[r];
      max[r] = larger ? x[r] : max[r];
    }
  }
  for (int64_t r = 0; r < R; ++r) max[r] = finite_or_zero<T>(max[r]);
  // Where the first largest of each lane and target is, by component (at most one per lane and target).
  scratch.largest.clear();
  for (int64_t r = 0; r < R; ++r) {
    first[r] = Bits{};
    for (int l = 0; l < L; ++l) {
      if (largest[r][l] < static_cast<BitWord>(K)) {
        scratch.largest.push_back(Largest{static_cast<int64_t>(largest[r][l]), r, l});
      }
    }
  }
  std::sort(scratch.largest.begin(), scratch.largest.end(),
            [](const Largest& p, const Largest& q) { return p.j < q.j; });

  // Absorbs the logged candidates that fell below their target's current bound.
  auto prune = [&] {
    size_t kept = 0;
    for (const Candidate<T>& c : scratch.log) {
      const int l = c.target / R;
      const int64_t r = c.target % R;
      if (!(c.u > std::max(static_cast<T>(kAbsorbed) * sum[r][l], bound[r][l]))) {
        add_powers<T>(scratch.small.data() + c.target * kSeries, c.u);
      } else {
        scratch.log[kept++] = c;
      }
    }
    scratch.log.resize(kept);
  };
  size_t capacity = kLogCapacity;
  // Components [0, end): u = 2^(x - m) into sum (but the first largest) and, with Collect, the
  // terms surely small into the power sums and the others into the log.
  auto sweep = [&](int64_t end, auto collect) {
    size_t next = 0;  // the first largest terms not yet reached
    for (int64_t j0 = 0; j0 < end; j0 += kChunk) {
      const int64_t n = std::min(kChunk, end - j0);
      for (int64_t jj = 0; jj < n; ++jj) terms(j0 + jj, x + jj * R);
      // The first largest of a target is no other term: out of the sums, a candidate (u = 1) all the same.
      for (; next < scratch.largest.size() && scratch.largest[next].j < j0 + n; ++next) {
        const Largest& e = scratch.largest[next];
        x[(e.j - j0) * R + e.r][e.lane] = kNegInf<T>;
        first[e.r][e.lane] |= BitWord(1) << (e.j - j0);
      }
      for (int64_t r = 0; r < R; ++r) {
        const V m = max[r];
        V total = sum[r], acc[kSeries];
        // The sum so far bounds the final one: for the whole chunk, a comparison per term.
        const V limit = vmax<T>(absorbed * total, bound[r]);
        Bits kept = first[r];  // bit jj of a lane: the chunk's term jj is a candidate there
        first[r] = Bits{};
        for (int64_t q = 0; q < kSeries; ++q) acc[q] = ps[r * kSeries + q];
        for (int64_t jj = 0; jj < n; ++jj) {
          const V u = vexp2<T>(x[jj * R + r] - m);
          total += u;
          if (!decltype(collect)::value) continue;
          const auto keep = u > limit;
          kept |= reinterpret_cast<const Bits&>(keep) & (Bits{} + (BitWord(1) << jj));
          add_powers<V>(acc, keep ? zero : u);
        }
        sum[r] = total;
        for (int64_t q = 0; q < kSeries; ++q) ps[r * kSeries + q] = acc[q];
        if (!decltype(collect)::value || !any_lane(kept)) continue;
        for (int l = 0; l < rows.valid; ++l) {
          for (BitWord bits = kept[l]; bits != 0; bits &= bits - 1) {
            const int jj = __builtin_ctzll(bits);
            const T diff = static_cast<BitWord>(j0 + jj) == largest[r][l] ? T(0) : x[jj * R + r][l] - m[l];
            scratch.log.push_back(Candidate<T>{j0 + jj, static_cast<int32_t>(l * R + r), diff, fast_exp2<T>(diff)});
          }
        }
      }
      if (decltype(collect)::value && scratch.log.size() >= capacity) {
        prune();
        capacity = std::max<size_t>(kLogCapacity, 2 * scratch.log.size());
      }
    }
  };
  // The prefix's sums, for the bound; then pass 2.
  sweep(std::min(K, kPrefix), std::false_type{});
  for (int64_t r = 0; r < R; ++r) {
    bound[r] = absorbed * sum[r];
    sum[r] = zero;
  }
  sweep(K, std::true_type{});

  // The thresholds, then each candidate either listed as big (in the order of j) or added to the power sums.
  bool overflow[L] = {};
  for (int l = 0; l < rows.valid; ++l) {
    const int64_t i = rows.first + l;
    for (int64_t r = 0; r < R; ++r) {
      const T t = std::max(static_cast<T>(std::log2(kJackknifeBigFraction * static_cast<double>(sum[r][l]))),
                           kThresholdFloor<T>);
      a.shift[i * R + r] = max[r][l];
      a.log2_threshold[i * R + r] = t;
      std::fill_n(a.big_index + (i * R + r) * kJackknifeMaxBig, kJackknifeMaxBig, int64_t(-1));
    }
  }
  for (const Candidate<T>& c : scratch.log) {
    const int l = c.target / R;
    const int64_t r = c.target % R, i = rows.first + l;
    if (!(c.diff > a.log2_threshold[i * R + r])) {
      add_powers<T>(scratch.small.data() + c.target * kSeries, c.u);
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
      for (int64_t q = 0; q < kSeries; ++q) {
        const T sum = ps[r * kSeries + q][l] + scratch.small[(l * R + r) * kSeries + q];
        a.power_sums[(i * R + r) * kSeries + q] = overflow[l] ? std::numeric_limits<T>::quiet_NaN() : sum;
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
