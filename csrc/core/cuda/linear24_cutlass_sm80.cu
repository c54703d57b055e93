// y^T = W x^T + b on sm_80 / sm_89 with CUTLASS 2.x's sparse GEMM (mma.sp.m16n8k32): W, 2:4
// sparse, is operand A (rows x k, row-major) with torch's metadata as it is; x is B (k x batch,
// column-major, i.e. x row-major); the epilogue adds the bias per output row (a column broadcast
// of y^T) and stores y^T row-major (the 2.x epilogue cannot store column-major, so the caller
// transposes). fp32 accumulation. Two tiles: N 64 for small batches, N 128 for large ones.
#include <cutlass/cutlass.h>
#include <cutlass/gemm/device/gemm_sparse_with_visitor.h>
// After the GEMM: the visitors need its declarations first.
#include <cutlass/epilogue/threadblock/fusion/visitors.hpp>

#include "prunekit/linear24_cuda.h"

namespace prunekit::cuda {
namespace {

template <typename Element, typename ThreadblockShape, typename WarpShape, int Stages>
struct SparseLinearSm80 {
  using Accumulator = float;
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 32>;
  static constexpr int kAlignment = 128 / cutlass::sizeof_bits<Element>::value;
  static constexpr int kEpilogueStages = 1;

  using ThreadMap = cutlass::epilogue::threadblock::OutputTileThreadLayout<ThreadblockShape, WarpShape, Element,
                                                                           kAlignment, kEpilogueStages>;
  using Accum = cutlass::epilogue::threadblock::VisitorAccFetch;
  // bias[m] for every column of y^T; a null pointer reads as 0 (no bias).
  using Bias = cutlass::epilogue::threadblock::VisitorColBroadcast<ThreadMap, Element,
                                                                   cute::Stride<cute::_1, cute::_0, int64_t>>;
  using AddBias = cutlass::epilogue::threadblock::VisitorCompute<cutlass::plus, Accumulator, Accumulator,
                                                                 cutlass::FloatRoundStyle::round_to_nearest>;
  using EVTAddBias = cutlass::epilogue::threadblock::Sm80EVT<AddBias, Accum, Bias>;
  using Store =
      cutlass::epilogue::threadblock::VisitorAuxStore<ThreadMap, Element, cutlass::FloatRoundStyle::round_to_nearest,
                                                      cute::Stride<int64_t, cute::_1, int64_t>>;
  using EVT = cutlass::epilogue::threadblock::Sm80EVT<Store, EVTAddBias>;

  using Gemm = cutlass::gemm::device::SparseGemmWithVisitor<
      Element, cutlass::layout::RowMajor, Element, cutlass::layout::ColumnMajor, Element, cutlass::layout::RowMajor,
      Accumulator, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, ThreadblockShape, WarpShape, InstructionShape,
      EVT, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, Stages, kAlignment, kAlignment,
      cutlass::arch::OpMultiplyAdd, kEpilogueStages>;

  // torch's metadata layout is this GEMM's reordered E: ColumnMajorInterleaved<2> over int16
  // elements of 4 groups (prunekit/format24.h).
  static_assert(std::is_same_v<typename Gemm::LayoutE, cutlass::layout::ColumnMajorInterleaved<2>>,
                "CUTLASS's sparse metadata layout changed; prunekit/format24.h must follow");
  static_assert(sizeof(typename Gemm::ElementE) == 2 && Gemm::kElementsPerElementE * 2 == 16,
                "one int16 metadata element must cover 16 columns");
  static_assert(ThreadblockShape::kK == kSm80TileK, "k alignment contract");

  static cudaError_t run(const Linear24Args& args, cudaStream_t stream) {
    const int m = int(args.rows), n = int(args.batch), k = int(args.k);
    const cutlass::gemm::GemmCoord problem(m, n, k);
    using ElementE = typename Gemm::ElementE;
    const auto* a = static_cast<const Element*>(args.values);
    const auto* b = static_cast<const Element*>(args.x);
    const auto* e = static_cast<const ElementE*>(args.meta);
    typename Gemm::Arguments arguments{
        problem,
        {a, cutlass::layout::RowMajor(k / 2)},
        {b, cutlass::layout::ColumnMajor(k)},
        {const_cast<ElementE*>(e), Gemm::LayoutE::packed({m, k / 16})},
        typename EVT::Arguments{
            {
                {},                                                                                          // Accum
                {static_cast<const Element*>(args.bias), Element(0), {cute::_1{}, cute::_0{}, int64_t(m)}},  // Bias
                {}                                                                                           // AddBias
            },
            {static_cast<Element*>(args.y), {int64_t(n), cute::_1{}, int64_t(m) * n}}  // Store: y^T row-major
        }};
    Gemm gemm;
    if (gemm.can_implement(arguments) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
    // SparseGemmWithVisitor needs no workspace (no split-k).
    if (gemm.initialize(arguments, nullptr, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
    if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaGetLastError();
    return cudaSuccess;
  }
};

template <typename Element>
using SmallBatch =
    SparseLinearSm80<Element, cutlass::gemm::GemmShape<128, 64, 64>, cutlass::gemm::GemmShape<64, 32, 64>, 4>;
template <typename Element>
using LargeBatch =
    SparseLinearSm80<Element, cutlass::gemm::GemmShape<128, 128, 64>, cutlass::gemm::GemmShape<64, 64, 64>, 3>;

// Up to 64 rows of x fit one N tile of the small config: a 128-wide tile would leave half its
// MMAs idle there.
constexpr int64_t kSmallBatchMax = 64;

template <typename Element>
cudaError_t run_for(const Linear24Args& args, cudaStream_t stream) {
  if (args.batch <= kSmallBatchMax) return SmallBatch<Element>::run(args, stream);
  return LargeBatch<Element>::run(args, stream);
}

}  // namespace

cudaError_t linear24_cutlass_sm80(const Linear24Args& args, cudaStream_t stream) {
  if (args.batch < 1 || args.batch % kSm80BatchAlignment || args.rows % 32 || args.k % kSm80TileK ||
      args.rows > INT32_MAX || args.batch > INT32_MAX || args.k > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  if (args.type == Linear24Type::kFloat16) return run_for<cutlass::half_t>(args, stream);
  return run_for<cutlass::bfloat16_t>(args, stream);
}

}  // namespace prunekit::cuda
