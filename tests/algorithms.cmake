# Tests of the algorithms over host memory (owner: vmm): the providers, the vmm arena, the decorators,
# and the conformance suite every provider-backed backend must pass.

# The vmm pieces alone, so their tests build even while other backends in gpushim_algorithms are not
# there yet (the registry lists every backend's factory).
add_library(gpushim_vmm_pieces STATIC
  ${CMAKE_SOURCE_DIR}/allocators/vmm_arena.cpp
  ${CMAKE_SOURCE_DIR}/allocators/arena_shards.cpp
  ${CMAKE_SOURCE_DIR}/allocators/statistics_allocator.cpp
  ${CMAKE_SOURCE_DIR}/allocators/limiting_allocator.cpp)
target_link_libraries(gpushim_vmm_pieces PUBLIC gpushim_providers Threads::Threads)

foreach(test host_provider_test vmm_arena_test arena_shards_test decorators_test adaptive_mutex_test)
  add_executable(${test} ${CMAKE_CURRENT_SOURCE_DIR}/${test}.cpp)
  target_link_libraries(${test} PRIVATE gpushim_vmm_pieces GTest::gtest_main)
  gtest_discover_tests(${test} DISCOVERY_TIMEOUT 30)
endforeach()

# Runs over backend_table(), so it needs every registered backend's sources.
set(gpushim_registered_backend_sources buddy_allocator.cpp slab_allocator.cpp tiered_allocator.cpp)
set(gpushim_all_backends_present TRUE)
foreach(src ${gpushim_registered_backend_sources})
  if(NOT EXISTS ${CMAKE_SOURCE_DIR}/allocators/${src})
    set(gpushim_all_backends_present FALSE)
  endif()
endforeach()
if(gpushim_all_backends_present)
  add_executable(allocator_conformance_test ${CMAKE_CURRENT_SOURCE_DIR}/allocator_conformance_test.cpp)
  target_link_libraries(allocator_conformance_test PRIVATE gpushim_algorithms GTest::gtest_main)
  gtest_discover_tests(allocator_conformance_test DISCOVERY_TIMEOUT 30)
endif()

add_executable(thread_cache_allocator_test ${CMAKE_CURRENT_SOURCE_DIR}/thread_cache_allocator_test.cpp)
target_link_libraries(thread_cache_allocator_test PRIVATE gpushim_algorithms GTest::gtest_main)
gtest_discover_tests(thread_cache_allocator_test DISCOVERY_TIMEOUT 30)

add_executable(owner_biased_lock_test ${CMAKE_CURRENT_SOURCE_DIR}/owner_biased_lock_test.cpp)
target_link_libraries(owner_biased_lock_test PRIVATE gpushim_algorithms GTest::gtest_main)
gtest_discover_tests(owner_biased_lock_test DISCOVERY_TIMEOUT 30)
