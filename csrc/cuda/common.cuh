// Device helpers shared by the forward (forward.cu) and backward (backward.cu) kernels of the
// log-density cube (contract: mixture_logdensity_kernels.h).
//
// Everything inside runs in base 2: per component and dimension the prep kernel stores
//   quad = -0.5 log2(e) exp(-logvar)   and   offset = -0.5 log2(e) (log(2 pi) + logvar)
// (exp(-logvar) once per component, in double), so a cube element is
//   c = offset + quad * t * t,  t = z - mu          (FADD, FMUL, FFMA; never expanded into a matmul)
// and each exponential is one ex2.approx (MUFU) instruction for float.
//
// Thread mapping (all three main kernels). A thread owns kRows "owned" rows (queries in the forward
// and the backward row sweep, components in the column sweep) times kDims = 4 consecutive
// dimensions, all in registers. ceil(D / 4) threads ("a group") cover the dimensions of a row; a
// block holds tq groups. The block streams the other axis in tiles of kTile = 16 rows read straight
// from small padded tables (L1/L2 resident, 16-byte vector loads shared by the group's warps).
// Per tile and owned (row, dim) pair the marginal needs one exp2 per element, and the joint needs
// the sum over d of the same elements: each thread sums its 4 dimensions, the group adds its
// partial sums through shared memory in a fixed order (so results are deterministic), and one
// thread per (row, tile row) pushes the joint term into its own online logsumexp.
// When the owned axis alone gives too few blocks for the device (e.g. 256 queries against 60000
// stored components), the streamed axis is split over gridDim.y: each split writes partial states
// (forward) or partial gradient sums (backward) to the workspace and a small kernel merges them
// in split order (still deterministic).
//
// Files: common.cuh (this one: constants and device helpers), plan.cuh (host side: launch plans and
// workspace layout), forward.cu and backward.cu (the kernels and their launches). Two translation
// units rather than one: nvcc compiles a .cu serially, so the two halves build in parallel
// (MAX_JOBS, cmake -j) in about half the time; without relocatable device code a kernel is launched
// from the .cu that defines it, so each .cu holds its kernels and their launches, and the headers'
// anonymous namespace gives each .cu its own copy of the helpers.
#pragma once

#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "mixture_logdensity_kernels.h"

namespace tcestim {
namespace cuda {
namespace {

constexpr double kLog2E = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;
constexpr double kLog2Pi = 1.8378770664093454836;  // natural log of 2 pi

constexpr int kDims = 4;               // dimensions owned per thread
constexpr int kTile = 16;              // streamed rows per tile
// Register cap (ptxas -v, sm_90). Each main kernel is compiled twice: without a launch bound, for
// blocks of up to kPreferredThreads (D <= 1024), and as *_large with __launch_bounds__(kMaxThreads),
// which 512-thread blocks need (64 K registers per SM: at most 128 per thread). Under that cap the
// float64 kernels spill (up to 240/280 bytes in the dense forward's tile loop); unbounded, nothing
// spills: float takes 100-108 registers (2 blocks of 256 threads per SM, as under the cap), float64
// 114-178 (1 block of 256 where over 128: half the warps, no local-memory traffic per element).
constexpr int kMaxThreads = 512;        // per block: kMaxDim / kDims
constexpr int kPreferredThreads = 256;  // blocks hold at most this many threads unless D > 1024
constexpr int kMinThreads = 64;        // blocks are not shrunk below this to make more of them
constexpr int kTableThreads = 256;     // prep and merge kernels
constexpr double kLazyHeadroom = 64;   // base-2 overshoot a lazy tile tolerates before a redo

static_assert(kDims * kMaxThreads == kMaxDim, "kMaxDim must match the thread mapping");

// Rows owned per thread: two queries (or components) for float, one for double (registers).
template <typename T>
struct Config;
template <>
struct Config<float> {
  static constexpr int kRows = 2;
};
template <>
struct Config<double> {
  static constexpr int kRows = 1;
};

// ---------------------------------------------------------------------------------------------
// Scalar helpers (overloaded for float and double).

__device__ __forceinline__ float exp2_fast(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));  // one MUFU op; -inf -> 0, NaN -> NaN
  return y;
#else
  return exp2f(x);
#endif
}
__device__ __forceinline__ double exp2_fast(double x) { return exp2(x); }
__device__ __forceinline__ float log2_(float x) { return log2f(x); }
__device__ __forceinline__ double log2_(double x) { return log2(x); }
// fmax ignores a NaN operand: a NaN element never becomes the shift, it reaches the sum instead.
__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float min_(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double min_(double a, double b) { return fmin(a, b); }
__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return fma(a, b, c); }

template <typename T>
__host__ __device__ __forceinline__ T neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}
// The "no term yet" shift: finite, so that x - shift is never inf - inf.
template <typename T>
__device__ __forceinline__ T lowest();
template <>
__device__ __forceinline__ float lowest<float>() {
  return -FLT_MAX;
}
template <>
__device__ __forceinline__ double lowest<double>() {
  return -DBL_MAX;
}

template <typename I>
__host__ __device__ __forceinline__ I min_i(I a, I b) {
  return a < b ? a : b;
}
template <typename I>
__host__ __device__ __forceinline__ I max_i(I a, I b) {
  return a > b ? a : b;
}

// kDims consecutive values, loaded or stored as one (float: 16 bytes) or two (double) vectors.
template <typename T>
struct alignas(sizeof(T) * kDims) Quad {
  T v[kDims];
};
template <typename T>
__device__ __forceinline__ Quad<T> load_quad(const T* p) {
  return *reinterpret_cast<const Quad<T>*>(p);
}
template <typename T>
__device__ __forceinline__ void store_quad(T* p, const Quad<T>& q) {
  *reinterpret_cast<Quad<T>*>(p) = q;
}

template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(32) unsigned char tcestim_dynamic_smem[];
  return reinterpret_cast<T*>(tcestim_dynamic_smem);
}

// ---------------------------------------------------------------------------------------------
// Weights, in base 2. at(i, j) is -inf outside the (M, K) matrix, so padding rows vanish.

template <typename T>
struct StructuredWeights {
  T self2, next2, other2;
  int64_t M, K;
  bool uniform_ok;  // other2 is finite: tiles without self/next entries may fold it into constants
  static constexpr bool kDense = false;

  // The weight folded into the uniform path's per-(row, dim) constants.
  __host__ __device__ __forceinline__ T base() const { return uniform_ok ? other2 : T(0); }

  __device__ __forceinline__ T at(int64_t i, int64_t j) const {
    if (i >= M || j >= K) return neg_inf<T>();
    const int64_t next = i + 1 == M ? 0 : i + 1;
    return j == i ? self2 : (j == next ? next2 : other2);
  }

  // True when every (i, j), i in [i_lo, i_hi), j in [j_lo, j_hi), lies in the matrix and has the
  // weight other2 (no j == i, no j == next(i)).
  __device__ __forceinline__ bool uniform(int64_t i_lo, int64_t i_hi, int64_t j_lo,
                                          int64_t j_hi) const {
    if (!uniform_ok || i_hi > M || j_hi > K) return false;
    if (max_i(i_lo, j_lo) < min_i(i_hi, j_hi)) return false;          // j == i
    if (max_i(i_lo + 1, j_lo) < min_i(i_hi + 1, j_hi)) return false;  // j == i + 1
    if (i_hi == M && j_lo == 0) return false;                         // i == M - 1, j == 0
    return true;
  }
};

template <typename T>
struct DenseWeights {
  const T* log_weights;  // (M, K), natural log
  int64_t M, K;
  static constexpr bool kDense = true;

  __device__ __forceinline__ T base() const { return T(0); }
  __device__ __forceinline__ T at(int64_t i, int64_t j) const {
    return (i < M && j < K) ? log_weights[i * K + j] * T(kLog2E) : neg_inf<T>();
  }
  __device__ __forceinline__ bool uniform(int64_t, int64_t, int64_t, int64_t) const { return false; }
};

// ---------------------------------------------------------------------------------------------
// Padded, interleaved tables: rows padded to whole tiles, D to dp = 4 * ceil(D / 4), and per row
// and group of 4 dimensions one "cell" of three Quads, so that a thread reads the three values of
// its 4 dimensions from one pointer (offsets 0, 4, 8) that moves by `stride` = 3 dp per row.
//   component table: (mu, quad, offset);      padding 0, 0, 0: a padded dimension adds c = 0
//   query table:     (z, grad_log_qzd, nbl);  padding 0, 0, -inf; nbl = base - log2 q(z_id)

template <typename T>
struct Table {
  const T* data;
  int64_t stride;  // 3 * dp
  __device__ __forceinline__ const T* cell(int64_t row, int d0) const {
    return data + row * stride + 3 * d0;
  }
};

template <typename T>
struct Cell {
  Quad<T> a, b, c;
};
template <typename T>
__device__ __forceinline__ Cell<T> load_cell(const T* p) {
  return Cell<T>{load_quad(p), load_quad(p + kDims), load_quad(p + 2 * kDims)};
}

__device__ __forceinline__ int64_t cell_index(int64_t k, int64_t dp) {  // k = row * dp + d
  const int64_t row = k / dp, d = k % dp;
  return row * 3 * dp + 3 * (d - d % kDims) + d % kDims;
}

template <typename T>
__global__ void component_table_kernel(const T* __restrict__ mu, const T* __restrict__ logvar,
                                       int64_t K, int64_t D, int64_t rows, int64_t dp,
                                       T* __restrict__ table) {
  const int64_t n = rows * dp;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = k / dp, d = k % dp;
    T* out = table + cell_index(k, dp);
    if (j < K && d < D) {
      const double lv = static_cast<double>(logvar[j * D + d]);
      out[0] = mu[j * D + d];
      out[kDims] = static_cast<T>(-0.5 * kLog2E * exp(-lv));
      out[2 * kDims] = static_cast<T>(-0.5 * kLog2E * (kLog2Pi + lv));
    } else {
      out[0] = T(0);
      out[kDims] = T(0);
      out[2 * kDims] = T(0);
    }
  }
}

template <typename T>
__global__ void query_table_kernel(const T* __restrict__ z, const T* __restrict__ grad_qzd,
                                   const T* __restrict__ log_qzd, int64_t M, int64_t D,
                                   int64_t rows, int64_t dp, T base2, T* __restrict__ table) {
  const int64_t n = rows * dp;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / dp, d = k % dp;
    T* out = table + cell_index(k, dp);
    if (i < M && d < D) {
      out[0] = z[i * D + d];
      out[kDims] = grad_qzd[i * D + d];
      out[2 * kDims] = base2 - log_qzd[i * D + d] * T(kLog2E);
    } else {
      out[0] = T(0);
      out[kDims] = T(0);
      out[2 * kDims] = neg_inf<T>();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Online logsumexp of scalars (the joint): one exp2 per term, no branch. m starts at lowest().

template <typename T>
__device__ __forceinline__ void lse_push(T& m, T& s, T x) {
  const T d = x - m;               // -inf for x = -inf, NaN for x = NaN
  const T e = exp2_fast(-abs_(d));  // the smaller of the two terms relative to the larger
  const bool up = d > T(0);
  s = up ? fma_(s, e, T(1)) : s + e;
  m = up ? x : m;
}

// Partial sums of a group -> shared memory: red[((iq * R + r) * td + k) * kTile + jt] holds
// thread k's sum over its dimensions for owned row r and tile row jt. Written four tile rows at a
// time (part[r][jt % 4]) so that only four partial sums per owned row stay in registers.
static_assert(kTile % kDims == 0, "tiles are flushed in quads");
template <typename T, int R>
__device__ __forceinline__ void store_partials(T* group_red, int td, int dq, int jt_first,
                                               const T (&part)[R][kDims]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    Quad<T> v;
#pragma unroll
    for (int c = 0; c < kDims; ++c) v.v[c] = part[r][c];
    store_quad(group_red + (int64_t(r) * td + dq) * kTile + jt_first, v);
  }
}

template <typename T>
__device__ __forceinline__ T group_sum(const T* group_red, int td, int r, int jt) {
  T sum = T(0);
  for (int k = 0; k < td; ++k) sum += group_red[(int64_t(r) * td + k) * kTile + jt];
  return sum;
}

}  // namespace
}  // namespace cuda
}  // namespace tcestim
