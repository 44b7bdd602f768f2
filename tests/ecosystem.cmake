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
