// The jackknife estimate from the sums of jackknife_sums, and its backward (JackknifeRows in
// kernel_args.h; no torch headers). Scalar float64, one row per query and target, rows in parallel:
// each row is formed on one thread in a fixed order, so the results do not depend on the thread count.
#pragma once

#include "kernel_table.h"

namespace tcestim {
namespace cpu {

void jackknife_estimate(const JackknifeEstimateArgs& a, const ParallelFor& parallel_for);
void jackknife_estimate_backward(const JackknifeEstimateBackwardArgs& a, const ParallelFor& parallel_for);

}  // namespace cpu
}  // namespace tcestim
