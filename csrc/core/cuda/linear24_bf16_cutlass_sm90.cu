// The sm_90a CUTLASS 3.x sparse GEMMs of linear24_cutlass_sm90.cuh for bf16 (one file per type so
// that they compile in parallel; linear24_cutlass_sm90.cu dispatches).
#include "linear24_cutlass_sm90.cuh"

namespace prunekit::cuda::sm90_detail {

size_t workspace_bytes_bf16(const Linear24Args& args, int sm_count) {
  return workspace_bytes<cutlass::bfloat16_t>(args, sm_count);
}

cudaError_t run_bf16(const Linear24Args& args, void* workspace, int sm_count, cudaStream_t stream) {
  return run<cutlass::bfloat16_t>(args, workspace, sm_count, stream);
}

}  // namespace prunekit::cuda::sm90_detail
