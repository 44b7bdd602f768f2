# Test apps of the ecosystem checks (docs/ecosystem.md): IPC between two processes, pointer range
# queries, and a known out-of-bounds write for compute-sanitizer. Included from test_apps/CMakeLists.txt.
add_executable(ipc_check ${CMAKE_CURRENT_LIST_DIR}/ipc_check.cu)
target_link_libraries(ipc_check PRIVATE gpushim_kernels)
set_target_properties(ipc_check PROPERTIES CUDA_RUNTIME_LIBRARY Static)

add_executable(pointer_query_check ${CMAKE_CURRENT_LIST_DIR}/pointer_query_check.cu)
target_link_libraries(pointer_query_check PRIVATE CUDA::cuda_driver)
set_target_properties(pointer_query_check PROPERTIES CUDA_RUNTIME_LIBRARY Static)

# -lineinfo: compute-sanitizer names the file and line of the bad write.
add_executable(sanitizer_oob ${CMAKE_CURRENT_LIST_DIR}/sanitizer_oob.cu)
target_compile_options(sanitizer_oob PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
set_target_properties(sanitizer_oob PROPERTIES CUDA_RUNTIME_LIBRARY Static)
# The same program linked to libcudart.so: gpushim serves its cudaMalloc/cudaFree without the runtime,
# and compute-sanitizer must still see the blocks' bounds (GPUSHIM_DIRECT_CUDART).
add_executable(sanitizer_oob_shared ${CMAKE_CURRENT_LIST_DIR}/sanitizer_oob.cu)
target_compile_options(sanitizer_oob_shared PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
set_target_properties(sanitizer_oob_shared PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
