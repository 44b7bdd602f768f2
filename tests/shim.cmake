# Interposer tests (shim/, driver/real_driver.cpp). CPU only: a fake libcuda.so.1 stands in for the
# driver, so no "gpu" label. Needs the CUDA headers (GPUSHIM_HAVE_CUDA), like the shim itself.
if(NOT TARGET gpushim_interposer)
  return()
endif()

set(shim_fixtures ${CMAKE_CURRENT_SOURCE_DIR}/fake_driver)
set(shim_fake_driver_dir ${CMAKE_CURRENT_BINARY_DIR}/fake_driver)

# The fake driver, named and placed like the real one: <dir>/libcuda.so.1.
add_library(shim_fake_libcuda SHARED ${shim_fixtures}/fake_libcuda.cpp)
target_include_directories(shim_fake_libcuda PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
set_target_properties(shim_fake_libcuda PROPERTIES
  OUTPUT_NAME cuda SOVERSION 1 LIBRARY_OUTPUT_DIRECTORY ${shim_fake_driver_dir})
# Like the real driver, its own references to its functions (the cuGetProcAddress table) are bound
# inside it: without this, the preloaded gpushim exports of the same names would replace them.
target_link_options(shim_fake_libcuda PRIVATE -Wl,-Bsymbolic)

# The libraries under test: the interposer over a router stub that passes everything to the driver
# (tests the shim alone, whatever state the router is in), and the real libgpushim.so when it exists.
add_library(shim_router_passthrough_stub STATIC ${shim_fixtures}/router_passthrough_stub.cpp)
target_link_libraries(shim_router_passthrough_stub PUBLIC gpushim_driver)
gpushim_add_preload_library(gpushim_over_router_stub shim_router_passthrough_stub)
set_target_properties(gpushim_over_router_stub PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
set(shim_libraries gpushim_over_router_stub)
if(TARGET gpushim)
  list(APPEND shim_libraries gpushim)
endif()

# Two libraries loaded after gpushim that define the same symbol, for RTLD_NEXT.
add_library(shim_next_lookup_first SHARED ${shim_fixtures}/next_lookup_first.cpp)
add_library(shim_next_lookup_second SHARED ${shim_fixtures}/next_lookup_second.cpp)
target_link_libraries(shim_next_lookup_first PRIVATE ${CMAKE_DL_LIBS})

add_executable(shim_interposition_test ${CMAKE_CURRENT_SOURCE_DIR}/shim_interposition_test.cpp)
target_include_directories(shim_interposition_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
# Link order is load order: the fake driver, then first, then second.
target_link_libraries(shim_interposition_test PRIVATE shim_fake_libcuda shim_next_lookup_first
                      shim_next_lookup_second GTest::gtest_main ${CMAKE_DL_LIBS})
target_link_options(shim_interposition_test PRIVATE -Wl,--no-as-needed)
foreach(library ${shim_libraries})
  add_dependencies(shim_interposition_test ${library})
  set(environment "LD_PRELOAD=$<TARGET_FILE:${library}>;LD_LIBRARY_PATH=${shim_fake_driver_dir}")
  list(APPEND environment GPUSHIM_BACKEND=passthrough)
  if(library STREQUAL gpushim_over_router_stub)
    list(APPEND environment SHIM_TEST_ROUTER_STUB=1)
  endif()
  gpushim_discover_tests(shim_interposition_test shim_interposition.${library} ENV "${environment}")
endforeach()

add_executable(shim_real_driver_test ${CMAKE_CURRENT_SOURCE_DIR}/shim_real_driver_test.cpp)
target_link_libraries(shim_real_driver_test PRIVATE gpushim_driver GTest::gtest_main ${CMAKE_DL_LIBS})
add_dependencies(shim_real_driver_test shim_fake_libcuda)
gpushim_discover_tests(shim_real_driver_test shim_real_driver ENV "LD_LIBRARY_PATH=${shim_fake_driver_dir}")

add_executable(shim_plain_program ${CMAKE_CURRENT_SOURCE_DIR}/shim_plain_program.cpp)
target_link_libraries(shim_plain_program PRIVATE ${CMAKE_DL_LIBS})
add_executable(shim_without_driver_test ${CMAKE_CURRENT_SOURCE_DIR}/shim_without_driver_test.cpp)
target_link_libraries(shim_without_driver_test PRIVATE GTest::gtest_main)
target_compile_definitions(shim_without_driver_test PRIVATE PLAIN_PROGRAM="$<TARGET_FILE:shim_plain_program>")
add_dependencies(shim_without_driver_test shim_plain_program)
foreach(library ${shim_libraries})
  add_dependencies(shim_without_driver_test ${library})
  gpushim_discover_tests(shim_without_driver_test shim_without_driver.${library}
                         ENV "SHIM_TEST_LIBRARY=$<TARGET_FILE:${library}>")
endforeach()

# cudaMalloc/cudaFree and cudaMallocAsync/cudaFreeAsync of a shared runtime served without it
# (shim/runtime_entry_points.cpp): the real libgpushim.so (tiered) under a program linked to a fake
# libcudart.so.13, with the direct path on (the default) and off, on the mempool backend (whose driver
# calls show the stream served), and under GPUSHIM_FAIL for a failed allocation's single attempt.
if(TARGET gpushim)
  add_library(shim_fake_libcudart SHARED ${shim_fixtures}/fake_libcudart.cpp)
  target_include_directories(shim_fake_libcudart PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(shim_fake_libcudart PRIVATE ${CMAKE_DL_LIBS})
  set_target_properties(shim_fake_libcudart PROPERTIES
    OUTPUT_NAME cudart SOVERSION 13 LIBRARY_OUTPUT_DIRECTORY ${shim_fake_driver_dir})
  target_link_options(shim_fake_libcudart PRIVATE -Wl,-Bsymbolic)

  add_executable(shim_direct_runtime_test ${CMAKE_CURRENT_SOURCE_DIR}/shim_direct_runtime_test.cpp)
  target_include_directories(shim_direct_runtime_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(shim_direct_runtime_test PRIVATE shim_fake_libcudart shim_fake_libcuda GTest::gtest_main)
  add_dependencies(shim_direct_runtime_test gpushim)
  set(direct_preload "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${shim_fake_driver_dir}")
  set(direct_environment "${direct_preload};GPUSHIM_BACKEND=tiered")
  # The direct-runtime tests of one program (`target`, tests named `prefix`...): as configured by default,
  # with GPUSHIM_DIRECT_CUDART=0, on the mempool backend, and one process per failing call
  # (GPUSHIM_FAIL=nth=3 counts the process's allocations), direct and not.
  function(shim_direct_runtime_tests target prefix)
    gpushim_discover_tests(${target} ${prefix} ENV "${direct_environment}")
    gpushim_discover_tests(${target} ${prefix}_off ENV "${direct_environment};GPUSHIM_DIRECT_CUDART=0")
    gpushim_discover_tests(${target} ${prefix}_mempool ENV "${direct_preload};GPUSHIM_BACKEND=mempool")
    foreach(direct 1 0)
      foreach(call FailedAllocation RefusedStreamOrderedAllocation)
        add_test(NAME ${prefix}_failure.${call}.direct${direct} COMMAND ${target} --gtest_filter=*${call}*)
        set_tests_properties(${prefix}_failure.${call}.direct${direct} PROPERTIES TIMEOUT 60
          FAIL_REGULAR_EXPRESSION "\\[  SKIPPED \\]" ENVIRONMENT
          "${direct_environment};GPUSHIM_DIRECT_CUDART=${direct};GPUSHIM_FAIL=nth=3;GPUSHIM_LOG=quiet")
      endforeach()
    endforeach()
  endfunction()
  shim_direct_runtime_tests(shim_direct_runtime_test shim_direct_runtime)
endif()

# A static runtime's functions redirected (shim/function_redirect.h) after they are found in the
# program's symbol table (shim/program_symbols.h).
add_executable(shim_function_redirect_test ${CMAKE_CURRENT_SOURCE_DIR}/shim_function_redirect_test.cpp
               ${CMAKE_CURRENT_SOURCE_DIR}/shim_function_redirect_second_file.cpp
               ${CMAKE_SOURCE_DIR}/shim/function_redirect.cpp ${CMAKE_SOURCE_DIR}/shim/program_symbols.cpp)
target_include_directories(shim_function_redirect_test PRIVATE ${CMAKE_SOURCE_DIR})
target_link_libraries(shim_function_redirect_test PRIVATE gpushim_elf GTest::gtest_main)
gpushim_discover_tests(shim_function_redirect_test shim_function_redirect)

# The same direct-runtime tests over a fake statically linked runtime (shim/static_runtime_redirects.cpp):
# its six functions start with the real static runtime's prologue
# (tests/fake_driver/fake_static_cudart_entries.S), and gpushim redirects them at load.
if(TARGET gpushim AND CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  enable_language(ASM)
  # The fake static runtime, linked into each program that needs one (bench/router_pair_bench too).
  add_library(shim_fake_static_cudart OBJECT ${shim_fixtures}/fake_libcudart.cpp ${shim_fixtures}/fake_static_cudart_entries.S)
  target_include_directories(shim_fake_static_cudart PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_compile_definitions(shim_fake_static_cudart PRIVATE FAKE_CUDART_STATIC)
  add_executable(shim_direct_static_runtime_test ${CMAKE_CURRENT_SOURCE_DIR}/shim_direct_runtime_test.cpp
                 $<TARGET_OBJECTS:shim_fake_static_cudart>)
  target_include_directories(shim_direct_static_runtime_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(shim_direct_static_runtime_test PRIVATE shim_fake_libcuda GTest::gtest_main ${CMAKE_DL_LIBS})
  add_dependencies(shim_direct_static_runtime_test gpushim)
  shim_direct_runtime_tests(shim_direct_static_runtime_test shim_direct_static_runtime)
  # Without the runtime's mark (__cudaRegisterFatBinary) the same functions are the program's own: left alone.
  add_executable(shim_direct_unmarked_runtime_test ${CMAKE_CURRENT_SOURCE_DIR}/shim_direct_runtime_test.cpp
                 ${shim_fixtures}/fake_libcudart.cpp ${shim_fixtures}/fake_static_cudart_entries.S)
  target_include_directories(shim_direct_unmarked_runtime_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_compile_definitions(shim_direct_unmarked_runtime_test PRIVATE FAKE_CUDART_STATIC FAKE_CUDART_UNMARKED)
  target_link_libraries(shim_direct_unmarked_runtime_test PRIVATE shim_fake_libcuda GTest::gtest_main ${CMAKE_DL_LIBS})
  add_dependencies(shim_direct_unmarked_runtime_test gpushim)
  gpushim_discover_tests(shim_direct_unmarked_runtime_test shim_direct_unmarked_runtime
                         ENV "${direct_environment};SHIM_TEST_NOT_REDIRECTED=1")
  # gpushim loaded late (dlopen) while another thread runs: nothing rewritten.
  add_executable(shim_static_runtime_late_load_test ${CMAKE_CURRENT_SOURCE_DIR}/shim_static_runtime_late_load_test.cpp
                 $<TARGET_OBJECTS:shim_fake_static_cudart>)
  target_include_directories(shim_static_runtime_late_load_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(shim_static_runtime_late_load_test PRIVATE GTest::gtest_main ${CMAKE_DL_LIBS} Threads::Threads)
  add_dependencies(shim_static_runtime_late_load_test gpushim)
  gpushim_discover_tests(shim_static_runtime_late_load_test shim_static_runtime_late_load
                         ENV "SHIM_TEST_LIBRARY=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${shim_fake_driver_dir}")
endif()
