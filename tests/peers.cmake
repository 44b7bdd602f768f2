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

# The CUDA peer provider. providers/CMakeLists.txt builds only cuda_vmm_provider.cpp into
# gpushim_cuda_providers so far; until cuda_peer_provider.cpp is listed there, the test builds it alone.
if(TARGET gpushim_cuda_providers)
  get_target_property(peers_cuda_sources gpushim_cuda_providers SOURCES)
else()
  set(peers_cuda_sources "")
endif()
if(peers_cuda_sources MATCHES "cuda_peer_provider")
  set(peers_provider_library gpushim_cuda_providers)
else()
  add_library(peers_cuda_peer_provider STATIC ${CMAKE_SOURCE_DIR}/providers/cuda_peer_provider.cpp)
  target_link_libraries(peers_cuda_peer_provider PUBLIC gpushim_providers gpushim_driver gpushim_tracing)
  set(peers_provider_library peers_cuda_peer_provider)
endif()

add_executable(peers_cuda_provider_test ${CMAKE_CURRENT_SOURCE_DIR}/peers_cuda_provider_test.cpp)
target_link_libraries(peers_cuda_provider_test PRIVATE ${peers_provider_library} gpushim_tracing
                      GTest::gtest_main)
add_test(NAME peers_cuda_provider COMMAND peers_cuda_provider_test)
set_tests_properties(peers_cuda_provider PROPERTIES LABELS gpu)

# test_apps/peer_access belongs to test_apps/ (test_apps/peer_access.cmake); register it here only while
# test_apps/CMakeLists.txt does not include that file yet.
if(CMAKE_CUDA_COMPILER AND TARGET gpushim_kernels AND NOT TARGET peer_access)
  include(${CMAKE_SOURCE_DIR}/test_apps/peer_access.cmake)
endif()
if(TARGET peer_access AND TARGET gpushim)
  foreach(policy local interleave spill)
    add_test(NAME peer_access.${policy} COMMAND peer_access)
    set_tests_properties(peer_access.${policy} PROPERTIES LABELS gpu ENVIRONMENT
      "LD_PRELOAD=$<TARGET_FILE:gpushim>;GPUSHIM_BACKEND=vmm;GPUSHIM_PEERS=all;GPUSHIM_PLACEMENT=${policy};NCCL_NVLS_ENABLE=0")
  endforeach()
endif()
