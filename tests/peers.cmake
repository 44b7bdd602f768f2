# Peer-mapped memory (owner: peers): the placement arithmetic and the simulated devices on the CPU, the
# CUDA peer provider on a GPU (label "gpu"). test_apps/peer_access runs from tests/gpu.cmake, which the
# GPU machine's standalone test build includes too.

add_executable(placement_test ${CMAKE_CURRENT_SOURCE_DIR}/placement_test.cpp)
target_link_libraries(placement_test PRIVATE gpushim_providers GTest::gtest_main)
gtest_discover_tests(placement_test DISCOVERY_TIMEOUT 30)

if(TARGET gpushim_vmm_pieces)
  add_executable(peers_simulated_devices_test ${CMAKE_CURRENT_SOURCE_DIR}/peers_simulated_devices_test.cpp)
  target_link_libraries(peers_simulated_devices_test PRIVATE gpushim_vmm_pieces gpushim_providers
                        GTest::gtest_main)
  gtest_discover_tests(peers_simulated_devices_test DISCOVERY_TIMEOUT 30)
endif()

if(NOT TARGET gpushim_driver OR NOT TARGET gpushim_tracing)
  return()
endif()

set(peers_provider_library gpushim_cuda_providers)

add_executable(peers_cuda_provider_test ${CMAKE_CURRENT_SOURCE_DIR}/peers_cuda_provider_test.cpp)
target_link_libraries(peers_cuda_provider_test PRIVATE ${peers_provider_library} gpushim_tracing
                      GTest::gtest_main)
add_test(NAME peers_cuda_provider COMMAND peers_cuda_provider_test)
# GTEST_SKIP (no CUDA device) must show as skipped, not passed.
set_tests_properties(peers_cuda_provider PROPERTIES LABELS gpu SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
# It maps more than every device holds (MapLargerThanEveryDeviceFailsAndLeavesNothing): it runs alone,
# like the other tests that fill a GPU (tests/gpu.cmake, gpushim_gpu_fills_device).
set_tests_properties(peers_cuda_provider PROPERTIES RUN_SERIAL TRUE RESOURCE_LOCK gpu_memory)
