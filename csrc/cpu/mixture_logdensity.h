// Fused CPU kernels for the log-density cube of a diagonal-Gaussian mixture (no torch headers).
//
//   C[i,j,d]     = log N(z[i,d]; mu[j,d], exp(logvar[j,d]))
//   log_qz[i]    = logsumexp_j( logw[i,j] + sum_d C[i,j,d] )      (joint)
//   log_qzd[i,d] = logsumexp_j( logw[i,j] + C[i,j,d] )             (per-dimension marginals)
//
// z is (M, D) queries, mu/logvar are (K, D) components, all row-major and contiguous. The cube is
// never stored: extra memory is O((M + K) * D) (the backward's partial sums: at most 8 (M + 2 K) D values).
//
// Forward: queries go in blocks of kLanes rows, one SIMD lane per query, one pass over the
// components: each term is formed once and exponentiated once (see forward_block). The cube terms
// run in base 2 (log2(e) folded into per-component constants); the joint's terms are taken back to
// nats (see joint_term_nats).
//
// Backward: one sweep that recomputes the cube once, tile by tile (TilePlan, FusedBackward), and
// forms each weight W[i,j,d] = g_qz[i] P[i,j] + g_qzd[i,d] Q[i,j,d] once for all three gradients:
//   grad_z[i,d] = sum_j W dC/dz,  grad_logw[i,j] (dense weights),
//   grad_mu[j,d], grad_logvar[j,d] = sum_i W dC/d(.)  for the components j < grad_components,
// with the softmax weights P[i,j] = exp(logw + sum_d C - log_qz[i]), Q[i,j,d] = exp(logw + C - log_qzd[i,d]).
// Tiles write partial sums that are added up in a fixed order, so results are bitwise reproducible
// whatever the thread count.
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
#include <immintrin.h>
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

// vexp2 of x <= 127 (float; 1023 double) or NaN, one comparison less.
template <typename T>
inline Vec<T> vexp2_not_above_highest(Vec<T> x) {
  return fast_exp2<T, Vec<T>, typename Simd<T>::Bits, false>(x);
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
    fill(logvar, 0, K * D);
  }

  // The same, filled through parallel_for (an exp per element costs as much as tens of cube terms:
  // serial, it took 5% of a 2-thread forward at M = K = 2048, D = 32).
  template <typename ParallelFor>
  ComponentTable(const T* mu_, const T* logvar, int64_t K, int64_t D, ParallelFor&& parallel_for)
      : mu(mu_), precision(K * D), quadratic(K * D), offset(K * D) {
    constexpr int64_t kPerTask = 1 << 14;
    const int64_t n = K * D, tasks = (n + kPerTask - 1) / kPerTask;
    if (tasks <= 1) {
      fill(logvar, 0, n);
      return;
    }
    parallel_for(tasks, [&](int64_t begin, int64_t end) {
      fill(logvar, begin * kPerTask, std::min(n, end * kPerTask));
    });
  }

 private:
  void fill(const T* logvar, int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
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
  // True, with *lw = log2_other in every lane, if that is the weight of every query of `rows` for
  // every component j0..j0+n-1 (none is a query's own or next component).
  bool uniform_rows(const LaneBlock& rows, int64_t j0, int64_t n, Vec<T>* lw) const {
    if (j0 == 0 || (j0 + n - 1 >= rows.first && j0 <= rows.first + kLanes<T>)) return false;
    *lw = broadcast(log2_other);
    return true;
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
  bool uniform_rows(const LaneBlock&, int64_t, int64_t, Vec<T>*) const { return false; }
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

// sum_d term(d) over d = 0..D-1 in four interleaved partial sums, ((s0 + s1) + (s2 + s3)): a single
// running sum would make every addition wait for the previous one (4 cycles), longer than the
// rest of a term takes. Forward and backward form the joint's sums through this one function.
template <typename V, typename Term>
inline V sum_over_dims(int64_t D, Term&& term) {
  V s0{}, s1{}, s2{}, s3{};
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) {
    s0 += term(d);
    s1 += term(d + 1);
    s2 += term(d + 2);
    s3 += term(d + 3);
  }
  for (; d < D; ++d) s0 += term(d);
  return (s0 + s1) + (s2 + s3);
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

inline int64_t num_blocks(int64_t count, int64_t size) { return (count + size - 1) / size; }

// The sums over components (forward, grad_z) add their terms in runs (chunks of kForwardChunk or kRun
// components), then add up the runs' partial sums: float32 rounding error grows like run + count / run
// instead of count (K = 2048: 6e-6 -> 3e-7 relative, typical). The sums over queries (grad_mu,
// grad_logvar) run per lane over a tile's blocks and are added across lanes in double.
constexpr int64_t kRun = 32;
// The backward's grad_z adds its terms in shorter runs still, kSubRun into a run of kRun: its terms
// (+- W (z - mu) / var) cancel, and 32 in a row left its float32 error 2-10% above plain PyTorch's.
constexpr int64_t kSubRun = 8;

// The forward's chunks of components: a chunk's terms (kForwardChunk x D vectors) stay in L1.
constexpr int64_t kForwardChunk = 16;

// True if any lane of a comparison's result is set: one test instruction on x86 (the portable
// version compiles to a chain of extracts and ors there). The AVX intrinsics rely on GCC's
// `#pragma GCC target` in kernels_avx2/avx512.cpp (clang ignores it: the portable version there).
template <typename Mask>
inline bool any_lane(Mask mask) {
  static_assert(sizeof(Mask) == kVectorBytes, "a comparison's result: one vector");
#if defined(__x86_64__) && !defined(__clang__) && TCESTIM_VECTOR_BYTES == 64
  const __m512i m = reinterpret_cast<__m512i>(mask);
  return _mm512_test_epi32_mask(m, m) != 0;
#elif defined(__x86_64__) && !defined(__clang__) && TCESTIM_VECTOR_BYTES == 32
  const __m256i m = reinterpret_cast<__m256i>(mask);
  return !_mm256_testz_si256(m, m);
#elif defined(__x86_64__) && TCESTIM_VECTOR_BYTES == 16
  return _mm_movemask_epi8(reinterpret_cast<__m128i>(mask)) != 0;
#else
  uint64_t words[sizeof(Mask) / sizeof(uint64_t)];
  std::memcpy(words, &mask, sizeof(Mask));
  uint64_t any = 0;
  for (uint64_t w : words) any |= w;
  return any != 0;
#endif
}

// Raises a running maximum to `candidate` where that is larger and rescales the running sum of
// exp(x - max) to the new maximum; log2_per_unit is 1 for terms in base 2, log2(e) for terms in nats.
// Maxima of -inf count as 0, as in finite_or_zero.
template <typename T>
inline void raise_maximum(Vec<T>& max, Vec<T>& sum, Vec<T> candidate, T log2_per_unit) {
  const Vec<T> raised = vmax<T>(candidate, max);
  if (any_lane(raised > max)) {
    sum *= vexp2<T>((finite_or_zero<T>(max) - finite_or_zero<T>(raised)) * log2_per_unit);
    max = raised;
  }
}

// The forward makes one pass over the components in chunks of kForwardChunk. A chunk's terms x
// (base 2) are formed once into a buffer; then, per target, their 2^(x - m) are added to the sum
// relative to that target's reference m, which is the maximum of the terms seen when it was last set
// (the first chunk sets it). A later chunk's terms may exceed m: while a chunk's sum stays below
// kTermsAbove (any term at most that much above m, where the sum cannot overflow) they are kept;
// otherwise m is raised to the chunk's maximum, the sum rescaled, and the chunk summed again. So
// the terms need no maximum of their own, which would cost as much as forming them.
constexpr double kTermsAbove = 18446744073709551616.0;  // 2^64

// Blocks of queries that the forward sweeps together, chunk by chunk, so that each chunk of
// components is read from memory once for all of them (a bank of components does not fit in cache).
inline int64_t forward_group(int64_t blocks) {
  return std::min<int64_t>(4, std::max<int64_t>(1, num_blocks(blocks, 8)));
}

// Forward for blocks first_block..first_block+count-1 of queries (count <= forward_group).
template <typename T, typename Weights>
void forward_blocks(const T* z, int64_t M, int64_t K, int64_t D, const ComponentTable<T>& comp,
                    const Weights& weights, int64_t first_block, int64_t count, T* log_qz, T* log_qzd,
                    VecBuffer<T>& scratch) {
  using V = Vec<T>;
  constexpr int L = kLanes<T>;
  const int64_t stride = D | 1;  // an odd row stride: the column reads below spread over the cache sets
  V* __restrict zt = scratch.reserve(count * (3 * D + 2) + D + kForwardChunk * stride + kForwardChunk);
  V* __restrict ref_all = zt + count * D;       // the marginals' references m (base 2), per block
  V* __restrict sum_all = ref_all + count * D;  // their sums of 2^(x - m)
  V* __restrict joint_state = sum_all + count * D;     // per block: maximum and sum of the joint's terms
  V* __restrict runs = joint_state + 2 * count;        // (D,): a chunk's sums
  V* __restrict terms = runs + D;                      // (kForwardChunk, stride): a chunk's marginal terms
  V* __restrict joint = terms + kForwardChunk * stride;  // (kForwardChunk,): its joint terms, nats
  const auto rows_of = [&](int64_t b) {
    const int64_t first = (first_block + b) * L;
    return LaneBlock{first, std::min<int64_t>(L, M - first)};
  };
  for (int64_t b = 0; b < count; ++b) {
    gather_transposed(z, rows_of(b), M, D, zt + b * D);
    for (int64_t d = 0; d < D; ++d) {
      ref_all[b * D + d] = broadcast(kNegInf<T>);
      sum_all[b * D + d] = broadcast(T(0));
    }
    joint_state[2 * b] = broadcast(kNegInf<T>);
    joint_state[2 * b + 1] = broadcast(T(0));
  }
  const V above = broadcast(static_cast<T>(kTermsAbove));

  for (int64_t j0 = 0; j0 < K; j0 += kForwardChunk) {
    const int64_t n = std::min(kForwardChunk, K - j0);
    for (int64_t b = 0; b < count; ++b) {
      const LaneBlock rows = rows_of(b);
      const V* __restrict zb = zt + b * D;
      V* __restrict ref_d = ref_all + b * D;
      V* __restrict sum_d = sum_all + b * D;
      // Where every weight of the chunk is the same, the buffer holds C2 without it and the weight
      // moves into the shift: one addition per term fewer.
      V lw_chunk{};
      const bool uniform = weights.uniform_rows(rows, j0, n, &lw_chunk);
      V chunk_max_joint = broadcast(kNegInf<T>);
      for (int64_t jj = 0; jj < n; ++jj) {
        const int64_t j = j0 + jj;
        const V lw = uniform ? lw_chunk : weights.rows(rows, M, j);
        const T* mu = comp.mu + j * D;
        const T* quad = comp.quadratic.data() + j * D;
        const T* off = comp.offset.data() + j * D;
        V* __restrict x = terms + jj * stride;
        const V csum = sum_over_dims<V>(D, [&](int64_t d) {
          const V t = zb[d] - mu[d];
          const V c = off[d] + quad[d] * t * t;
          x[d] = uniform ? c : lw + c;
          return c;
        });
        joint[jj] = joint_term_nats<T>(lw, csum);
        chunk_max_joint = vmax<T>(joint[jj], chunk_max_joint);
      }
      const V lw_shift = uniform ? lw_chunk : broadcast(T(0));
      const auto chunk_sum = [&](int64_t d) {
        const V shift = finite_or_zero<T>(ref_d[d]) - lw_shift;
        V run = broadcast(T(0));
        for (int64_t jj = 0; jj < n; ++jj) run += vexp2<T>(terms[jj * stride + d] - shift);
        return run;
      };
      // A target needs a new reference where it has none yet or the chunk's sum is too large (or
      // NaN); one test for all targets, since that is rare after the first chunk.
      const auto needs_reference = [&](int64_t d) { return (ref_d[d] == broadcast(kNegInf<T>)) | ~(runs[d] <= above); };
      decltype(needs_reference(0)) any{};
      for (int64_t d = 0; d < D; ++d) {
        runs[d] = chunk_sum(d);
        any |= needs_reference(d);
      }
      if (any_lane(any)) {
        for (int64_t d = 0; d < D; ++d) {
          if (!any_lane(needs_reference(d))) continue;
          V chunk_max = broadcast(kNegInf<T>);
          for (int64_t jj = 0; jj < n; ++jj) chunk_max = vmax<T>(terms[jj * stride + d], chunk_max);
          raise_maximum<T>(ref_d[d], sum_d[d], chunk_max + lw_shift, T(1));
          runs[d] = chunk_sum(d);
        }
      }
      for (int64_t d = 0; d < D; ++d) sum_d[d] += runs[d];
      V& max_joint = joint_state[2 * b];
      V& sum_joint = joint_state[2 * b + 1];
      raise_maximum<T>(max_joint, sum_joint, chunk_max_joint, static_cast<T>(kLog2E));
      const V shift_joint = finite_or_zero<T>(max_joint);
      V run_joint = broadcast(T(0));
      for (int64_t jj = 0; jj < n; ++jj) run_joint += exp_of_difference<T>(joint[jj], shift_joint);
      sum_joint += run_joint;
    }
  }

  for (int64_t b = 0; b < count; ++b) {
    V* __restrict sum_d = sum_all + b * D;
    for (int64_t d = 0; d < D; ++d) sum_d[d] = log2_to_nats<T>(finite_or_zero<T>(ref_all[b * D + d]), sum_d[d]);
    scatter_transposed(sum_d, rows_of(b), D, log_qzd);
    scatter_lanes(log_sum_nats<T>(finite_or_zero<T>(joint_state[2 * b]), joint_state[2 * b + 1]), rows_of(b),
                  log_qz);
  }
}

// Saved forward outputs as the backward uses them: the joint as it is (nats), the marginals
// converted to base 2.
template <typename T>
struct SavedLog2 {
  const T* joint;            // (M,)   log_qz
  std::vector<T> marginals;  // (M, D) log_qzd * log2(e)

  SavedLog2(const T* log_qz, const T* log_qzd, int64_t M, int64_t D) : joint(log_qz), marginals(M * D) {
    for (int64_t k = 0; k < M * D; ++k) marginals[k] = static_cast<T>(log_qzd[k] * kLog2E);
  }
};

// The backward's split of the (queries x components) plane into tiles: row tiles of whole SIMD
// blocks of queries, column tiles of whole runs of components. It depends on M, K and the lane
// width only, so the results do not depend on how many threads take the tiles.
struct TilePlan {
  static constexpr int64_t kMinBlocksPerRowTile = 4;  // amortises the sums across lanes
  static constexpr int64_t kMaxRowTiles = 8;
  static constexpr int64_t kMaxColumnTiles = 8;  // bounds the partial sums of grad_z (<= 8 M D values)

  int64_t row_tile, row_tiles, column_tile, column_tiles;

  TilePlan(int64_t M, int64_t K, int64_t lanes) {
    const int64_t blocks = num_blocks(M, lanes);
    row_tile = std::max(kMinBlocksPerRowTile, num_blocks(blocks, kMaxRowTiles)) * lanes;
    row_tiles = num_blocks(M, row_tile);
    column_tile = std::max<int64_t>(1, num_blocks(num_blocks(K, kRun), kMaxColumnTiles)) * kRun;
    column_tiles = num_blocks(K, column_tile);
  }
};

// The backward in one sweep: each tile forms the weights W[i,j,d] of its queries and components once
// and adds them into grad_z (over its components) and grad_mu, grad_logvar (over its queries, for
// the components j < grad_components), as partial sums per tile that are added up afterwards in a
// fixed order. Lanes are queries; the sums over queries run per lane and are added across lanes
// (in double) at the end of each chunk of kRun components.
template <typename T, typename Weights>
class FusedBackward {
 public:
  using V = Vec<T>;

  FusedBackward(const T* grad_qz, const T* grad_qzd, const T* z, int64_t M, int64_t K, int64_t D,
                int64_t owned, const ComponentTable<T>& comp, const Weights& weights, const SavedLog2<T>& saved,
                const TilePlan& plan, T* grad_logw)
      : grad_qz_(grad_qz), grad_qzd_(grad_qzd), z_(z), M_(M), K_(K), D_(D), owned_(owned), comp_(comp),
        weights_(weights), saved_(saved), plan_(plan), grad_logw_(grad_logw) {}

  // Tile (r, c): writes rows [r row_tile, ...) of partial_z[c] (M, D) and rows j < owned of the
  // tile's components of partial_mu[r], partial_logvar[r] (owned, D).
  void tile(int64_t r, int64_t c, T* partial_z, T* partial_mu, T* partial_logvar, VecBuffer<T>& scratch) const {
    constexpr int L = kLanes<T>;
    const int64_t D = D_;
    const int64_t i_begin = r * plan_.row_tile, i_end = std::min(M_, i_begin + plan_.row_tile);
    const int64_t j_begin = c * plan_.column_tile, j_end = std::min(K_, j_begin + plan_.column_tile);
    const int64_t nb = num_blocks(i_end - i_begin, L);
    V* __restrict zt = scratch.reserve(nb * (4 * D + 2) + 4 * D + 2 * kRun * D);
    V* __restrict gt = zt + nb * D;   // grad_qzd, 0 in the lanes past M
    V* __restrict lt = gt + nb * D;   // saved marginals, base 2
    V* __restrict gz = lt + nb * D;   // grad_z of the tile's components
    V* __restrict g_joint = gz + nb * D;  // grad_qz, 0 in the lanes past M
    V* __restrict l_joint = g_joint + nb;
    V* __restrict cbuf = l_joint + nb;  // C2 of the current term
    V* __restrict run = cbuf + D;       // grad_z over the current chunk
    V* __restrict sub = run + D;        // grad_z over the last kSubRun components
    V* __restrict shifted = sub + D;    // lt - lw for a chunk of uniform weights
    V* __restrict acc_mu = shifted + D;   // (kRun, D) per-lane sums over the tile's queries
    V* __restrict acc_lv = acc_mu + kRun * D;

    for (int64_t b = 0; b < nb; ++b) {
      const LaneBlock rows = block(i_begin, i_end, b);
      gather_transposed(z_, rows, M_, D, zt + b * D);
      gather_transposed(grad_qzd_, rows, M_, D, gt + b * D);
      gather_transposed(saved_.marginals.data(), rows, M_, D, lt + b * D);
      for (int64_t l = 0; l < L; ++l) {
        const bool valid = l < rows.valid;
        for (int64_t d = 0; d < D; ++d) gt[b * D + d][l] = valid ? gt[b * D + d][l] : T(0);
        g_joint[b][l] = valid ? grad_qz_[rows.first + l] : T(0);
        l_joint[b][l] = saved_.joint[rows.index(l, M_)];
      }
      for (int64_t d = 0; d < D; ++d) gz[b * D + d] = broadcast(T(0));
    }

    for (int64_t j0 = j_begin; j0 < j_end; j0 += kRun) {
      const int64_t n = std::min(kRun, j_end - j0);
      const int64_t n_owned = std::min(n, std::max<int64_t>(0, owned_ - j0));
      for (int64_t k = 0; k < n_owned * D; ++k) acc_mu[k] = acc_lv[k] = broadcast(T(0));
      for (int64_t b = 0; b < nb; ++b) {
        const LaneBlock rows = block(i_begin, i_end, b);
        const Block q{rows, zt + b * D, gt + b * D, lt + b * D, g_joint[b], l_joint[b]};
        for (int64_t d = 0; d < D; ++d) run[d] = sub[d] = broadcast(T(0));
        // grad_z's terms go into sub, added to run every kSubRun components.
        const auto sweep = [&](const Block& blk, V lw_uniform, auto uniform) {
          constexpr bool kUniform = decltype(uniform)::value;
          for (int64_t jj = 0; jj < n; ++jj) {
            const V lw_j = kUniform ? lw_uniform : weights_.rows(rows, M_, j0 + jj);
            if (jj < n_owned) {
              term<true, kUniform>(blk, j0 + jj, lw_j, cbuf, sub, acc_mu + jj * D, acc_lv + jj * D);
            } else {
              term<false, kUniform>(blk, j0 + jj, lw_j, cbuf, sub, nullptr, nullptr);
            }
            if (jj % kSubRun != kSubRun - 1 && jj != n - 1) continue;
            for (int64_t d = 0; d < D; ++d) {
              run[d] += sub[d];
              sub[d] = broadcast(T(0));
            }
          }
        };
        V lw{};
        if (weights_.uniform_rows(rows, j0, n, &lw)) {
          for (int64_t d = 0; d < D; ++d) shifted[d] = q.lt[d] - lw;
          sweep(Block{rows, q.zt, q.gt, shifted, q.g_joint, q.l_joint}, lw, std::true_type{});
        } else {
          sweep(q, lw, std::false_type{});
        }
        for (int64_t d = 0; d < D; ++d) gz[b * D + d] += run[d];
      }
      for (int64_t jj = 0; jj < n_owned; ++jj) {
        T* mu_row = partial_mu + (j0 + jj) * D;
        T* lv_row = partial_logvar + (j0 + jj) * D;
        for (int64_t d = 0; d < D; ++d) {
          mu_row[d] = sum_lanes(acc_mu[jj * D + d]);
          lv_row[d] = sum_lanes(acc_lv[jj * D + d], 0.5);
        }
      }
    }
    for (int64_t b = 0; b < nb; ++b) scatter_transposed(gz + b * D, block(i_begin, i_end, b), D, partial_z);
  }

 private:
  // One block of queries as the terms read it (transposed, lanes = queries).
  struct Block {
    const LaneBlock& rows;
    const V* zt;
    const V* gt;
    const V* lt;  // saved marginals (base 2), or minus the chunk's uniform weight
    V g_joint, l_joint;
  };

  LaneBlock block(int64_t i_begin, int64_t i_end, int64_t b) const {
    const int64_t first = i_begin + b * kLanes<T>;
    return LaneBlock{first, std::min<int64_t>(kLanes<T>, i_end - first)};
  }

  static T sum_lanes(V v, double scale = 1) {
    double s = 0;
    for (int l = 0; l < kLanes<T>; ++l) s += v[l];
    return static_cast<T>(scale * s);
  }

  // Component j against one block: W = g_qz P + g_qzd Q for every dimension, added into run
  // (-W dC/dz) and, for kColumns, into the lanes of acc_mu (W dC/dmu) and acc_lv (W dC/dlogvar).
  // kUniform: the block's lt already has the weight lw subtracted.
  template <bool kColumns, bool kUniform>
  inline void term(const Block& q, int64_t j, V lw, V* __restrict cbuf, V* __restrict run, V* __restrict acc_mu,
                   V* __restrict acc_lv) const {
    const int64_t D = D_;
    const T* mu = comp_.mu + j * D;
    const T* quad = comp_.quadratic.data() + j * D;
    const T* off = comp_.offset.data() + j * D;
    const T* prec = comp_.precision.data() + j * D;
    const V csum = sum_over_dims<V>(D, [&](int64_t d) {
      const V t = q.zt[d] - mu[d];
      cbuf[d] = off[d] + quad[d] * t * t;
      return cbuf[d];
    });
    const V gp = q.g_joint * exp_of_difference<T>(joint_term_nats<T>(lw, csum), q.l_joint);
    const V one = broadcast(T(1));
    V gw = gp;
    for (int64_t d = 0; d < D; ++d) {
      const V gq = q.gt[d] * vexp2<T>(kUniform ? cbuf[d] - q.lt[d] : lw + cbuf[d] - q.lt[d]);
      gw += gq;
      const V w = gp + gq;
      const V t = q.zt[d] - mu[d];
      const V tp = t * prec[d];
      const V wtp = w * tp;
      run[d] -= wtp;  // dC/dz = -(z - mu) precision
      if (kColumns) {
        acc_mu[d] += wtp;                         // dC/dmu = (z - mu) precision
        acc_lv[d] += w * (t * tp - one);          // dC/dlogvar = 0.5 ((z - mu)^2 precision - 1): halved at the end
      }
    }
    if (Weights::kDense) {
      for (int64_t l = 0; l < q.rows.valid; ++l) grad_logw_[(q.rows.first + l) * K_ + j] = gw[l];
    }
  }

  const T* grad_qz_;
  const T* grad_qzd_;
  const T* z_;
  int64_t M_, K_, D_, owned_;
  const ComponentTable<T>& comp_;
  const Weights& weights_;
  const SavedLog2<T>& saved_;
  const TilePlan& plan_;
  T* grad_logw_;
};

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

// Runs fn(task, scratch) for task = 0..num_tasks-1 through parallel_for; each range of tasks flushes
// subnormals and owns one default-constructed Scratch.
template <typename Scratch, typename ParallelFor, typename F>
void for_each_task(int64_t num_tasks, ParallelFor&& parallel_for, F&& fn) {
  parallel_for(num_tasks, [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    Scratch scratch;
    for (int64_t task = begin; task < end; ++task) fn(task, scratch);
  });
}

// for_each_task over the LaneBlocks of `count` rows (or columns): fn(block, scratch).
template <typename T, typename Scratch = VecBuffer<T>, typename ParallelFor, typename F>
void for_each_lane_block(int64_t count, ParallelFor&& parallel_for, F&& fn) {
  constexpr int L = kLanes<T>;
  for_each_task<Scratch>(num_blocks(count, L), parallel_for, [&](int64_t b, Scratch& scratch) {
    fn(LaneBlock{b * L, std::min<int64_t>(L, count - b * L)}, scratch);
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
  const ComponentTable<T> comp(mu, logvar, K, D, parallel_for);
  const int64_t blocks = detail::num_blocks(M, kLanes<T>), group = detail::forward_group(blocks);
  detail::for_each_task<detail::VecBuffer<T>>(
      detail::num_blocks(blocks, group), parallel_for, [&](int64_t g, detail::VecBuffer<T>& scratch) {
        const int64_t first = g * group;
        detail::forward_blocks(z, M, K, D, comp, weights, first, std::min(group, blocks - first), log_qz, log_qzd,
                               scratch);
      });
}

// grad_logw may be null unless Weights is DenseWeights. Only components 0..grad_components-1 get
// rows of grad_mu and grad_logvar (the others' terms feed grad_z only); grad_z sums over all K.
template <typename T, typename Weights, typename ParallelFor>
void mixture_logdensity_backward(const T* grad_qz, const T* grad_qzd, const T* z, const T* mu,
                                 const T* logvar, int64_t M, int64_t K, int64_t D,
                                 const Weights& weights, const T* log_qz, const T* log_qzd,
                                 int64_t grad_components, T* grad_z, T* grad_mu, T* grad_logvar,
                                 T* grad_logw,
                                 ParallelFor&& parallel_for) {
  const ComponentTable<T> comp(mu, logvar, K, D, parallel_for);
  const detail::SavedLog2<T> saved(log_qz, log_qzd, M, D);
  const int64_t owned = detail::owned_components(grad_components, K);
  const detail::TilePlan plan(M, K, kLanes<T>);
  const detail::FusedBackward<T, Weights> sweep(grad_qz, grad_qzd, z, M, K, D, owned, comp, weights, saved, plan,
                                                grad_logw);
  // One tile's partial sums go straight to the outputs.
  std::vector<T> partial_z(plan.column_tiles > 1 ? plan.column_tiles * M * D : 0);
  std::vector<T> partial_mu(plan.row_tiles > 1 ? 2 * plan.row_tiles * owned * D : 0);
  T* const pz = plan.column_tiles > 1 ? partial_z.data() : grad_z;
  T* const pmu = plan.row_tiles > 1 ? partial_mu.data() : grad_mu;
  T* const plv = plan.row_tiles > 1 ? partial_mu.data() + plan.row_tiles * owned * D : grad_logvar;
  detail::for_each_task<detail::VecBuffer<T>>(
      plan.row_tiles * plan.column_tiles, parallel_for, [&](int64_t t, detail::VecBuffer<T>& scratch) {
        const int64_t r = t / plan.column_tiles, c = t % plan.column_tiles;
        const bool own_rows = plan.row_tiles > 1;
        sweep.tile(r, c, pz + (plan.column_tiles > 1 ? c * M * D : 0), pmu + (own_rows ? r * owned * D : 0),
                   plv + (own_rows ? r * owned * D : 0), scratch);
      });
  if (M == 0) {  // no queries, no tiles: the owned components' gradients are 0
    std::fill(grad_mu, grad_mu + owned * D, T(0));
    std::fill(grad_logvar, grad_logvar + owned * D, T(0));
    return;
  }
  if (plan.column_tiles == 1 && plan.row_tiles == 1) return;
  // The partial sums of the tiles, added in tile order: (rows of grad_z) then (rows of grad_mu, grad_logvar).
  const int64_t rows_per_task = std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1));
  const int64_t z_tasks = plan.column_tiles > 1 ? detail::num_blocks(M, rows_per_task) : 0;
  const int64_t mu_tasks = plan.row_tiles > 1 ? detail::num_blocks(owned, rows_per_task) : 0;
  const auto add_up = [](const T* parts, int64_t count, int64_t stride, int64_t begin, int64_t end, T* out) {
    for (int64_t k = begin; k < end; ++k) {
      double s = 0;
      for (int64_t p = 0; p < count; ++p) s += parts[p * stride + k];
      out[k] = static_cast<T>(s);
    }
  };
  const auto add_tasks = [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      if (task < z_tasks) {
        const int64_t lo = task * rows_per_task * D, hi = std::min(M, (task + 1) * rows_per_task) * D;
        add_up(partial_z.data(), plan.column_tiles, M * D, lo, hi, grad_z);
      } else {
        const int64_t k = task - z_tasks;
        const int64_t lo = k * rows_per_task * D, hi = std::min(owned, (k + 1) * rows_per_task) * D;
        add_up(partial_mu.data(), plan.row_tiles, owned * D, lo, hi, grad_mu);
        add_up(partial_mu.data() + plan.row_tiles * owned * D, plan.row_tiles, owned * D, lo, hi, grad_logvar);
      }
    }
  };
  if (z_tasks + mu_tasks > 1) {  // one task needs no parallel region
    parallel_for(z_tasks + mu_tasks, add_tasks);
  } else {
    add_tasks(0, z_tasks + mu_tasks);
  }
}

}  // namespace TCESTIM_ISA
}  // namespace cpu
}  // namespace tcestim
