// ADMM reconstruction of a sparse weight (Boza 2024; ALPS, Meng et al. 2024), for every device
// from ATen ops: min_B tr((B - W) H (B - W)^T) over B on a sparse support. The scaled ADMM
// iterates Z = P(B + U), U <- B + U - Z, B = (W H + rho (Z - U)) (H + rho I)^-1. Since U then
// equals (B + U) on the pruned entries and zero on the kept ones, Z - U is (B + U) with the
// pruned entries negated: one fused select-and-sign pass and one GEMM per step, with
// T = W H (H + rho I)^-1 computed once. A least-squares solve on the final support by
// preconditioned conjugate gradients follows (each row its own system; Jacobi preconditioner).
// The loop is shared (admm_glue.h); this file's ATen steps are the CompositeExplicitAutograd
// kernel every device without a fused one runs (CUDA today); CPU fuses its steps (csrc/cpu).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>

#include "prunekit/admm_glue.h"
#include "prunekit/check.h"

namespace prunekit::admm {
namespace {

constexpr const char* kOp = "admm_solve";
constexpr int64_t kMaxIterations = 10000;

// Pruned-mask of the `count` smallest scores of every row (scores (rows, k), count in [1, k]): the
// count-th smallest by selection (no sort), the smaller ones, and the equal ones by lower index.
at::Tensor smallest_per_row(const at::Tensor& scores, int64_t count) {
  const at::Tensor threshold = std::get<0>(at::kthvalue(scores, count, /*dim=*/1, /*keepdim=*/true));
  const at::Tensor below = scores < threshold;
  const at::Tensor ties = scores == threshold;
  const at::Tensor room = count - below.sum(1, /*keepdim=*/true);
  return below.logical_or_(ties.logical_and(ties.cumsum(1) <= room));
}

// Keep-mask pruning exactly `count` of the smallest scores (ties: lower index): across the layer, or
// per row with count / rows each and the remainder to the rows whose next score is smallest.
at::Tensor keep_smallest_pruned(const at::Tensor& scores, int64_t count, bool per_row) {
  const int64_t rows = scores.size(0);
  if (count <= 0) return at::ones(scores.sizes(), scores.options().dtype(at::kBool));
  if (!per_row) return smallest_per_row(scores.reshape({1, -1}), count).view(scores.sizes()).logical_not_();
  const int64_t per = count / rows, extra = count % rows;
  at::Tensor pruned =
      per > 0 ? smallest_per_row(scores, per) : at::zeros(scores.sizes(), scores.options().dtype(at::kBool));
  if (extra > 0) {
    // The next score of each row: the smallest not yet pruned, the first of equal ones.
    const auto next = at::min(at::where(pruned, std::numeric_limits<float>::infinity(), scores), /*dim=*/1);
    const at::Tensor chosen =
        std::get<1>(at::sort(std::get<0>(next), /*stable=*/true, /*dim=*/0, false)).narrow(0, 0, extra);
    pruned.index_put_({chosen, std::get<1>(next).index_select(0, chosen)}, true);
  }
  return pruned.logical_not_();
}

// Keep-mask of the n largest of every m consecutive scores (ties: lower index): the nm_mask op.
at::Tensor keep_nm(const at::Tensor& scores, int64_t n, int64_t m) {
  static const auto nm_mask = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("prunekit::nm_mask", "")
                                  .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  return nm_mask.call(scores.contiguous(), n, m);
}

// The ATen projection (ProjectStep).
void aten_project(at::Tensor& current, at::Tensor& signed_split, at::Tensor& keep, const Target& target) {
  if (target.fixed != nullptr) {
    keep = *target.fixed;
  } else if (target.m > 0) {
    keep = keep_nm(current.abs(), target.n, target.m);
  } else {
    keep = keep_smallest_pruned(current.abs(), target.count, target.per_row);
  }
  signed_split = at::where(keep, current, current.neg());
  current.masked_fill_(keep, 0.0);
}

// The ATen conjugate-gradient update (CgStep).
void aten_cg_step(CgState& c) {
  c.curved.mul_(c.support);
  const at::Tensor curvature = (c.direction * c.curved).sum(1);
  // A solved row (its product down to solved_below) is left as it is; a row without curvature
  // along its direction (a zero direction) takes no step but refreshes its direction.
  const at::Tensor active = c.product > c.solved_below;
  const at::Tensor stepping = active.logical_and(curvature > 0);
  const at::Tensor alpha = at::where(stepping, c.product / at::where(stepping, curvature, 1.0), 0.0);
  c.pruned.addcmul_(alpha.unsqueeze(1), c.direction);
  c.residual.addcmul_(alpha.unsqueeze(1), c.curved, -1.0);
  const at::Tensor preconditioned = c.residual * c.inverse_diag;
  const at::Tensor next_product = at::where(active, (c.residual * preconditioned).sum(1), c.product);
  const at::Tensor beta = at::where(active, next_product / at::where(active, c.product, 1.0), 0.0);
  c.direction = at::where(active.unsqueeze(1), preconditioned.addcmul_(beta.unsqueeze(1), c.direction), c.direction);
  c.product = next_product;
}

}  // namespace

void check_admm_args(const at::Tensor& weight, const at::Tensor& hessian, const at::Tensor& inverse,
                     const std::optional<at::Tensor>& keep, double sparsity, int64_t n, int64_t m, double rho,
                     int64_t iterations, int64_t prune_iterations, int64_t pcg_iterations) {
  check_dtype(weight, kOp, "weight", {at::kFloat});
  check_dim(weight, kOp, "weight", 2);
  check_nonempty(weight, kOp, "weight");
  const int64_t cols = weight.size(1);
  for (const auto& [tensor, name] : {std::pair<const at::Tensor&, const char*>{hessian, "hessian"},
                                     std::pair<const at::Tensor&, const char*>{inverse, "inverse"}}) {
    check_dtype(tensor, kOp, name, {at::kFloat});
    check_dim(tensor, kOp, name, 2);
    TORCH_CHECK_VALUE(tensor.size(0) == cols && tensor.size(1) == cols, "prunekit.", kOp, ": argument '", name,
                      "' must be (", cols, ", ", cols, ") to match weight ", weight.sizes(), ", but got ",
                      tensor.sizes());
    check_same_device(weight, "weight", tensor, name, kOp);
  }
  if (keep.has_value()) {
    check_dtype(*keep, kOp, "keep", {at::kBool});
    TORCH_CHECK_VALUE(keep->sizes() == weight.sizes(), "prunekit.", kOp, ": argument 'keep' must have the weight's ",
                      "shape ", weight.sizes(), ", but got ", keep->sizes());
    check_same_device(weight, "weight", *keep, "keep", kOp);
  }
  if (m > 0) {
    TORCH_CHECK_VALUE(n >= 0 && n <= m, "prunekit.", kOp, ": argument 'n' must be in [0, m=", m, "], but got ", n);
    check_multiple(cols, m, kOp, "the number of columns of 'weight'");
  } else {
    TORCH_CHECK_VALUE(m == 0 && n == 0, "prunekit.", kOp, ": arguments 'n' and 'm' must be 0 (unstructured) or ",
                      "0 <= n <= m with m >= 1, but got n=", n, ", m=", m);
    TORCH_CHECK_VALUE(sparsity >= 0.0 && sparsity < 1.0, "prunekit.", kOp,
                      ": argument 'sparsity' must be in [0, 1), but got ", sparsity);
  }
  TORCH_CHECK_VALUE(std::isfinite(rho) && rho > 0.0, "prunekit.", kOp,
                    ": argument 'rho' must be a finite number > 0, but got ", rho);
  for (const auto& [value, name] : {std::pair<int64_t, const char*>{iterations, "iterations"},
                                    std::pair<int64_t, const char*>{prune_iterations, "prune_iterations"},
                                    std::pair<int64_t, const char*>{pcg_iterations, "pcg_iterations"}}) {
    TORCH_CHECK_VALUE(value >= 0 && value <= kMaxIterations, "prunekit.", kOp, ": argument '", name,
                      "' must be in [0, ", kMaxIterations, "], but got ", value);
  }
  TORCH_CHECK_VALUE(prune_iterations <= iterations, "prunekit.", kOp,
                    ": argument 'prune_iterations' must be at most iterations (", iterations, "), but got ",
                    prune_iterations);
}

std::tuple<at::Tensor, at::Tensor> admm_loop(const at::Tensor& weight, const at::Tensor& hessian,
                                             const at::Tensor& inverse, const std::optional<at::Tensor>& keep,
                                             double sparsity, int64_t n, int64_t m, bool per_row, double rho,
                                             int64_t iterations, int64_t prune_iterations, int64_t pcg_iterations,
                                             const ProjectStep& project, const CgStep& cg_step) {
  check_admm_args(weight, hessian, inverse, keep, sparsity, n, m, rho, iterations, prune_iterations, pcg_iterations);
  TORCH_CHECK_VALUE(all_finite(weight) && all_finite(hessian) && all_finite(inverse), "prunekit.", kOp,
                    ": arguments 'weight', 'hessian' and 'inverse' must be finite, but one holds "
                    "NaN or Inf");
  const int64_t numel = weight.numel();
  auto target_at = [&](int64_t step) {
    double level = sparsity;
    if (step < prune_iterations) {  // the cubic schedule
      const double remaining = 1.0 - double(step + 1) / double(prune_iterations);
      level = sparsity * (1.0 - remaining * remaining * remaining);
    }
    const int64_t count = std::min<int64_t>(numel, std::llround(level * double(numel)));
    return Target{keep.has_value() ? &*keep : nullptr, count, n, m, per_row};
  };
  const at::Tensor target = at::mm(weight, hessian);
  const at::Tensor base = at::mm(target, inverse);  // W H (H + rho I)^-1
  at::Tensor support, signed_split;
  at::Tensor current = weight.contiguous().clone();
  at::Tensor pruned;
  if (iterations == 0) {
    project(current, signed_split, support, target_at(prune_iterations));
    pruned = weight * support;
  }
  for (int64_t step = 0; step < iterations; ++step) {
    // current holds B + U (U is zero on entry); Z - U is it with the pruned entries negated.
    project(current, signed_split, support, target_at(step));
    if (step + 1 == iterations) pruned = signed_split * support;
    current.add_(base).addmm_(signed_split, inverse, 1.0, rho);
  }
  if (pcg_iterations > 0) {
    const at::Tensor on_support = support.to(weight.scalar_type());
    const at::Tensor inverse_diag = hessian.diagonal().reciprocal().unsqueeze(0).contiguous();
    at::Tensor residual = (target - at::mm(pruned, hessian)).mul_(on_support);
    at::Tensor direction = residual * inverse_diag;
    const at::Tensor product = (residual * direction).sum(1);
    const at::Tensor solved_below = (product * kCgSolvedRatio).clamp_min_(double(std::numeric_limits<float>::min()));
    CgState state{pruned, residual, direction, at::Tensor(), product, solved_below, on_support, inverse_diag};
    for (int64_t step = 0; step < pcg_iterations; ++step) {
      state.curved = at::mm(state.direction, hessian);
      cg_step(state);
    }
    pruned = state.pruned.mul_(on_support);
  }
  // A fixed support is the caller's tensor: the output must not alias it.
  return {pruned, keep.has_value() ? support.clone() : support};
}

TORCH_LIBRARY_IMPL(prunekit, CompositeExplicitAutograd, m) {
  m.impl("admm_solve", &admm_solve<aten_project, aten_cg_step>);
}

}  // namespace prunekit::admm
