# Tests of the buddy, slab and tiered backends on host memory (HostProvider). Their bench: bench/.
foreach(name buddy_allocator slab_allocator tiered_allocator)
  add_executable(${name}_test ${CMAKE_CURRENT_SOURCE_DIR}/${name}_test.cpp)
  target_link_libraries(${name}_test PRIVATE gpushim_algorithms gpushim_providers GTest::gtest_main)
  gtest_discover_tests(${name}_test DISCOVERY_TIMEOUT 30)
endforeach()
