// The Python extension module prunekit._C: loading it registers every op (TORCH_LIBRARY in
// registration.cpp and the backend impls); pybind11 carries the small non-tensor helpers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "prunekit/isa.h"
#include "prunekit/kernel_config.h"

#ifndef PRUNEKIT_VERSION
#error "PRUNEKIT_VERSION must be defined by the build"
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = PRUNEKIT_VERSION;
  info["torch_version"] = PRUNEKIT_TORCH_VERSION;
  info["cuda_built"] = bool(PRUNEKIT_WITH_CUDA);
  std::vector<std::string> archs;
  std::string arch_list = PRUNEKIT_CUDA_ARCHS;
  for (size_t start = 0; start < arch_list.size();) {
    size_t end = arch_list.find(',', start);
    if (end == std::string::npos) end = arch_list.size();
    if (end > start) archs.push_back(arch_list.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = archs;
  info["cpu_isas_compiled"] = prunekit::cpu::compiled_isas();
  info["cpu_isas_runnable"] = prunekit::cpu::runnable_isas();
  info["cpu_isa_detected"] = prunekit::cpu::detected_isa();
  info["cpu_isa_selected"] = prunekit::cpu::selected_isa();
  info["cpu_features"] = prunekit::cpu::detected_features();
  // The bf16 x bf16 batch <= 4 sparse linear kernel in use, or None (x is then widened to fp32).
  const auto& kernels = prunekit::cpu::cpu_kernel_config();
  info["cpu_bf16_gemv"] = kernels.bitmap_bf16_gemv ? py::object(py::str("avx512bf16")) : py::none();
  // The largest batch of bf16 x it runs (in chunks of 4 rows past 4), 0 without it.
  info["cpu_bf16_gemv_max_rows"] = kernels.bitmap_bf16_gemv_max_batch;
  // The bf16 x bf16 sparse linear kernel for batch > 4 in use ("amx"), or None (x widened to fp32).
  info["cpu_bf16_spmm"] = kernels.bitmap_bf16_amx.spmm ? py::object(py::str("amx")) : py::none();
  // How the CSR16 GEMV reads x: "gather" (AVX-512 gathers) or "loads" (scalar loads).
  info["cpu_csr16_gemv"] = kernels.csr16_gemv_x;
  info["compiler"] = PRUNEKIT_COMPILER;
  info["build_type"] = PRUNEKIT_BUILD_TYPE;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "prunekit native extension: registers torch.ops.prunekit.* and exposes build_info()";
  m.def("build_info", &build_info, "What this build of prunekit contains.");
  m.def("_set_cpu_isa", &prunekit::cpu::set_isa_override, py::arg("isa"),
        "Force the CPU kernel variant ('' restores automatic selection); for tests and benchmarks.");
}
