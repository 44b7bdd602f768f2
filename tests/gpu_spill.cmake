# GPU tests of host spill (label "gpu"; skipped with exit 77 where there is no GPU), under a 4 GiB
# GPUSHIM_LIMIT (modest: the lent machines have limited pinned host memory; 1.5x spills 2 GiB):
#   gpu_host_spill_<B>      GPUSHIM_SPILL=host: test_apps/host_spill_check allocates 1.5x the limit, runs
#                           kernels over it, verifies every byte, finds >= 2 GiB in host memory
#   gpu_host_spill_off_<B>  no GPUSHIM_SPILL: the allocation past the limit fails, as it always did
# Works in the main build and in tests/gpu/standalone (which includes this file).
set(_spill_runner ${CMAKE_CURRENT_LIST_DIR}/gpu/run_gpu_test.sh)
if(GPUSHIM_GPU_TESTS_STANDALONE)
  set(_spill_probe ${GPUSHIM_BUILD_DIR}/test_apps/gpu_probe)
  set(_spill_app ${GPUSHIM_BUILD_DIR}/test_apps/host_spill_check)
  set(_spill_lib "")
  set(_spill_search ${GPUSHIM_BUILD_DIR})
else()
  if(NOT TARGET host_spill_check OR NOT TARGET gpu_probe)
    return()
  endif()
  set(_spill_probe $<TARGET_FILE:gpu_probe>)
  set(_spill_app $<TARGET_FILE:host_spill_check>)
  if(TARGET gpushim)
    set(_spill_lib $<TARGET_FILE:gpushim>)
  else()
    set(_spill_lib "")
  endif()
  set(_spill_search ${CMAKE_BINARY_DIR})
endif()

set(_spill_tests "")
foreach(backend vmm buddy slab tiered)
  add_test(NAME gpu_host_spill_${backend}
           COMMAND bash ${_spill_runner} --probe ${_spill_probe} --backend ${backend} --lib "${_spill_lib}"
                   --search ${_spill_search} -- ${_spill_app} --factor 1.5 --expect spill)
  set_tests_properties(gpu_host_spill_${backend} PROPERTIES
    ENVIRONMENT "GPUSHIM_LIMIT=4GiB;GPUSHIM_SPILL=host;GPUSHIM_SPILL_LIMIT=4GiB")
  add_test(NAME gpu_host_spill_off_${backend}
           COMMAND bash ${_spill_runner} --probe ${_spill_probe} --backend ${backend} --lib "${_spill_lib}"
                   --search ${_spill_search} -- ${_spill_app} --factor 1.5 --expect oom)
  set_tests_properties(gpu_host_spill_off_${backend} PROPERTIES ENVIRONMENT "GPUSHIM_LIMIT=4GiB")
  list(APPEND _spill_tests gpu_host_spill_${backend} gpu_host_spill_off_${backend})
endforeach()
# RUN_SERIAL: four of them at once would pin 8 GiB of host memory; one at a time, 2 GiB.
set_tests_properties(${_spill_tests} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 300 RUN_SERIAL TRUE)
