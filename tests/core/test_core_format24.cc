// Torch-free tests of the 2:4 format kernels: round trips over every group pattern, outputs
// poisoned before each call (every entry must be written), remainder row ranges, error statuses.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "harness.h"
#include "prunekit/format24.h"
#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"

namespace {

using namespace prunekit::test;
using prunekit::cpu::StatusCode;

template <typename Bits>
void round_trip(int64_t rows, int64_t k, bool is_float, std::mt19937& rng) {
  const auto layout = prunekit::format24::layout_for_element_bytes(sizeof(Bits));
  std::vector<Bits> dense(rows * k);
  std::uniform_int_distribution<int> pattern(0, 10), bits(1, 0x7f);
  // The 11 patterns of at most two nonzeros in a group of four.
  const int patterns[11][4] = {{0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}, {1, 1, 0, 0},
                               {1, 0, 1, 0}, {1, 0, 0, 1}, {0, 1, 1, 0}, {0, 1, 0, 1}, {0, 0, 1, 1}};
  for (int64_t g = 0; g < rows * k / 4; ++g) {
    const int* p = patterns[pattern(rng)];
    for (int i = 0; i < 4; ++i) dense[g * 4 + i] = p[i] ? Bits(bits(rng)) : Bits(0);
  }
  const int64_t meta_elems = rows * k / (4 * layout.groups_per_meta);
  std::vector<Bits> values(rows * k / 2, Bits(0x5a));
  std::vector<uint8_t> meta(meta_elems * layout.meta_bytes, 0xff);
  // Two row ranges with an odd split, as parallel_for would hand out.
  const int64_t split = rows / 3;
  auto status = prunekit::cpu::format24_compress_scalar(dense.data(), values.data(), meta.data(), rows, k, sizeof(Bits),
                                                        is_float, {0, split});
  EXPECT(status.ok());
  status = prunekit::cpu::format24_compress_scalar(dense.data(), values.data(), meta.data(), rows, k, sizeof(Bits),
                                                   is_float, {split, rows});
  EXPECT(status.ok());
  std::vector<Bits> restored(rows * k, Bits(0x77));
  status = prunekit::cpu::format24_decompress_scalar(values.data(), meta.data(), restored.data(), rows, k, sizeof(Bits),
                                                     {0, rows});
  EXPECT(status.ok());
  EXPECT(std::memcmp(restored.data(), dense.data(), dense.size() * sizeof(Bits)) == 0);

  // A third nonzero in one group is reported with its position.
  dense[5 * k + 8] = dense[5 * k + 9] = dense[5 * k + 10] = Bits(1);
  status = prunekit::cpu::format24_compress_scalar(dense.data(), values.data(), meta.data(), rows, k, sizeof(Bits),
                                                   is_float, {0, rows});
  EXPECT(status.code == StatusCode::kTooManyNonzeros && status.row == 5 && status.col == 8);
  // Corrupt metadata (both indices equal) is reported, not written out of place.
  std::memset(meta.data(), 0, layout.meta_bytes);
  status = prunekit::cpu::format24_decompress_scalar(values.data(), meta.data(), restored.data(), rows, k, sizeof(Bits),
                                                     {0, rows});
  EXPECT(status.code == StatusCode::kCorruptMeta);
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  for (int64_t rows : {32, 64, 96}) {
    for (int64_t k : {64, 128, 192}) {
      round_trip<uint16_t>(rows, k, true, rng);
      round_trip<uint32_t>(rows, k, true, rng);
      round_trip<uint8_t>(rows, k, false, rng);
    }
  }
  if (!failures) std::printf("format24 kernels checked\n");
  return finish();
}
