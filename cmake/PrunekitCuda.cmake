# CUDA language, architectures and CUTLASS headers (from the nvidia-cutlass wheel, found through
# its Python package; never copied into this repository).

# Enables CUDA with the given default architectures; CMAKE_CUDA_ARCHITECTURES or
# TORCH_CUDA_ARCH_LIST-style overrides from the command line win.
macro(prunekit_enable_cuda default_archs)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES "${default_archs}")
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  prunekit_find_cutlass()
endmacro()

# Sets PRUNEKIT_CUTLASS_INCLUDE_DIR; missing headers are an error, or with OPTIONAL leave it unset
# (tests/core's host-side check of CUTLASS's metadata layout).
function(prunekit_find_cutlass)
  cmake_parse_arguments(arg "OPTIONAL" "" "" ${ARGN})
  if(DEFINED PRUNEKIT_CUTLASS_INCLUDE_DIR AND EXISTS "${PRUNEKIT_CUTLASS_INCLUDE_DIR}/cutlass/cutlass.h")
    return()
  endif()
  # First the copy scripts/vendor_cutlass.sh leaves in the tree (git-ignored; it travels with the
  # tree to a GPU machine without a package registry), then the installed wheel.
  set(vendored "${PROJECT_SOURCE_DIR}/third_party/cutlass/include")
  if(EXISTS "${vendored}/cutlass/cutlass.h")
    set(PRUNEKIT_CUTLASS_INCLUDE_DIR "${vendored}" CACHE PATH "CUTLASS include directory" FORCE)
    message(STATUS "prunekit: CUTLASS headers in ${vendored} (vendored copy)")
    return()
  endif()
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
  # find_spec locates the package without importing it (its import pulls in cuda-python).
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c
      "import importlib.util, pathlib; s = importlib.util.find_spec('cutlass_library'); print(pathlib.Path(s.origin).parent / 'source' / 'include' if s else '')"
    OUTPUT_VARIABLE include_dir
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT include_dir OR NOT EXISTS "${include_dir}/cutlass/cutlass.h")
    if(arg_OPTIONAL)
      return()
    endif()
    message(FATAL_ERROR "prunekit's CUDA build needs the CUTLASS headers of the nvidia-cutlass wheel: "
                        "pip install --no-deps nvidia-cutlass, or run scripts/vendor_cutlass.sh where it is "
                        "installed (looked in '${vendored}' and '${include_dir}')")
  endif()
  set(PRUNEKIT_CUTLASS_INCLUDE_DIR "${include_dir}" CACHE PATH "CUTLASS include directory" FORCE)
  message(STATUS "prunekit: CUTLASS headers in ${include_dir}")
endfunction()

function(prunekit_configure_cuda_target target)
  target_include_directories(${target} PRIVATE ${PRUNEKIT_INCLUDE_DIR})
  target_include_directories(${target} SYSTEM PRIVATE ${PRUNEKIT_CUTLASS_INCLUDE_DIR})
  target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo -Xcompiler=-fPIC>)
  set_target_properties(${target} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
endfunction()
