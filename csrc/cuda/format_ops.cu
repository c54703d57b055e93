// CUDA impls of the N:M mask and 2:4 format ops: the same checks as the CPU glue, then the
// torch-free kernels of csrc/core/cuda on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "prunekit/cuda_entry.h"
#include "prunekit/format24_checks.h"
#include "prunekit/kernels_cuda.h"
#include "prunekit/nm_mask_checks.h"

namespace prunekit {
namespace {

// A device flag the kernels lower to the flat index of the first bad entry.
at::Tensor new_error_index(const at::Tensor& like) {
  return at::full({1}, -1, like.options().dtype(at::kLong));  // all bits set == cuda::kNoError
}

// Reads the flag back (a device sync); returns -1 when no error was found.
int64_t read_error_index(const at::Tensor& error_index) {
  const auto value = static_cast<unsigned long long>(error_index.item<int64_t>());
  return value == cuda::kNoError ? -1 : int64_t(value);
}

unsigned long long* error_ptr(at::Tensor& error_index) {
  return reinterpret_cast<unsigned long long*>(error_index.data_ptr<int64_t>());
}

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, "prunekit.", op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

at::Tensor nm_mask_cuda(const at::Tensor& scores, int64_t n, int64_t m) {
  check_nm_mask_args(scores, n, m);
  const c10::cuda::CUDAGuard guard(scores.device());
  check_cuda_kernels_built_for_current_device("nm_mask");
  const int64_t k = scores.size(-1), rows = scores.numel() / k;
  at::Tensor keep = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  at::Tensor error_index = new_error_index(scores);
  check_launch(cuda::nm_mask_select(scores.data_ptr(), score_type(scores.scalar_type()), keep.data_ptr<bool>(), rows, k,
                                    n, m, error_ptr(error_index), c10::cuda::getCurrentCUDAStream()),
               "nm_mask");
  const int64_t bad = read_error_index(error_index);
  TORCH_CHECK_VALUE(bad < 0, "prunekit.nm_mask: argument 'scores' must be finite, but entry ", bad % k, " of row ",
                    bad / k, " (rows flattened over leading dims) is ",
                    scores.reshape({rows, k})[bad / k][bad % k].item<double>());
  return keep;
}

std::tuple<at::Tensor, at::Tensor> compress_24_cuda(const at::Tensor& dense) {
  const auto shapes = check_compress_24_args(dense);
  const c10::cuda::CUDAGuard guard(dense.device());
  check_cuda_kernels_built_for_current_device("compress_24");
  at::Tensor values = at::empty(shapes.values, dense.options());
  at::Tensor meta = at::empty(shapes.meta, dense.options().dtype(shapes.meta_dtype));
  at::Tensor error_index = new_error_index(dense);
  const int64_t rows = dense.size(0), k = dense.size(1);
  check_launch(
      cuda::format24_compress(dense.data_ptr(), values.data_ptr(), meta.data_ptr(), rows, k, int(dense.element_size()),
                              dense.is_floating_point(), error_ptr(error_index), c10::cuda::getCurrentCUDAStream()),
      "compress_24");
  const int64_t bad = read_error_index(error_index);
  TORCH_CHECK_VALUE(bad < 0, too_many_nonzeros_message(bad / k, bad % k));
  return {values, meta};
}

at::Tensor decompress_24_cuda(const at::Tensor& values, const at::Tensor& meta) {
  const auto dense_shape = check_decompress_24_args(values, meta);
  const c10::cuda::CUDAGuard guard(values.device());
  check_cuda_kernels_built_for_current_device("decompress_24");
  at::Tensor dense = at::empty(dense_shape, values.options());
  at::Tensor error_index = new_error_index(values);
  const int64_t rows = dense_shape[0], k = dense_shape[1];
  check_launch(
      cuda::format24_decompress(values.data_ptr(), meta.data_ptr(), dense.data_ptr(), rows, k,
                                int(values.element_size()), error_ptr(error_index), c10::cuda::getCurrentCUDAStream()),
      "decompress_24");
  const int64_t bad = read_error_index(error_index);
  TORCH_CHECK_VALUE(bad < 0, corrupt_meta_message(bad / k, bad % k));
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CUDA, m) {
  m.impl("nm_mask", &nm_mask_cuda);
  m.impl("compress_24", &compress_24_cuda);
  m.impl("decompress_24", &decompress_24_cuda);
}

}  // namespace prunekit
