// Torch-free tests of the N:M keep-mask kernel: the n largest of each group kept (ties: lower
// index), the output poisoned first, a NaN score reported with its column.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "harness.h"
#include "prunekit/kernels_cpu.h"

namespace {

using namespace prunekit::test;
using prunekit::cpu::StatusCode;

void nm_mask_cases() {
  const float scores[8] = {1, 4, 3, 2, 5, 5, 5, 5};
  bool keep[8];
  std::memset(keep, 0x55, sizeof(keep));
  auto status = prunekit::cpu::nm_mask_select_scalar(scores, prunekit::ScoreType::kFloat32, keep, 8, 2, 4, {0, 1});
  EXPECT(status.ok());
  const bool expected[8] = {false, true, true, false, true, true, false, false};
  for (int i = 0; i < 8; ++i) EXPECT(keep[i] == expected[i]);
  const float bad[4] = {1, NAN, 3, 2};
  status = prunekit::cpu::nm_mask_select_scalar(bad, prunekit::ScoreType::kFloat32, keep, 4, 2, 4, {0, 1});
  EXPECT(status.code == StatusCode::kNonFinite && status.col == 1);
}

}  // namespace

int main() {
  nm_mask_cases();
  return finish();
}
