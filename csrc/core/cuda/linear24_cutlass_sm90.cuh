// y = x W^T + b on sm_90a with CUTLASS 3.x's sparse GEMM (wgmma.sp through the collective
// builder): W, 2:4 sparse, is operand A (rows x k, K-major) with the metadata in CUTLASS 3's own
// layout (prunekit/format24_sm90.h); x is B (batch x k, K-major); D = y^T is stored column-major,
// which is y row-major; the per-row bias of y^T is fused in the epilogue (a null pointer reads as
// zero). fp32 accumulation. Included once per element type by linear24_<type>_cutlass_sm90.cu so
// the two types compile in parallel.
//
// Every tile here has TileK = 128, which fixes the metadata layout (format24::sm90::kAtomCols);
// the static_asserts below tie the two together.
#pragma once

#include <cutlass/cutlass.h>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>

#include "prunekit/format24_sm90.h"
#include "prunekit/linear24_cuda.h"

namespace prunekit::cuda::sm90_detail {

using namespace cute;

template <typename Element, typename TileShape, typename ClusterShape, typename Scheduler>
struct SparseLinearSm90 {
  using Accumulator = float;
  static constexpr int kAlignment = 128 / cutlass::sizeof_bits<Element>::value;
  using LayoutA = cutlass::layout::RowMajor;     // W: rows x k, k contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // x^T: k x batch, k contiguous
  using LayoutD = cutlass::layout::ColumnMajor;  // y^T: rows x batch, rows contiguous
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
  // D = acc + bias[row] (alpha 1, no C operand).
  using Fusion = cutlass::epilogue::fusion::LinCombPerRowBias<Element, Accumulator, Element, void, Accumulator>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, Accumulator, void, LayoutD, kAlignment, Element,
      LayoutD, kAlignment, EpilogueSchedule, Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, Element, LayoutA, kAlignment, Element, LayoutB,
      kAlignment, Accumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using ProblemShape = Shape<int, int, int, int>;
  using GemmKernel =
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  using SparseConfig = typename CollectiveMainloop::SparseConfig;
  static_assert(int(typename SparseConfig::TensorEAtomM{}) == format24::sm90::kAtomRows &&
                    int(typename SparseConfig::TensorEAtomK{}) == format24::sm90::kAtomCols,
                "the metadata layout of this tile differs from prunekit/format24_sm90.h");
  static_assert(size<2>(TileShape{}) == format24::sm90::kAtomCols, "TileK must be 128 (the metadata layout)");
  static_assert(cute::is_same_v<typename CollectiveMainloop::ElementEMma, cute::sparse_elem<8, uint8_t>>,
                "one metadata bit per logical element of A");

  static typename Gemm::Arguments arguments(const Linear24Args& args, int sm_count) {
    const int m = int(args.rows), n = int(args.batch), k = int(args.k);
    const ProblemShape problem{m, n, k, 1};
    // Packed strides: B (n, k) k-contiguous; C and D (m, n) m-contiguous.
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideC = typename Gemm::GemmKernel::StrideC;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    using ElementE = typename CollectiveMainloop::ElementE;
    typename Gemm::Arguments arguments{cutlass::gemm::GemmUniversalMode::kGemm,
                                       problem,
                                       {static_cast<const Element*>(args.values), SparseConfig::fill_layoutA(problem),
                                        static_cast<const Element*>(args.x), StrideB{int64_t(k), _1{}, int64_t(n) * k},
                                        static_cast<const ElementE*>(args.meta), SparseConfig::fill_layoutE(problem)},
                                       {{},
                                        nullptr,
                                        StrideC{_1{}, int64_t(m), int64_t(m) * n},
                                        static_cast<Element*>(args.y),
                                        StrideD{_1{}, int64_t(m), int64_t(m) * n}}};
    auto& fusion = arguments.epilogue.thread;
    fusion.alpha = 1.0f;
    fusion.beta = 0.0f;
    fusion.bias_ptr = static_cast<const Element*>(args.bias);
    arguments.hw_info.sm_count = sm_count;
    return arguments;
  }

  static size_t workspace_bytes(const Linear24Args& args, int sm_count) {
    return Gemm::get_workspace_size(arguments(args, sm_count));
  }

  static cudaError_t run(const Linear24Args& args, void* workspace, int sm_count, cudaStream_t stream) {
    const auto arguments_ = arguments(args, sm_count);
    Gemm gemm;
    if (gemm.can_implement(arguments_) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
    if (gemm.initialize(arguments_, workspace, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
    if (gemm.run(stream) != cutlass::Status::kSuccess) {
      const cudaError_t error = cudaGetLastError();
      return error == cudaSuccess ? cudaErrorLaunchFailure : error;
    }
    return cudaSuccess;
  }
};

// Small batches (up to kSm90SmallBatchMax rows of x): one 64-wide N tile; with few output tiles
// the work is shared out along k (stream-K) so that every SM has some.
template <typename Element>
using SmallBatch =
    SparseLinearSm90<Element, Shape<_128, _64, _128>, Shape<_1, _1, _1>, cutlass::gemm::StreamKScheduler>;
// Large batches: 128 x 128 tiles, two CTAs of a cluster along N sharing (multicasting) the
// weight tile, persistent CTAs.
template <typename Element>
using LargeBatch =
    SparseLinearSm90<Element, Shape<_128, _128, _128>, Shape<_1, _2, _1>, cutlass::gemm::PersistentScheduler>;

constexpr int64_t kSm90SmallBatchMax = 64;

template <typename Element>
size_t workspace_bytes(const Linear24Args& args, int sm_count) {
  if (args.batch <= kSm90SmallBatchMax) return SmallBatch<Element>::workspace_bytes(args, sm_count);
  return LargeBatch<Element>::workspace_bytes(args, sm_count);
}

template <typename Element>
cudaError_t run(const Linear24Args& args, void* workspace, int sm_count, cudaStream_t stream) {
  if (args.batch <= kSm90SmallBatchMax) return SmallBatch<Element>::run(args, workspace, sm_count, stream);
  return LargeBatch<Element>::run(args, workspace, sm_count, stream);
}

}  // namespace prunekit::cuda::sm90_detail
