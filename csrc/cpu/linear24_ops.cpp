// CPU impls of sparse_linear_24 (W decompressed, then a dense fp32 product: the
// op's reference semantics, so that it runs and is tested on CPU; the CPU's
// fast 2:4 path is sparse_linear over the bitmap view) and meta_24_to_sm90 (the
// exact metadata conversion, word by word).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "prunekit/format24_sm90.h"
#include "prunekit/linear24_checks.h"

namespace prunekit {
namespace {

at::Tensor sparse_linear_24_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                int64_t in_features, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& meta_sm90, c10::string_view kernel) {
  const auto shape = check_sparse_linear_24_args(x, values, meta, in_features, bias, meta_sm90);
  const auto choice = parse_linear24_kernel(kernel);
  TORCH_CHECK_VALUE(choice == Linear24Kernel::kAuto || choice == Linear24Kernel::kDense,
                    "prunekit.sparse_linear_24: kernel '", kernel, "' runs on CUDA; on CPU the op multiplies the ",
                    "decompressed weight ('auto' or 'dense')");
  const at::Tensor x2d = x.reshape({shape.batch, shape.k});
  return linear24_dense(x2d, values, meta, bias).reshape(shape.out);
}

at::Tensor meta_24_to_sm90_cpu(const at::Tensor& meta) {
  check_meta_24_to_sm90_args(meta);
  const int64_t rows = meta.size(0), k = 16 * meta.size(1);
  at::Tensor out = at::empty(sm90_meta_shape(rows, k), meta.options().dtype(at::kByte));
  const auto* in = reinterpret_cast<const uint16_t*>(meta.data_ptr<int16_t>());
  auto* words = reinterpret_cast<uint16_t*>(out.data_ptr<uint8_t>());
  at::parallel_for(0, format24::sm90::word_count(rows, k), 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) format24::sm90::convert_word(in, words, i, rows, k);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) {
  m.impl("sparse_linear_24", &sparse_linear_24_cpu);
  m.impl("meta_24_to_sm90", &meta_24_to_sm90_cpu);
}

}  // namespace prunekit
