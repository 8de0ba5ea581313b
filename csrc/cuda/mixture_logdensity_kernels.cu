// CUDA kernels for the log-density cube (see mixture_logdensity_kernels.h for the contract).
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
//
// Forward, online logsumexp for the marginals ("lazy" rescaling): per (i, d) the shift m is the
// running maximum. A tile is summed with the m of the tiles before (y = lw + c - m, ts += exp2(y))
// while tracking max(y): if it is <= 0 the tile sum is just added (the common case once the
// largest terms have been seen); if it is in (0, 64] the sum is rescaled once and m moves up; if
// it is larger (overflow risk, or m was still the "empty" sentinel -FLT_MAX) a max-only pass finds
// the tile's exact maximum and the tile is summed again. Per element: FADD, FMUL, FFMA (c),
// FADD (joint partial), FADD (y), FMNMX, MUFU ex2, FADD (sum) -- about 8 issue slots per exp, the
// balance point of an H100 SM (4 warp-instructions/clock vs 16 exp/clock), so the expected
// bottleneck is instruction issue next to the MUFU pipe, not memory. -inf weights give -inf
// (empty mixture, no NaN) and NaN propagates, like the CPU kernels.
// Structured weights: tiles that contain no self/next entry for any query of the block (almost
// all of them) take a uniform path with log_other folded into per-(i, d) constants; the others
// (and dense weights) evaluate the weight per (query, component).
//
// Backward: two deterministic sweeps, no atomics, recomputing tiles from the saved outputs:
//   rows    (owned queries,    streamed components): grad_z (and grad_logw for dense weights)
//   columns (owned components, streamed queries):    grad_mu, grad_logvar
// Each tile first computes the joint softmax weights P[i,j] = exp2(lw + sum_d c - log2 q(z_i))
// (group reduction as above, times grad_log_qz, into shared memory), then the marginal weights
// Q[i,j,d] = exp2(lw + c - log2 q(z_id)) and accumulates W = g_qz P + g_qzd Q times the
// derivatives: dC/dz = -(z - mu) prec = 2 ln2 * quad * t, dC/dmu = -dC/dz,
// dC/dlogvar = -0.5 + 0.5 t^2 prec = -ln2 * (quad * t * t + 0.5 log2(e)).
//
// When the owned axis alone gives too few blocks for the device (e.g. 256 queries against 60000
// stored components), the streamed axis is split over gridDim.y: each split writes partial states
// (forward) or partial gradient sums (backward) to the workspace and a small kernel merges them
// in split order (still deterministic).
#include "mixture_logdensity_kernels.h"

#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace tcestim {
namespace cuda {
namespace {

constexpr double kLog2E = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;
constexpr double kLog2Pi = 1.8378770664093454836;  // natural log of 2 pi

constexpr int kDims = 4;               // dimensions owned per thread
constexpr int kTile = 16;              // streamed rows per tile
constexpr int kMaxThreads = 512;       // per block: kMaxDim / kDims
constexpr int kPreferredThreads = 256;
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

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T>
struct ForwardParams {
  const T* z;
  int64_t M, K, D, dp;
  Table<T> comp;
  int td;
  int64_t rows_per_block, tiles, tiles_per_split;
  T* log_qz;
  T* log_qzd;
  T* part_max;  // splits > 1: (splits, M, D + 1) partial shifts and sums, column D = joint
  T* part_sum;
};

// Tiles are walked four rows at a time (jq, then q = 0..3 unrolled) so that the joint's partial
// sums of those four rows can be flushed to shared memory as one vector per owned row.

// One cube element in base 2: offset + quad * (z - mu)^2.
template <typename T>
__device__ __forceinline__ T cube2(T z, T mu, T quad, T offset) {
  const T t = z - mu;
  return fma_(quad * t, t, offset);
}

// Online logsumexp over one tile for this thread's (row, dim) pairs, plus the joint's partial
// sums into group_red. Per pair the state is (nb, s): with base = w.base() (log_other or 0) and
// u = lw + c - base, the shift is -nb in units of u, i.e. log2 sum = base - nb + log2(s). The hot
// loop adds exp2(y), y = u + nb, into a tile sum ts while tracking max(y):
//   max(y) <= 0           s += ts (the common case once the largest terms have been seen)
//   0 < max(y) <= 64      (s + ts) is rescaled once and the shift moves to the new maximum
//   otherwise             (overflow risk, or the shift was still the empty sentinel): the tile is
//                         summed again after a cheaper max-only pass has set the exact shift;
//                         then every y <= 0, so the second attempt always ends.
template <bool kUniform, typename T, int R, typename W>
__device__ __forceinline__ void forward_tile(const ForwardParams<T>& p, const W& w, int64_t j0,
                                             int d0, int64_t row0, const T (&z)[R][kDims],
                                             T (&nb)[R][kDims], T (&s)[R][kDims], T* group_red,
                                             int td, int dq) {
  const T base = w.base();
#pragma unroll 1
  for (int attempt = 0; attempt < 2; ++attempt) {
    T ts[R][kDims], ymax[R][kDims];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int c = 0; c < kDims; ++c) {
        ts[r][c] = T(0);
        ymax[r][c] = neg_inf<T>();
      }
    }
    const T* cell = p.comp.cell(j0, d0);
#pragma unroll 1
    for (int jq = 0; jq < kTile; jq += kDims) {
      T part[R][kDims];
#pragma unroll
      for (int q = 0; q < kDims; ++q, cell += p.comp.stride) {
        const int64_t j = j0 + jq + q;
        const Cell<T> k = load_cell(cell);
        const Quad<T>&mu = k.a, &qd = k.b, &of = k.c;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const T lwd = kUniform ? T(0) : w.at(row0 + r, j) - base;
#pragma unroll
          for (int c = 0; c < kDims; ++c) {
            const T cc = cube2(z[r][c], mu.v[c], qd.v[c], of.v[c]);
            part[r][q] = c == 0 ? cc : part[r][q] + cc;
            const T y = kUniform ? cc + nb[r][c] : (cc + lwd) + nb[r][c];
            ymax[r][c] = max_(ymax[r][c], y);
            ts[r][c] += exp2_fast(y);
          }
        }
      }
      store_partials(group_red, td, dq, jq, part);
    }
    bool rescale = false, redo = false;
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int c = 0; c < kDims; ++c) {
        rescale |= ymax[r][c] > T(0);
        redo |= ymax[r][c] > T(kLazyHeadroom);
      }
    }
    if (!redo || attempt > 0) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int c = 0; c < kDims; ++c) {
          s[r][c] += ts[r][c];
          if (rescale && ymax[r][c] > T(0)) {  // rare: a new maximum for this pair
            s[r][c] *= exp2_fast(-ymax[r][c]);
            nb[r][c] -= ymax[r][c];
          }
        }
      }
      return;
    }
    // Redo: the exact maximum of u over the tile moves the shift, then the sum runs again.
    T umax[R][kDims];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int c = 0; c < kDims; ++c) umax[r][c] = neg_inf<T>();
    }
#pragma unroll 1
    for (int jt = 0; jt < kTile; ++jt) {
      const int64_t j = j0 + jt;
      const Cell<T> k = load_cell(p.comp.cell(j, d0));
      const Quad<T>&mu = k.a, &qd = k.b, &of = k.c;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const T lwd = kUniform ? T(0) : w.at(row0 + r, j) - base;
#pragma unroll
        for (int c = 0; c < kDims; ++c) {
          umax[r][c] = max_(umax[r][c], cube2(z[r][c], mu.v[c], qd.v[c], of.v[c]) + lwd);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int c = 0; c < kDims; ++c) {
        const T nb_new = min_(nb[r][c], -umax[r][c]);  // fmin: a NaN maximum changes nothing
        s[r][c] *= exp2_fast(nb_new - nb[r][c]);       // 0 * 0 while still empty
        nb[r][c] = nb_new;
      }
    }
  }
}

template <typename T, int R, typename W>
__global__ void __launch_bounds__(kMaxThreads)
    forward_kernel(const ForwardParams<T> p, const W w) {
  T* red = dynamic_smem<T>();
  const int td = p.td, tid = threadIdx.x, dq = tid % td, iq = tid / td, d0 = dq * kDims;
  const int64_t ib = blockIdx.x * p.rows_per_block;
  const int64_t ie = min_i(ib + p.rows_per_block, p.M);
  const int64_t row0 = ib + int64_t(iq) * R;  // this thread's rows: row0 .. row0 + R - 1
  T* group_red = red + int64_t(iq) * R * td * kTile;
  const T base = w.base();

  T z[R][kDims], nb[R][kDims], s[R][kDims], jm[R], js[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t ic = min_i(row0 + r, p.M - 1);  // padding rows compute on real data, unstored
#pragma unroll
    for (int c = 0; c < kDims; ++c) {
      const int64_t d = d0 + c;
      z[r][c] = d < p.D ? p.z[ic * p.D + d] : T(0);
      nb[r][c] = base - lowest<T>();  // shift = lowest(): nothing summed yet
      s[r][c] = T(0);
    }
    jm[r] = lowest<T>();
    js[r] = T(0);
  }

  const int64_t t_begin = blockIdx.y * p.tiles_per_split;
  const int64_t t_end = min_i(t_begin + p.tiles_per_split, p.tiles);
  for (int64_t tile = t_begin; tile < t_end; ++tile) {
    const int64_t j0 = tile * kTile;
    // Marginals, and this thread's partial sums of the joint into group_red.
    if constexpr (W::kDense) {
      forward_tile<false>(p, w, j0, d0, row0, z, nb, s, group_red, td, dq);
    } else if (w.uniform(ib, ie, j0, j0 + kTile)) {
      forward_tile<true>(p, w, j0, d0, row0, z, nb, s, group_red, td, dq);
    } else {
      forward_tile<false>(p, w, j0, d0, row0, z, nb, s, group_red, td, dq);
    }
    __syncthreads();
    for (int jt = dq; jt < kTile; jt += td) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        lse_push(jm[r], js[r], w.at(row0 + r, j0 + jt) + group_sum(group_red, td, r, jt));
      }
    }
    __syncthreads();
  }

  const bool split = p.part_max != nullptr;
  const int64_t part0 = int64_t(blockIdx.y) * p.M * (p.D + 1);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = row0 + r;
#pragma unroll
    for (int c = 0; c < kDims; ++c) {
      const int64_t d = d0 + c;
      if (i < p.M && d < p.D) {
        const T shift = base - nb[r][c];
        if (split) {
          p.part_max[part0 + i * (p.D + 1) + d] = shift;
          p.part_sum[part0 + i * (p.D + 1) + d] = s[r][c];
        } else {
          p.log_qzd[i * p.D + d] = (shift + log2_(s[r][c])) * T(kLn2);
        }
      }
    }
  }

  // Joint: merge the td partial states of each owned row in thread order.
  T* states = group_red;  // [r][k] pairs (shift, sum)
#pragma unroll
  for (int r = 0; r < R; ++r) {
    states[2 * (int64_t(r) * td + dq)] = jm[r];
    states[2 * (int64_t(r) * td + dq) + 1] = js[r];
  }
  __syncthreads();
  for (int r = dq; r < R; r += td) {
    const int64_t i = row0 + r;
    T mx = lowest<T>();
    for (int k = 0; k < td; ++k) mx = max_(mx, states[2 * (int64_t(r) * td + k)]);
    T sum = T(0);
    for (int k = 0; k < td; ++k) {
      const int64_t at = 2 * (int64_t(r) * td + k);
      sum += states[at + 1] * exp2_fast(states[at] - mx);
    }
    if (i < p.M) {
      if (split) {
        p.part_max[part0 + i * (p.D + 1) + p.D] = mx;
        p.part_sum[part0 + i * (p.D + 1) + p.D] = sum;
      } else {
        p.log_qz[i] = (mx + log2_(sum)) * T(kLn2);
      }
    }
  }
}

template <typename T>
__global__ void forward_merge_kernel(const T* __restrict__ part_max, const T* __restrict__ part_sum,
                                     int splits, int64_t M, int64_t D, T* __restrict__ log_qz,
                                     T* __restrict__ log_qzd) {
  const int64_t n = M * (D + 1);
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    T mx = lowest<T>();
    for (int sp = 0; sp < splits; ++sp) mx = max_(mx, part_max[sp * n + k]);
    T sum = T(0);
    for (int sp = 0; sp < splits; ++sp) sum += part_sum[sp * n + k] * exp2_fast(part_max[sp * n + k] - mx);
    const T out = (mx + log2_(sum)) * T(kLn2);
    const int64_t i = k / (D + 1), d = k % (D + 1);
    if (d == D) {
      log_qz[i] = out;
    } else {
      log_qzd[i * D + d] = out;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, shared pieces.

template <typename T>
__global__ void sum_splits_kernel(const T* __restrict__ part, int splits, int64_t n,
                                  T* __restrict__ out) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    T sum = part[k];
    for (int sp = 1; sp < splits; ++sp) sum += part[sp * n + k];
    out[k] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward row sweep: owned queries, streamed components -> grad_z (+ grad_logw).

template <typename T>
struct RowParams {
  int64_t M, K, D, dp;
  Table<T> comp;
  Table<T> query;
  const T* grad_qz;
  const T* log_qz;
  int td;
  int64_t rows_per_block, tiles, tiles_per_split;
  T* grad_z;               // (M, D), or (splits, M, D) partial sums
  int64_t split_stride;    // M * D when split, else 0
  T* grad_logw;            // (M, K) for dense weights
};

template <bool kUniform, typename T, int R, typename W>
__device__ __forceinline__ void rows_accumulate(const RowParams<T>& p, const W& w, int64_t j0,
                                                int d0, const int64_t (&row)[R],
                                                const T (&z)[R][kDims], const T (&gd)[R][kDims],
                                                const T (&nbl)[R][kDims], const T* group_gp,
                                                T (&gz)[R][kDims], T* group_red, int td, int dq) {
  T gw[R][kDims];  // dense only: sums over this thread's dimensions of g_qzd Q, four tile rows
  const T* cell = p.comp.cell(j0, d0);
#pragma unroll
  for (int jt = 0; jt < kTile; ++jt, cell += p.comp.stride) {
    const Cell<T> k = load_cell(cell);
    const Quad<T>&mu = k.a, &qd = k.b, &of = k.c;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const T gp = group_gp[r * (kTile + 1) + jt];
      const T lwd = kUniform ? T(0) : w.at(row[r], j0 + jt) - w.base();
#pragma unroll
      for (int c = 0; c < kDims; ++c) {
        const T t = z[r][c] - mu.v[c];
        const T u = qd.v[c] * t;
        const T cc = fma_(u, t, of.v[c]);
        const T e = exp2_fast(kUniform ? cc + nbl[r][c] : (cc + lwd) + nbl[r][c]);
        T wt;
        if constexpr (W::kDense) {
          const T gq = gd[r][c] * e;
          gw[r][jt % kDims] = c == 0 ? gq : gw[r][jt % kDims] + gq;
          wt = gp + gq;
        } else {
          wt = fma_(gd[r][c], e, gp);
        }
        gz[r][c] = fma_(wt, u, gz[r][c]);
      }
    }
    if constexpr (W::kDense) {
      if (jt % kDims == kDims - 1) store_partials(group_red, td, dq, jt - (kDims - 1), gw);
    }
  }
}

template <typename T, int R, typename W>
__global__ void __launch_bounds__(kMaxThreads)
    backward_rows_kernel(const RowParams<T> p, const W w) {
  const int td = p.td, tid = threadIdx.x, dq = tid % td, iq = tid / td, d0 = dq * kDims;
  const int tq = blockDim.x / td;
  T* red = dynamic_smem<T>();
  T* group_red = red + int64_t(iq) * R * td * kTile;
  T* group_gp = red + int64_t(tq) * R * td * kTile + int64_t(iq) * R * (kTile + 1);
  const int64_t ib = blockIdx.x * p.rows_per_block;
  const int64_t ie = min_i(ib + p.rows_per_block, p.M);

  int64_t row[R];
  T z[R][kDims], gd[R][kDims], nbl[R][kDims], gz[R][kDims], g[R], lj[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    row[r] = ib + int64_t(iq) * R + r;
    const int64_t ic = min_i(row[r], p.M - 1);
    const Cell<T> k = load_cell(p.query.cell(ic, d0));
    const Quad<T>&zq = k.a, &gq = k.b, &nq = k.c;
#pragma unroll
    for (int c = 0; c < kDims; ++c) {
      z[r][c] = zq.v[c];
      gd[r][c] = gq.v[c];
      nbl[r][c] = nq.v[c];
      gz[r][c] = T(0);
    }
    g[r] = row[r] < p.M ? p.grad_qz[ic] : T(0);
    lj[r] = p.log_qz[ic] * T(kLog2E);
  }

  const int64_t t_begin = blockIdx.y * p.tiles_per_split;
  const int64_t t_end = min_i(t_begin + p.tiles_per_split, p.tiles);
  for (int64_t tile = t_begin; tile < t_end; ++tile) {
    const int64_t j0 = tile * kTile;
    // Joint softmax weights of the tile: P = exp2(lw + sum_d c - log2 q(z_i)), times grad_log_qz.
    T part[R][kDims];
    const T* cell = p.comp.cell(j0, d0);
#pragma unroll
    for (int jt = 0; jt < kTile; ++jt, cell += p.comp.stride) {
      const Cell<T> k = load_cell(cell);
      const Quad<T>&mu = k.a, &qd = k.b, &of = k.c;
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int c = 0; c < kDims; ++c) {
          const T t = z[r][c] - mu.v[c];
          const T cc = fma_(qd.v[c] * t, t, of.v[c]);
          part[r][jt % kDims] = c == 0 ? cc : part[r][jt % kDims] + cc;
        }
      }
      if (jt % kDims == kDims - 1) store_partials(group_red, td, dq, jt - (kDims - 1), part);
    }
    __syncthreads();
    for (int jt = dq; jt < kTile; jt += td) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const T x = w.at(row[r], j0 + jt) + group_sum(group_red, td, r, jt) - lj[r];
        group_gp[r * (kTile + 1) + jt] = g[r] * exp2_fast(x);
      }
    }
    __syncthreads();

    // Marginal weights; for dense weights also the partial sums of grad_logw into group_red (its
    // last reads were before the previous barrier).
    if constexpr (W::kDense) {
      rows_accumulate<false>(p, w, j0, d0, row, z, gd, nbl, group_gp, gz, group_red, td, dq);
    } else if (w.uniform(ib, ie, j0, j0 + kTile)) {
      rows_accumulate<true>(p, w, j0, d0, row, z, gd, nbl, group_gp, gz, group_red, td, dq);
    } else {
      rows_accumulate<false>(p, w, j0, d0, row, z, gd, nbl, group_gp, gz, group_red, td, dq);
    }
    if constexpr (W::kDense) {
      // grad_logw[i, j] = g_qz P + sum_d g_qzd Q.
      __syncthreads();
      for (int jt = dq; jt < kTile; jt += td) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int64_t j = j0 + jt;
          if (row[r] < p.M && j < p.K) {
            p.grad_logw[row[r] * p.K + j] =
                group_gp[r * (kTile + 1) + jt] + group_sum(group_red, td, r, jt);
          }
        }
      }
      __syncthreads();
    }
  }

  T* out = p.grad_z + blockIdx.y * p.split_stride;
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < kDims; ++c) {
      const int64_t d = d0 + c;
      if (row[r] < p.M && d < p.D) out[row[r] * p.D + d] = T(2 * kLn2) * gz[r][c];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward column sweep: owned components, streamed queries -> grad_mu, grad_logvar.

template <typename T>
struct ColumnParams {
  int64_t M, K, D, dp;
  Table<T> comp;
  Table<T> query;
  const T* grad_qz;
  const T* log_qz;
  int td;
  int64_t cols_per_block, tiles, tiles_per_split;
  T* grad_mu;            // (K, D), or (splits, K, D) partial sums
  T* grad_logvar;
  int64_t split_stride;  // K * D when split, else 0
};

template <bool kUniform, typename T, int R, typename W>
__device__ __forceinline__ void columns_accumulate(const ColumnParams<T>& p, const W& w,
                                                   int64_t i0, int d0, const int64_t (&col)[R],
                                                   const T (&mu)[R][kDims],
                                                   const T (&quad)[R][kDims],
                                                   const T (&offset)[R][kDims],
                                                   const T* group_gp, T (&gmu)[R][kDims],
                                                   T (&glv)[R][kDims]) {
  const T* cell = p.query.cell(i0, d0);
#pragma unroll
  for (int it = 0; it < kTile; ++it, cell += p.query.stride) {
    const Cell<T> k = load_cell(cell);
    const Quad<T>&zq = k.a, &gq = k.b, &nq = k.c;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const T gp = group_gp[r * (kTile + 1) + it];
      const T lwd = kUniform ? T(0) : w.at(i0 + it, col[r]) - w.base();
#pragma unroll
      for (int c = 0; c < kDims; ++c) {
        const T t = zq.v[c] - mu[r][c];
        const T u = quad[r][c] * t;
        const T cc = fma_(u, t, offset[r][c]);
        const T e = exp2_fast(kUniform ? cc + nq.v[c] : (cc + lwd) + nq.v[c]);
        const T wt = fma_(gq.v[c], e, gp);
        gmu[r][c] = fma_(wt, u, gmu[r][c]);
        glv[r][c] = fma_(wt, fma_(u, t, T(0.5 * kLog2E)), glv[r][c]);
      }
    }
  }
}

template <typename T, int R, typename W>
__global__ void __launch_bounds__(kMaxThreads)
    backward_columns_kernel(const ColumnParams<T> p, const W w) {
  const int td = p.td, tid = threadIdx.x, dq = tid % td, iq = tid / td, d0 = dq * kDims;
  const int tq = blockDim.x / td;
  T* red = dynamic_smem<T>();
  T* group_red = red + int64_t(iq) * R * td * kTile;
  T* group_gp = red + int64_t(tq) * R * td * kTile + int64_t(iq) * R * (kTile + 1);
  const int64_t jb = blockIdx.x * p.cols_per_block;
  const int64_t je = min_i(jb + p.cols_per_block, p.K);

  int64_t col[R];
  T mu[R][kDims], quad[R][kDims], offset[R][kDims], gmu[R][kDims], glv[R][kDims];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    col[r] = jb + int64_t(iq) * R + r;
    const int64_t jc = min_i(col[r], p.K - 1);
    const Cell<T> k = load_cell(p.comp.cell(jc, d0));
    const Quad<T>&mq = k.a, &qq = k.b, &oq = k.c;
#pragma unroll
    for (int c = 0; c < kDims; ++c) {
      mu[r][c] = mq.v[c];
      quad[r][c] = qq.v[c];
      offset[r][c] = oq.v[c];
      gmu[r][c] = T(0);
      glv[r][c] = T(0);
    }
  }

  const int64_t t_begin = blockIdx.y * p.tiles_per_split;
  const int64_t t_end = min_i(t_begin + p.tiles_per_split, p.tiles);
  for (int64_t tile = t_begin; tile < t_end; ++tile) {
    const int64_t i0 = tile * kTile;
    T part[R][kDims];
    const T* cell = p.query.cell(i0, d0);
#pragma unroll
    for (int it = 0; it < kTile; ++it, cell += p.query.stride) {
      const Quad<T> zq = load_quad(cell);
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int c = 0; c < kDims; ++c) {
          const T t = zq.v[c] - mu[r][c];
          const T cc = fma_(quad[r][c] * t, t, offset[r][c]);
          part[r][it % kDims] = c == 0 ? cc : part[r][it % kDims] + cc;
        }
      }
      if (it % kDims == kDims - 1) store_partials(group_red, td, dq, it - (kDims - 1), part);
    }
    __syncthreads();
    for (int it = dq; it < kTile; it += td) {
      const int64_t i = i0 + it;
      const T gi = i < p.M ? p.grad_qz[i] : T(0);
      const T li = i < p.M ? p.log_qz[i] * T(kLog2E) : T(0);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const T x = w.at(i, col[r]) + group_sum(group_red, td, r, it) - li;
        group_gp[r * (kTile + 1) + it] = gi * exp2_fast(x);
      }
    }
    __syncthreads();
    if constexpr (W::kDense) {
      columns_accumulate<false>(p, w, i0, d0, col, mu, quad, offset, group_gp, gmu, glv);
    } else if (w.uniform(i0, i0 + kTile, jb, je)) {
      columns_accumulate<true>(p, w, i0, d0, col, mu, quad, offset, group_gp, gmu, glv);
    } else {
      columns_accumulate<false>(p, w, i0, d0, col, mu, quad, offset, group_gp, gmu, glv);
    }
  }

  T* out_mu = p.grad_mu + blockIdx.y * p.split_stride;
  T* out_lv = p.grad_logvar + blockIdx.y * p.split_stride;
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < kDims; ++c) {
      const int64_t d = d0 + c;
      if (col[r] < p.K && d < p.D) {
        out_mu[col[r] * p.D + d] = T(-2 * kLn2) * gmu[r][c];
        out_lv[col[r] * p.D + d] = T(-kLn2) * glv[r][c];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: launch plans, workspace layout, launches.

struct Plan {
  int td = 1;       // threads per owned row (one per kDims dimensions)
  int tq = 1;       // owned-row groups per block
  int threads = 1;  // td * tq
  int64_t dp = kDims;
  int64_t rows_per_block = 1;
  int64_t blocks = 0;  // along the owned axis
  int64_t tiles = 0;   // of the streamed axis
  int64_t tiles_per_split = 0;
  int splits = 1;
};

Plan make_plan(int64_t owned, int64_t streamed, int64_t D, int rows_per_thread, int num_sms) {
  Plan p;
  p.td = static_cast<int>(max_i<int64_t>(1, (D + kDims - 1) / kDims));
  p.dp = int64_t(p.td) * kDims;
  const int64_t target = 2 * int64_t(max_i(1, num_sms));  // blocks that keep every SM busy
  auto blocks_for = [&](int tq) {
    const int64_t per_block = int64_t(tq) * rows_per_thread;
    return (owned + per_block - 1) / per_block;
  };
  int tq = max_i(1, kPreferredThreads / p.td);
  while (tq > 1 && blocks_for(tq) < target && (tq / 2) * p.td >= kMinThreads) tq /= 2;
  p.tq = tq;
  p.threads = tq * p.td;
  p.rows_per_block = int64_t(tq) * rows_per_thread;
  p.blocks = blocks_for(tq);
  p.tiles = (streamed + kTile - 1) / kTile;
  int64_t splits = 1;
  if (p.blocks > 0 && p.blocks < target && p.tiles > 0) {
    splits = min_i((target + p.blocks - 1) / p.blocks, max_i<int64_t>(1, p.tiles / 4));
  }
  p.tiles_per_split = p.tiles > 0 ? (p.tiles + splits - 1) / splits : 0;
  p.splits = p.tiles > 0 ? static_cast<int>((p.tiles + p.tiles_per_split - 1) / p.tiles_per_split) : 1;
  return p;
}

// Carves 256-byte aligned arrays out of the workspace; with a null base it only counts bytes.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<unsigned char*>(base)) {}
  template <typename T>
  T* take(int64_t count) {
    T* out = base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + used_);
    used_ += (static_cast<size_t>(count) * sizeof(T) + 255) / 256 * 256;
    return out;
  }
  size_t used() const { return used_; }

 private:
  unsigned char* base_;
  size_t used_ = 0;
};

// An interleaved table of `rows` rows in the workspace (see Table).
template <typename T>
struct TableBuffer {
  T* data = nullptr;
  int64_t rows = 0, dp = kDims;
  Table<T> view() const { return Table<T>{data, 3 * dp}; }
};

template <typename T>
TableBuffer<T> take_table(Carver& carver, int64_t rows, int64_t dp) {
  TableBuffer<T> out;
  out.data = carver.take<T>(3 * rows * dp);
  out.rows = rows;
  out.dp = dp;
  return out;
}

int table_blocks(int64_t n) {
  return static_cast<int>(max_i<int64_t>(1, min_i<int64_t>((n + kTableThreads - 1) / kTableThreads, 8192)));
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

bool valid_sizes(int64_t M, int64_t K, int64_t D) {
  return M >= 0 && K >= 0 && D >= 0 && D <= kMaxDim;
}

template <typename T>
StructuredWeights<T> structured_weights(double log_self, double log_next, double log_other,
                                        int64_t M, int64_t K) {
  StructuredWeights<T> w;
  w.self2 = static_cast<T>(log_self * kLog2E);
  w.next2 = static_cast<T>(log_next * kLog2E);
  w.other2 = static_cast<T>(log_other * kLog2E);
  w.M = M;
  w.K = K;
  w.uniform_ok = std::isfinite(w.other2);
  return w;
}

// ---- forward

template <typename T>
struct ForwardLayout {
  Plan plan;
  TableBuffer<T> comp;
  T* part_max = nullptr;
  T* part_sum = nullptr;
  size_t bytes = 0;
};

template <typename T>
ForwardLayout<T> forward_layout(const ForwardArgs<T>& a, void* base) {
  ForwardLayout<T> out;
  out.plan = make_plan(a.M, a.K, a.D, Config<T>::kRows, a.num_sms);
  Carver carver(base);
  out.comp = take_table<T>(carver, out.plan.tiles * kTile, out.plan.dp);
  if (out.plan.splits > 1) {
    const int64_t n = int64_t(out.plan.splits) * a.M * (a.D + 1);
    out.part_max = carver.take<T>(n);
    out.part_sum = carver.take<T>(n);
  }
  out.bytes = carver.used();
  return out;
}

template <typename T, typename W>
cudaError_t run_forward_kernel(const ForwardParams<T>& params, const W& w, const Plan& plan,
                               cudaStream_t stream) {
  constexpr int R = Config<T>::kRows;
  const size_t smem = size_t(plan.threads) * R * kTile * sizeof(T);
  auto kernel = forward_kernel<T, R, W>;
  cudaError_t err = allow_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(plan.blocks), static_cast<unsigned>(plan.splits));
  kernel<<<grid, plan.threads, smem, stream>>>(params, w);
  return cudaGetLastError();
}

// ---- backward

template <typename T>
struct BackwardLayout {
  Plan rows, cols;  // rows: owned queries / streamed components; cols: the transpose
  TableBuffer<T> comp, query;
  T* part_grad_z = nullptr;
  T* part_grad_mu = nullptr;
  T* part_grad_logvar = nullptr;
  size_t bytes = 0;
};

template <typename T>
BackwardLayout<T> backward_layout(const BackwardArgs<T>& a, void* base) {
  BackwardLayout<T> out;
  out.rows = make_plan(a.M, a.K, a.D, Config<T>::kRows, a.num_sms);
  out.cols = make_plan(a.K, a.M, a.D, Config<T>::kRows, a.num_sms);
  Carver carver(base);
  out.comp = take_table<T>(carver, out.rows.tiles * kTile, out.rows.dp);
  out.query = take_table<T>(carver, out.cols.tiles * kTile, out.rows.dp);  // >= M rows
  if (out.rows.splits > 1) out.part_grad_z = carver.take<T>(int64_t(out.rows.splits) * a.M * a.D);
  if (out.cols.splits > 1) {
    out.part_grad_mu = carver.take<T>(int64_t(out.cols.splits) * a.K * a.D);
    out.part_grad_logvar = carver.take<T>(int64_t(out.cols.splits) * a.K * a.D);
  }
  out.bytes = carver.used();
  return out;
}

template <typename T, typename W>
cudaError_t run_backward_kernels(const BackwardArgs<T>& a, const BackwardLayout<T>& L, const W& w,
                                 cudaStream_t stream) {
  constexpr int R = Config<T>::kRows;
  const Table<T> comp = L.comp.view(), query = L.query.view();
  cudaError_t err = cudaSuccess;

  if (a.M > 0) {
    RowParams<T> rp;
    rp.M = a.M;
    rp.K = a.K;
    rp.D = a.D;
    rp.dp = L.rows.dp;
    rp.comp = comp;
    rp.query = query;
    rp.grad_qz = a.grad_qz;
    rp.log_qz = a.log_qz;
    rp.td = L.rows.td;
    rp.rows_per_block = L.rows.rows_per_block;
    rp.tiles = L.rows.tiles;
    rp.tiles_per_split = L.rows.tiles_per_split;
    const bool split = L.rows.splits > 1;
    rp.grad_z = split ? L.part_grad_z : a.grad_z;
    rp.split_stride = split ? a.M * a.D : 0;
    rp.grad_logw = a.grad_logw;
    const size_t smem = (size_t(L.rows.threads) * R * kTile + size_t(L.rows.tq) * R * (kTile + 1)) * sizeof(T);
    auto kernel = backward_rows_kernel<T, R, W>;
    if ((err = allow_smem(kernel, smem)) != cudaSuccess) return err;
    const dim3 grid(static_cast<unsigned>(L.rows.blocks), static_cast<unsigned>(L.rows.splits));
    kernel<<<grid, L.rows.threads, smem, stream>>>(rp, w);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (split && a.M * a.D > 0) {
      const int64_t n = a.M * a.D;
      sum_splits_kernel<T><<<table_blocks(n), kTableThreads, 0, stream>>>(L.part_grad_z, L.rows.splits, n, a.grad_z);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
  }

  if (a.K > 0) {
    ColumnParams<T> cp;
    cp.M = a.M;
    cp.K = a.K;
    cp.D = a.D;
    cp.dp = L.cols.dp;
    cp.comp = comp;
    cp.query = query;
    cp.grad_qz = a.grad_qz;
    cp.log_qz = a.log_qz;
    cp.td = L.cols.td;
    cp.cols_per_block = L.cols.rows_per_block;
    cp.tiles = L.cols.tiles;
    cp.tiles_per_split = L.cols.tiles_per_split;
    const bool split = L.cols.splits > 1;
    cp.grad_mu = split ? L.part_grad_mu : a.grad_mu;
    cp.grad_logvar = split ? L.part_grad_logvar : a.grad_logvar;
    cp.split_stride = split ? a.K * a.D : 0;
    const size_t smem = (size_t(L.cols.threads) * R * kTile + size_t(L.cols.tq) * R * (kTile + 1)) * sizeof(T);
    auto kernel = backward_columns_kernel<T, R, W>;
    if ((err = allow_smem(kernel, smem)) != cudaSuccess) return err;
    const dim3 grid(static_cast<unsigned>(L.cols.blocks), static_cast<unsigned>(L.cols.splits));
    kernel<<<grid, L.cols.threads, smem, stream>>>(cp, w);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (split && a.K * a.D > 0) {
      const int64_t n = a.K * a.D;
      sum_splits_kernel<T><<<table_blocks(n), kTableThreads, 0, stream>>>(L.part_grad_mu, L.cols.splits, n, a.grad_mu);
      sum_splits_kernel<T><<<table_blocks(n), kTableThreads, 0, stream>>>(L.part_grad_logvar, L.cols.splits, n, a.grad_logvar);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

}  // namespace

template <typename T>
size_t forward_workspace_bytes(const ForwardArgs<T>& args) {
  if (!valid_sizes(args.M, args.K, args.D)) return 0;
  return forward_layout(args, nullptr).bytes;
}

template <typename T>
size_t backward_workspace_bytes(const BackwardArgs<T>& args) {
  if (!valid_sizes(args.M, args.K, args.D)) return 0;
  return backward_layout(args, nullptr).bytes;
}

template <typename T>
cudaError_t launch_forward(const ForwardArgs<T>& a, cudaStream_t stream) {
  if (!valid_sizes(a.M, a.K, a.D)) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const ForwardLayout<T> L = forward_layout(a, a.workspace);
  const Plan& plan = L.plan;
  if (L.comp.rows > 0) {
    const int64_t n = L.comp.rows * plan.dp;
    component_table_kernel<T><<<table_blocks(n), kTableThreads, 0, stream>>>(
        a.mu, a.logvar, a.K, a.D, L.comp.rows, plan.dp, L.comp.data);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  ForwardParams<T> p;
  p.z = a.z;
  p.M = a.M;
  p.K = a.K;
  p.D = a.D;
  p.dp = plan.dp;
  p.comp = L.comp.view();
  p.td = plan.td;
  p.rows_per_block = plan.rows_per_block;
  p.tiles = plan.tiles;
  p.tiles_per_split = plan.tiles_per_split;
  p.log_qz = a.log_qz;
  p.log_qzd = a.log_qzd;
  p.part_max = L.part_max;
  p.part_sum = L.part_sum;
  cudaError_t err;
  if (a.log_weights != nullptr) {
    err = run_forward_kernel(p, DenseWeights<T>{a.log_weights, a.M, a.K}, plan, stream);
  } else {
    err = run_forward_kernel(
        p, structured_weights<T>(a.log_self, a.log_next, a.log_other, a.M, a.K), plan, stream);
  }
  if (err != cudaSuccess) return err;
  if (plan.splits > 1) {
    const int64_t n = a.M * (a.D + 1);
    forward_merge_kernel<T><<<table_blocks(n), kTableThreads, 0, stream>>>(
        L.part_max, L.part_sum, plan.splits, a.M, a.D, a.log_qz, a.log_qzd);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const BackwardArgs<T>& a, cudaStream_t stream) {
  if (!valid_sizes(a.M, a.K, a.D)) return cudaErrorInvalidValue;
  if (a.M == 0 && a.K == 0) return cudaSuccess;
  const BackwardLayout<T> L = backward_layout(a, a.workspace);
  const bool dense = a.log_weights != nullptr;
  const StructuredWeights<T> sw = structured_weights<T>(a.log_self, a.log_next, a.log_other, a.M, a.K);
  const T base2 = dense ? T(0) : sw.base();
  if (L.comp.rows > 0) {
    const int64_t n = L.comp.rows * L.comp.dp;
    component_table_kernel<T><<<table_blocks(n), kTableThreads, 0, stream>>>(
        a.mu, a.logvar, a.K, a.D, L.comp.rows, L.comp.dp, L.comp.data);
  }
  if (L.query.rows > 0) {
    const int64_t n = L.query.rows * L.query.dp;
    query_table_kernel<T><<<table_blocks(n), kTableThreads, 0, stream>>>(
        a.z, a.grad_qzd, a.log_qzd, a.M, a.D, L.query.rows, L.query.dp, base2, L.query.data);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (dense) {
    err = run_backward_kernels(a, L, DenseWeights<T>{a.log_weights, a.M, a.K}, stream);
  } else {
    err = run_backward_kernels(a, L, sw, stream);
  }
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

template size_t forward_workspace_bytes<float>(const ForwardArgs<float>&);
template size_t forward_workspace_bytes<double>(const ForwardArgs<double>&);
template size_t backward_workspace_bytes<float>(const BackwardArgs<float>&);
template size_t backward_workspace_bytes<double>(const BackwardArgs<double>&);
template cudaError_t launch_forward<float>(const ForwardArgs<float>&, cudaStream_t);
template cudaError_t launch_forward<double>(const ForwardArgs<double>&, cudaStream_t);
template cudaError_t launch_backward<float>(const BackwardArgs<float>&, cudaStream_t);
template cudaError_t launch_backward<double>(const BackwardArgs<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace tcestim
