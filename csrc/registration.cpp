// THE schema file: every prunekit op is defined here, once. Backends register impls next to their
// kernels (csrc/cpu, csrc/cuda); fakes live in python/prunekit/ops/_fake.py.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY(prunekit, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // Keep-mask of the n largest scores in every m consecutive entries of the last dim (ties: lower index).
  m.def("nm_mask(Tensor scores, int n, int m) -> Tensor", tags);
  // 2:4 sparse (rows, k) -> values (rows, k/2) and meta in torch's CUTLASS layout; >2 nonzeros per group is an error.
  m.def("compress_24(Tensor dense) -> (Tensor values, Tensor meta)", tags);
  // values + meta -> the dense (rows, k) matrix, exactly.
  m.def("decompress_24(Tensor values, Tensor meta) -> Tensor", tags);
  // Running layer Hessian: hessian <- hessian * n_seen / (n_seen + rows) + 2 / (n_seen + rows) * x^T x;
  // gemm "aten" (the device's BLAS) or "onednn" (oneDNN's linear for an fp32 CPU Hessian).
  m.def("hessian_accumulate_(Tensor(a!) hessian, Tensor x, int n_seen, str gemm=\"aten\") -> ()", tags);
  // Unstructured sparse (rows, k) -> packed nonzeros, bitmap (rows, ceil(k/16)) int16, row offsets (rows + 1).
  m.def("compress_bitmap(Tensor dense) -> (Tensor values, Tensor bitmap, Tensor row_offsets)", tags);
  // The bitmap format back to the dense (rows, cols) matrix, exactly.
  m.def("decompress_bitmap(Tensor values, Tensor bitmap, Tensor row_offsets, int cols) -> Tensor", tags);
  // y = x W^T + b with W in the bitmap format (fp32 or bf16 values, fp32 accumulation).
  m.def(
      "sparse_linear(Tensor x, Tensor values, Tensor bitmap, Tensor row_offsets, int in_features, Tensor? bias=None) "
      "-> Tensor",
      tags);
  // y = x W^T + b with W in CSR16 (values, int16 column indices read as uint16, row offsets): the batch-1 format at
  // high sparsity.
  m.def(
      "sparse_linear_csr16(Tensor x, Tensor values, Tensor col_indices, Tensor row_offsets, int in_features, Tensor? "
      "bias=None) -> Tensor",
      tags);
  // 1x1 convolution of NCHW x with a bitmap-format (out, in) weight; activation 0 none, 1 relu, 2 relu6.
  m.def(
      "sparse_conv1x1(Tensor x, Tensor values, Tensor bitmap, Tensor row_offsets, Tensor? bias=None, int activation=0) "
      "-> Tensor",
      tags);
  // SparseGPT blocked OBS solve in place on fp32 weight given the upper Cholesky factor of H^-1; returns the keep-mask.
  m.def("sparsegpt_solve_(Tensor(a!) weight, Tensor hinv, float sparsity, int n, int m, int blocksize) -> Tensor",
        tags);
  // ADMM reconstruction: min_B tr((B - W) H (B - W)^T) on a sparse support (fixed keep, or projected to the sparsity /
  // n:m along a cubic schedule), then conjugate gradients on it; inverse = (H + rho I)^-1. Returns (pruned, keep).
  m.def(
      "admm_solve(Tensor weight, Tensor hessian, Tensor inverse, Tensor? keep, float sparsity, int n, int m, "
      "bool per_row, float rho, int iterations, int prune_iterations, int pcg_iterations) -> (Tensor, Tensor)",
      tags);
  // y = x W^T + b with W in the 2:4 layout of compress_24 (fp16/bf16/fp32, fp32 accumulation); meta_sm90 optionally
  // precomputed by meta_24_to_sm90; kernel "auto" | "decode" | "cutlass_sm80" | "cutlass_sm90" | "dense".
  m.def(
      "sparse_linear_24(Tensor x, Tensor values, Tensor meta, int in_features, Tensor? bias=None, Tensor? "
      "meta_sm90=None, str kernel=\"auto\") -> Tensor",
      tags);
  // compress_24's int16 meta (fp16/bf16 values) -> the sm90a sparse GEMM's metadata, uint8 (rows, k padded), exactly.
  m.def("meta_24_to_sm90(Tensor meta) -> Tensor", tags);
  // Bitmap format -> the tiled layout CUDA's kernels read: tiles of 16 rows x 64 columns, each a bitmap-format block
  // with its run 8-aligned.
  m.def(
      "bitmap_to_tiles(Tensor values, Tensor bitmap, Tensor row_offsets, int cols) -> (Tensor tile_values, Tensor "
      "tile_bitmap, Tensor tile_offsets)",
      tags);
  // The tiled layout back to the bitmap format, exactly (every tile checked).
  m.def(
      "tiles_to_bitmap(Tensor tile_values, Tensor tile_bitmap, Tensor tile_offsets, int rows, int cols) -> (Tensor "
      "values, Tensor bitmap, Tensor row_offsets)",
      tags);
  // The tiled layout to the dense (rows, cols) matrix, exactly (every tile checked).
  m.def("decompress_tiles(Tensor tile_values, Tensor tile_bitmap, Tensor tile_offsets, int rows, int cols) -> Tensor",
        tags);
  // y = x W^T + b with W tiled (x in the values' dtype, fp32 sums); kernel: auto, simt, mma, gemm or dense.
  m.def(
      "sparse_linear_tiles(Tensor x, Tensor tile_values, Tensor tile_bitmap, Tensor tile_offsets, int out_features, "
      "int in_features, Tensor? bias=None, str kernel=\"auto\") -> Tensor",
      tags);
  // 1x1 convolution of NCHW x with a tiled (out, in) weight; activation 0 none, 1 relu, 2 relu6; kernel: auto, simt,
  // gemm or dense.
  m.def(
      "sparse_conv1x1_tiles(Tensor x, Tensor tile_values, Tensor tile_bitmap, Tensor tile_offsets, int out_channels, "
      "int in_channels, Tensor? bias=None, int activation=0, str kernel=\"auto\") -> Tensor",
      tags);
}

// The sparse layers' ops have derivatives for x and bias (autograd.cpp); the format ops have
// none: where an input requires grad, the output's backward raises "derivative for prunekit::<op>
// is not implemented" (torch's default for ops without one is a warning and a silent None
// gradient). The in-place ops (hessian_accumulate_, sparsegpt_solve_) work on calibration
// statistics and are left to torch's default.
TORCH_LIBRARY_IMPL(prunekit, Autograd, m) {
  for (const char* op : {"nm_mask", "compress_24", "decompress_24", "compress_bitmap", "decompress_bitmap",
                         "bitmap_to_tiles", "tiles_to_bitmap", "decompress_tiles", "meta_24_to_sm90"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}
