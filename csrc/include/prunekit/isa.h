// CPU instruction-set variants: which were compiled in, what this CPU supports, which is used.
#pragma once

#include <string>
#include <vector>

namespace prunekit::cpu {

// Variants with at least one kernel compiled in, best last (e.g. {"scalar"}).
std::vector<std::string> compiled_isas();
// The compiled variants this CPU can run, best last (what tests and benchmarks may force).
std::vector<std::string> runnable_isas();
// Best variant this CPU can run, whether or not kernels for it were compiled: "avx512", "avx2",
// "neon" or "scalar".
std::string detected_isa();
// CPU features seen at run time that kernels may use (e.g. "avx512_bf16", "avx512_vnni").
std::vector<std::string> detected_features();
// The variant the kernel selectors use: the override if one is set, else the best compiled one
// the CPU supports.
std::string selected_isa();

// selected_isa() as a number, for the kernel selectors: ops call them several times per call,
// and after a kernel has streamed its weight through the caches, deriving the name each time
// (vectors of strings) cost the CSR16 op 3-4 us of a 4096^2 GEMV's ~250.
enum class Isa : int { kScalar, kAvx2, kAvx512, kNeon };
Isa selected_isa_id();

// Forces a variant (tests, benchmarks); "" clears. Throws std::invalid_argument naming the
// compiled variants when `isa` is not compiled in or not supported by this CPU.
void set_isa_override(const std::string& isa);

}  // namespace prunekit::cpu
