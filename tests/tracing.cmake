# Trace recorder and the `gpushim trace` tools (owner: tracing). CPU only.
if(TARGET gpushim_trace_tools)
  find_path(GPUSHIM_TRACE_TEST_CLI11 CLI/CLI.hpp HINTS ${CMAKE_SOURCE_DIR}/.carry/include)
  file(GLOB trace_test_sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/trace_*.cpp)
  # The command line itself is under test too (exit codes, messages): compile its one file here.
  add_executable(trace_tests ${trace_test_sources} ${CMAKE_SOURCE_DIR}/tools/trace_commands.cpp)
  if(GPUSHIM_TRACE_TEST_CLI11)
    target_include_directories(trace_tests SYSTEM PRIVATE ${GPUSHIM_TRACE_TEST_CLI11})
  endif()
  target_link_libraries(trace_tests PRIVATE gpushim_trace_tools GTest::gtest_main)
  target_compile_definitions(trace_tests PRIVATE
    GPUSHIM_TEST_DATA_DIR="${CMAKE_CURRENT_LIST_DIR}/data")
  gtest_discover_tests(trace_tests DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)
endif()

# The unwinder's fallback to glibc's backtrace() where libunwind is absent (own program: it hides
# libunwind by defining dlopen).
add_executable(stack_unwinder_fallback_test ${CMAKE_CURRENT_LIST_DIR}/stack_unwinder_fallback_test.cpp)
target_link_libraries(stack_unwinder_fallback_test PRIVATE gpushim_tracing GTest::gtest_main)
target_link_options(stack_unwinder_fallback_test PRIVATE -rdynamic)  # dladdr names capture_here
gtest_discover_tests(stack_unwinder_fallback_test)
# The report's screenshot is read with libpng (tests/trace_report_render_test.cpp).
if(TARGET trace_tests)
  find_package(PNG QUIET)
  if(PNG_FOUND)
    target_link_libraries(trace_tests PRIVATE PNG::PNG)
    target_compile_definitions(trace_tests PRIVATE GPUSHIM_HAVE_PNG=1)
  endif()
endif()
# The symbolizer's test reads its own line table: built with debug info whatever the build type.
set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/trace_symbolizer_test.cpp PROPERTIES COMPILE_OPTIONS "-g")
