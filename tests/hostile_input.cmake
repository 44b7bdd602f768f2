# Hostile input (docs/fuzzing.md): escaping of untrusted text in messages, and the IPC socket's message
# checks against garbage. CPU only; the trace readers' cases are in trace_hostile_input_test.cpp.
add_executable(settings_escaping_test settings_escaping_test.cpp)
target_link_libraries(settings_escaping_test PRIVATE gpushim_config GTest::gtest_main)
gtest_discover_tests(settings_escaping_test)

# The socket protocol has no CUDA in it: built from its sources, so the CPU-only and sanitizer builds
# run it too.
add_executable(ipc_export_protocol_test ipc_export_protocol_test.cpp
  ${CMAKE_SOURCE_DIR}/ipc/export_protocol.cpp ${CMAKE_SOURCE_DIR}/ipc/export_server.cpp
  ${CMAKE_SOURCE_DIR}/ipc/export_registry.cpp ${CMAKE_SOURCE_DIR}/ipc/fd_passing.cpp)
target_link_libraries(ipc_export_protocol_test PRIVATE gpushim_config Threads::Threads GTest::gtest_main)
gtest_discover_tests(ipc_export_protocol_test)
