#pragma once

namespace prunekit {

// Raises a clear error naming the GPU and the built archs when no kernel here can run on it.
void check_cuda_kernels_built_for_current_device(const char* op);

}  // namespace prunekit
