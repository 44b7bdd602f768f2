# Host spill (GPUSHIM_SPILL=host, docs/host-spill.md). On the CPU: the spilling allocator over host
# memory, its report lines, and libgpushim.so end to end over the fake driver (which keeps host-located
# VMM memory apart from device memory). On a GPU (label "gpu"): test_apps/host_spill_check under a
# 4 GiB GPUSHIM_LIMIT, spilling and not.

if(TARGET gpushim_vmm_pieces AND TARGET gpushim_router_core)
  add_executable(spill_allocator_test ${CMAKE_CURRENT_SOURCE_DIR}/spill_allocator_test.cpp
                 ${CMAKE_SOURCE_DIR}/allocators/spilling_allocator.cpp)
  target_link_libraries(spill_allocator_test PRIVATE gpushim_vmm_pieces gpushim_router_core GTest::gtest_main)
  gtest_discover_tests(spill_allocator_test DISCOVERY_TIMEOUT 30)
endif()

if(TARGET gpushim AND TARGET shim_fake_libcuda)
  set(spill_fake_dir ${CMAKE_CURRENT_BINARY_DIR}/fake_driver)
  add_executable(router_spill_end_to_end_test ${CMAKE_CURRENT_SOURCE_DIR}/router_spill_end_to_end_test.cpp)
  target_include_directories(router_spill_end_to_end_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(router_spill_end_to_end_test PRIVATE shim_fake_libcuda GTest::gtest_main)
  add_dependencies(router_spill_end_to_end_test gpushim)
  set(spill_limit 268435456)        # GPUSHIM_LIMIT 256 MiB
  set(spill_host_limit 134217728)   # GPUSHIM_SPILL_LIMIT 128 MiB
  set(spill_env "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${spill_fake_dir};GPUSHIM_STATS=1;GPUSHIM_LIMIT=${spill_limit};E2E_LIMIT_BYTES=${spill_limit};E2E_SPILL_LIMIT_BYTES=${spill_host_limit}")
  # Each run must run its tests: a skip means the run proved nothing.
  set(spill_no_skip "\\[  SKIPPED \\]")
  # The spilling test, whose exit statistics must carry the spill line (checked on its whole output).
  set(spill_run_and_check bash ${CMAKE_CURRENT_SOURCE_DIR}/spill_e2e_with_stats.sh
      $<TARGET_FILE:router_spill_end_to_end_test>)
  foreach(backend vmm buddy slab tiered)
    add_test(NAME router_spill_e2e.${backend} COMMAND ${spill_run_and_check})
    set_tests_properties(router_spill_e2e.${backend} PROPERTIES TIMEOUT 120 FAIL_REGULAR_EXPRESSION "${spill_no_skip}"
      ENVIRONMENT "${spill_env};GPUSHIM_BACKEND=${backend};GPUSHIM_SPILL=host;GPUSHIM_SPILL_LIMIT=${spill_host_limit}")
    # GPUSHIM_SPILL unset: the cap fails allocations as before, and no host memory is touched.
    add_test(NAME router_spill_e2e_off.${backend} COMMAND router_spill_end_to_end_test --gtest_filter=*WithoutSpilling*)
    set_tests_properties(router_spill_e2e_off.${backend} PROPERTIES TIMEOUT 120
      FAIL_REGULAR_EXPRESSION "${spill_no_skip};spilled to host" ENVIRONMENT "${spill_env};GPUSHIM_BACKEND=${backend}")
  endforeach()
  # Idle memory given back at once (threshold 2 MiB, one granule): the device's reserve falls below the
  # limit while spilled blocks live, so cuMemGetInfo's free shows whether host memory is (wrongly)
  # counted as the device's.
  add_test(NAME router_spill_e2e_release_at_once.vmm COMMAND ${spill_run_and_check})
  set_tests_properties(router_spill_e2e_release_at_once.vmm PROPERTIES TIMEOUT 120 FAIL_REGULAR_EXPRESSION "${spill_no_skip}"
    ENVIRONMENT "${spill_env};GPUSHIM_BACKEND=vmm;GPUSHIM_SPILL=host;GPUSHIM_SPILL_LIMIT=${spill_host_limit};GPUSHIM_VMM_RELEASE_THRESHOLD=2MiB")
  # Where it cannot spill, it says so once and fails at the cap as before: a driver-backed backend, and a
  # driver that cannot map host memory.
  add_test(NAME router_spill_e2e_passthrough COMMAND router_spill_end_to_end_test --gtest_filter=*WithoutSpilling*)
  set_tests_properties(router_spill_e2e_passthrough PROPERTIES TIMEOUT 120 FAIL_REGULAR_EXPRESSION "${spill_no_skip}"
    PASS_REGULAR_EXPRESSION "GPUSHIM_SPILL=host: backend passthrough does not spill.*\\[  PASSED  \\] 1 test"
    ENVIRONMENT "${spill_env};GPUSHIM_BACKEND=passthrough;GPUSHIM_SPILL=host")
  add_test(NAME router_spill_e2e_no_host_vmm COMMAND router_spill_end_to_end_test --gtest_filter=*WithoutSpilling*)
  set_tests_properties(router_spill_e2e_no_host_vmm PROPERTIES TIMEOUT 120 FAIL_REGULAR_EXPRESSION "${spill_no_skip}"
    PASS_REGULAR_EXPRESSION "device 0 cannot map host memory.*\\[  PASSED  \\] 1 test"
    ENVIRONMENT "${spill_env};GPUSHIM_BACKEND=vmm;GPUSHIM_SPILL=host;FAKE_CUDA_NO_HOST_VMM=1")
endif()
