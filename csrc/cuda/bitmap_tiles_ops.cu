// CUDA impls of the tiled bitmap ops: the same argument checks as the CPU glue
// (prunekit/bitmap_tiles_checks.h), then the torch-free kernels of csrc/core/cuda on the current
// stream. The conversions check the data and read the verdict back (one-off, a synchronisation is
// fine); the GEMM ops never synchronise (a corrupt tile gives NaN rows, see bitmap_tiles_cuda.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "prunekit/bitmap_tiles_checks.h"
#include "prunekit/bitmap_tiles_cuda.h"
#include "prunekit/cuda_entry.h"
#include "prunekit/kernels_cuda.h"

namespace prunekit {
namespace {

using cuda::TilesKernel;

constexpr int64_t kDecodeMaxBatch = 16;  // the decode kernels' batch per launch
// "auto" up to 16 rows: the SIMT decode kernel (a cost per nonzero and batch row) where the weight
// is sparse enough for the batch, the register-decode MMA kernel (a cost per dense position)
// otherwise: (largest batch, highest density of stored values) pairs. Estimated from instruction
// counts, not yet measured on a GPU: bench_sparse_cuda times both kernels to set them.
constexpr struct {
  int64_t batch;
  double density;
} kSimtRange[] = {{2, 0.5}, {4, 0.35}, {8, 0.15}, {16, 0.06}};

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, "prunekit.", op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

at::Tensor new_error_index(const at::Tensor& like) {
  return at::full({1}, -1, like.options().dtype(at::kLong));  // all bits set == cuda::kNoError
}

unsigned long long* error_ptr(at::Tensor& error_index) {
  return reinterpret_cast<unsigned long long*>(error_index.data_ptr<int64_t>());
}

const uint16_t* words(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<int16_t>()); }
uint16_t* words_mut(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<int16_t>()); }

ScoreType element_type(const at::Tensor& values) {
  switch (values.scalar_type()) {
    case at::kBFloat16: return ScoreType::kBFloat16;
    case at::kHalf: return ScoreType::kFloat16;
    default: return ScoreType::kFloat32;
  }
}

bool aligned(const at::Tensor& t, int64_t bytes) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0; }

// Segment prefix sums from the marks (panels * 16, chunks) of every row and chunk.
struct Segments {
  at::Tensor row_prefix;
  at::Tensor tile_prefix;
  at::Tensor tile_marks;  // (tiles,)
};
Segments segments_of(const at::Tensor& marks32, const tiles::Grid& grid) {
  const at::Tensor marks = marks32.to(at::kLong);
  const at::Tensor per_panel = marks.view({grid.panels, tiles::kTileRows, grid.chunks});
  return {(marks.cumsum(1) - marks).contiguous(),
          (per_panel.cumsum(1) - per_panel).reshape({grid.panels * tiles::kTileRows, grid.chunks}).contiguous(),
          per_panel.sum(1).reshape({-1})};
}

// The checks the conversions back make before they read a run: offsets from 0 to the values'
// size, each run fitting its marks, no mark in padding.
void validate_tiles(const char* op, const at::Tensor& tile_values, const at::Tensor& tile_bitmap,
                    const at::Tensor& tile_offsets, const tiles::Grid& grid, cudaStream_t stream) {
  const int64_t tiles_count = grid.panels * grid.chunks;
  at::Tensor error_index = new_error_index(tile_offsets);
  check_launch(cuda::bitmap_tiles_check(words(tile_bitmap), tile_offsets.data_ptr<int64_t>(), tile_values.numel(), grid,
                                        error_ptr(error_index), stream),
               op);
  const at::Tensor ends = at::stack({tile_offsets[0], tile_offsets[tiles_count], error_index[0]}).cpu();
  const int64_t first = ends[0].item<int64_t>(), last = ends[1].item<int64_t>();
  TORCH_CHECK_VALUE(first == 0 && last == tile_values.numel(), "prunekit.", op,
                    ": argument 'tile_offsets' must start at 0 and end at tile_values.numel()=", tile_values.numel(),
                    ", but got ", first, " and ", last, " (truncated or mismatched buffers?)");
  const auto bad = static_cast<unsigned long long>(ends[2].item<int64_t>());
  TORCH_CHECK_VALUE(bad == cuda::kNoError, "prunekit.", op,
                    ": the tiled weight is corrupt: ", tile_name(int64_t(bad), grid),
                    " has a run that does not match its marks or lies outside 'tile_values', or marks padding rows "
                    "or columns");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bitmap_to_tiles_cuda(const at::Tensor& values, const at::Tensor& bitmap,
                                                                    const at::Tensor& row_offsets, int64_t cols) {
  constexpr const char* op = "bitmap_to_tiles";
  const tiles::Grid grid = check_bitmap_source(op, values, bitmap, row_offsets, cols);
  const c10::cuda::CUDAGuard guard(values.device());
  check_cuda_kernels_built_for_current_device(op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor error_index = new_error_index(row_offsets);
  check_launch(cuda::bitmap_tiles_check_rows(words(bitmap), row_offsets.data_ptr<int64_t>(), grid,
                                             error_ptr(error_index), stream),
               op);
  const at::Tensor ends = at::stack({row_offsets[0], row_offsets[grid.rows], error_index[0]}).cpu();
  const int64_t first = ends[0].item<int64_t>(), last = ends[1].item<int64_t>();
  TORCH_CHECK_VALUE(first == 0 && last == values.numel(), "prunekit.", op,
                    ": argument 'row_offsets' must start at 0 and end at values.numel()=", values.numel(), ", but got ",
                    first, " and ", last, " (truncated or mismatched buffers?)");
  const auto bad = static_cast<unsigned long long>(ends[2].item<int64_t>());
  TORCH_CHECK_VALUE(bad == cuda::kNoError, "prunekit.", op, ": the compressed weight is corrupt: row ", bad,
                    " of 'bitmap' does not match its 'row_offsets' span or marks columns past cols=", cols);

  at::Tensor marks = at::empty({grid.panels * tiles::kTileRows, grid.chunks}, row_offsets.options().dtype(at::kInt));
  check_launch(cuda::bitmap_tiles_marks_from_bitmap(words(bitmap), grid, marks.data_ptr<int32_t>(), stream), op);
  const Segments segments = segments_of(marks, grid);
  const int64_t tiles_count = grid.panels * grid.chunks;
  const at::Tensor runs =
      (segments.tile_marks + (tiles::kRunAlign - 1)).div(tiles::kRunAlign, "floor") * tiles::kRunAlign;
  at::Tensor tile_offsets = at::zeros({tiles_count + 1}, row_offsets.options());
  tile_offsets.narrow(0, 1, tiles_count).copy_(runs.cumsum(0));
  at::Tensor tile_values = at::zeros({tile_offsets[tiles_count].item<int64_t>()}, values.options());
  at::Tensor tile_bitmap = at::empty({grid.panels, grid.chunks, tiles::kTileRows, tiles::kTileWords}, bitmap.options());
  check_launch(cuda::bitmap_tiles_pack(
                   values.data_ptr(), int(values.element_size()), words(bitmap), row_offsets.data_ptr<int64_t>(),
                   {segments.row_prefix.data_ptr<int64_t>(), segments.tile_prefix.data_ptr<int64_t>()},
                   tile_offsets.data_ptr<int64_t>(), grid, tile_values.data_ptr(), words_mut(tile_bitmap), stream),
               op);
  return {tile_values, tile_bitmap, tile_offsets};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiles_to_bitmap_cuda(const at::Tensor& tile_values,
                                                                    const at::Tensor& tile_bitmap,
                                                                    const at::Tensor& tile_offsets, int64_t rows,
                                                                    int64_t cols) {
  constexpr const char* op = "tiles_to_bitmap";
  const tiles::Grid grid = check_tiles_weight(op, tile_values, tile_bitmap, tile_offsets, rows, cols);
  const c10::cuda::CUDAGuard guard(tile_values.device());
  check_cuda_kernels_built_for_current_device(op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  validate_tiles(op, tile_values, tile_bitmap, tile_offsets, grid, stream);
  at::Tensor marks = at::empty({grid.panels * tiles::kTileRows, grid.chunks}, tile_offsets.options().dtype(at::kInt));
  check_launch(cuda::bitmap_tiles_marks_from_tiles(words(tile_bitmap), grid, marks.data_ptr<int32_t>(), stream), op);
  const Segments segments = segments_of(marks, grid);
  at::Tensor row_offsets = at::zeros({rows + 1}, tile_offsets.options());
  row_offsets.narrow(0, 1, rows).copy_(marks.narrow(0, 0, rows).to(at::kLong).sum(1).cumsum(0));
  at::Tensor values = at::empty({row_offsets[rows].item<int64_t>()}, tile_values.options());
  at::Tensor bitmap = at::empty({rows, grid.words}, tile_bitmap.options());
  check_launch(
      cuda::bitmap_tiles_unpack(tile_values.data_ptr(), int(tile_values.element_size()), words(tile_bitmap),
                                tile_offsets.data_ptr<int64_t>(),
                                {segments.row_prefix.data_ptr<int64_t>(), segments.tile_prefix.data_ptr<int64_t>()},
                                row_offsets.data_ptr<int64_t>(), grid, values.data_ptr(), words_mut(bitmap), stream),
      op);
  return {values, bitmap, row_offsets};
}

// The dense matrix without checks or synchronisation (see bitmap_tiles_dense).
at::Tensor expand_tiles(const char* op, const at::Tensor& tile_values, const at::Tensor& tile_bitmap,
                        const at::Tensor& tile_offsets, const tiles::Grid& grid, cudaStream_t stream) {
  at::Tensor marks = at::empty({grid.panels * tiles::kTileRows, grid.chunks}, tile_offsets.options().dtype(at::kInt));
  check_launch(cuda::bitmap_tiles_marks_from_tiles(words(tile_bitmap), grid, marks.data_ptr<int32_t>(), stream), op);
  const Segments segments = segments_of(marks, grid);
  at::Tensor dense = at::zeros({grid.rows, grid.cols}, tile_values.options());
  check_launch(cuda::bitmap_tiles_dense(tile_values.data_ptr(), int(tile_values.element_size()), tile_values.numel(),
                                        words(tile_bitmap), tile_offsets.data_ptr<int64_t>(),
                                        segments.tile_prefix.data_ptr<int64_t>(), grid, dense.data_ptr(), stream),
               op);
  return dense;
}

at::Tensor decompress_tiles_cuda(const at::Tensor& tile_values, const at::Tensor& tile_bitmap,
                                 const at::Tensor& tile_offsets, int64_t rows, int64_t cols) {
  constexpr const char* op = "decompress_tiles";
  const tiles::Grid grid = check_tiles_weight(op, tile_values, tile_bitmap, tile_offsets, rows, cols);
  const c10::cuda::CUDAGuard guard(tile_values.device());
  check_cuda_kernels_built_for_current_device(op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  validate_tiles(op, tile_values, tile_bitmap, tile_offsets, grid, stream);
  return expand_tiles(op, tile_values, tile_bitmap, tile_offsets, grid, stream);
}

// The kernel "auto" runs for a batch of `batch` columns (linear) or pixels (convolution).
TilesKernelChoice choose_kernel(TilesKernelChoice requested, const at::Tensor& tile_values, const tiles::Grid& grid,
                                int64_t batch, bool conv) {
  if (requested != TilesKernelChoice::kAuto) return requested;
  if (tile_values.scalar_type() == at::kFloat) {
    return batch <= kDecodeMaxBatch ? TilesKernelChoice::kSimt : TilesKernelChoice::kDense;
  }
  if (conv || batch > kDecodeMaxBatch) return TilesKernelChoice::kGemm;
  const double density = double(tile_values.numel()) / (double(grid.rows) * double(grid.cols));
  for (const auto& range : kSimtRange) {
    if (batch <= range.batch) return density <= range.density ? TilesKernelChoice::kSimt : TilesKernelChoice::kMma;
  }
  return TilesKernelChoice::kMma;
}

TilesKernel launch_kernel(TilesKernelChoice choice) {
  switch (choice) {
    case TilesKernelChoice::kMma: return TilesKernel::kMma;
    case TilesKernelChoice::kGemm: return TilesKernel::kGemm;
    default: return TilesKernel::kSimt;
  }
}

// A copy whose storage starts at a fresh (256-byte aligned) allocation where `t` is misaligned.
at::Tensor aligned_or_copy(const at::Tensor& t, int64_t bytes) { return aligned(t, bytes) ? t : t.clone(); }

// x (rows, cols) contiguous, copied into zero-padded rows of `width` where the kernel needs the
// row stride a multiple of `multiple` elements and the start aligned to `bytes`.
at::Tensor padded_rows(const at::Tensor& x, int64_t multiple, int64_t bytes) {
  const int64_t cols = x.size(-1);
  if (cols % multiple == 0 && aligned(x, bytes)) return x;
  const int64_t width = (cols + multiple - 1) / multiple * multiple;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = width;
  at::Tensor padded = at::zeros(shape, x.options());
  padded.narrow(-1, 0, cols).copy_(x);
  return padded;
}

void run_gemm(const char* op, cuda::TilesGemm& args, TilesKernel kernel, const at::Tensor& like, cudaStream_t stream) {
  const size_t bytes = cuda::bitmap_tiles_gemm_workspace(args, kernel, cuda::current_device_sms());
  at::Tensor workspace = bytes ? at::empty({int64_t(bytes)}, like.options().dtype(at::kByte)) : at::Tensor();
  check_launch(cuda::bitmap_tiles_gemm(args, kernel, bytes ? workspace.data_ptr() : nullptr, bytes, stream), op);
}

cuda::TilesGemm gemm_args(const at::Tensor& tile_values, const at::Tensor& tile_bitmap, const at::Tensor& tile_offsets,
                          const tiles::Grid& grid, const at::Tensor& bias, int64_t activation) {
  cuda::TilesGemm args{};
  args.values = tile_values.data_ptr();
  args.size = tile_values.numel();
  args.tile_bitmap = words(tile_bitmap);
  args.tile_offsets = tile_offsets.data_ptr<int64_t>();
  args.grid = grid;
  args.type = element_type(tile_values);
  args.bias = bias.defined() ? bias.data_ptr() : nullptr;
  args.bias_type = bias.defined() ? element_type(bias) : ScoreType::kFloat32;
  args.activation = int(activation);
  args.images = 1;
  return args;
}

at::Tensor sparse_linear_tiles_cuda(const at::Tensor& x, const at::Tensor& tile_values_in,
                                    const at::Tensor& tile_bitmap_in, const at::Tensor& tile_offsets,
                                    int64_t out_features, int64_t in_features, const std::optional<at::Tensor>& bias,
                                    c10::string_view kernel_name) {
  constexpr const char* op = "sparse_linear_tiles";
  const tiles::Grid grid =
      check_tiles_weight(op, tile_values_in, tile_bitmap_in, tile_offsets, out_features, in_features);
  const TilesKernelChoice requested = parse_tiles_kernel(op, kernel_name, false);
  check_tiles_kernel_dtype(op, requested, tile_values_in);
  const auto [batch, out_shape] = check_tiles_linear_input(op, x, tile_values_in, in_features, out_features);
  check_tiles_bias(op, bias, out_features, x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda_kernels_built_for_current_device(op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (batch == 0) return at::empty(out_shape, x.options());
  const at::Tensor bias1 = bias.has_value() ? bias->contiguous() : at::Tensor();  // read in its dtype
  const TilesKernelChoice choice = choose_kernel(requested, tile_values_in, grid, batch, false);
  if (choice == TilesKernelChoice::kDense) {
    const at::Tensor dense = expand_tiles(op, tile_values_in, tile_bitmap_in, tile_offsets, grid, stream);
    return at::linear(x, dense, bias.has_value() ? bias->to(x.scalar_type()) : at::Tensor());
  }
  const TilesKernel kernel = launch_kernel(choice);
  // 16-byte copies of runs and bitmap words (kGemm), 32-bit pairs of bitmap words (decode).
  const at::Tensor tile_values = kernel == TilesKernel::kGemm ? aligned_or_copy(tile_values_in, 16) : tile_values_in;
  const at::Tensor tile_bitmap = aligned_or_copy(tile_bitmap_in, kernel == TilesKernel::kGemm ? 16 : 4);
  at::Tensor x2 = x.reshape({batch, in_features}).contiguous();
  int64_t readable = in_features;
  if (kernel == TilesKernel::kMma) x2 = padded_rows(x2, 2, 4);  // 32-bit pairs of x along k
  if (kernel == TilesKernel::kGemm) {
    x2 = padded_rows(x2, 8, 16);  // 16-byte copies along k
    readable = x2.size(1);
  }
  at::Tensor y = at::empty({batch, out_features}, x.options());
  cuda::TilesGemm args = gemm_args(tile_values, tile_bitmap, tile_offsets, grid, bias1, 0);
  args.x = x2.data_ptr();
  args.batch = batch;
  args.x_stride_n = x2.size(1);
  args.x_stride_k = 1;
  args.x_readable = readable;
  args.x_batch_contiguous = false;
  args.y = y.data_ptr();
  args.y_stride_n = out_features;
  args.y_stride_m = 1;
  run_gemm(op, args, kernel, x, stream);
  return y.view(out_shape);
}

at::Tensor sparse_conv1x1_tiles_cuda(const at::Tensor& x, const at::Tensor& tile_values_in,
                                     const at::Tensor& tile_bitmap_in, const at::Tensor& tile_offsets,
                                     int64_t out_channels, int64_t in_channels, const std::optional<at::Tensor>& bias,
                                     int64_t activation, c10::string_view kernel_name) {
  constexpr const char* op = "sparse_conv1x1_tiles";
  const tiles::Grid grid =
      check_tiles_weight(op, tile_values_in, tile_bitmap_in, tile_offsets, out_channels, in_channels);
  const TilesKernelChoice requested = parse_tiles_kernel(op, kernel_name, true);
  check_tiles_kernel_dtype(op, requested, tile_values_in);
  check_tiles_conv_input(op, x, tile_values_in, in_channels, activation);
  check_tiles_bias(op, bias, out_channels, x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda_kernels_built_for_current_device(op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t images = x.size(0), height = x.size(2), width = x.size(3), pixels = height * width;
  if (images * pixels == 0) return at::empty({images, out_channels, height, width}, x.options());
  const at::Tensor bias1 = bias.has_value() ? bias->contiguous() : at::Tensor();  // read in its dtype
  const TilesKernelChoice choice = choose_kernel(requested, tile_values_in, grid, pixels, true);
  if (choice == TilesKernelChoice::kDense) {
    const at::Tensor dense = expand_tiles(op, tile_values_in, tile_bitmap_in, tile_offsets, grid, stream);
    at::Tensor y = at::conv2d(x, dense.view({out_channels, in_channels, 1, 1}),
                              bias.has_value() ? bias->to(x.scalar_type()) : at::Tensor());
    if (activation == 1) y = at::relu(y);
    if (activation == 2) y = at::hardtanh(y, 0.0, 6.0);
    return y;
  }
  const TilesKernel kernel = launch_kernel(choice);
  const at::Tensor tile_values = kernel == TilesKernel::kGemm ? aligned_or_copy(tile_values_in, 16) : tile_values_in;
  const at::Tensor tile_bitmap = aligned_or_copy(tile_bitmap_in, kernel == TilesKernel::kGemm ? 16 : 4);
  at::Tensor x3 = x.reshape({images, in_channels, pixels}).contiguous();
  if (kernel == TilesKernel::kGemm) x3 = padded_rows(x3, 8, 16);  // 16-byte copies along the pixels
  at::Tensor y = at::empty({images, out_channels, height, width}, x.options());
  cuda::TilesGemm args = gemm_args(tile_values, tile_bitmap, tile_offsets, grid, bias1, activation);
  args.x = x3.data_ptr();
  args.batch = pixels;
  args.x_stride_n = 1;
  args.x_stride_k = x3.size(2);
  args.x_stride_image = in_channels * x3.size(2);
  args.x_readable = x3.size(2);
  args.x_batch_contiguous = true;
  args.y = y.data_ptr();
  args.y_stride_n = 1;
  args.y_stride_m = pixels;
  args.y_stride_image = out_channels * pixels;
  args.images = images;
  run_gemm(op, args, kernel, x, stream);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CUDA, m) {
  m.impl("bitmap_to_tiles", &bitmap_to_tiles_cuda);
  m.impl("tiles_to_bitmap", &tiles_to_bitmap_cuda);
  m.impl("decompress_tiles", &decompress_tiles_cuda);
  m.impl("sparse_linear_tiles", &sparse_linear_tiles_cuda);
  m.impl("sparse_conv1x1_tiles", &sparse_conv1x1_tiles_cuda);
}

}  // namespace prunekit
