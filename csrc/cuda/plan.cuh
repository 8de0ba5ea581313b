// Host side of the kernels: launch plans (threads, blocks, splits of the streamed axis) and the
// workspace layout, shared by forward.cu and backward.cu.
#pragma once

#include "common.cuh"

namespace tcestim {
namespace cuda {
namespace {

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

// Launches one of a main kernel's two compilations (see kMaxThreads in common.cuh): the one
// bounded by kPreferredThreads when the block fits in it, else the one bounded by kMaxThreads.
template <typename Kernel, typename... Args>
cudaError_t launch_main(Kernel preferred, Kernel large, const Plan& plan, size_t smem,
                        cudaStream_t stream, const Args&... args) {
  const Kernel kernel = plan.threads <= kPreferredThreads ? preferred : large;
  const cudaError_t err = allow_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(plan.blocks), static_cast<unsigned>(plan.splits));
  kernel<<<grid, plan.threads, smem, stream>>>(args...);
  return cudaGetLastError();
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

}  // namespace
}  // namespace cuda
}  // namespace tcestim
