# CUDA and NCCL detection (STYLE.md §9, §11). Included once from the top-level CMakeLists.txt,
# after the other find_package calls. Defines:
#   DMOE_ENABLE_CUDA  ON by default when a CUDA compiler is found; OFF builds the CPU-only tree.
#   DMOE_ENABLE_NCCL  the NCCL expert transport (common/nccl, transport/nccl); needs CUDA.
#   NCCL::nccl        imported target (NCCL ships no CMake config; TOOLCHAIN.md §2).
#   dmoe_cuda_library(NAME n SRCS ... HDRS ... DEPS ...)
#                     a static library that may hold .cu files: host flags for .cc, nvcc flags
#                     for .cu, warnings are errors in .cu files (issue 6).

include(CheckLanguage)
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  set(_dmoe_cuda_default ON)
else()
  set(_dmoe_cuda_default OFF)
endif()
option(DMOE_ENABLE_CUDA "Build the CUDA backend (model/cuda), its tests and benchmark"
       ${_dmoe_cuda_default})
option(DMOE_ENABLE_NCCL "Build the NCCL expert transport (needs DMOE_ENABLE_CUDA)" ON)

if(DMOE_ENABLE_CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    message(FATAL_ERROR "DMOE_ENABLE_CUDA=ON but no CUDA compiler was found "
                        "(set CMAKE_CUDA_COMPILER or configure with -DDMOE_ENABLE_CUDA=OFF)")
  endif()
  # Pinned, never "native" (it fails at generate time on machines without a GPU). Each entry
  # costs one more device compile of every .cu file, so keep the list short.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES
        # 80: Ampere (A100), the oldest architecture we keep: the first with BF16 tensor cores,
        #     which the cuBLAS BF16 GEMMs need; also yields compute_80 PTX for newer cards.
        80
        # 90: Hopper (H100/H200), the deployment target. Plain 90, not 90a: no kernel uses
        #     wgmma/TMA (cuBLAS brings its own Hopper kernels).
        90
        CACHE STRING "CUDA architectures (see cmake/cuda.cmake)")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "dmoe: CUDA ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")

  if(DMOE_ENABLE_NCCL)
    find_library(DMOE_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
    find_path(DMOE_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    if(DMOE_NCCL_LIBRARY AND DMOE_NCCL_INCLUDE_DIR)
      if(NOT TARGET NCCL::nccl)
        add_library(NCCL::nccl UNKNOWN IMPORTED)
        set_target_properties(NCCL::nccl PROPERTIES
          IMPORTED_LOCATION ${DMOE_NCCL_LIBRARY}
          INTERFACE_INCLUDE_DIRECTORIES ${DMOE_NCCL_INCLUDE_DIR}
          INTERFACE_LINK_LIBRARIES CUDA::cudart)
      endif()
      message(STATUS "dmoe: NCCL ${DMOE_NCCL_LIBRARY}")
    else()
      message(WARNING "dmoe: NCCL not found (nccl.h / libnccl); building without the NCCL "
                      "transport")
      set(DMOE_ENABLE_NCCL OFF)
    endif()
  endif()
else()
  # NCCL is only used from CUDA code; a normal variable shadows the cache option.
  set(DMOE_ENABLE_NCCL OFF)
endif()

# dmoe_cuda_library(NAME n SRCS ... HDRS ... DEPS ...): like dmoe_cc_library, for targets with
# .cu sources. The C++ warning flags of dmoe_cc_library are not valid nvcc options, so flags
# are set per language here.
function(dmoe_cuda_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  add_library(${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
  target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS})
  set_target_properties(${ARG_NAME} PROPERTIES
    CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON
    CUDA_SEPARABLE_COMPILATION OFF
    POSITION_INDEPENDENT_CODE ON)
  target_compile_options(${ARG_NAME} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${DMOE_WERROR}>>:-Werror>
    # .cu files: every nvcc and host-compiler warning is an error (issue 6).
    $<$<COMPILE_LANGUAGE:CUDA>:--Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter,-Werror>)
  if(DMOE_SANITIZE)
    target_compile_options(${ARG_NAME} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${DMOE_SANITIZE} -fno-omit-frame-pointer>)
    target_link_options(${ARG_NAME} PRIVATE -fsanitize=${DMOE_SANITIZE})
  endif()
endfunction()
