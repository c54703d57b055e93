// Kernels over row ranges in parallel (at::parallel_for), keeping the first error of any range.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "prunekit/check.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit {

// kernel(begin, end) -> cpu::Status over rows [0, rows) in tasks of at least `grain` rows; returns
// the failing status of the lowest row, or ok.
template <typename Kernel>
cpu::Status run_rows(int64_t rows, int64_t grain, Kernel kernel) {
  FirstError<cpu::Status> error;
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { error.record(kernel(begin, end)); });
  return error.get();
}

// Rows per task for rows of `row_length` entries: enough work per thread to amortise the fork.
inline int64_t grain_for(int64_t row_length) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_length, 1)); }

}  // namespace prunekit
