// The torch-free kernel tests' shared harness: EXPECT (counts a failure and goes on), the exit
// status, NaN-poisoned outputs (every entry a kernel owes must be written), buffers of exactly the
// size a kernel may read (AddressSanitizer catches any read past them), and the kernel variants
// to test: those of the kernel tables (prunekit/kernel_config.h) of every ISA this CPU runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "prunekit/kernel_config.h"

namespace prunekit::test {

inline int failures = 0;

#define EXPECT(condition)                                                           \
  do {                                                                              \
    if (!(condition)) {                                                             \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #condition); \
      ++prunekit::test::failures;                                                   \
    }                                                                               \
  } while (0)

// main's return value: 1 after any failed EXPECT.
inline int finish() {
  if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}

// n elements and not one more (at least one, so that the pointer of an empty buffer is valid),
// each set to `fill`.
template <typename T>
std::unique_ptr<T[]> exact_buffer(int64_t n, T fill = T()) {
  std::unique_ptr<T[]> buffer(new T[n > 0 ? n : 1]);
  for (int64_t i = 0; i < n; ++i) buffer[i] = fill;
  return buffer;
}

// An output of n floats, all NaN before the kernel runs.
inline std::vector<float> poisoned(int64_t n) { return std::vector<float>(size_t(n), NAN); }

inline bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// Equal up to fp32 rounding of sums in another order.
inline bool close(float a, float b) { return std::fabs(a - b) <= 1e-4f * (1.0f + std::fabs(b)); }

// bf16 by truncation (any bf16 number will do as test data), and back (exact).
inline uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return uint16_t(bits >> 16);
}
inline float from_bf16(uint16_t half) {
  const uint32_t bits = uint32_t(half) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// The kernel tables of the ISAs this CPU runs, best last.
inline std::vector<const cpu::CpuKernelConfig*> runnable_tables() {
  std::vector<const cpu::CpuKernelConfig*> tables;
  for (const auto& name : cpu::runnable_isas()) tables.push_back(&cpu::cpu_kernel_config(cpu::isa_id(name)));
  return tables;
}

// The kernel tables of the ISAs this CPU runs that have their own kernel `member` (not null, not
// the one of an earlier table: a variant without a kernel of its own in a family reuses another's),
// so that every compiled kernel the CPU can run is tested once.
template <typename Fn>
std::vector<const cpu::CpuKernelConfig*> tables_with_own(Fn cpu::CpuKernelConfig::* member) {
  std::vector<const cpu::CpuKernelConfig*> tables;
  for (const auto* table : runnable_tables()) {
    bool seen = !(table->*member);
    for (const auto* earlier : tables) seen = seen || earlier->*member == table->*member;
    if (!seen) tables.push_back(table);
  }
  return tables;
}

}  // namespace prunekit::test
