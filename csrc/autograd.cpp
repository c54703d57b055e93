// Autograd for the sparse layers' ops, backend-agnostic (the backward runs torch ops and prunekit's
// decompress ops on the tensors' device): gradients for x and bias, so that a model with frozen
// sparse layers still trains the layers around them (adapters, a head, the dense layers below).
// The compressed weight gets none: its backward raises (prune dense, masked weights to train).
// The other forward ops raise on backward through torch's not-implemented fallback (registration.cpp).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace prunekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

void refuse_weight_gradient(AutogradContext* ctx, const char* op) {
  TORCH_CHECK(!ctx->needs_input_grad(1), "prunekit.", op,
              ": no gradient for the compressed weight's 'values' (sparse layers are for inference; ",
              "prune a dense, masked weight to train it)");
}

// needs_input_grad counts tensor inputs only (x, values, the two index tensors, then bias when
// given): bias is input 4 of every op here.
constexpr size_t kBiasInput = 4;

void save_bias(AutogradContext* ctx, const std::optional<at::Tensor>& bias) {
  ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
  ctx->saved_data["bias_dtype"] =
      static_cast<int64_t>(ctx->saved_data["has_bias"].toBool() ? bias->scalar_type() : at::kFloat);
}

// grad of bias: the output gradient (channels along `channel_dim`) summed over all other dims in
// fp32 (a bf16 sum loses digits), in bias's dtype.
at::Tensor bias_gradient(AutogradContext* ctx, const at::Tensor& grad_pre, int64_t channel_dim,
                         size_t bias_input = kBiasInput) {
  if (!ctx->saved_data["has_bias"].toBool() || !ctx->needs_input_grad(bias_input)) return {};
  const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt());
  const at::Tensor channels_last = grad_pre.movedim(channel_dim, -1);
  return channels_last.reshape_symint({-1, channels_last.sym_size(-1)}).sum(0, false, at::kFloat).to(dtype);
}

using LinearSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                   const std::optional<at::Tensor>&);
using Conv1x1Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const std::optional<at::Tensor>&, int64_t);

// The op's backend kernel: a redispatch below the Autograd key.
template <typename Signature, typename... Args>
at::Tensor call_below_autograd(const c10::TypedOperatorHandle<Signature>& op, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(args...);
}

// Each op found once (one static per format).
template <typename Format>
const c10::TypedOperatorHandle<LinearSignature>& linear_op() {
  static const auto handle = find_op<LinearSignature>(Format::kOp);
  return handle;
}

const c10::TypedOperatorHandle<Conv1x1Signature>& conv1x1_op() {
  static const auto handle = find_op<Conv1x1Signature>("prunekit::sparse_conv1x1");
  return handle;
}

// x (..., k) -> y (..., rows) = x W^T + b: grad_x = grad_y W (fp32 products, x's dtype).
at::Tensor linear_input_gradient(const at::Tensor& grad_y, const at::Tensor& dense_weight, at::ScalarType x_dtype) {
  return grad_y.to(at::kFloat).matmul(dense_weight.to(at::kFloat)).to(x_dtype);
}

void save_linear(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                 int64_t in_features) {
  ctx->saved_data["in_features"] = in_features;
  ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
  save_bias(ctx, bias);
}

using DecompressSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

// The two linear formats: the op, and the dense weight from the saved (values, index, row_offsets).
struct BitmapLinear {
  static constexpr const char* kOp = "prunekit::sparse_linear";
  static constexpr const char* kName = "sparse_linear";
  static at::Tensor dense_weight(const variable_list& saved, int64_t k) {
    static const auto decompress = find_op<DecompressSignature>("prunekit::decompress_bitmap");
    return decompress.call(saved[0], saved[1], saved[2], k);
  }
};

struct Csr16Linear {
  static constexpr const char* kOp = "prunekit::sparse_linear_csr16";
  static constexpr const char* kName = "sparse_linear_csr16";
  // A repeated column adds up, as in the forward's products. Sizes as SymInts: under
  // torch.compile with dynamic shapes they are symbols.
  static at::Tensor dense_weight(const variable_list& saved, int64_t k) {
    const at::Tensor &values = saved[0], &col_indices = saved[1], &row_offsets = saved[2];
    const c10::SymInt rows = row_offsets.sym_size(0) - 1;
    const at::Tensor row_of_value = at::repeat_interleave(at::arange(rows, row_offsets.options()), row_offsets.diff());
    at::Tensor dense = at::zeros_symint({rows, k}, values.options().dtype(at::kFloat));
    dense.index_put_({row_of_value, col_indices.to(at::kLong).bitwise_and(0xFFFF)}, values.to(at::kFloat),
                     /*accumulate=*/true);
    return dense;
  }
};

template <typename Format>
class SparseLinearFunction : public torch::autograd::Function<SparseLinearFunction<Format>> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values,
                            const at::Tensor& index, const at::Tensor& row_offsets, int64_t in_features,
                            const std::optional<at::Tensor>& bias) {
    ctx->save_for_backward({values, index, row_offsets});
    save_linear(ctx, x, bias, in_features);
    return call_below_autograd(linear_op<Format>(), x, values, index, row_offsets, in_features, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_weight_gradient(ctx, Format::kName);
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      const at::Tensor dense = Format::dense_weight(ctx->get_saved_variables(), ctx->saved_data["in_features"].toInt());
      grad_x = linear_input_gradient(grads[0], dense, static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
    }
    // One gradient per forward argument: x, values, index, row_offsets, in_features, bias.
    return {grad_x, {}, {}, {}, {}, bias_gradient(ctx, grads[0], -1)};
  }
};

class SparseConv1x1Function : public torch::autograd::Function<SparseConv1x1Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values,
                            const at::Tensor& bitmap, const at::Tensor& row_offsets,
                            const std::optional<at::Tensor>& bias, int64_t activation) {
    at::Tensor y = call_below_autograd(conv1x1_op(), x, values, bitmap, row_offsets, bias, activation);
    // The activation's derivative is read off the output (relu: y > 0; relu6: 0 < y < 6).
    ctx->save_for_backward({values, bitmap, row_offsets, activation == 0 ? at::Tensor() : y});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["channels"] = x.sym_size(1).guard_int(__FILE__, __LINE__);  // decompress_bitmap's int
    save_bias(ctx, bias);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_weight_gradient(ctx, "sparse_conv1x1");
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_pre = grads[0];
    const int64_t activation = ctx->saved_data["activation"].toInt();
    // As torch's: relu passes the gradient where the output is not <= 0 (NaN included), relu6
    // where it is strictly between 0 and 6.
    if (activation == 1) grad_pre = grad_pre.mul(saved[3].le(0).logical_not());
    if (activation == 2) grad_pre = grad_pre.mul(saved[3].gt(0).logical_and(saved[3].lt(6)));
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      const at::Tensor dense = BitmapLinear::dense_weight(saved, ctx->saved_data["channels"].toInt());
      // grad_x[n, c, p] = sum_o W[o, c] grad_pre[n, o, p]
      const auto shape = grad_pre.sym_sizes();
      grad_x = dense.to(at::kFloat)
                   .t()
                   .matmul(grad_pre.reshape_symint({shape[0], shape[1], shape[2] * shape[3]}))
                   .reshape_symint({shape[0], dense.sym_size(1), shape[2], shape[3]});
    }
    // One gradient per forward argument: x, values, bitmap, row_offsets, bias, activation.
    return {grad_x, {}, {}, {}, bias_gradient(ctx, grad_pre, 1), {}};
  }
};

// ---- the tiled bitmap layout's ops (CUDA's layout of unstructured weights) ----
using TilesLinearSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        int64_t, int64_t, const std::optional<at::Tensor>&, c10::string_view);
using TilesConvSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      int64_t, int64_t, const std::optional<at::Tensor>&, int64_t, c10::string_view);
using DecompressTilesSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t);

// The dense weight from the saved (tile_values, tile_bitmap, tile_offsets).
at::Tensor tiles_dense_weight(const variable_list& saved, int64_t rows, int64_t cols) {
  static const auto decompress = find_op<DecompressTilesSignature>("prunekit::decompress_tiles");
  return decompress.call(saved[0], saved[1], saved[2], rows, cols);
}

void save_tiles(AutogradContext* ctx, const at::Tensor& tile_values, const at::Tensor& tile_bitmap,
                const at::Tensor& tile_offsets, int64_t rows, int64_t cols) {
  ctx->save_for_backward({tile_values, tile_bitmap, tile_offsets});
  ctx->saved_data["rows"] = rows;
  ctx->saved_data["cols"] = cols;
}

class TilesLinearFunction : public torch::autograd::Function<TilesLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& tile_values,
                            const at::Tensor& tile_bitmap, const at::Tensor& tile_offsets, int64_t out_features,
                            int64_t in_features, const std::optional<at::Tensor>& bias, c10::string_view kernel) {
    static const auto op = find_op<TilesLinearSignature>("prunekit::sparse_linear_tiles");
    save_tiles(ctx, tile_values, tile_bitmap, tile_offsets, out_features, in_features);
    save_linear(ctx, x, bias, in_features);
    return call_below_autograd(op, x, tile_values, tile_bitmap, tile_offsets, out_features, in_features, bias, kernel);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_weight_gradient(ctx, "sparse_linear_tiles");
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      const at::Tensor dense = tiles_dense_weight(ctx->get_saved_variables(), ctx->saved_data["rows"].toInt(),
                                                  ctx->saved_data["cols"].toInt());
      grad_x = linear_input_gradient(grads[0], dense, static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
    }
    // x, tile_values, tile_bitmap, tile_offsets, out_features, in_features, bias, kernel.
    return {grad_x, {}, {}, {}, {}, {}, bias_gradient(ctx, grads[0], -1), {}};
  }
};

class TilesConv1x1Function : public torch::autograd::Function<TilesConv1x1Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& tile_values,
                            const at::Tensor& tile_bitmap, const at::Tensor& tile_offsets, int64_t out_channels,
                            int64_t in_channels, const std::optional<at::Tensor>& bias, int64_t activation,
                            c10::string_view kernel) {
    static const auto op = find_op<TilesConvSignature>("prunekit::sparse_conv1x1_tiles");
    at::Tensor y = call_below_autograd(op, x, tile_values, tile_bitmap, tile_offsets, out_channels, in_channels, bias,
                                       activation, kernel);
    ctx->save_for_backward({tile_values, tile_bitmap, tile_offsets, activation == 0 ? at::Tensor() : y});
    ctx->saved_data["rows"] = out_channels;
    ctx->saved_data["cols"] = in_channels;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    save_bias(ctx, bias);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_weight_gradient(ctx, "sparse_conv1x1_tiles");
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_pre = grads[0];
    const int64_t activation = ctx->saved_data["activation"].toInt();
    if (activation == 1) grad_pre = grad_pre.mul(saved[3].le(0).logical_not());
    if (activation == 2) grad_pre = grad_pre.mul(saved[3].gt(0).logical_and(saved[3].lt(6)));
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      const at::Tensor dense =
          tiles_dense_weight(saved, ctx->saved_data["rows"].toInt(), ctx->saved_data["cols"].toInt());
      const auto shape = grad_pre.sym_sizes();
      grad_x = dense.to(at::kFloat)
                   .t()
                   .matmul(grad_pre.to(at::kFloat).reshape_symint({shape[0], shape[1], shape[2] * shape[3]}))
                   .reshape_symint({shape[0], dense.sym_size(1), shape[2], shape[3]})
                   .to(static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
    }
    // x, tile_values, tile_bitmap, tile_offsets, out_channels, in_channels, bias, activation, kernel.
    return {grad_x, {}, {}, {}, {}, {}, bias_gradient(ctx, grad_pre, 1), {}, {}};
  }
};

// Forward-mode AD (torch.func.jvp, forward_ad) has no formula here: an error, not a zero tangent.
void refuse_forward_ad(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(!t->defined() || !t->_fw_grad(/*level=*/0).defined(), "prunekit.", op,
                ": forward-mode AD is not supported (reverse mode is, for x and bias)");
  }
}

// Whether the call records a backward: the autograd Function's bookkeeping (a node allocated
// on every call) is skipped when it would not.
bool records_gradient(std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

const at::Tensor& or_undefined(const std::optional<at::Tensor>& t) {
  static const at::Tensor undefined;
  return t ? *t : undefined;
}

template <typename Format>
at::Tensor sparse_linear_autograd(const at::Tensor& x, const at::Tensor& values, const at::Tensor& index,
                                  const at::Tensor& row_offsets, int64_t in_features,
                                  const std::optional<at::Tensor>& bias) {
  refuse_forward_ad(Format::kName, {&x, &values, &or_undefined(bias)});
  if (records_gradient({&x, &values, &or_undefined(bias)})) {
    return SparseLinearFunction<Format>::apply(x, values, index, row_offsets, in_features, bias);
  }
  return call_below_autograd(linear_op<Format>(), x, values, index, row_offsets, in_features, bias);
}

at::Tensor sparse_conv1x1_autograd(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmap,
                                   const at::Tensor& row_offsets, const std::optional<at::Tensor>& bias,
                                   int64_t activation) {
  refuse_forward_ad("sparse_conv1x1", {&x, &values, &or_undefined(bias)});
  if (records_gradient({&x, &values, &or_undefined(bias)})) {
    return SparseConv1x1Function::apply(x, values, bitmap, row_offsets, bias, activation);
  }
  return call_below_autograd(conv1x1_op(), x, values, bitmap, row_offsets, bias, activation);
}

at::Tensor sparse_linear_tiles_autograd(const at::Tensor& x, const at::Tensor& tile_values,
                                        const at::Tensor& tile_bitmap, const at::Tensor& tile_offsets,
                                        int64_t out_features, int64_t in_features,
                                        const std::optional<at::Tensor>& bias, c10::string_view kernel) {
  refuse_forward_ad("sparse_linear_tiles", {&x, &tile_values, &or_undefined(bias)});
  if (records_gradient({&x, &tile_values, &or_undefined(bias)})) {
    return TilesLinearFunction::apply(x, tile_values, tile_bitmap, tile_offsets, out_features, in_features, bias,
                                      kernel);
  }
  static const auto op = find_op<TilesLinearSignature>("prunekit::sparse_linear_tiles");
  return call_below_autograd(op, x, tile_values, tile_bitmap, tile_offsets, out_features, in_features, bias, kernel);
}

at::Tensor sparse_conv1x1_tiles_autograd(const at::Tensor& x, const at::Tensor& tile_values,
                                         const at::Tensor& tile_bitmap, const at::Tensor& tile_offsets,
                                         int64_t out_channels, int64_t in_channels,
                                         const std::optional<at::Tensor>& bias, int64_t activation,
                                         c10::string_view kernel) {
  refuse_forward_ad("sparse_conv1x1_tiles", {&x, &tile_values, &or_undefined(bias)});
  if (records_gradient({&x, &tile_values, &or_undefined(bias)})) {
    return TilesConv1x1Function::apply(x, tile_values, tile_bitmap, tile_offsets, out_channels, in_channels, bias,
                                       activation, kernel);
  }
  static const auto op = find_op<TilesConvSignature>("prunekit::sparse_conv1x1_tiles");
  return call_below_autograd(op, x, tile_values, tile_bitmap, tile_offsets, out_channels, in_channels, bias, activation,
                             kernel);
}

using Linear24Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                     c10::string_view);

const c10::TypedOperatorHandle<Linear24Signature>& linear24_op() {
  static const auto handle = find_op<Linear24Signature>("prunekit::sparse_linear_24");
  return handle;
}

// sparse_linear_24 (x, values, meta, in_features, bias, meta_sm90, kernel): the
// weight from decompress_24; bias is tensor input 3 when given (meta_sm90 after
// it).
class SparseLinear24Function : public torch::autograd::Function<SparseLinear24Function> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                            int64_t in_features, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& meta_sm90, c10::string_view kernel) {
    ctx->save_for_backward({values, meta});
    save_linear(ctx, x, bias, in_features);
    return call_below_autograd(linear24_op(), x, values, meta, in_features, bias, meta_sm90, kernel);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_weight_gradient(ctx, "sparse_linear_24");
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      static const auto decompress =
          find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("prunekit::decompress_24");
      const auto saved = ctx->get_saved_variables();
      grad_x = linear_input_gradient(grads[0], decompress.call(saved[0], saved[1]),
                                     static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
    }
    // One gradient per forward argument: x, values, meta, in_features, bias,
    // meta_sm90, kernel.
    return {grad_x, {}, {}, {}, bias_gradient(ctx, grads[0], -1, kLinear24BiasInput), {}, {}};
  }

 private:
  static constexpr size_t kLinear24BiasInput = 3;
};

at::Tensor sparse_linear_24_autograd(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                     int64_t in_features, const std::optional<at::Tensor>& bias,
                                     const std::optional<at::Tensor>& meta_sm90, c10::string_view kernel) {
  refuse_forward_ad("sparse_linear_24", {&x, &values, &or_undefined(bias)});
  if (records_gradient({&x, &values, &or_undefined(bias)})) {
    return SparseLinear24Function::apply(x, values, meta, in_features, bias, meta_sm90, kernel);
  }
  return call_below_autograd(linear24_op(), x, values, meta, in_features, bias, meta_sm90, kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, Autograd, m) {
  m.impl("sparse_linear_tiles", &sparse_linear_tiles_autograd);
  m.impl("sparse_conv1x1_tiles", &sparse_conv1x1_tiles_autograd);
  m.impl("sparse_linear", &sparse_linear_autograd<BitmapLinear>);
  m.impl("sparse_linear_csr16", &sparse_linear_autograd<Csr16Linear>);
  m.impl("sparse_conv1x1", &sparse_conv1x1_autograd);
  m.impl("sparse_linear_24", &sparse_linear_24_autograd);
}

}  // namespace prunekit
