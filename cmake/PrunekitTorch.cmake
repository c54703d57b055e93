# Finds Python, pybind11 and torch from the interpreter that runs the build, so the extension
# is built against the torch that is already installed (never a torch fetched by an isolated build).
#
# Defines the imported target prunekit::torch and PRUNEKIT_TORCH_VERSION, PRUNEKIT_TORCH_CUDA,
# PRUNEKIT_TORCH_CXX_STANDARD.

# The C++ standard torch's headers need: torch 2.14's use std::strong_ordering, `requires` and
# string_view::starts_with (C++20); older ones build as C++17, the standard prunekit keeps there.
function(prunekit_torch_cxx_standard torch_version out_var)
  string(REGEX MATCH "^[0-9]+\\.[0-9]+" major_minor "${torch_version}")
  if(major_minor VERSION_GREATER_EQUAL 2.14)
    set(${out_var} 20 PARENT_SCOPE)
  else()
    set(${out_var} 17 PARENT_SCOPE)
  endif()
endfunction()

function(prunekit_find_torch)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module)
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c
      "import torch, pybind11; print(torch.__version__); print(torch.version.cuda or ''); print(torch.utils.cmake_prefix_path); print(pybind11.get_cmake_dir()); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
    OUTPUT_VARIABLE probe
    RESULT_VARIABLE probe_status
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT probe_status EQUAL 0)
    message(FATAL_ERROR "prunekit needs torch and pybind11 importable from ${Python_EXECUTABLE}. "
                        "Install torch first (pip install torch==2.13.0) and build with "
                        "--no-build-isolation.")
  endif()
  string(REPLACE "\n" ";" probe "${probe}")
  list(GET probe 0 torch_version)
  list(GET probe 1 torch_cuda)
  list(GET probe 2 torch_prefix)
  list(GET probe 3 pybind11_dir)
  list(GET probe 4 cxx11_abi)
  set(PRUNEKIT_TORCH_VERSION "${torch_version}" PARENT_SCOPE)
  prunekit_torch_cxx_standard("${torch_version}" cxx_standard)
  set(PRUNEKIT_TORCH_CXX_STANDARD ${cxx_standard} PARENT_SCOPE)
  message(STATUS "prunekit: torch ${torch_version}: C++${cxx_standard}")
  if(torch_cuda)
    set(PRUNEKIT_TORCH_CUDA ON PARENT_SCOPE)
  else()
    set(PRUNEKIT_TORCH_CUDA OFF PARENT_SCOPE)
  endif()

  set(pybind11_DIR "${pybind11_dir}")
  find_package(pybind11 CONFIG REQUIRED)

  # The headers and libraries of the installed torch. torch's own CMake config is avoided on
  # purpose: for CPU builds it only adds MKL/Kineto probing noise, and it is not needed to link an
  # op library (libtorch_python is not needed either: no tensors cross pybind11).
  get_filename_component(torch_root "${torch_prefix}/../.." ABSOLUTE)
  find_library(PRUNEKIT_LIBTORCH torch PATHS "${torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
  find_library(PRUNEKIT_LIBTORCH_CPU torch_cpu PATHS "${torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
  find_library(PRUNEKIT_LIBC10 c10 PATHS "${torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
  add_library(prunekit_torch INTERFACE)
  add_library(prunekit::torch ALIAS prunekit_torch)
  target_include_directories(prunekit_torch SYSTEM INTERFACE
      "${torch_root}/include" "${torch_root}/include/torch/csrc/api/include")
  target_link_libraries(prunekit_torch INTERFACE
      ${PRUNEKIT_LIBTORCH} ${PRUNEKIT_LIBTORCH_CPU} ${PRUNEKIT_LIBC10})
  target_compile_definitions(prunekit_torch INTERFACE
      _GLIBCXX_USE_CXX11_ABI=${cxx11_abi} TORCH_EXTENSION_NAME=_C)
  # at::parallel_for is a header template whose OpenMP pragma only splits work when the extension
  # itself is compiled with OpenMP (as torch.utils.cpp_extension does); without it, ops run on
  # one thread.
  find_package(OpenMP REQUIRED COMPONENTS CXX)
  target_link_libraries(prunekit_torch INTERFACE OpenMP::OpenMP_CXX)
  if(torch_cuda)
    find_library(PRUNEKIT_LIBTORCH_CUDA torch_cuda PATHS "${torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
    find_library(PRUNEKIT_LIBC10_CUDA c10_cuda PATHS "${torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
    target_link_libraries(prunekit_torch INTERFACE ${PRUNEKIT_LIBTORCH_CUDA} ${PRUNEKIT_LIBC10_CUDA})
    target_compile_definitions(prunekit_torch INTERFACE USE_CUDA)
  endif()
endfunction()

# KERNELS_ONLY helper: an object library compiling csrc/cuda/*.cu against the headers of whatever
# torch is importable (a CPU wheel ships the c10/ATen CUDA headers but not the one generated
# macro header, which is supplied here). Skipped with a message when torch is not importable.
function(prunekit_add_cuda_glue_check)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c
      "import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.__version__)"
    OUTPUT_VARIABLE probe RESULT_VARIABLE probe_status OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT probe_status EQUAL 0)
    message(STATUS "prunekit: torch not importable; the CUDA glue compile check is skipped")
    return()
  endif()
  string(REPLACE "\n" ";" probe "${probe}")
  list(GET probe 0 torch_root)
  list(GET probe 1 cxx11_abi)
  list(GET probe 2 torch_version)
  prunekit_torch_cxx_standard("${torch_version}" cxx_standard)
  set(stub_dir "${CMAKE_CURRENT_BINARY_DIR}/glue_check_include")
  if(NOT EXISTS "${torch_root}/include/c10/cuda/impl/cuda_cmake_macros.h")
    file(WRITE "${stub_dir}/c10/cuda/impl/cuda_cmake_macros.h"
         "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
  endif()
  file(GLOB glue_sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
  add_library(prunekit_cuda_glue_check OBJECT ${glue_sources})
  prunekit_configure_cuda_target(prunekit_cuda_glue_check)
  set_target_properties(prunekit_cuda_glue_check PROPERTIES CUDA_STANDARD ${cxx_standard})
  target_include_directories(prunekit_cuda_glue_check SYSTEM PRIVATE
      "${stub_dir}" "${torch_root}/include" "${torch_root}/include/torch/csrc/api/include")
  string(REPLACE ";" "," arch_list "${CMAKE_CUDA_ARCHITECTURES}")
  target_compile_definitions(prunekit_cuda_glue_check PRIVATE
      _GLIBCXX_USE_CXX11_ABI=${cxx11_abi} PRUNEKIT_CUDA_ARCHS="${arch_list}")
  message(STATUS "prunekit: compiling the CUDA glue against torch ${torch_version} headers in ${torch_root} (C++${cxx_standard})")
endfunction()
