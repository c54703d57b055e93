// Element types named by torch-free kernels (which cannot use at::ScalarType).
#pragma once

namespace prunekit {

enum class ScoreType : int { kFloat32, kFloat64, kFloat16, kBFloat16 };

}  // namespace prunekit
