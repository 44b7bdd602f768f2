# The verdicts of the GPU check scripts (scripts/gpu_test_verdict.sh, scripts/served_by_gpushim.sh) on
# made-up logs: CPU only, so CI proves a GPU run that tested nothing cannot pass.
add_test(NAME gpu_check_scripts_verdicts COMMAND ${CMAKE_CURRENT_LIST_DIR}/gpu_check_scripts_test.sh)
# scripts/activity_lock_counts.py still finds, in router/stream_activity.cpp, every line it instruments
# (docs/perf-notes.md cites its counts), so a change there that moves one fails here, not in the next
# session that reaches for the tool.
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  add_test(NAME activity_lock_counts_applies
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/activity_lock_counts_test.sh ${PROJECT_SOURCE_DIR} ${Python3_EXECUTABLE})
endif()
