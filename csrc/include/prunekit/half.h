// fp16 / bf16 <-> fp32 conversions for torch-free kernels (portable, no ISA intrinsics).
#pragma once

#include <cstdint>
#include <cstring>

namespace prunekit {

inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline float bf16_to_float(uint16_t bits) { return bits_to_float(uint32_t(bits) << 16); }

// Round to nearest even, any NaN to 0xffff: bit for bit as torch converts an fp32 tensor to bf16
// (its vectorized conversion writes 0xffff for NaN; only the scalar c10::BFloat16 writes 0x7fc0).
inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0xffff;
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

inline float fp16_to_float(uint16_t bits) {
  const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf/nan
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);
  // Subnormal: normalise the mantissa into an fp32 exponent.
  uint32_t shift = 0;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    ++shift;
  }
  return bits_to_float(sign | ((113u - shift) << 23) | ((mantissa & 0x3ffu) << 13));
}

}  // namespace prunekit
