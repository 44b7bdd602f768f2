# test_apps/peer_access (owner: peers): memory from plain cudaMalloc on GPU 0, written by a kernel on
# GPU 1, checked on GPU 0; peer vs local read bandwidth; placement per granule. Include this file from
# test_apps/CMakeLists.txt. It links the driver API for cuMemRetainAllocationHandle (where memory lives).
add_executable(peer_access ${CMAKE_CURRENT_LIST_DIR}/peer_access.cu)
target_link_libraries(peer_access PRIVATE gpushim_kernels CUDA::cuda_driver)
set_target_properties(peer_access PROPERTIES CUDA_RUNTIME_LIBRARY Static)

# The three transparency checks of docs/peers.md, each a program that knows nothing of gpushim: peer
# copies after cudaDeviceEnablePeerAccess, a default pool shared by cudaMemPoolSetAccess, and texture
# objects over small blocks. tests/gpu.cmake runs each without gpushim and under every backend.
foreach(app peer_copy_check pool_access_check texture_check)
  add_executable(${app} ${CMAKE_CURRENT_LIST_DIR}/${app}.cu)
  target_link_libraries(${app} PRIVATE gpushim_kernels)
  set_target_properties(${app} PROPERTIES CUDA_RUNTIME_LIBRARY Static)
endforeach()
