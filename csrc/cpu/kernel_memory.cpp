#include "kernel_memory.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace prunekit {
namespace {

constexpr size_t kHugePageBytes = size_t(2) << 20;
constexpr size_t kSmallAlignment = 64;  // as torch's CPU allocator

void free_kernel_memory(void* data) { std::free(data); }

class KernelMemoryAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    const bool huge = nbytes >= kHugePageBytes;
    void* data = nullptr;
    // posix_memalign: the memory is freed with free(), whichever alignment it has.
    if (nbytes > 0 && posix_memalign(&data, huge ? kHugePageBytes : kSmallAlignment, nbytes) != 0) {
      throw std::bad_alloc();
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Advice only: where the kernel refuses it (THP disabled), the pages are ordinary ones.
    if (huge) madvise(data, nbytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
#endif
    return {data, data, &free_kernel_memory, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &free_kernel_memory; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

KernelMemoryAllocator kernel_memory_allocator;

}  // namespace

at::Tensor empty_for_kernels(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu(), "empty_for_kernels: CPU tensors only");
  return at::detail::empty_generic(sizes, &kernel_memory_allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

}  // namespace prunekit
