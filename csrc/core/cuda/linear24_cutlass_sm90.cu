// Entry of the sm_90a CUTLASS 3.x sparse GEMMs: checks the contract and picks the element type
// (the kernels are in linear24_{f16,bf16}_cutlass_sm90.cu).
#include "prunekit/linear24_cuda.h"

namespace prunekit::cuda {
namespace sm90_detail {
size_t workspace_bytes_f16(const Linear24Args& args, int sm_count);
size_t workspace_bytes_bf16(const Linear24Args& args, int sm_count);
cudaError_t run_f16(const Linear24Args& args, void* workspace, int sm_count, cudaStream_t stream);
cudaError_t run_bf16(const Linear24Args& args, void* workspace, int sm_count, cudaStream_t stream);
}  // namespace sm90_detail

namespace {

bool within_contract(const Linear24Args& args) {
  return args.batch >= 1 && args.rows % 32 == 0 && args.k % 32 == 0 && args.rows > 0 && args.k > 0 &&
         args.rows <= INT32_MAX && args.batch <= INT32_MAX && args.k <= INT32_MAX;
}

}  // namespace

size_t linear24_cutlass_sm90_workspace_bytes(const Linear24Args& args, int sm_count) {
  if (!within_contract(args)) return 0;
  return args.type == Linear24Type::kFloat16 ? sm90_detail::workspace_bytes_f16(args, sm_count)
                                             : sm90_detail::workspace_bytes_bf16(args, sm_count);
}

cudaError_t linear24_cutlass_sm90(const Linear24Args& args, void* workspace, int sm_count, cudaStream_t stream) {
  if (!within_contract(args)) return cudaErrorInvalidValue;
  return args.type == Linear24Type::kFloat16 ? sm90_detail::run_f16(args, workspace, sm_count, stream)
                                             : sm90_detail::run_bf16(args, workspace, sm_count, stream);
}

}  // namespace prunekit::cuda
