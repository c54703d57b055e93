// THE schema file: every prunekit op is defined here, once. Backends register impls next to their
// kernels (csrc/cpu, csrc/cuda); fakes live in python/prunekit/ops/_fake.py.
#include <torch/library.h>

TORCH_LIBRARY(prunekit, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  // Keep-mask of the n largest scores in every m consecutive entries of the last dim (ties: lower index).
  m.def("nm_mask(Tensor scores, int n, int m) -> Tensor", tags);
  // 2:4 sparse (rows, k) -> values (rows, k/2) and meta in torch's CUTLASS layout; >2 nonzeros per group is an error.
  m.def("compress_24(Tensor dense) -> (Tensor values, Tensor meta)", tags);
  // values + meta -> the dense (rows, k) matrix, exactly.
  m.def("decompress_24(Tensor values, Tensor meta) -> Tensor", tags);
  // Running layer Hessian: hessian <- hessian * n_seen / (n_seen + rows) + 2 / (n_seen + rows) * x^T x.
  m.def("hessian_accumulate_(Tensor(a!) hessian, Tensor x, int n_seen) -> ()", tags);
  // SparseGPT blocked OBS solve in place on fp32 weight given the upper Cholesky factor of H^-1; returns the keep-mask.
  m.def("sparsegpt_solve_(Tensor(a!) weight, Tensor hinv, float sparsity, int n, int m, int blocksize) -> Tensor", tags);
}
