// Memory for the compressed weights the CPU kernels stream on every call.
#pragma once

#include <ATen/core/Tensor.h>

namespace prunekit {

// An uninitialized CPU tensor like at::empty. From 2 MiB up it starts on a 2 MiB boundary and its
// whole 2 MiB blocks are marked MADV_HUGEPAGE before anything touches them, so that Linux backs
// them with transparent huge pages (THP "always" or "madvise"; the tail past the last boundary
// stays on 4 KiB pages, so no memory is added). A batch-1 GEMV then walks the page tables once
// per 2 MiB instead of once per 4 KiB. Its storage is an ordinary resizable
// CPU storage (saved, loaded, shared and freed as any other).
at::Tensor empty_for_kernels(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace prunekit
