// Arguments of the mixture log-density kernels, shared by every device: the torch binding
// (binding.h) fills them, the CPU kernels (cpu/kernel_table.h) and the CUDA kernels
// (cuda/mixture_logdensity_kernels.h) read them. No torch and no CUDA headers.
//
//   C[i,j,d]     = log N(z[i,d]; mu[j,d], exp(logvar[j,d]))
//   log_qz[i]    = logsumexp_j( logw[i,j] + sum_d C[i,j,d] )      (joint)
//   log_qzd[i,d] = logsumexp_j( logw[i,j] + C[i,j,d] )             (per-dimension marginals)
//
// All arrays are row-major and contiguous, on the device of the kernels that read them.
// log_weights == nullptr selects the structured weights: log_self if j == i, log_next if
// j == (i + 1) mod M, log_other otherwise (self wins), natural log.
#pragma once

#include <cstdint>

namespace tcestim {

// Largest D the CUDA kernels accept (a thread owns 4 dimensions, a block at most 512 threads).
// The Python package reads it from the extension (tcestim._C.CUDA_MAX_DIM).
constexpr int64_t kCudaMaxDim = 2048;

template <typename T>
struct ForwardArgs {
  const T* z;            // (M, D)
  const T* mu;           // (K, D)
  const T* logvar;       // (K, D)
  const T* log_weights;  // (M, K) or nullptr (structured)
  int64_t M, K, D;
  double log_self, log_next, log_other;  // structured weights, unused if dense
  T* log_qz;   // (M,)   output
  T* log_qzd;  // (M, D) output
};

template <typename T>
struct BackwardArgs {
  const T* grad_qz;      // (M,)
  const T* grad_qzd;     // (M, D)
  const T* z;            // (M, D)
  const T* mu;           // (K, D)
  const T* logvar;       // (K, D)
  const T* log_weights;  // (M, K) or nullptr (structured)
  const T* log_qz;       // (M,)   saved forward output
  const T* log_qzd;      // (M, D) saved forward output
  int64_t M, K, D;
  double log_self, log_next, log_other;
  // Components 0..grad_components-1 (0 <= grad_components <= K) get gradients; the others are
  // constants of the mixture (a bank of detached encodings): the sweep over components skips them
  // and leaves their rows of grad_mu and grad_logvar unwritten. grad_z always sums over all K.
  int64_t grad_components;
  T* grad_z;       // (M, D) output
  T* grad_mu;      // (K, D) output, rows 0..grad_components-1 written
  T* grad_logvar;  // (K, D) output, rows 0..grad_components-1 written
  T* grad_logw;    // (M, K) output for dense weights (else ignored, may be nullptr)
};

// The jackknife's sums (tcestim/jackknife.py), CPU only. Queries z (M, D); components (K, D), of
// which component i (i < M) is query i's own and left out. For each query i and each target r (r = 0
// the joint, r = 1 + d the marginal of dimension d) the "other" terms are, in base 2,
//   x[k] = sum_d C2[i,k,d] (r = 0)  or  C2[i,k,d] (r = 1 + d),   k != i,
// and with the shift m = max_k x[k] (0 if that is -inf), u[k] = 2^(x[k] - m) <= 1:
//   big terms:   x[k] - m > log2_threshold = max(log2(kJackknifeBigFraction * sum_{k != argmax} u[k]),
//                lowest + 1) (argmax: the first largest; lowest + 1 = -126 in float, -1022 in double),
//                at most kJackknifeMaxBig of them, their component indices listed in increasing order
//                (the rest -1);
//   small terms: the others, through power_sums[q - 1] = sum_small u[k]^q, q = 1..kJackknifeSeries.
// Every small term is at most 1/64 of the sum of all terms but the largest, so that the series of
// the leave-one- and leave-two-out logarithms converge fast, or else below 2^(lowest + 1), where exp2
// flushes u to 0 (without that floor, a sum of others flushed to 0 made every term big). Rows are
// (M, D + 1) of targets.
constexpr int64_t kJackknifeSeries = 8;
constexpr double kJackknifeBigFraction = 1.0 / 64;
constexpr int64_t kJackknifeMaxBig = 72;  // > 1 / kJackknifeBigFraction + 1, with room for rounding

template <typename T>
struct JackknifeArgs {
  const T* z;       // (M, D)
  const T* mu;      // (K, D)
  const T* logvar;  // (K, D)
  int64_t M, K, D;  // K >= M
  T* shift;             // (M, D + 1) output: m (base 2)
  T* log2_threshold;    // (M, D + 1) output
  int64_t* big_index;   // (M, D + 1, kJackknifeMaxBig) output, -1 padded
  int64_t* big_count;   // (M, D + 1) output: how many big terms
  T* power_sums;        // (M, D + 1, kJackknifeSeries) output
};

// Gradients of sum(grad_power_sums * power_sums) with the shift and the classification held fixed:
// d power_sums[q - 1] / d x[k] = q u[k]^q ln 2 (nats) for each small term.
template <typename T>
struct JackknifeBackwardArgs {
  const T* grad_power_sums;  // (M, D + 1, kJackknifeSeries)
  const T* z;                // (M, D)
  const T* mu;               // (K, D)
  const T* logvar;           // (K, D)
  const T* shift;            // (M, D + 1), saved forward output
  const T* log2_threshold;   // (M, D + 1), saved forward output
  int64_t M, K, D;
  int64_t grad_components;  // as in BackwardArgs: rows 0..grad_components-1 of grad_mu/grad_logvar
  T* grad_z;       // (M, D) output
  T* grad_mu;      // (K, D) output, rows 0..grad_components-1 written
  T* grad_logvar;  // (K, D) output, rows 0..grad_components-1 written
};

// The jackknife estimate formed from those sums (tcestim/jackknife.py), CPU only, float64. One row per
// query and target; for row r, with the weighted own term exp(log_a[r]), the small other terms
// exp(log_shift[r]) u[k] (power_sums[r, q - 1] = sum_small u[k]^q, q = 1..series) and the big other
// terms exp(log_big[e]), offsets[r] <= e < offsets[r + 1], of n others in all (each weighted for n):
//   theta = log(own + sum of all others), loo = mean over k of theta_(k) - theta, pairs = mean over
//   j < k of theta_(jk) - theta, theta_(...) leaving those others out and rescaling the rest to n,
//   estimate[o, r] = theta + loo_weights[o] loo + pair_weights[o] pairs   (theta where theta = -inf).
// The leave-outs of big terms are exact sums; those of small terms go through the log1p series of
// the power sums. All in nats.
struct JackknifeRows {
  const double* log_a;         // (R,)
  const double* log_shift;     // (R,)
  const double* power_sums;    // (R, series)
  const double* log_big;       // (E,)
  const int64_t* offsets;      // (R + 1,), offsets[0] = 0, nondecreasing, offsets[R] = E
  const double* loo_weights;   // (orders,)
  const double* pair_weights;  // (orders,) all 0 unless n >= 3
  int64_t rows, series, n, orders;
};

struct JackknifeEstimateArgs {
  JackknifeRows in;
  double* estimate;  // (orders, R) output
};

// Gradients of sum(grad * estimate) with respect to log_a, power_sums and log_big (log_shift is a
// constant: the reference of the power sums).
struct JackknifeEstimateBackwardArgs {
  JackknifeRows in;
  const double* grad;        // (orders, R)
  double* grad_log_a;        // (R,) output
  double* grad_power_sums;   // (R, series) output
  double* grad_log_big;      // (E,) output
};

}  // namespace tcestim
