# Router logic that needs no driver: tests/router_*.cpp against gpushim_router_core.
if(TARGET gpushim_router_core)
  foreach(name live_block_table free_fence_queue pitch memory_report access_grants fault_injection oom_dump_state
               spin_lock live_blocks peak_growth stream_answers)
    add_executable(router_${name}_test ${CMAKE_CURRENT_SOURCE_DIR}/router_${name}_test.cpp)
    target_link_libraries(router_${name}_test PRIVATE gpushim_router_core GTest::gtest_main)
    gtest_discover_tests(router_${name}_test DISCOVERY_MODE PRE_TEST)
  endforeach()
endif()

# The router's per-thread pieces linked statically, with the fake driver (tests/shim.cmake) for the driver
# symbols they could call.
if(TARGET gpushim_router)
  add_executable(router_returned_blocks_test ${CMAKE_CURRENT_SOURCE_DIR}/router_returned_blocks_test.cpp)
  target_link_libraries(router_returned_blocks_test PRIVATE gpushim_router shim_fake_libcuda GTest::gtest_main)
  gtest_discover_tests(router_returned_blocks_test DISCOVERY_MODE PRE_TEST)
endif()
