# The real libgpushim.so (interposer + router + every backend) over the fake driver, end to end: one run
# of router_end_to_end_test per backend, and one per backend under GPUSHIM_LIMIT. CPU only (no "gpu"
# label): the fake driver keeps VMM, events and streams in host memory. Also builds the CPU pair bench
# (bench/router_pair_bench.cpp), a program, not a test.
if(NOT TARGET gpushim)
  return()
endif()

# shim_fake_libcuda is defined in tests/shim.cmake; targets resolve at generate time, in any order.
set(router_e2e_fake_dir ${CMAKE_CURRENT_BINARY_DIR}/fake_driver)

add_executable(router_end_to_end_test ${CMAKE_CURRENT_SOURCE_DIR}/router_end_to_end_test.cpp)
target_include_directories(router_end_to_end_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(router_end_to_end_test PRIVATE shim_fake_libcuda GTest::gtest_main Threads::Threads)
add_dependencies(router_end_to_end_test gpushim)

set(router_e2e_limit 268435456)  # 256 MiB: a few 32 MiB blocks, then CUDA_ERROR_OUT_OF_MEMORY
# A filtered run exists for the one test it selects: that test skipping means the run proved nothing.
set(router_e2e_no_skip "\\[  SKIPPED \\]")
foreach(backend vmm buddy slab tiered passthrough mempool)
  # GPUSHIM_STATS=1: passthrough without anything to count is a pure forward to the driver (router.cpp,
  # g_pure_passthrough); these tests are about the router's own bookkeeping, so they ask for counting.
  set(environment "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend};GPUSHIM_STATS=1")
  add_test(NAME router_e2e.${backend} COMMAND router_end_to_end_test)
  set_tests_properties(router_e2e.${backend} PROPERTIES ENVIRONMENT "${environment}" TIMEOUT 120)
  add_test(NAME router_e2e_limit.${backend} COMMAND router_end_to_end_test --gtest_filter=*Limit*)
  set_tests_properties(router_e2e_limit.${backend} PROPERTIES TIMEOUT 120
    FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}" ENVIRONMENT
    "${environment};GPUSHIM_LIMIT=${router_e2e_limit};E2E_LIMIT_BYTES=${router_e2e_limit}")
  add_test(NAME router_e2e_two_devices.${backend} COMMAND router_end_to_end_test --gtest_filter=*TwoDevices*)
  set_tests_properties(router_e2e_two_devices.${backend} PROPERTIES TIMEOUT 120
    FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}" ENVIRONMENT
    "${environment};FAKE_CUDA_DEVICES=2")
endforeach()

add_executable(router_pair_bench ${CMAKE_SOURCE_DIR}/bench/router_pair_bench.cpp)
target_include_directories(router_pair_bench PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(router_pair_bench PRIVATE shim_fake_libcuda Threads::Threads)
target_compile_definitions(router_pair_bench PRIVATE GPUSHIM_LIBRARY="$<TARGET_FILE:gpushim>"
                           FAKE_DRIVER_DIR="${router_e2e_fake_dir}")
add_dependencies(router_pair_bench gpushim)
set_target_properties(router_pair_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)

# The live-block table against a reference model (router/live_block_table.*, pure C++).
add_executable(router_live_block_table_model_test ${CMAKE_CURRENT_SOURCE_DIR}/router_live_block_table_model_test.cpp)
target_link_libraries(router_live_block_table_model_test PRIVATE gpushim_router_core GTest::gtest_main)
gtest_discover_tests(router_live_block_table_model_test DISCOVERY_MODE PRE_TEST)

# GPUSHIM_PEERS over two fake devices, interleaved, under GPUSHIM_LIMIT: the cap holds across devices and
# the out-of-memory report says which devices back the memory (router/out_of_memory.cpp).
add_test(NAME router_e2e_peers_limit.vmm COMMAND router_end_to_end_test --gtest_filter=*Limit*)
set_tests_properties(router_e2e_peers_limit.vmm PROPERTIES TIMEOUT 120
  FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}"
  ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=vmm;GPUSHIM_STATS=1;FAKE_CUDA_DEVICES=2;GPUSHIM_PEERS=all;GPUSHIM_PLACEMENT=interleave;GPUSHIM_LIMIT=${router_e2e_limit};E2E_LIMIT_BYTES=${router_e2e_limit};E2E_EXPECT_PLACEMENT=1")

# GPUSHIM_FAIL and GPUSHIM_OOM_DUMP (router/fault_injection.*, router/out_of_memory.cpp): the program runs
# itself again as a child per case, with that case's settings. Two backends: one carving VMM memory,
# one driver-backed.
add_executable(router_oom_end_to_end_test ${CMAKE_CURRENT_SOURCE_DIR}/router_oom_end_to_end_test.cpp)
target_include_directories(router_oom_end_to_end_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(router_oom_end_to_end_test PRIVATE shim_fake_libcuda GTest::gtest_main Threads::Threads)
if(TARGET gpushim_trace_tools)
  target_link_libraries(router_oom_end_to_end_test PRIVATE gpushim_trace_tools)
endif()
add_dependencies(router_oom_end_to_end_test gpushim)
foreach(backend tiered passthrough)
  add_test(NAME router_oom_e2e.${backend} COMMAND router_oom_end_to_end_test)
  set_tests_properties(router_oom_e2e.${backend} PROPERTIES TIMEOUT 120 ENVIRONMENT
    "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend}")
endforeach()
