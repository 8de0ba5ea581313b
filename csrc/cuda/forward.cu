// Forward kernels of the log-density cube and their launch (see common.cuh for the layout).
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
#include "common.cuh"
#include "plan.cuh"

namespace tcestim {
namespace cuda {
namespace {

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
__device__ __forceinline__ void forward(const ForwardParams<T>& p, const W& w) {
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

// Two compilations (see kMaxThreads in common.cuh): blocks of up to kPreferredThreads, with the
// registers ptxas chooses, and blocks of up to kMaxThreads, capped at 128 registers.
template <typename T, int R, typename W>
__global__ void forward_kernel(const ForwardParams<T> p, const W w) {
  forward<T, R>(p, w);
}
template <typename T, int R, typename W>
__global__ void __launch_bounds__(kMaxThreads) forward_kernel_large(const ForwardParams<T> p, const W w) {
  forward<T, R>(p, w);
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

template <typename T>
struct ForwardLayout {
  Plan plan;
  TableBuffer<T> comp;
  T* part_max = nullptr;
  T* part_sum = nullptr;
  size_t bytes = 0;
};

template <typename T>
ForwardLayout<T> forward_layout(const ForwardArgs<T>& a, int num_sms, void* base) {
  ForwardLayout<T> out;
  out.plan = make_plan(a.M, a.K, a.D, Config<T>::kRows, num_sms);
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
  return launch_main(forward_kernel<T, R, W>, forward_kernel_large<T, R, W>,
                     plan, smem, stream, params, w);
}

}  // namespace

template <typename T>
size_t forward_workspace_bytes(const ForwardArgs<T>& args, int num_sms) {
  if (!valid_sizes(args.M, args.K, args.D)) return 0;
  return forward_layout(args, num_sms, nullptr).bytes;
}

template <typename T>
cudaError_t launch_forward(const ForwardArgs<T>& a, const Launch& launch) {
  if (!valid_sizes(a.M, a.K, a.D)) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const ForwardLayout<T> L = forward_layout(a, launch.num_sms, launch.workspace);
  const Plan& plan = L.plan;
  if (L.comp.rows > 0) {
    const int64_t n = L.comp.rows * plan.dp;
    component_table_kernel<T><<<table_blocks(n), kTableThreads, 0, launch.stream>>>(
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
    err = run_forward_kernel(p, DenseWeights<T>{a.log_weights, a.M, a.K}, plan, launch.stream);
  } else {
    err = run_forward_kernel(
        p, structured_weights<T>(a.log_self, a.log_next, a.log_other, a.M, a.K), plan, launch.stream);
  }
  if (err != cudaSuccess) return err;
  if (plan.splits > 1) {
    const int64_t n = a.M * (a.D + 1);
    forward_merge_kernel<T><<<table_blocks(n), kTableThreads, 0, launch.stream>>>(
        L.part_max, L.part_sum, plan.splits, a.M, a.D, a.log_qz, a.log_qzd);
  }
  return cudaGetLastError();
}

template size_t forward_workspace_bytes<float>(const ForwardArgs<float>&, int);
template size_t forward_workspace_bytes<double>(const ForwardArgs<double>&, int);
template cudaError_t launch_forward<float>(const ForwardArgs<float>&, const Launch&);
template cudaError_t launch_forward<double>(const ForwardArgs<double>&, const Launch&);

}  // namespace cuda
}  // namespace tcestim
