# dmoe_cc_library / dmoe_cc_test, modelled on absl_cc_library / absl_cc_test.

# Clang's lock checking of the ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED annotations
# (scripts/check-thread-safety). Opt-in: GCC ignores the annotations, and the default build
# uses GCC.
option(DMOE_THREAD_SAFETY_ANALYSIS
       "With Clang: -Wthread-safety on project code, its findings errors" OFF)
if(DMOE_THREAD_SAFETY_ANALYSIS AND NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(WARNING "DMOE_THREAD_SAFETY_ANALYSIS needs Clang (the C++ compiler is "
                  "${CMAKE_CXX_COMPILER_ID}); no thread-safety checks in this build")
endif()

if(DMOE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "DMOE_FUZZ needs Clang with libFuzzer (the C++ compiler is "
                        "${CMAKE_CXX_COMPILER_ID}); scripts/fuzz configures build-fuzz with clang++-14")
  endif()
  if(NOT DMOE_SANITIZE)
    set(DMOE_SANITIZE "address,undefined")
  endif()
endif()

function(dmoe_apply_common_options target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(DMOE_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(DMOE_THREAD_SAFETY_ANALYSIS AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    target_compile_options(${target} PRIVATE -Wthread-safety -Werror=thread-safety)
  endif()
  if(DMOE_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${DMOE_SANITIZE} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${DMOE_SANITIZE})
  endif()
  if(DMOE_FUZZ)
    # Coverage for libFuzzer in every project library; a UBSan finding stops the fuzzer.
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer-no-link -fno-sanitize-recover=all)
  endif()
endfunction()

# dmoe_cc_library(NAME n SRCS ... HDRS ... DEPS ... [COPTS ...])
function(dmoe_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS;COPTS" ${ARGN})
  if(ARG_SRCS)
    add_library(${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
    target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS})
    target_compile_options(${ARG_NAME} PRIVATE ${ARG_COPTS})
    dmoe_apply_common_options(${ARG_NAME})
  else()
    add_library(${ARG_NAME} INTERFACE)
    target_include_directories(${ARG_NAME} INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${ARG_NAME} INTERFACE ${ARG_DEPS})
  endif()
endfunction()

# dmoe_cc_binary(NAME n SRCS ... DEPS ...)
function(dmoe_cc_binary)
  cmake_parse_arguments(ARG "" "NAME;OUTPUT_NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  if(ARG_OUTPUT_NAME)
    set_target_properties(${ARG_NAME} PROPERTIES OUTPUT_NAME ${ARG_OUTPUT_NAME})
  endif()
  set_target_properties(${ARG_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
  dmoe_apply_common_options(${ARG_NAME})
endfunction()

# dmoe_cc_test(NAME n SRCS ... DEPS ... [LABELS unit|service|integration|reference|kernels])
function(dmoe_cc_test)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  dmoe_apply_common_options(${ARG_NAME})
  # The checkout, for tests that read shipped files (deploy/, tools/data/). A compile-time
  # constant: gtest_discover_tests passes only one ENVIRONMENT entry through.
  target_compile_definitions(${ARG_NAME} PRIVATE DMOE_TEST_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  gtest_discover_tests(${ARG_NAME}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${ARG_LABELS}"
               ENVIRONMENT "DMOE_BIN_DIR=${PROJECT_BINARY_DIR}/bin")
endfunction()
