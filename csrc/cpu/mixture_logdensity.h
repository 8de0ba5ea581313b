// Fused CPU kernels for the log-density cube of a diagonal-Gaussian mixture (no torch headers).
//
//   C[i,j,d]     = log N(z[i,d]; mu[j,d], exp(logvar[j,d]))
//   log_qz[i]    = logsumexp_j( logw[i,j] + sum_d C[i,j,d] )      (joint)
//   log_qzd[i,d] = logsumexp_j( logw[i,j] + C[i,j,d] )             (per-dimension marginals)
//
// z is (M, D) queries, mu/logvar are (K, D) components, all row-major and contiguous. The cube is
// never stored: extra memory is O((M + K) * D).
//
// Forward: queries go in blocks of kLanes rows, one SIMD lane per query. Pass 1 finds the exact
// maxima over all components, pass 2 sums exp2(x - max): no rescaling, one exp2 per cube element.
// The cube terms run in base 2 (log2(e) folded into per-component constants); the joint's terms are
// taken back to nats (see joint_term_nats).
//
// Backward recomputes the cube in two sweeps, each reducing in a fixed order, so results are
// bitwise reproducible whatever the thread count:
//   rows    (blocks of queries):    grad_z[i,d] = sum_j W[i,j,d] dC/dz,   grad_logw[i,j]
//   columns (blocks of components): grad_mu[j,d], grad_logvar[j,d] = sum_i W[i,j,d] dC/d(.),
//                                   for the components that need them (j < grad_components)
// with W[i,j,d] = g_qz[i] P[i,j] + g_qzd[i,d] Q[i,j,d], the softmax weights
//   P[i,j] = exp(logw + sum_d C - log_qz[i]),  Q[i,j,d] = exp(logw + C - log_qzd[i,d]).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "exp2.h"
#include "isa.h"

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define TCESTIM_HAVE_MXCSR 1
#endif

namespace tcestim {
namespace cpu {
inline namespace TCESTIM_ISA {

constexpr double kLog2E = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;
constexpr double kLog2Pi = 1.8378770664093454836;  // natural log of 2 pi

// A block of kLanes queries (or components) lives in one native SIMD vector (GCC/Clang vector
// extension): 16 bytes with SSE2, 32 with AVX2, 64 with AVX-512 (see isa.h). Vectors wider than the
// target's registers would make GCC split comparisons and selects into scalar code.
constexpr int kVectorBytes = TCESTIM_VECTOR_BYTES;

template <typename T>
constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float Vec __attribute__((vector_size(kVectorBytes)));
  typedef uint32_t Bits __attribute__((vector_size(kVectorBytes)));
};
template <>
struct Simd<double> {
  typedef double Vec __attribute__((vector_size(kVectorBytes)));
  typedef uint64_t Bits __attribute__((vector_size(kVectorBytes)));
};

template <typename T>
using Vec = typename Simd<T>::Vec;

template <typename T>
inline Vec<T> vexp2(Vec<T> x) {
  return fast_exp2<T, Vec<T>, typename Simd<T>::Bits>(x);
}

template <typename T>
inline Vec<T> broadcast(T s) {
  return detail::splat<Vec<T>>(s);
}

// Per-component constants, row-major (K, D), in base-2 units.
template <typename T>
struct ComponentTable {
  const T* mu;
  std::vector<T> precision;  // exp(-logvar)
  std::vector<T> quadratic;  // -0.5 * log2(e) * exp(-logvar): C2 = offset + quadratic * (z - mu)^2
  std::vector<T> offset;     // -0.5 * log2(e) * (log(2 pi) + logvar)

  ComponentTable(const T* mu_, const T* logvar, int64_t K, int64_t D)
      : mu(mu_), precision(K * D), quadratic(K * D), offset(K * D) {
    for (int64_t k = 0; k < K * D; ++k) {
      const double lv = logvar[k], prec = std::exp(-lv);
      precision[k] = static_cast<T>(prec);
      quadratic[k] = static_cast<T>(-0.5 * kLog2E * prec);
      offset[k] = static_cast<T>(-0.5 * kLog2E * (kLog2Pi + lv));
    }
  }
};

// Block of kLanes consecutive indices starting at `first`, of which `valid` exist; the other lanes
// repeat the last index (count - 1) so that every lane computes on real data (and is not stored).
struct LaneBlock {
  int64_t first, valid;
  int64_t index(int lane, int64_t count) const { return std::min(first + lane, count - 1); }
  bool contains(int64_t k, int lanes) const { return k >= first && k < first + lanes; }
};

// logw[i,j] = log_self if j == i, log_next if j == (i + 1) mod M, log_other otherwise.
template <typename T>
struct StructuredWeights {
  T log2_self, log2_next, log2_other;  // base 2
  int64_t num_queries;                 // M: the "next" index wraps modulo M

  StructuredWeights(double log_self, double log_next, double log_other, int64_t M)
      : log2_self(static_cast<T>(log_self * kLog2E)),
        log2_next(static_cast<T>(log_next * kLog2E)),
        log2_other(static_cast<T>(log_other * kLog2E)),
        num_queries(M) {}

  int64_t next(int64_t i) const { return i + 1 == num_queries ? 0 : i + 1; }
  T at(int64_t i, int64_t j) const {
    return j == i ? log2_self : (j == next(i) ? log2_next : log2_other);
  }

  // Lanes = queries of `rows`, one component j.
  Vec<T> rows(const LaneBlock& rows, int64_t M, int64_t j) const {
    constexpr int L = kLanes<T>;
    if (j != 0 && (j < rows.first || j > rows.first + L)) return broadcast(log2_other);
    Vec<T> out{};
    for (int l = 0; l < L; ++l) out[l] = at(rows.index(l, M), j);
    return out;
  }
  // Lanes = components of `cols`, one query i.
  Vec<T> columns(int64_t i, const LaneBlock& cols, int64_t K) const {
    constexpr int L = kLanes<T>;
    if (!cols.contains(i, L) && !cols.contains(next(i), L)) return broadcast(log2_other);
    Vec<T> out{};
    for (int l = 0; l < L; ++l) out[l] = at(i, cols.index(l, K));
    return out;
  }
  static constexpr bool kDense = false;
};

// logw given as a row-major (M, K) matrix of natural-log weights.
template <typename T>
struct DenseWeights {
  const T* log_weights;
  int64_t num_components;  // K: row stride

  Vec<T> rows(const LaneBlock& rows, int64_t M, int64_t j) const {
    Vec<T> out{};
    for (int l = 0; l < kLanes<T>; ++l) out[l] = log_weights[rows.index(l, M) * num_components + j];
    return out * static_cast<T>(kLog2E);
  }
  Vec<T> columns(int64_t i, const LaneBlock& cols, int64_t K) const {
    Vec<T> out{};
    const T* row = log_weights + i * num_components;
    if (cols.valid == kLanes<T>) {
      std::memcpy(&out, row + cols.first, sizeof(out));
    } else {
      for (int l = 0; l < kLanes<T>; ++l) out[l] = row[cols.index(l, K)];
    }
    return out * static_cast<T>(kLog2E);
  }
  static constexpr bool kDense = true;
};

namespace detail {

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// A maximum of -inf (no term with nonzero weight) becomes 0, so that x - max is -inf, not NaN.
template <typename T>
inline Vec<T> finite_or_zero(Vec<T> max) {
  return max == broadcast(kNegInf<T>) ? broadcast(T(0)) : max;
}

template <typename T>
inline Vec<T> vmax(Vec<T> a, Vec<T> b) {
  return a > b ? a : b;
}

// (m + log2(s)) * ln 2 for every lane: back from base 2 to nats.
template <typename T>
inline Vec<T> log2_to_nats(Vec<T> max, Vec<T> sum) {
  Vec<T> out;
  for (int l = 0; l < kLanes<T>; ++l) {
    out[l] = static_cast<T>((static_cast<double>(max[l]) + std::log2(static_cast<double>(sum[l]))) * kLn2);
  }
  return out;
}

// m + log(s) for every lane, m and the result in nats.
template <typename T>
inline Vec<T> log_sum_nats(Vec<T> max, Vec<T> sum) {
  Vec<T> out;
  for (int l = 0; l < kLanes<T>; ++l) {
    out[l] = static_cast<T>(static_cast<double>(max[l]) + std::log(static_cast<double>(sum[l])));
  }
  return out;
}

// Makes the compiler round x to T here: a product fused into a later add (FMA contraction, which
// GCC decides per use) would otherwise differ in its last bits between uses.
template <typename V>
inline void round_here(V& x) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(x));
#elif defined(__aarch64__)
  asm("" : "+w"(x));
#endif
}

// The joint's terms logw + sum_d C in nats, formed identically in the forward and both backward
// sweeps. Their maximum is then a float in nats: where one component dominates, log_qz equals it
// and exp(term - log_qz) is 1 exactly, as with torch.logsumexp. (Reduced in base 2, log_qz's round
// trip through float nats cost every softmax weight ~1e-6 relative in float32.)
template <typename T>
inline Vec<T> joint_term_nats(Vec<T> lw2, Vec<T> csum2) {
  Vec<T> x = (lw2 + csum2) * static_cast<T>(kLn2);
  round_here(x);
  return x;
}

// exp(x - ref) for x, ref in nats: the difference is taken before the change of base, where it is exact.
template <typename T>
inline Vec<T> exp_of_difference(Vec<T> x, Vec<T> ref) {
  return vexp2<T>((x - ref) * static_cast<T>(kLog2E));
}

// dst[d][lane] = src[index(lane) * D + d]: a block of rows, transposed so lanes are contiguous.
template <typename T>
inline void gather_transposed(const T* src, const LaneBlock& block, int64_t count, int64_t D, Vec<T>* dst) {
  for (int l = 0; l < kLanes<T>; ++l) {
    const T* row = src + block.index(l, count) * D;
    for (int64_t d = 0; d < D; ++d) dst[d][l] = row[d];
  }
}

template <typename T>
inline void scatter_transposed(const Vec<T>* src, const LaneBlock& block, int64_t D, T* dst) {
  for (int64_t l = 0; l < block.valid; ++l) {
    T* row = dst + (block.first + l) * D;
    for (int64_t d = 0; d < D; ++d) row[d] = src[d][l];
  }
}

template <typename T>
inline void scatter_lanes(Vec<T> src, const LaneBlock& block, T* dst) {
  for (int64_t l = 0; l < block.valid; ++l) dst[block.first + l] = src[l];
}

// Per-thread scratch of SIMD vectors. (std::vector would lose the vectors' alignment: GCC drops the
// attribute of a vector_size type used as a template argument.)
template <typename T>
class VecBuffer {
 public:
  VecBuffer() = default;
  VecBuffer(const VecBuffer&) = delete;
  VecBuffer& operator=(const VecBuffer&) = delete;
  ~VecBuffer() { release(); }

  // Room for n vectors; previous contents are not kept.
  Vec<T>* reserve(int64_t n) {
    if (n > capacity_) {
      release();
      data_ = static_cast<Vec<T>*>(::operator new(n * sizeof(Vec<T>), std::align_val_t{kVectorBytes}));
      capacity_ = n;
    }
    return data_;
  }

 private:
  void release() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t{kVectorBytes});
    data_ = nullptr;
    capacity_ = 0;
  }
  Vec<T>* data_ = nullptr;
  int64_t capacity_ = 0;
};

inline int64_t num_blocks(int64_t count, int lanes) { return (count + lanes - 1) / lanes; }

// The sums over components (forward, grad_z) and over queries (grad_mu, grad_logvar) add their terms
// in runs of kRun, then add up the runs' partial sums: float32 rounding error grows like
// kRun + count / kRun instead of count (K = 2048: 6e-6 -> 3e-7 relative, typical).
constexpr int64_t kRun = 32;

// Forward for one block of queries.
template <typename T, typename Weights>
void forward_block(const T* z, int64_t M, int64_t K, int64_t D, const ComponentTable<T>& comp,
                   const Weights& weights, const LaneBlock& rows, T* log_qz, T* log_qzd,
                   VecBuffer<T>& scratch) {
  using V = Vec<T>;
  V* __restrict zt = scratch.reserve(4 * D);
  V* __restrict max_d = zt + D;
  V* __restrict sum_d = max_d + D;
  V* __restrict run_d = sum_d + D;
  gather_transposed(z, rows, M, D, zt);
  for (int64_t d = 0; d < D; ++d) {
    max_d[d] = broadcast(kNegInf<T>);
    sum_d[d] = broadcast(T(0));
  }
  V max_joint = broadcast(kNegInf<T>), sum_joint = broadcast(T(0));

  // Pass 1: exact maxima over all components.
  for (int64_t j = 0; j < K; ++j) {
    const V lw = weights.rows(rows, M, j);
    const T* mu = comp.mu + j * D;
    const T* quad = comp.quadratic.data() + j * D;
    const T* off = comp.offset.data() + j * D;
    V csum = broadcast(T(0));
    for (int64_t d = 0; d < D; ++d) {
      const V t = zt[d] - mu[d];
      const V c = off[d] + quad[d] * t * t;
      csum += c;
      max_d[d] = vmax<T>(lw + c, max_d[d]);
    }
    max_joint = vmax<T>(joint_term_nats<T>(lw, csum), max_joint);
  }
  for (int64_t d = 0; d < D; ++d) max_d[d] = finite_or_zero<T>(max_d[d]);
  max_joint = finite_or_zero<T>(max_joint);

  // Pass 2: sums of exp2(x - max), recomputing the same terms in the same order.
  for (int64_t j0 = 0; j0 < K; j0 += kRun) {
    for (int64_t d = 0; d < D; ++d) run_d[d] = broadcast(T(0));
    V run_joint = broadcast(T(0));
    for (int64_t j = j0; j < std::min(K, j0 + kRun); ++j) {
      const V lw = weights.rows(rows, M, j);
      const T* mu = comp.mu + j * D;
      const T* quad = comp.quadratic.data() + j * D;
      const T* off = comp.offset.data() + j * D;
      V csum = broadcast(T(0));
      for (int64_t d = 0; d < D; ++d) {
        const V t = zt[d] - mu[d];
        const V c = off[d] + quad[d] * t * t;
        csum += c;
        run_d[d] += vexp2<T>(lw + c - max_d[d]);
      }
      run_joint += exp_of_difference<T>(joint_term_nats<T>(lw, csum), max_joint);
    }
    for (int64_t d = 0; d < D; ++d) sum_d[d] += run_d[d];
    sum_joint += run_joint;
  }

  for (int64_t d = 0; d < D; ++d) sum_d[d] = log2_to_nats<T>(max_d[d], sum_d[d]);
  scatter_transposed(sum_d, rows, D, log_qzd);
  scatter_lanes(log_sum_nats<T>(max_joint, sum_joint), rows, log_qz);
}

// Saved forward outputs as both backward sweeps use them: the joint as it is (nats), the
// marginals converted to base 2.
template <typename T>
struct SavedLog2 {
  const T* joint;            // (M,)   log_qz
  std::vector<T> marginals;  // (M, D) log_qzd * log2(e)

  SavedLog2(const T* log_qz, const T* log_qzd, int64_t M, int64_t D) : joint(log_qz), marginals(M * D) {
    for (int64_t k = 0; k < M * D; ++k) marginals[k] = static_cast<T>(log_qzd[k] * kLog2E);
  }
};

// Backward sweep over one block of queries: grad_z (and grad_logw for dense weights).
template <typename T, typename Weights>
void backward_rows_block(const T* grad_qz, const T* grad_qzd, const T* z, int64_t M, int64_t K,
                         int64_t D, const ComponentTable<T>& comp, const Weights& weights,
                         const SavedLog2<T>& saved, const LaneBlock& rows, T* grad_z, T* grad_logw,
                         VecBuffer<T>& scratch) {
  using V = Vec<T>;
  V* __restrict zt = scratch.reserve(6 * D);
  V* __restrict gt = zt + D;    // grad_qzd, transposed
  V* __restrict lt = gt + D;    // saved marginals (base 2), transposed
  V* __restrict cbuf = lt + D;  // C2 terms of the current component
  V* __restrict gz = cbuf + D;  // grad_z accumulator, transposed
  V* __restrict run = gz + D;   // grad_z over the current run of components
  gather_transposed(z, rows, M, D, zt);
  gather_transposed(grad_qzd, rows, M, D, gt);
  gather_transposed(saved.marginals.data(), rows, M, D, lt);
  for (int64_t d = 0; d < D; ++d) gz[d] = broadcast(T(0));
  V g_joint{}, l_joint{};
  for (int l = 0; l < kLanes<T>; ++l) {
    g_joint[l] = grad_qz[rows.index(l, M)];
    l_joint[l] = saved.joint[rows.index(l, M)];
  }

  for (int64_t j = 0; j < K; ++j) {
    if (j % kRun == 0) {
      for (int64_t d = 0; d < D; ++d) run[d] = broadcast(T(0));
    }
    const V lw = weights.rows(rows, M, j);
    const T* mu = comp.mu + j * D;
    const T* quad = comp.quadratic.data() + j * D;
    const T* off = comp.offset.data() + j * D;
    const T* prec = comp.precision.data() + j * D;
    V csum = broadcast(T(0));
    for (int64_t d = 0; d < D; ++d) {
      const V t = zt[d] - mu[d];
      cbuf[d] = off[d] + quad[d] * t * t;
      csum += cbuf[d];
    }
    const V gp = g_joint * exp_of_difference<T>(joint_term_nats<T>(lw, csum), l_joint);
    V gw = gp;
    for (int64_t d = 0; d < D; ++d) {
      const V gq = gt[d] * vexp2<T>(lw + cbuf[d] - lt[d]);
      gw += gq;
      run[d] -= (gp + gq) * (zt[d] - mu[d]) * prec[d];  // dC/dz = -(z - mu) * precision
    }
    if (Weights::kDense) {
      for (int64_t l = 0; l < rows.valid; ++l) grad_logw[(rows.first + l) * K + j] = gw[l];
    }
    if (j % kRun == kRun - 1 || j == K - 1) {
      for (int64_t d = 0; d < D; ++d) gz[d] += run[d];
    }
  }
  scatter_transposed(gz, rows, D, grad_z);
}

// Backward sweep over one block of components: grad_mu and grad_logvar.
template <typename T, typename Weights>
void backward_columns_block(const T* grad_qz, const T* grad_qzd, const T* z, int64_t M, int64_t K,
                            int64_t D, const ComponentTable<T>& comp, const Weights& weights,
                            const SavedLog2<T>& saved, const LaneBlock& cols, T* grad_mu,
                            T* grad_logvar, VecBuffer<T>& scratch) {
  using V = Vec<T>;
  V* __restrict mut = scratch.reserve(9 * D);
  V* __restrict pt = mut + D;   // precision
  V* __restrict qt = pt + D;    // quadratic
  V* __restrict ot = qt + D;    // offset
  V* __restrict cbuf = ot + D;  // C2 terms of the current query
  V* __restrict gmu = cbuf + D;
  V* __restrict glv = gmu + D;
  V* __restrict run_mu = glv + D;  // gmu and glv over the current run of queries
  V* __restrict run_lv = run_mu + D;
  gather_transposed(comp.mu, cols, K, D, mut);
  gather_transposed(comp.precision.data(), cols, K, D, pt);
  gather_transposed(comp.quadratic.data(), cols, K, D, qt);
  gather_transposed(comp.offset.data(), cols, K, D, ot);
  for (int64_t d = 0; d < 2 * D; ++d) gmu[d] = broadcast(T(0));
  const V half = broadcast(T(0.5));

  for (int64_t i = 0; i < M; ++i) {
    if (i % kRun == 0) {
      for (int64_t d = 0; d < D; ++d) run_mu[d] = run_lv[d] = broadcast(T(0));
    }
    const V lw = weights.columns(i, cols, K);
    const T* zi = z + i * D;
    const T* gi = grad_qzd + i * D;
    const T* li = saved.marginals.data() + i * D;
    V csum = broadcast(T(0));
    for (int64_t d = 0; d < D; ++d) {
      const V t = zi[d] - mut[d];
      cbuf[d] = ot[d] + qt[d] * t * t;
      csum += cbuf[d];
    }
    const V gp = grad_qz[i] * exp_of_difference<T>(joint_term_nats<T>(lw, csum), broadcast(saved.joint[i]));
    for (int64_t d = 0; d < D; ++d) {
      const V w = gp + gi[d] * vexp2<T>(lw + cbuf[d] - li[d]);
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
  scatter_transposed(gmu, cols, D, grad_mu);
  scatter_transposed(glv, cols, D, grad_logvar);
}

// Flushes subnormal results and operands to zero on this thread while alive (x86 FTZ + DAZ),
// then restores the caller's mode. Softmax weights far below 1 times small upstream gradients
// otherwise produce subnormals, which cost ~100x per operation; what they carry is below
// 1e-38 (float) or 1e-308 (double) and never changes a result at working precision.
class FlushSubnormals {
 public:
#ifdef TCESTIM_HAVE_MXCSR
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

// Runs fn(block, scratch) over the LaneBlocks of `count` rows (or columns) through parallel_for; each
// task flushes subnormals and owns one default-constructed Scratch.
template <typename T, typename Scratch = VecBuffer<T>, typename ParallelFor, typename F>
void for_each_lane_block(int64_t count, ParallelFor&& parallel_for, F&& fn) {
  constexpr int L = kLanes<T>;
  parallel_for(num_blocks(count, L), [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    Scratch scratch;
    for (int64_t b = begin; b < end; ++b) fn(LaneBlock{b * L, std::min<int64_t>(L, count - b * L)}, scratch);
  });
}

// How many leading components get gradient rows: grad_components (kernel_args.h) clamped to [0, K].
inline int64_t owned_components(int64_t grad_components, int64_t K) {
  return std::min(std::max<int64_t>(grad_components, 0), K);
}

}  // namespace detail

// ParallelFor: callable(int64_t num_tasks, F fn) that runs fn(begin, end) over disjoint task ranges.

template <typename T, typename Weights, typename ParallelFor>
void mixture_logdensity_forward(const T* z, const T* mu, const T* logvar, int64_t M, int64_t K,
                                int64_t D, const Weights& weights, T* log_qz, T* log_qzd,
                                ParallelFor&& parallel_for) {
  const ComponentTable<T> comp(mu, logvar, K, D);
  detail::for_each_lane_block<T>(M, parallel_for, [&](const LaneBlock& rows, detail::VecBuffer<T>& scratch) {
    detail::forward_block(z, M, K, D, comp, weights, rows, log_qz, log_qzd, scratch);
  });
}

// grad_logw may be null unless Weights is DenseWeights. Only components 0..grad_components-1 get
// rows of grad_mu and grad_logvar (the column sweep skips the rest); grad_z sums over all K.
template <typename T, typename Weights, typename ParallelFor>
void mixture_logdensity_backward(const T* grad_qz, const T* grad_qzd, const T* z, const T* mu,
                                 const T* logvar, int64_t M, int64_t K, int64_t D,
                                 const Weights& weights, const T* log_qz, const T* log_qzd,
                                 int64_t grad_components, T* grad_z, T* grad_mu, T* grad_logvar,
                                 T* grad_logw,
                                 ParallelFor&& parallel_for) {
  const ComponentTable<T> comp(mu, logvar, K, D);
  const detail::SavedLog2<T> saved(log_qz, log_qzd, M, D);
  detail::for_each_lane_block<T>(M, parallel_for, [&](const LaneBlock& rows, detail::VecBuffer<T>& scratch) {
    detail::backward_rows_block(grad_qz, grad_qzd, z, M, K, D, comp, weights, saved, rows, grad_z, grad_logw,
                                scratch);
  });
  detail::for_each_lane_block<T>(detail::owned_components(grad_components, K), parallel_for,
                                 [&](const LaneBlock& cols, detail::VecBuffer<T>& scratch) {
    detail::backward_columns_block(grad_qz, grad_qzd, z, M, K, D, comp, weights, saved, cols, grad_mu,
                                   grad_logvar, scratch);
  });
}

}  // namespace TCESTIM_ISA
}  // namespace cpu
}  // namespace tcestim
