# Host spill (GPUSHIM_SPILL=host, docs/host-spill.md). Included from test_apps/CMakeLists.txt.
# host_spill_check: 1.5x the limit allocated with cudaMalloc, kernels over all of it, every byte verified.
# host_memory_probe: the facts docs/host-spill.md records (host-located VMM memory, its bandwidth); a
# probe to run by hand, not a test. Both link the driver API to ask where memory lives.
add_executable(host_spill_check ${CMAKE_CURRENT_LIST_DIR}/host_spill_check.cu)
target_link_libraries(host_spill_check PRIVATE gpushim_kernels CUDA::cuda_driver)
set_target_properties(host_spill_check PROPERTIES CUDA_RUNTIME_LIBRARY Static)

add_executable(host_memory_probe ${CMAKE_CURRENT_LIST_DIR}/host_memory_probe.cu)
target_link_libraries(host_memory_probe PRIVATE CUDA::cuda_driver)
set_target_properties(host_memory_probe PROPERTIES CUDA_RUNTIME_LIBRARY Static)
