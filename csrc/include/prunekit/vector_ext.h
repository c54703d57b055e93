// The float vector of the kernels written on GCC/Clang vector extensions and compiled per ISA:
// the variant .cc file defines PRUNEKIT_VECTOR_BYTES (the register width: 16, 32 or 64) before
// including its kernel header, which includes this. Internal linkage, so that variants built
// with different flags never share a definition.
#pragma once

#include <cstdint>
#include <cstring>

#ifndef PRUNEKIT_VECTOR_BYTES
#error "define PRUNEKIT_VECTOR_BYTES (16, 32 or 64) before including a vector-extension kernel"
#endif

namespace prunekit::cpu {
namespace {

typedef float Vec __attribute__((vector_size(PRUNEKIT_VECTOR_BYTES)));
constexpr int64_t kLanes = PRUNEKIT_VECTOR_BYTES / sizeof(float);

// Unaligned loads and stores (memcpy compiles to one vector move).
__attribute__((always_inline)) inline Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void store_vec(float* p, Vec v) { std::memcpy(p, &v, sizeof(v)); }

}  // namespace
}  // namespace prunekit::cpu
