// Torch-free tests of the CPU core kernels: round trips over every group pattern, outputs
// poisoned before each call (every entry must be written), remainder row ranges, error statuses.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "prunekit/format24.h"
#include "prunekit/half.h"
#include "prunekit/kernels_cpu.h"

namespace {

int failures = 0;

#define EXPECT(condition)                                                  \
  do {                                                                     \
    if (!(condition)) {                                                    \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #condition); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

using prunekit::cpu::StatusCode;

template <typename Bits>
void round_trip(int64_t rows, int64_t k, bool is_float, std::mt19937& rng) {
  const auto layout = prunekit::format24::layout_for_element_bytes(sizeof(Bits));
  std::vector<Bits> dense(rows * k);
  std::uniform_int_distribution<int> pattern(0, 10), bits(1, 0x7f);
  // The 11 patterns of at most two nonzeros in a group of four.
  const int patterns[11][4] = {{0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0},
                               {0, 0, 0, 1}, {1, 1, 0, 0}, {1, 0, 1, 0}, {1, 0, 0, 1},
                               {0, 1, 1, 0}, {0, 1, 0, 1}, {0, 0, 1, 1}};
  for (int64_t g = 0; g < rows * k / 4; ++g) {
    const int* p = patterns[pattern(rng)];
    for (int i = 0; i < 4; ++i) dense[g * 4 + i] = p[i] ? Bits(bits(rng)) : Bits(0);
  }
  const int64_t meta_elems = rows * k / (4 * layout.groups_per_meta);
  std::vector<Bits> values(rows * k / 2, Bits(0x5a));
  std::vector<uint8_t> meta(meta_elems * layout.meta_bytes, 0xff);
  // Two row ranges with an odd split, as parallel_for would hand out.
  const int64_t split = rows / 3;
  auto status = prunekit::cpu::format24_compress_scalar(dense.data(), values.data(), meta.data(), rows, k, sizeof(Bits), is_float, {0, split});
  EXPECT(status.ok());
  status = prunekit::cpu::format24_compress_scalar(dense.data(), values.data(), meta.data(), rows, k, sizeof(Bits), is_float, {split, rows});
  EXPECT(status.ok());
  std::vector<Bits> restored(rows * k, Bits(0x77));
  status = prunekit::cpu::format24_decompress_scalar(values.data(), meta.data(), restored.data(), rows, k, sizeof(Bits), {0, rows});
  EXPECT(status.ok());
  EXPECT(std::memcmp(restored.data(), dense.data(), dense.size() * sizeof(Bits)) == 0);

  // A third nonzero in one group is reported with its position.
  dense[5 * k + 8] = dense[5 * k + 9] = dense[5 * k + 10] = Bits(1);
  status = prunekit::cpu::format24_compress_scalar(dense.data(), values.data(), meta.data(), rows, k, sizeof(Bits), is_float, {0, rows});
  EXPECT(status.code == StatusCode::kTooManyNonzeros && status.row == 5 && status.col == 8);
  // Corrupt metadata (both indices equal) is reported, not written out of place.
  std::memset(meta.data(), 0, layout.meta_bytes);
  status = prunekit::cpu::format24_decompress_scalar(values.data(), meta.data(), restored.data(), rows, k, sizeof(Bits), {0, rows});
  EXPECT(status.code == StatusCode::kCorruptMeta);
}

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

void half_conversions() {
  EXPECT(prunekit::fp16_to_float(0x3c00) == 1.0f);
  EXPECT(prunekit::fp16_to_float(0xc000) == -2.0f);
  EXPECT(prunekit::fp16_to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT(prunekit::fp16_to_float(0x03ff) == std::ldexp(1023.0f, -24));
  EXPECT(std::isinf(prunekit::fp16_to_float(0x7c00)));
  EXPECT(std::isnan(prunekit::fp16_to_float(0x7e00)));
  EXPECT(std::signbit(prunekit::fp16_to_float(0x8000)));
  EXPECT(prunekit::bf16_to_float(0x3f80) == 1.0f);
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
  nm_mask_cases();
  half_conversions();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("core kernel tests passed\n");
  return 0;
}
