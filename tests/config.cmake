# Tests of config/ (settings table), diagnostics/ (log) and tools/ (the gpushim command).
add_executable(settings_test settings_test.cpp)
target_link_libraries(settings_test PRIVATE gpushim_config GTest::gtest_main)
gtest_discover_tests(settings_test)

# The log filter is read from the real environment once per process, so the binary runs once per level.
add_executable(log_test log_test.cpp)
target_link_libraries(log_test PRIVATE gpushim_diagnostics GTest::gtest_main)
foreach(level default quiet warn info debug)
  set(log_env "GPUSHIM_LOG=${level}")
  if(level STREQUAL "default")
    set(log_env "GPUSHIM_LOG=")
  endif()
  gpushim_discover_tests(log_test log_test.${level} ENV "${log_env}")
endforeach()

if(TARGET gpushim_algorithms)
  add_executable(settings_backend_names_test settings_backend_names_test.cpp)
  target_link_libraries(settings_backend_names_test PRIVATE gpushim_algorithms gpushim_config GTest::gtest_main)
  gtest_discover_tests(settings_backend_names_test)
endif()

if(TARGET gpushim_cli)
  add_executable(cli_test cli_test.cpp)
  target_link_libraries(cli_test PRIVATE gpushim_config GTest::gtest_main)
  target_compile_definitions(cli_test PRIVATE GPUSHIM_CLI_PATH="$<TARGET_FILE:gpushim_cli>"
                             GPUSHIM_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
                             GPUSHIM_TEST_DATA_DIR="${CMAKE_CURRENT_LIST_DIR}/data")
  add_dependencies(cli_test gpushim_cli)
  if(TARGET gpushim_interposer)  # the fake libcuda of tests/shim.cmake tells `gpushim check` of devices
    target_compile_definitions(cli_test PRIVATE GPUSHIM_FAKE_DRIVER_DIR="${CMAKE_CURRENT_BINARY_DIR}/fake_driver")
    add_dependencies(cli_test shim_fake_libcuda)
  endif()
  gtest_discover_tests(cli_test)
endif()
