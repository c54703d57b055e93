// CPU impl of admm_solve: the shared loop (admm_glue.h: GEMMs through ATen) with the projection and
// the conjugate-gradient update fused into row loops: per row a selection (nth_element) instead of
// a sort, and the mask, Z - U and the dual written in one pass.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "prunekit/admm_glue.h"

namespace prunekit::admm {
namespace {

constexpr int64_t kRowGrain = 16;

// Marks in `pruned` the `count` smallest of `scores` (ties: lower index first); count in [1, size].
void mark_smallest(const float* scores, int64_t size, int64_t count, bool* pruned, std::vector<float>& scratch) {
  scratch.assign(scores, scores + size);
  std::nth_element(scratch.begin(), scratch.begin() + (count - 1), scratch.end());
  const float threshold = scratch[count - 1];
  int64_t below = 0;
  for (int64_t j = 0; j < size; ++j) below += scores[j] < threshold;
  int64_t ties_left = count - below;
  for (int64_t j = 0; j < size; ++j) {
    const bool tie = scores[j] == threshold && ties_left > 0;
    ties_left -= tie;
    pruned[j] = scores[j] < threshold || tie;
  }
}

// keep = n largest |v| of every m (ties: lower index).
void keep_nm_row(const float* values, int64_t cols, int64_t n, int64_t m, bool* keep) {
  for (int64_t g = 0; g < cols; g += m) {
    for (int64_t j = 0; j < m; ++j) {
      const float score = std::abs(values[g + j]);
      int64_t beaten_by = 0;
      for (int64_t i = 0; i < m; ++i) {
        const float other = std::abs(values[g + i]);
        beaten_by += other > score || (other == score && i < j);
      }
      keep[g + j] = beaten_by < n;
    }
  }
}

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
      at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) keep_nm_row(cur + r * cols, cols, target.n, target.m, kp + r * cols);
      });
    } else if (target.count <= 0) {
      std::fill(kp, kp + rows * cols, true);
    } else if (!target.per_row) {
      std::vector<float> scores(rows * cols), scratch;
      for (int64_t i = 0; i < rows * cols; ++i) scores[i] = std::abs(cur[i]);
      mark_smallest(scores.data(), rows * cols, target.count, kp, scratch);
      for (int64_t i = 0; i < rows * cols; ++i) kp[i] = !kp[i];
    } else {
      const int64_t per = target.count / rows, extra = target.count % rows;
      std::vector<float> next(rows);
      std::vector<int64_t> next_index(rows);
      at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
        std::vector<float> scores(cols), scratch;
        for (int64_t r = begin; r < end; ++r) {
          bool* row_keep = kp + r * cols;
          for (int64_t j = 0; j < cols; ++j) scores[j] = std::abs(cur[r * cols + j]);
          if (per > 0) {
            mark_smallest(scores.data(), cols, per, row_keep, scratch);
          } else {
            std::fill(row_keep, row_keep + cols, false);
          }
          // The row's next candidate: its smallest remaining score, the first of equal ones.
          next[r] = std::numeric_limits<float>::infinity();
          next_index[r] = -1;
          for (int64_t j = 0; j < cols; ++j) {
            if (!row_keep[j] && (next_index[r] < 0 || scores[j] < next[r])) {
              next[r] = scores[j];
              next_index[r] = j;
            }
            row_keep[j] = !row_keep[j];
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
  const float* support = c.support.data_ptr<float>();
  const float* inverse_diag = c.inverse_diag.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* d = direction + r * cols;
      float* q = curved + r * cols;
      float* p = pruned + r * cols;
      float* res = residual + r * cols;
      const float* s = support + r * cols;
      double curvature = 0.0;
      for (int64_t j = 0; j < cols; ++j) {
        q[j] *= s[j];
        curvature += double(d[j]) * q[j];
      }
      // A row already solved (zero direction) takes no step.
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

std::tuple<at::Tensor, at::Tensor> admm_solve_cpu(const at::Tensor& weight, const at::Tensor& hessian,
                                                  const at::Tensor& inverse, const std::optional<at::Tensor>& keep,
                                                  double sparsity, int64_t n, int64_t m, bool per_row, double rho,
                                                  int64_t iterations, int64_t prune_iterations,
                                                  int64_t pcg_iterations) {
  return admm_loop(weight, hessian, inverse, keep, sparsity, n, m, per_row, rho, iterations, prune_iterations,
                   pcg_iterations, cpu_project, cpu_cg_step);
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("admm_solve", &admm_solve_cpu); }

}  // namespace prunekit::admm
