// The fused activation on one output value, shared by the portable kernels and the vector SpMM's
// remainder: written so that NaN passes through, as in F.relu / F.relu6 (a NaN compares false).
// Internal linkage, as in every header the per-ISA variants include with their own flags.
#pragma once

#include "prunekit/kernels_cpu.h"

namespace prunekit::cpu {
namespace {

inline float activate_scalar(float v, Activation activation) {
  if (activation == Activation::kNone) return v;
  v = v < 0.0f ? 0.0f : v;
  return activation == Activation::kRelu6 && v > 6.0f ? 6.0f : v;
}

}  // namespace
}  // namespace prunekit::cpu
