# Ecosystem (docs/ecosystem.md): CPU tests of the IPC handle, the export registry, descriptor passing
# between two processes, and the NVTX heap bookkeeping. GPU entries are in gpu_ecosystem.cmake.

if(TARGET gpushim_ipc)
  foreach(name ipc_handle ipc_export_registry ipc_fd_passing)
    add_executable(${name}_test ${CMAKE_CURRENT_LIST_DIR}/${name}_test.cpp)
    target_link_libraries(${name}_test PRIVATE gpushim_ipc GTest::gtest_main)
    gtest_discover_tests(${name}_test DISCOVERY_MODE PRE_TEST)
  endforeach()
endif()
if(TARGET gpushim_annotations)
  add_executable(annotations_heap_table_test ${CMAKE_CURRENT_LIST_DIR}/annotations_heap_table_test.cpp)
  target_link_libraries(annotations_heap_table_test PRIVATE gpushim_annotations GTest::gtest_main)
  gtest_discover_tests(annotations_heap_table_test DISCOVERY_MODE PRE_TEST)
endif()

# The annotations against a stand-in NVTX memory tool (loaded through NVTX_INJECTION64_PATH): the exact
# calls compute-sanitizer would see — a heap per mapping, a region per block, everything unregistered.
if(TARGET gpushim_annotations)
  add_library(fake_nvtx_memory_tool MODULE ${CMAKE_CURRENT_LIST_DIR}/annotations_fake_nvtx_memory_tool.cpp)
  target_include_directories(fake_nvtx_memory_tool SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  add_executable(annotations_nvtx_tool_test ${CMAKE_CURRENT_LIST_DIR}/annotations_nvtx_tool_test.cpp)
  target_link_libraries(annotations_nvtx_tool_test PRIVATE gpushim_annotations GTest::gtest_main ${CMAKE_DL_LIBS})
  target_compile_definitions(annotations_nvtx_tool_test PRIVATE
                             GPUSHIM_FAKE_NVTX_TOOL="$<TARGET_FILE:fake_nvtx_memory_tool>")
  add_dependencies(annotations_nvtx_tool_test fake_nvtx_memory_tool)
  gtest_discover_tests(annotations_nvtx_tool_test DISCOVERY_MODE PRE_TEST)
endif()
