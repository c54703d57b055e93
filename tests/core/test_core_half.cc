// Torch-free tests of the fp16 / bf16 conversions of prunekit/half.h: subnormals, infinities,
// NaN and signed zero; fp32 -> bf16 rounding bit for bit as torch converts a tensor.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "harness.h"
#include "prunekit/half.h"

namespace {

using namespace prunekit::test;

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

// fp32 -> bf16 as torch converts a tensor: ties to even, overflow to infinity, NaN to 0xffff.
void check_float_to_bf16() {
  const std::pair<uint32_t, uint16_t> cases[] = {
      {0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80}, {0x3f818000u, 0x3f82}, {0x3f808001u, 0x3f81}, {0x7f7fffffu, 0x7f80},
      {0x7f800000u, 0x7f80}, {0xff800000u, 0xff80}, {0x80000000u, 0x8000}, {0x00000001u, 0x0000}, {0x00018000u, 0x0002},
      {0x7fc00000u, 0xffff}, {0xffc00001u, 0xffff}, {0x7f800001u, 0xffff}};
  for (const auto& [bits, expected] : cases) {
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    EXPECT(prunekit::float_to_bf16(value) == expected);
  }
}

}  // namespace

int main() {
  half_conversions();
  check_float_to_bf16();
  return finish();
}
