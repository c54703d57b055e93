// Run-time check that this build holds kernels the current GPU can run, with a message that
// names what was built when it does not.
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cctype>
#include <string>

#include "prunekit/cuda_entry.h"

#ifndef PRUNEKIT_CUDA_ARCHS
#error "PRUNEKIT_CUDA_ARCHS must be defined by the build"
#endif

namespace prunekit {
namespace {

// One entry of CMAKE_CUDA_ARCHITECTURES ("80", "90a", "80-real", "80-virtual") covers the device
// when it is PTX for an older or equal arch, or a cubin of the same major and no newer minor
// (arch-specific "a" cubins only run on exactly their arch).
bool arch_covers(const std::string& entry, int major, int minor) {
  const bool is_ptx = entry.find("-virtual") != std::string::npos || entry.find('-') == std::string::npos;
  size_t digits = 0;
  while (digits < entry.size() && std::isdigit(static_cast<unsigned char>(entry[digits]))) ++digits;
  const bool is_specific = digits < entry.size() && entry[digits] == 'a';
  const int number = std::stoi(entry);
  const int entry_major = number / 10, entry_minor = number % 10;
  const int device = major * 10 + minor;
  if (is_specific) return device == number;
  if (is_ptx && device >= number) return true;
  return major == entry_major && minor >= entry_minor;
}

}  // namespace

void check_cuda_kernels_built_for_current_device(const char* op) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  // A device found fine once is not asked again: the ops check on every call, and
  // cudaGetDeviceProperties takes microseconds, more than a batch-1 sparse GEMV's launch.
  constexpr int kCachedDevices = 64;
  static std::atomic<bool> covered[kCachedDevices] = {};
  if (device < kCachedDevices && covered[device].load(std::memory_order_relaxed)) return;
  cudaDeviceProp properties{};
  C10_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  const cudaDeviceProp* prop = &properties;
  const std::string archs = PRUNEKIT_CUDA_ARCHS;
  for (size_t start = 0; start < archs.size();) {
    size_t end = archs.find(',', start);
    if (end == std::string::npos) end = archs.size();
    if (end > start && arch_covers(archs.substr(start, end - start), prop->major, prop->minor)) {
      if (device < kCachedDevices) covered[device].store(true, std::memory_order_relaxed);
      return;
    }
    start = end + 1;
  }
  TORCH_CHECK(false, "prunekit.", op, ": this build has no CUDA kernels for ", prop->name, " (sm_", prop->major,
              prop->minor, "); it was built for CUDA archs [", archs,
              "]. Rebuild with CMAKE_CUDA_ARCHITECTURES including ", prop->major, prop->minor, ".");
}

}  // namespace prunekit
