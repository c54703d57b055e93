// CPU variant detection and the override; which variants were compiled in is kernel_config.cc's.
#include "prunekit/isa.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <stdexcept>

namespace prunekit::cpu {
namespace {

// Order from least to most capable; a CPU that runs one runs every variant before it on its arch.
const std::vector<std::string>& ladder() {
#if defined(__x86_64__) || defined(_M_X64)
  static const std::vector<std::string> order{"scalar", "avx2", "avx512"};
#elif defined(__aarch64__)
  static const std::vector<std::string> order{"scalar", "neon"};
#else
  static const std::vector<std::string> order{"scalar"};
#endif
  return order;
}

}  // namespace

std::string detected_isa() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  // The avx512 variants use F, BW, VL, DQ, VBMI2 and BMI2: Ice Lake, Zen 4 and later.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("bmi2"))
    return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
  return "scalar";
#elif defined(__aarch64__)
  return "neon";  // Advanced SIMD is mandatory on AArch64.
#else
  return "scalar";
#endif
}

bool avx512_gathers_fast() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  return !__builtin_cpu_is("amd");
#else
  return false;
#endif
}

std::vector<std::string> detected_features() {
  std::vector<std::string> features;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) features.push_back("avx2");
  if (__builtin_cpu_supports("fma")) features.push_back("fma");
  if (__builtin_cpu_supports("avx512f")) features.push_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) features.push_back("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) features.push_back("avx512vl");
  if (__builtin_cpu_supports("avx512vbmi2")) features.push_back("avx512_vbmi2");
  if (__builtin_cpu_supports("avx512vnni")) features.push_back("avx512_vnni");
  if (__builtin_cpu_supports("avx512bf16")) features.push_back("avx512_bf16");
#elif defined(__aarch64__)
  features.push_back("neon");
#endif
  return features;
}

namespace {
std::ptrdiff_t ladder_rank(const std::string& name) {
  const auto& order = ladder();
  return std::find(order.begin(), order.end(), name) - order.begin();
}

// The forced variant's Isa, or -1 for the best runnable one.
std::atomic<int> override_id{-1};
}  // namespace

Isa isa_id(const std::string& name) {
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  if (name == "neon") return Isa::kNeon;
  return Isa::kScalar;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kNeon: return "neon";
    default: return "scalar";
  }
}

std::vector<std::string> runnable_isas() {
  std::vector<std::string> isas;
  const auto limit = ladder_rank(detected_isa());
  for (const auto& name : compiled_isas()) {
    if (ladder_rank(name) <= limit) isas.push_back(name);
  }
  return isas;
}

void set_isa_override(const std::string& isa) {
  if (isa.empty()) {
    override_id = -1;
    return;
  }
  const auto runnable = runnable_isas();
  if (std::find(runnable.begin(), runnable.end(), isa) == runnable.end()) {
    const auto compiled = compiled_isas();
    std::string names;
    for (const auto& name : compiled) names += (names.empty() ? "" : ", ") + name;
    throw std::invalid_argument("prunekit: CPU ISA '" + isa +
                                "' must be one compiled in and supported by this CPU (compiled: " + names +
                                "; this CPU: up to " + detected_isa() + ")");
  }
  override_id = int(isa_id(isa));
}

std::string selected_isa() { return isa_name(selected_isa_id()); }

Isa selected_isa_id() {
  static const Isa best = isa_id(runnable_isas().back());  // scalar is always compiled and runnable
  const int forced = override_id.load(std::memory_order_relaxed);
  return forced >= 0 ? Isa(forced) : best;
}

}  // namespace prunekit::cpu
