// CPU impl of admm_solve: the shared loop (admm_glue.h: GEMMs through ATen) with the projection and
// the conjugate-gradient update fused into row loops: per row the core kernels' selections (the
// exact-count mask by nth_element instead of a sort, the N:M mask) and the mask, Z - U and the
// dual written in one pass.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "parallel_rows.h"
#include "prunekit/admm_glue.h"
#include "prunekit/kernels_cpu.h"

namespace prunekit::admm {
namespace {

constexpr int64_t kRowGrain = 16;

void cpu_project(at::Tensor& current, at::Tensor& signed_split, at::Tensor& keep, const Target& target) {
  const int64_t rows = current.size(0), cols = current.size(1);
  if (!signed_split.defined()) signed_split = at::empty_like(current);
  float* cur = current.data_ptr<float>();
  float* split = signed_split.data_ptr<float>();
  if (target.fixed != nullptr) {
    keep = target.fixed->contiguous();
  } else {
    keep = at::empty(current.sizes(), current.options().dtype(at::kBool));
    bool* kp = keep.data_ptr<bool>();
    if (target.m > 0) {
      // The n largest |entries| of every m: the nm_mask op's kernel (ties: lower index).
      const at::Tensor scores = current.abs();
      const float* sp = scores.data_ptr<float>();
      const cpu::Status status = run_rows(rows, grain_for(cols), [&](int64_t begin, int64_t end) {
        return cpu::nm_mask_select_scalar(sp, ScoreType::kFloat32, kp, cols, target.n, target.m, {begin, end});
      });
      TORCH_CHECK_VALUE(status.ok(), "prunekit.admm_solve: the ADMM iterate must stay finite, but entry ", status.col,
                        " of row ", status.row, " became ", cur[status.row * cols + status.col]);
    } else if (target.count <= 0) {
      std::fill(kp, kp + rows * cols, true);
    } else if (!target.per_row) {
      std::vector<float> scores(rows * cols);
      for (int64_t i = 0; i < rows * cols; ++i) scores[i] = std::abs(cur[i]);
      cpu::prune_mask_smallest_scalar(scores.data(), rows * cols, target.count, kp);
    } else {
      const int64_t per = target.count / rows, extra = target.count % rows;
      std::vector<float> next(rows);
      std::vector<int64_t> next_index(rows);
      at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
        std::vector<float> scores(cols);
        for (int64_t r = begin; r < end; ++r) {
          bool* row_keep = kp + r * cols;
          for (int64_t j = 0; j < cols; ++j) scores[j] = std::abs(cur[r * cols + j]);
          cpu::prune_mask_smallest_scalar(scores.data(), cols, per, row_keep);  // per == 0 keeps the row
          // The row's next candidate: its smallest kept score, the first of equal ones.
          next[r] = std::numeric_limits<float>::infinity();
          next_index[r] = -1;
          for (int64_t j = 0; j < cols; ++j) {
            if (row_keep[j] && (next_index[r] < 0 || scores[j] < next[r])) {
              next[r] = scores[j];
              next_index[r] = j;
            }
          }
        }
      });
      if (extra > 0) {
        std::vector<int64_t> order(rows);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return next[a] < next[b]; });
        for (int64_t i = 0; i < extra; ++i) kp[order[i] * cols + next_index[order[i]]] = false;
      }
    }
  }
  const bool* kp = keep.data_ptr<bool>();
  at::parallel_for(0, rows * cols, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float value = cur[i];
      split[i] = kp[i] ? value : -value;
      cur[i] = kp[i] ? 0.0f : value;
    }
  });
}

void cpu_cg_step(CgState& c) {
  const int64_t rows = c.pruned.size(0), cols = c.pruned.size(1);
  float* pruned = c.pruned.data_ptr<float>();
  float* residual = c.residual.data_ptr<float>();
  float* direction = c.direction.data_ptr<float>();
  float* curved = c.curved.data_ptr<float>();
  float* product = c.product.data_ptr<float>();
  const float* solved_below = c.solved_below.data_ptr<float>();
  const float* support = c.support.data_ptr<float>();
  const float* inverse_diag = c.inverse_diag.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* d = direction + r * cols;
      float* q = curved + r * cols;
      float* p = pruned + r * cols;
      float* res = residual + r * cols;
      const float* s = support + r * cols;
      if (!(product[r] > solved_below[r])) continue;  // solved (see CgState)
      double curvature = 0.0;
      for (int64_t j = 0; j < cols; ++j) {
        q[j] *= s[j];
        curvature += double(d[j]) * q[j];
      }
      // A row without curvature along its direction (a zero direction) takes no step.
      const float alpha = curvature > 0 ? float(product[r] / curvature) : 0.0f;
      double next = 0.0;
      for (int64_t j = 0; j < cols; ++j) {
        p[j] += alpha * d[j];
        res[j] -= alpha * q[j];
        next += double(res[j]) * res[j] * inverse_diag[j];
      }
      const float beta = product[r] > 0 ? float(next / product[r]) : 0.0f;
      for (int64_t j = 0; j < cols; ++j) d[j] = res[j] * inverse_diag[j] + beta * d[j];
      product[r] = float(next);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("admm_solve", &admm_solve<cpu_project, cpu_cg_step>); }

}  // namespace prunekit::admm
