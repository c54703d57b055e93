// ADMM reconstruction as ATen glue shared by every device (csrc/generic/admm_ops.cpp defines it):
// the argument checks and the loop (projection, one GEMM per ADMM step, conjugate gradients on
// the final support). A device plugs in its projection and conjugate-gradient update: ATen ops
// (the CompositeExplicitAutograd kernel) or fused row loops (csrc/cpu/admm_ops.cpp).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <tuple>

namespace prunekit::admm {

// What the projection keeps: `fixed` when given, else n of every m (m > 0), else all but the
// `count` smallest |entries|, compared per row (count / rows each, the remainder to the rows with
// the smallest next entry) or across the layer. Ties prune the lower index first.
struct Target {
  const at::Tensor* fixed;
  int64_t count, n, m;
  bool per_row;
};

// Projects `current` (B + U): writes `keep`, `signed_split` (current on the support, -current off
// it: Z - U) and leaves the new dual (current off the support, zero on it) in `current`.
using ProjectStep =
    std::function<void(at::Tensor& current, at::Tensor& signed_split, at::Tensor& keep, const Target& target)>;

// One conjugate-gradient update for every row after `curved` = direction H (not yet masked): the
// step along `direction`, the new residual, preconditioned residual and direction, `product` the
// rows' residual . preconditioned. A row whose product has fallen to `solved_below` (its first
// product times kCgSolvedRatio, or float's smallest normal) is solved and takes no more steps:
// past that point fp32 rounding, and then denormal products, would send the step sizes anywhere.
constexpr double kCgSolvedRatio = 1e-12;
struct CgState {
  at::Tensor pruned, residual, direction, curved, product, solved_below;
  const at::Tensor& support;
  const at::Tensor& inverse_diag;
};
using CgStep = std::function<void(CgState& state)>;

void check_admm_args(const at::Tensor& weight, const at::Tensor& hessian, const at::Tensor& inverse,
                     const std::optional<at::Tensor>& keep, double sparsity, int64_t n, int64_t m, double rho,
                     int64_t iterations, int64_t prune_iterations, int64_t pcg_iterations);

std::tuple<at::Tensor, at::Tensor> admm_loop(const at::Tensor& weight, const at::Tensor& hessian,
                                             const at::Tensor& inverse, const std::optional<at::Tensor>& keep,
                                             double sparsity, int64_t n, int64_t m, bool per_row, double rho,
                                             int64_t iterations, int64_t prune_iterations, int64_t pcg_iterations,
                                             const ProjectStep& project, const CgStep& cg_step);

// The admm_solve kernel of a device with steps `project` and `cg_step` (the op's signature, for
// m.impl("admm_solve", &admm_solve<project, cg_step>)).
template <void (*project)(at::Tensor&, at::Tensor&, at::Tensor&, const Target&), void (*cg_step)(CgState&)>
std::tuple<at::Tensor, at::Tensor> admm_solve(const at::Tensor& weight, const at::Tensor& hessian,
                                              const at::Tensor& inverse, const std::optional<at::Tensor>& keep,
                                              double sparsity, int64_t n, int64_t m, bool per_row, double rho,
                                              int64_t iterations, int64_t prune_iterations, int64_t pcg_iterations) {
  return admm_loop(weight, hessian, inverse, keep, sparsity, n, m, per_row, rho, iterations, prune_iterations,
                   pcg_iterations, project, cg_step);
}

}  // namespace prunekit::admm
