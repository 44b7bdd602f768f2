# The verdicts of the GPU check scripts (scripts/gpu_test_verdict.sh, scripts/served_by_gpushim.sh) on
# made-up logs: CPU only, so CI proves a GPU run that tested nothing cannot pass.
add_test(NAME gpu_check_scripts_verdicts COMMAND ${CMAKE_CURRENT_LIST_DIR}/gpu_check_scripts_test.sh)
