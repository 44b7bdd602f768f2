# Tests of the buddy, slab and tiered backends on host memory (HostProvider), and their CPU bench.
# The bench is a program, not a test: `ninja cpu_backends_bench && ./bench/cpu_backends_bench`.
foreach(name buddy_allocator slab_allocator tiered_allocator)
  add_executable(${name}_test ${CMAKE_CURRENT_SOURCE_DIR}/${name}_test.cpp)
  target_link_libraries(${name}_test PRIVATE gpushim_algorithms gpushim_providers GTest::gtest_main)
  gtest_discover_tests(${name}_test DISCOVERY_TIMEOUT 30)
endforeach()

add_executable(cpu_backends_bench ${CMAKE_SOURCE_DIR}/bench/cpu_backends_bench.cpp)
target_link_libraries(cpu_backends_bench PRIVATE gpushim_algorithms gpushim_providers Threads::Threads)
set_target_properties(cpu_backends_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
