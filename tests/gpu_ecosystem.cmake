# GPU tests of the ecosystem (label "gpu"; skipped with exit 77 where there is no GPU), every one under
# each backend and once without gpushim (which proves the test itself right on the plain driver):
#   gpu_ipc_<B>              two-process IPC: exporter writes, importer verifies + writes back, exporter verifies
#   gpu_ipc_plain_importer_<B>  the importer runs WITHOUT gpushim: it must get the driver's error or the right bytes
#   gpu_ipc_free_while_imported_<B>  the exporter frees a block the importer has open and allocates again:
#                            the importer's bytes stay untouched (the block is kept until the importer closes).
#                            Not for the plain driver or passthrough: cuda.h calls that undefined behaviour.
#   gpu_pointer_query_<B>    RANGE_START_ADDR / RANGE_SIZE / cuMemGetAddressRange equal each block's own
#   gpu_sanitizer_<B>        compute-sanitizer memcheck: the out-of-bounds write reported, the in-bounds run clean
#   gpu_sanitizer_shared_<B> the same from a program linked to libcudart.so, whose cudaMalloc/cudaFree
#                            gpushim serves without the runtime (without gpushim and under tiered only)
#   gpu_torch_ipc_<B>        torch.multiprocessing shares a CUDA tensor between two processes
# Works in the main build and in tests/gpu/standalone (add `include(../../gpu_ecosystem.cmake)` there).
set(_eco_runner ${CMAKE_CURRENT_LIST_DIR}/gpu/run_gpu_test.sh)
set(_eco_sanitizer ${CMAKE_CURRENT_LIST_DIR}/gpu_ecosystem_sanitizer.sh)
get_filename_component(_eco_repo ${CMAKE_CURRENT_LIST_DIR}/.. ABSOLUTE)
if(NOT DEFINED GPUSHIM_GPU_BACKENDS)
  set(GPUSHIM_GPU_BACKENDS passthrough vmm buddy slab mempool tiered)
endif()

if(GPUSHIM_GPU_TESTS_STANDALONE)
  set(_eco_probe ${GPUSHIM_BUILD_DIR}/test_apps/gpu_probe)
  foreach(app ipc_check pointer_query_check sanitizer_oob sanitizer_oob_shared)
    set(_eco_${app} ${GPUSHIM_BUILD_DIR}/test_apps/${app})
  endforeach()
  set(_eco_lib "")
  set(_eco_search ${GPUSHIM_BUILD_DIR})
else()
  if(NOT TARGET ipc_check OR NOT TARGET gpu_probe)
    return()
  endif()
  set(_eco_probe $<TARGET_FILE:gpu_probe>)
  foreach(app ipc_check pointer_query_check sanitizer_oob sanitizer_oob_shared)
    set(_eco_${app} $<TARGET_FILE:${app}>)
  endforeach()
  if(TARGET gpushim)
    set(_eco_lib $<TARGET_FILE:gpushim>)
  else()
    set(_eco_lib "")
  endif()
  set(_eco_search ${CMAKE_BINARY_DIR})
endif()

set(_eco_tests "")
foreach(backend none ${GPUSHIM_GPU_BACKENDS})
  if(backend STREQUAL "none")
    set(_suffix noshim)
    set(_exact "")
  else()
    set(_suffix ${backend})
    set(_exact --exact)  # gpushim reports the requested size exactly; the driver may round it
  endif()
  # An empty "${_eco_lib}" would vanish from the list (the standalone build has no library target), leaving
  # --lib to swallow --search: name the library only when it is known; the runner searches otherwise.
  set(_lib_option "")
  if(_eco_lib)
    set(_lib_option --lib ${_eco_lib})
  endif()
  set(_run bash ${_eco_runner} --probe ${_eco_probe} --backend ${backend} ${_lib_option} --search ${_eco_search} --)
  add_test(NAME gpu_ipc_${_suffix} COMMAND ${_run} ${_eco_ipc_check})
  list(APPEND _eco_tests gpu_ipc_${_suffix})
  if(NOT backend STREQUAL "none" AND NOT backend STREQUAL "passthrough")
    add_test(NAME gpu_ipc_free_while_imported_${_suffix} COMMAND ${_run} ${_eco_ipc_check} --free-while-imported)
    list(APPEND _eco_tests gpu_ipc_free_while_imported_${_suffix})
  endif()
  add_test(NAME gpu_pointer_query_${_suffix} COMMAND ${_run} ${_eco_pointer_query_check} ${_exact})
  add_test(NAME gpu_sanitizer_${_suffix}
           COMMAND bash ${_eco_sanitizer} --probe ${_eco_probe} --backend ${backend} --lib "${_eco_lib}"
                   --search ${_eco_search} -- ${_eco_sanitizer_oob})
  list(APPEND _eco_tests gpu_pointer_query_${_suffix} gpu_sanitizer_${_suffix})
  if(backend STREQUAL "none" OR backend STREQUAL "tiered")
    add_test(NAME gpu_sanitizer_shared_${_suffix}
             COMMAND bash ${_eco_sanitizer} --probe ${_eco_probe} --backend ${backend} --lib "${_eco_lib}"
                     --search ${_eco_search} -- ${_eco_sanitizer_oob_shared})
    list(APPEND _eco_tests gpu_sanitizer_shared_${_suffix})
  endif()
  if(NOT backend STREQUAL "none")
    add_test(NAME gpu_ipc_plain_importer_${_suffix} COMMAND ${_run} ${_eco_ipc_check} --plain-importer)
    add_test(NAME gpu_torch_ipc_${_suffix}
             COMMAND ${_run} python3 ${_eco_repo}/test_apps/frameworks/torch_ipc_check.py)
    list(APPEND _eco_tests gpu_ipc_plain_importer_${_suffix} gpu_torch_ipc_${_suffix})
  endif()
endforeach()
set_tests_properties(${_eco_tests} PROPERTIES LABELS "gpu;ecosystem" SKIP_RETURN_CODE 77 TIMEOUT 90
                     ENVIRONMENT "PYTHONUNBUFFERED=1")
