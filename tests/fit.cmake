# Fit of the backends on a synthetic LLM decoding loop (tests/decoding_workload.h): peak reserved /
# peak live within the bounds docs/perf-notes.md ("Fit on a growing KV cache") explains.
add_executable(kv_cache_fit_test ${CMAKE_CURRENT_SOURCE_DIR}/kv_cache_fit_test.cpp)
target_link_libraries(kv_cache_fit_test PRIVATE gpushim_algorithms gpushim_providers GTest::gtest_main)
gpushim_discover_tests(kv_cache_fit_test kv_cache_fit TIMEOUT 300)
