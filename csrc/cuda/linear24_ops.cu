// CUDA impls of sparse_linear_24 and meta_24_to_sm90: the shared checks, then
// by batch and GPU (kernel "auto"; the other names force one path):
//   1-16 rows of x          "decode": linear24_decode (any GPU from sm_80; no
//   padding of x) more rows, sm_90 + a    "cutlass_sm90": CUTLASS 3.x (metadata
//   converted here unless meta_sm90
//                           is given)
//   more rows, sm_8x        "cutlass_sm80": CUTLASS 2.x on torch's metadata as
//   is (x padded to 8
//                           rows, y^T transposed into y); in_features % 64 != 0
//                           goes dense
//   fp32 values             "dense": decompress_24, then cuBLAS, as on CPU
// All on the current stream; inputs copied only where a kernel needs 16-byte
// alignment.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "prunekit/cuda_entry.h"
#include "prunekit/linear24_checks.h"
#include "prunekit/linear24_cuda.h"

#ifndef PRUNEKIT_CUDA_ARCHS
#error "PRUNEKIT_CUDA_ARCHS must be defined by the build"
#endif

namespace prunekit {
namespace {

constexpr const char* kOp = "sparse_linear_24";

// Whether this build compiled the sm_90a kernels (an "a" cubin runs on exactly
// that arch).
bool built_sm90a() {
  const std::string archs = PRUNEKIT_CUDA_ARCHS;
  return archs.find("90a") != std::string::npos;
}

void check_launch(cudaError_t status, const char* op, const char* kernel) {
  TORCH_CHECK(status == cudaSuccess, "prunekit.", op, ": ", kernel, " failed: ", cudaGetErrorString(status));
}

// The current GPU's compute capability and multiprocessor count, found (and the
// build's archs checked against it: check_cuda_kernels_built_for_current_device
// reads the slow cudaGetDeviceProperties) once per device, not on every call of
// a microsecond kernel.
struct Device {
  int index, major, minor, sm_count;
};

Device current_device(const char* op) {
  static std::mutex mutex;
  static std::vector<std::optional<Device>> known;
  int index = 0;
  C10_CUDA_CHECK(cudaGetDevice(&index));
  const std::lock_guard<std::mutex> lock(mutex);
  if (known.size() <= size_t(index)) known.resize(index + 1);
  if (!known[index]) {
    check_cuda_kernels_built_for_current_device(op);
    Device d{index, 0, 0, 0};
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, index));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, index));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, index));
    known[index] = d;
  }
  return *known[index];
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Contiguous and 16-byte aligned (a view may start mid-line): copied only when
// it is not.
at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return aligned16(c) ? c : c.clone();
}

cuda::Linear24Args make_args(const at::Tensor& x2d, const at::Tensor& values, const void* meta,
                             const std::optional<at::Tensor>& bias, at::Tensor& y, int64_t batch, int64_t rows,
                             int64_t k) {
  const bool has_bias = bias.has_value() && bias->defined();
  return {x2d.data_ptr(),
          values.data_ptr(),
          meta,
          has_bias ? bias->data_ptr() : nullptr,
          y.data_ptr(),
          batch,
          rows,
          k,
          values.scalar_type() == at::kHalf ? cuda::Linear24Type::kFloat16 : cuda::Linear24Type::kBFloat16};
}

at::Tensor sm90_meta_cuda(const at::Tensor& meta, int64_t rows, int64_t k) {
  at::Tensor out = at::empty(sm90_meta_shape(rows, k), meta.options().dtype(at::kByte));
  check_launch(cuda::format24_meta_to_sm90(meta.data_ptr(), out.data_ptr(), rows, k, c10::cuda::getCurrentCUDAStream()),
               "meta_24_to_sm90", "the metadata conversion kernel");
  return out;
}

at::Tensor run_sm90(const at::Tensor& x2d, const at::Tensor& values, const at::Tensor& meta,
                    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& meta_sm90,
                    const Linear24Shape& shape, int sm_count) {
  const at::Tensor e = meta_sm90.has_value() && meta_sm90->defined() ? aligned_contiguous(*meta_sm90)
                                                                     : sm90_meta_cuda(meta, shape.rows, shape.k);
  at::Tensor y = at::empty({shape.batch, shape.rows}, x2d.options());
  auto args = make_args(x2d, values, e.data_ptr(), bias, y, shape.batch, shape.rows, shape.k);
  const size_t bytes = cuda::linear24_cutlass_sm90_workspace_bytes(args, sm_count);
  at::Tensor workspace = at::empty({int64_t(bytes)}, x2d.options().dtype(at::kByte));
  check_launch(cuda::linear24_cutlass_sm90(args, bytes ? workspace.data_ptr() : nullptr, sm_count,
                                           c10::cuda::getCurrentCUDAStream()),
               kOp, "the CUTLASS 3.x sparse GEMM (sm_90a)");
  return y;
}

at::Tensor run_sm80(const at::Tensor& x2d, const at::Tensor& values, const at::Tensor& meta,
                    const std::optional<at::Tensor>& bias, const Linear24Shape& shape) {
  // CUTLASS 2.x reads x and writes y^T in 16-byte vectors along the batch: pad
  // it to 8 rows.
  const int64_t padded =
      (shape.batch + cuda::kSm80BatchAlignment - 1) / cuda::kSm80BatchAlignment * cuda::kSm80BatchAlignment;
  at::Tensor xb = x2d;
  if (padded != shape.batch) {
    xb = at::zeros({padded, shape.k}, x2d.options());
    xb.narrow(0, 0, shape.batch).copy_(x2d);
  }
  at::Tensor yt = at::empty({shape.rows, padded}, x2d.options());
  auto args = make_args(xb, values, meta.data_ptr(), bias, yt, padded, shape.rows, shape.k);
  check_launch(cuda::linear24_cutlass_sm80(args, c10::cuda::getCurrentCUDAStream()), kOp,
               "the CUTLASS 2.x sparse GEMM (sm_80)");
  return yt.narrow(1, 0, shape.batch).t().contiguous();
}

// The path of "auto": the small-batch kernel up to 16 rows, then CUTLASS 3.x on
// sm_90 (when built with sm_90a), CUTLASS 2.x elsewhere where in_features
// tiles, the dense product otherwise.
Linear24Kernel automatic(const Linear24Shape& shape, const Device& device) {
  if (shape.batch <= cuda::kDecodeMaxBatch) return Linear24Kernel::kDecode;
  if (device.major == 9 && device.minor == 0 && built_sm90a()) return Linear24Kernel::kCutlassSm90;
  // CUTLASS 2.x's sparse K tile may not run past the metadata (it would read
  // zeros, not a code).
  return shape.k % cuda::kSm80TileK == 0 ? Linear24Kernel::kCutlassSm80 : Linear24Kernel::kDense;
}

at::Tensor sparse_linear_24_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                 int64_t in_features, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& meta_sm90, c10::string_view kernel_name) {
  const auto shape = check_sparse_linear_24_args(x, values, meta, in_features, bias, meta_sm90);
  Linear24Kernel kernel = parse_linear24_kernel(kernel_name);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2d = aligned_contiguous(x.reshape({shape.batch, shape.k}));
  if (values.scalar_type() == at::kFloat) {
    TORCH_CHECK_VALUE(kernel == Linear24Kernel::kAuto || kernel == Linear24Kernel::kDense, "prunekit.", kOp,
                      ": kernel '", kernel_name, "' runs float16 and bfloat16 weights on tensor cores, but 'values' ",
                      "is float32 (use 'auto' or 'dense')");
    kernel = Linear24Kernel::kDense;
  }
  if (shape.batch == 0) return at::empty(shape.out, x.options());
  if (kernel == Linear24Kernel::kDense) return linear24_dense(x2d, values, meta, bias).reshape(shape.out);

  const Device device = current_device(kOp);
  TORCH_CHECK(device.major >= 8, "prunekit.", kOp, ": the 2:4 kernels need an sm_80 or newer GPU (sparse tensor ",
              "cores and mma.sync), but device ", device.index, " is sm_", device.major, device.minor,
              "; this build has CUDA archs [", PRUNEKIT_CUDA_ARCHS, "]");
  if (kernel == Linear24Kernel::kAuto) kernel = automatic(shape, device);
  const at::Tensor values_a = aligned_contiguous(values);
  const at::Tensor meta_a = aligned_contiguous(meta);
  std::optional<at::Tensor> bias_a;
  if (bias.has_value() && bias->defined()) bias_a = aligned_contiguous(*bias);

  switch (kernel) {
    case Linear24Kernel::kDecode: {
      TORCH_CHECK_VALUE(shape.batch <= cuda::kDecodeMaxBatch, "prunekit.", kOp, ": kernel 'decode' runs 1 to ",
                        cuda::kDecodeMaxBatch, " rows of x, but got ", shape.batch);
      at::Tensor y = at::empty({shape.batch, shape.rows}, x.options());
      auto args = make_args(x2d, values_a, meta_a.data_ptr(), bias_a, y, shape.batch, shape.rows, shape.k);
      check_launch(cuda::linear24_decode(args, c10::cuda::getCurrentCUDAStream()), kOp, "the small-batch kernel");
      return y.reshape(shape.out);
    }
    case Linear24Kernel::kCutlassSm90:
      TORCH_CHECK(device.major == 9 && device.minor == 0 && built_sm90a(), "prunekit.", kOp,
                  ": kernel 'cutlass_sm90' runs on sm_90 GPUs of a build with "
                  "sm_90a kernels, but device ",
                  device.index, " is sm_", device.major, device.minor, " and this build has CUDA archs [",
                  PRUNEKIT_CUDA_ARCHS, "]; rebuild with CMAKE_CUDA_ARCHITECTURES including 90a");
      return run_sm90(x2d, values_a, meta_a, bias_a, meta_sm90, shape, device.sm_count).reshape(shape.out);
    case Linear24Kernel::kCutlassSm80:
      TORCH_CHECK_VALUE(shape.k % cuda::kSm80TileK == 0, "prunekit.", kOp, ": kernel 'cutlass_sm80' needs ",
                        "in_features to be a multiple of ", cuda::kSm80TileK, " (its K tile), but got ", shape.k);
      return run_sm80(x2d, values_a, meta_a, bias_a, shape).reshape(shape.out);
    default: return linear24_dense(x2d, values_a, meta_a, bias_a).reshape(shape.out);
  }
}

at::Tensor meta_24_to_sm90_cuda(const at::Tensor& meta) {
  check_meta_24_to_sm90_args(meta);
  const c10::cuda::CUDAGuard guard(meta.device());
  current_device("meta_24_to_sm90");
  return sm90_meta_cuda(meta, meta.size(0), 16 * meta.size(1));
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CUDA, m) {
  m.impl("sparse_linear_24", &sparse_linear_24_cuda);
  m.impl("meta_24_to_sm90", &meta_24_to_sm90_cuda);
}

}  // namespace prunekit
