// Argument checks of the N:M mask op, shared by the CPU and CUDA glue so that both backends accept
// and reject exactly the same inputs.
#pragma once

#include "prunekit/check.h"
#include "prunekit/dtypes.h"

namespace prunekit {

inline void check_nm_mask_args(const at::Tensor& scores, int64_t n, int64_t m) {
  constexpr const char* op = "nm_mask";
  check_dtype(scores, op, "scores", {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  check_min_dim(scores, op, "scores", 1);
  check_contiguous(scores, op, "scores");
  check_nonempty(scores, op, "scores");
  check_nm(n, m, scores.size(-1), op);
}

inline ScoreType score_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return ScoreType::kFloat32;
    case at::kDouble: return ScoreType::kFloat64;
    case at::kHalf: return ScoreType::kFloat16;
    default: return ScoreType::kBFloat16;
  }
}

}  // namespace prunekit
