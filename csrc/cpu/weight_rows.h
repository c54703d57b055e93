// A compressed weight's rows as the CPU ops hand them to kernels: the checks of its tensors, of
// its row_offsets (run in each thread's own rows) and of the layer's bias, and the views the
// kernels read. Shared by the bitmap format ops, the sparse linear ops and the sparse conv op.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <initializer_list>
#include <optional>
#include <utility>

#include "parallel_rows.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit {

// Columns of a compressed weight at most: far above any real layer, low enough that ceil(k / 16)
// and offsets derived from k never overflow int64.
constexpr int64_t kMaxColumns = int64_t(1) << 40;

// A compressed weight's rows as its kernels see them: `offsets` (rows + 1 entries) bound every
// kernel read of its `nnz` values.
struct WeightRows {
  const int64_t* offsets;
  int64_t rows;
  int64_t nnz;
};

inline WeightRows weight_rows(const at::Tensor& row_offsets, int64_t nnz) {
  return {row_offsets.data_ptr<int64_t>(), row_offsets.size(0) - 1, nnz};
}

// The first and last entry, checked up front with the other arguments.
void check_row_offset_ends(const char* op, const WeightRows& weight);

// Whether entries [begin, end] (those rows [begin, end) read) are in [0, nnz] and non-decreasing.
// One branch-free pass (half the cost of a check per entry): the top bit of
// `signs` is set if an entry is outside [0, nnz] or below the one before. Unsigned arithmetic wraps
// where signed would overflow; with both entries in range neither difference wraps, and an entry
// out of range sets the bit by itself.
inline bool row_offsets_in_order(const WeightRows& weight, int64_t begin, int64_t end) {
  const int64_t* offsets = weight.offsets;
  const uint64_t nnz = uint64_t(weight.nnz), first = uint64_t(offsets[begin]);
  uint64_t signs = first | (nnz - first);
  for (int64_t r = begin; r < end; ++r) {
    const uint64_t next = uint64_t(offsets[r + 1]), previous = uint64_t(offsets[r]);
    signs |= next | (nnz - next) | (next - previous);
  }
  return (signs >> 63) == 0;
}

// Names the first entry out of order; only called once a pass has failed (with the ends at 0 and
// nnz, an entry out of [0, nnz] implies a decrease).
[[noreturn]] void raise_row_offsets_error(const char* op, const WeightRows& weight);

// Where no kernel runs, the whole check in one pass.
void check_row_offsets(const char* op, const WeightRows& weight);

// run_rows over a compressed weight's rows: each range first checks the row_offsets entries it
// reads, then runs its kernel. Checking in the ranges' own threads rather than in one pass before
// takes the pass off the call's serial part, and leaves the offsets in the cache of the core that
// reads them next.
template <typename Kernel>
cpu::Status run_weight_rows(const char* op, const WeightRows& weight, int64_t grain, Kernel kernel) {
  std::atomic<bool> out_of_order{false};
  const cpu::Status status = run_rows(weight.rows, grain, [&](int64_t begin, int64_t end) {
    if (!row_offsets_in_order(weight, begin, end)) {
      out_of_order = true;
      return cpu::Status{};
    }
    return kernel(begin, end);
  });
  if (out_of_order) raise_row_offsets_error(op, weight);
  return status;
}

// One tensor of a compressed weight: dtype, rank, contiguity, on the CPU.
void check_weight_tensor(const char* op, const at::Tensor& t, const char* arg,
                         std::initializer_list<at::ScalarType> dtypes, int64_t dim);

// The kernels' name for the values' dtype (fp32 or bf16, checked before).
cpu::ValueType value_type(const at::Tensor& values);

// The layer's bias as the kernels read it (fp32, contiguous), or an undefined tensor for none.
at::Tensor bias_as_float(const std::optional<at::Tensor>& bias, int64_t rows, const char* op);

// ---- the bitmap format ----
// Checks the format's tensors against each other (the row_offsets entries between the ends are
// checked where the rows run); returns the weight's rows and k, its dense columns.
std::pair<WeightRows, int64_t> check_bitmap_weight(const char* op, const at::Tensor& values, const at::Tensor& bitmap,
                                                   const at::Tensor& row_offsets, int64_t k);

// Raises the corrupt-weight error for a failed bitmap kernel status.
void check_bitmap_status(const cpu::Status& status, const char* op, int64_t k);

// The checked bitmap weight as its kernels read it.
cpu::BitmapWeightView bitmap_view(const at::Tensor& values, const at::Tensor& bitmap, const WeightRows& weight,
                                  int64_t k);

// Runs the bitmap check alone: where no kernel runs (an empty batch or image), a corrupt weight
// is still an error, as it is for every other input.
void validate_bitmap(const char* op, const cpu::BitmapWeightView& view, const WeightRows& weight);

}  // namespace prunekit
