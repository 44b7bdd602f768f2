# The benchmark tools that turn result folders into tables (bench/macro_report.py, including the
# --repeat medians): tested on fake result folders, no GPU. Standard-library Python only.
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  add_test(NAME bench_macro_report COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/bench/test_macro_report.py)
  # The PyTorch workloads' schedules and arguments, and the NVML sampler's choice of GPU (no torch needed).
  add_test(NAME bench_workload_schedules
           COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/bench/test_workload_schedules.py)
  # bench/torch_spill.py's driver over a fake training run (docs/host-spill.md).
  add_test(NAME bench_torch_spill COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/bench/test_torch_spill.py)
endif()
