# The verdicts of the GPU check scripts (scripts/gpu_test_verdict.sh, scripts/served_by_gpushim.sh) on
# made-up logs: CPU only, so CI proves a GPU run that tested nothing cannot pass.
add_test(NAME gpu_check_scripts_verdicts COMMAND ${CMAKE_CURRENT_LIST_DIR}/gpu_check_scripts_test.sh)
# scripts/activity_lock_counts.py and scripts/marked_batch_round_trip.py still find every line they
# instrument (docs/perf-notes.md cites their counts), so a change that moves one fails here, not in the
# next session that reaches for the tools.
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  add_test(NAME instrumented_copies_apply
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/instrumented_copies_test.sh ${PROJECT_SOURCE_DIR} ${Python3_EXECUTABLE})
endif()
