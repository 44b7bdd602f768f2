# Peer-mapped memory (owner: peers): the placement arithmetic and the simulated devices on the CPU, the
# CUDA peer provider on a GPU (label "gpu"), and test_apps/peer_access under gpushim (label "gpu").

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

if(TARGET peer_access AND TARGET gpushim AND TARGET gpu_probe)
  foreach(policy local interleave spill)
    # Through the GPU runner: skips (77) where there is no GPU, preloads gpushim (vmm) and checks its stats.
    add_test(NAME peer_access.${policy}
             COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/gpu/run_gpu_test.sh --probe $<TARGET_FILE:gpu_probe>
                     --backend vmm --lib $<TARGET_FILE:gpushim> --search ${CMAKE_BINARY_DIR}
                     -- $<TARGET_FILE:peer_access>)
    set_tests_properties(peer_access.${policy} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 120 ENVIRONMENT
      "GPUSHIM_PEERS=all;GPUSHIM_PLACEMENT=${policy};NCCL_NVLS_ENABLE=0")
  endforeach()
endif()
