// CPU instruction-set variants: which were compiled in, what this CPU supports, which is used.
#pragma once

#include <string>
#include <vector>

namespace prunekit::cpu {

// Variants with at least one kernel compiled in, best last (e.g. {"scalar"}; kernel_config.cc).
std::vector<std::string> compiled_isas();
// The compiled variants this CPU can run, best last (what tests and benchmarks may force).
std::vector<std::string> runnable_isas();
// Best variant this CPU can run, whether or not kernels for it were compiled: "avx512", "avx2",
// "neon" or "scalar".
std::string detected_isa();
// CPU features seen at run time that kernels may use (e.g. "avx512_bf16", "avx512_vnni").
std::vector<std::string> detected_features();
// The variant whose kernel table the ops use: the override if one is set, else the best compiled
// one the CPU supports.
std::string selected_isa();

// Whether AVX-512 gathers run at least as fast as the scalar loads they replace: false on AMD
// (Zen 4 and 5 execute them as microcode at a fraction of the load ports' rate), true elsewhere.
bool avx512_gathers_fast();
// selected_isa() as a number, for the per-call table lookup: deriving the name (vectors of
// strings) on every call costs more than a small GEMV can spare.
enum class Isa : int { kScalar, kAvx2, kAvx512, kNeon };
Isa selected_isa_id();
// A variant's Isa from its name ("scalar" for a name it does not know), and its name.
Isa isa_id(const std::string& name);
const char* isa_name(Isa isa);

// Forces a variant (tests, benchmarks); "" clears. Throws std::invalid_argument naming the
// compiled variants when `isa` is not compiled in or not supported by this CPU.
void set_isa_override(const std::string& isa);

}  // namespace prunekit::cpu
