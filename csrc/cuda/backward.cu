// Backward kernels of the log-density cube and their launch (see common.cuh for the layout).
//
// Backward: two deterministic sweeps, no atomics, recomputing tiles from the saved outputs:
//   rows    (owned queries,    streamed components): grad_z (and grad_logw for dense weights)
//   columns (owned components, streamed queries):    grad_mu, grad_logvar, for the components
//                                                    0..grad_components-1 only (kernel_args.h)
// Each tile first computes the joint softmax weights P[i,j] = exp2(lw + sum_d c - log2 q(z_i))
// (group reduction as in common.cuh, times grad_log_qz, into shared memory), then the marginal weights
// Q[i,j,d] = exp2(lw + c - log2 q(z_id)) and accumulates W = g_qz P + g_qzd Q times the
// derivatives: dC/dz = -(z - mu) prec = 2 ln2 * quad * t, dC/dmu = -dC/dz,
// dC/dlogvar = -0.5 + 0.5 t^2 prec = -ln2 * (quad * t * t + 0.5 log2(e)).
#include "common.cuh"
#include "plan.cuh"

namespace tcestim {
namespace cuda {
namespace {

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

// Parameters of either sweep. The owned axis is the queries (rows) or the components (columns).
template <typename T>
struct SweepParams {
  int64_t M, K, D, dp;
  int64_t owned;  // rows: M; columns: grad_components (the leading components that get gradients)
  Table<T> comp;
  Table<T> query;
  const T* grad_qz;
  const T* log_qz;
  int td;
  int64_t owned_per_block, tiles, tiles_per_split;
  T* grad[2];            // rows: grad_z; columns: grad_mu, grad_logvar. (owned, D) each, or
                         // (splits, owned, D) partial sums
  int64_t split_stride;  // owned * D when split, else 0
  T* grad_logw;          // rows, dense weights: (M, K)
};

// ---------------------------------------------------------------------------------------------
// Backward row sweep: owned queries, streamed components -> grad_z (+ grad_logw).

template <bool kUniform, typename T, int R, typename W>
__device__ __forceinline__ void rows_accumulate(const SweepParams<T>& p, const W& w, int64_t j0,
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
__device__ __forceinline__ void backward_rows(const SweepParams<T>& p, const W& w) {
  const int td = p.td, tid = threadIdx.x, dq = tid % td, iq = tid / td, d0 = dq * kDims;
  const int tq = blockDim.x / td;
  T* red = dynamic_smem<T>();
  T* group_red = red + int64_t(iq) * R * td * kTile;
  T* group_gp = red + int64_t(tq) * R * td * kTile + int64_t(iq) * R * (kTile + 1);
  const int64_t ib = blockIdx.x * p.owned_per_block;
  const int64_t ie = min_i(ib + p.owned_per_block, p.M);

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

  T* out = p.grad[0] + blockIdx.y * p.split_stride;
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < kDims; ++c) {
      const int64_t d = d0 + c;
      if (row[r] < p.M && d < p.D) out[row[r] * p.D + d] = T(2 * kLn2) * gz[r][c];
    }
  }
}

// Two compilations, as forward_kernel.
template <typename T, int R, typename W>
__global__ void backward_rows_kernel(const SweepParams<T> p, const W w) {
  backward_rows<T, R>(p, w);
}
template <typename T, int R, typename W>
__global__ void __launch_bounds__(kMaxThreads) backward_rows_kernel_large(const SweepParams<T> p, const W w) {
  backward_rows<T, R>(p, w);
}

// ---------------------------------------------------------------------------------------------
// Backward column sweep: owned components, streamed queries -> grad_mu, grad_logvar.

template <bool kUniform, typename T, int R, typename W>
__device__ __forceinline__ void columns_accumulate(const SweepParams<T>& p, const W& w,
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
__device__ __forceinline__ void backward_columns(const SweepParams<T>& p, const W& w) {
  const int td = p.td, tid = threadIdx.x, dq = tid % td, iq = tid / td, d0 = dq * kDims;
  const int tq = blockDim.x / td;
  T* red = dynamic_smem<T>();
  T* group_red = red + int64_t(iq) * R * td * kTile;
  T* group_gp = red + int64_t(tq) * R * td * kTile + int64_t(iq) * R * (kTile + 1);
  const int64_t jb = blockIdx.x * p.owned_per_block;
  const int64_t je = min_i(jb + p.owned_per_block, p.owned);

  int64_t col[R];
  T mu[R][kDims], quad[R][kDims], offset[R][kDims], gmu[R][kDims], glv[R][kDims];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    col[r] = jb + int64_t(iq) * R + r;
    const int64_t jc = min_i(col[r], p.owned - 1);
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

  T* out_mu = p.grad[0] + blockIdx.y * p.split_stride;
  T* out_lv = p.grad[1] + blockIdx.y * p.split_stride;
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < kDims; ++c) {
      const int64_t d = d0 + c;
      if (col[r] < p.owned && d < p.D) {
        out_mu[col[r] * p.D + d] = T(-2 * kLn2) * gmu[r][c];
        out_lv[col[r] * p.D + d] = T(-kLn2) * glv[r][c];
      }
    }
  }
}

template <typename T, int R, typename W>
__global__ void backward_columns_kernel(const SweepParams<T> p, const W w) {
  backward_columns<T, R>(p, w);
}
template <typename T, int R, typename W>
__global__ void __launch_bounds__(kMaxThreads) backward_columns_kernel_large(const SweepParams<T> p, const W w) {
  backward_columns<T, R>(p, w);
}

template <typename T>
bool valid_grad_components(const BackwardArgs<T>& a) {
  return a.grad_components >= 0 && a.grad_components <= a.K;
}

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
BackwardLayout<T> backward_layout(const BackwardArgs<T>& a, int num_sms, void* base) {
  BackwardLayout<T> out;
  out.rows = make_plan(a.M, a.K, a.D, Config<T>::kRows, num_sms);
  out.cols = make_plan(a.grad_components, a.M, a.D, Config<T>::kRows, num_sms);
  Carver carver(base);
  out.comp = take_table<T>(carver, out.rows.tiles * kTile, out.rows.dp);
  out.query = take_table<T>(carver, out.cols.tiles * kTile, out.rows.dp);  // >= M rows
  if (out.rows.splits > 1) out.part_grad_z = carver.take<T>(int64_t(out.rows.splits) * a.M * a.D);
  if (out.cols.splits > 1) {
    out.part_grad_mu = carver.take<T>(int64_t(out.cols.splits) * a.grad_components * a.D);
    out.part_grad_logvar = carver.take<T>(int64_t(out.cols.splits) * a.grad_components * a.D);
  }
  out.bytes = carver.used();
  return out;
}

// One sweep over `owned` rows: its kernel writes `outputs` gradients (into `partial` when the
// streamed axis is split, then summed into `grad`).
template <typename T, typename W, typename Kernel>
cudaError_t run_sweep(Kernel preferred, Kernel large, const BackwardArgs<T>& a,
                      const BackwardLayout<T>& L, const Plan& plan, int64_t owned, const W& w,
                      int outputs, T* const (&grad)[2], T* const (&partial)[2], cudaStream_t stream) {
  constexpr int R = Config<T>::kRows;
  const bool split = plan.splits > 1;
  SweepParams<T> p;
  p.M = a.M;
  p.K = a.K;
  p.D = a.D;
  p.dp = plan.dp;
  p.owned = owned;
  p.comp = L.comp.view();
  p.query = L.query.view();
  p.grad_qz = a.grad_qz;
  p.log_qz = a.log_qz;
  p.td = plan.td;
  p.owned_per_block = plan.rows_per_block;
  p.tiles = plan.tiles;
  p.tiles_per_split = plan.tiles_per_split;
  for (int k = 0; k < 2; ++k) p.grad[k] = split ? partial[k] : grad[k];
  p.split_stride = split ? owned * a.D : 0;
  p.grad_logw = a.grad_logw;
  const size_t smem = (size_t(plan.threads) * R * kTile + size_t(plan.tq) * R * (kTile + 1)) * sizeof(T);
  cudaError_t err = launch_main(preferred, large, plan, smem, stream, p, w);
  if (err != cudaSuccess) return err;
  const int64_t n = owned * a.D;
  if (split && n > 0) {
    for (int k = 0; k < outputs; ++k) {
      sum_splits_kernel<T><<<table_blocks(n), kTableThreads, 0, stream>>>(partial[k], plan.splits, n, grad[k]);
    }
    err = cudaGetLastError();
  }
  return err;
}

template <typename T, typename W>
cudaError_t run_backward_kernels(const BackwardArgs<T>& a, const BackwardLayout<T>& L, const W& w,
                                 cudaStream_t stream) {
  constexpr int R = Config<T>::kRows;
  cudaError_t err = cudaSuccess;
  if (a.M > 0) {
    T* const grad[2] = {a.grad_z, nullptr};
    T* const partial[2] = {L.part_grad_z, nullptr};
    err = run_sweep(backward_rows_kernel<T, R, W>,
                    backward_rows_kernel_large<T, R, W>, a, L, L.rows, a.M, w, 1, grad,
                    partial, stream);
    if (err != cudaSuccess) return err;
  }
  if (a.grad_components > 0) {
    T* const grad[2] = {a.grad_mu, a.grad_logvar};
    T* const partial[2] = {L.part_grad_mu, L.part_grad_logvar};
    err = run_sweep(backward_columns_kernel<T, R, W>,
                    backward_columns_kernel_large<T, R, W>, a, L, L.cols, a.grad_components, w, 2, grad,
                    partial, stream);
  }
  return err;
}

}  // namespace

template <typename T>
size_t backward_workspace_bytes(const BackwardArgs<T>& args, int num_sms) {
  if (!valid_sizes(args.M, args.K, args.D) || !valid_grad_components(args)) return 0;
  return backward_layout(args, num_sms, nullptr).bytes;
}

template <typename T>
cudaError_t launch_backward(const BackwardArgs<T>& a, const Launch& launch) {
  if (!valid_sizes(a.M, a.K, a.D) || !valid_grad_components(a)) return cudaErrorInvalidValue;
  if (a.M == 0 && a.K == 0) return cudaSuccess;
  const BackwardLayout<T> L = backward_layout(a, launch.num_sms, launch.workspace);
  const bool dense = a.log_weights != nullptr;
  const StructuredWeights<T> sw = structured_weights<T>(a.log_self, a.log_next, a.log_other, a.M, a.K);
  const T base2 = dense ? T(0) : sw.base();
  if (L.comp.rows > 0) {
    const int64_t n = L.comp.rows * L.comp.dp;
    component_table_kernel<T><<<table_blocks(n), kTableThreads, 0, launch.stream>>>(
        a.mu, a.logvar, a.K, a.D, L.comp.rows, L.comp.dp, L.comp.data);
  }
  if (L.query.rows > 0) {
    const int64_t n = L.query.rows * L.query.dp;
    query_table_kernel<T><<<table_blocks(n), kTableThreads, 0, launch.stream>>>(
        a.z, a.grad_qzd, a.log_qzd, a.M, a.D, L.query.rows, L.query.dp, base2, L.query.data);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (dense) {
    err = run_backward_kernels(a, L, DenseWeights<T>{a.log_weights, a.M, a.K}, launch.stream);
  } else {
    err = run_backward_kernels(a, L, sw, launch.stream);
  }
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

template size_t backward_workspace_bytes<float>(const BackwardArgs<float>&, int);
template size_t backward_workspace_bytes<double>(const BackwardArgs<double>&, int);
template cudaError_t launch_backward<float>(const BackwardArgs<float>&, const Launch&);
template cudaError_t launch_backward<double>(const BackwardArgs<double>&, const Launch&);

}  // namespace cuda
}  // namespace tcestim
