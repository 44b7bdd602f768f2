# GPU tests (ctest label "gpu"): alloc_torture in its three builds under every backend (and without
# gpushim, which proves the test itself right on the real driver), and PyTorch, CuPy and JAX giving the
# same numbers with and without gpushim. Every test runs through tests/gpu/run_gpu_test.sh, which skips
# it (exit 77, "no GPU: skipped") where there is no GPU, and, under a backend, fails it unless gpushim's
# exit statistics show that backend served allocations.
#
# Included two ways: from tests/CMakeLists.txt in the main build (paths from targets), or from
# tests/gpu/standalone/ (GPUSHIM_GPU_TESTS_STANDALONE, paths under GPUSHIM_BUILD_DIR) on machines where
# the main build has no GoogleTest and so no tests/ directory (scripts/gpu_check.sh decides).

set(GPUSHIM_GPU_BACKENDS passthrough vmm buddy slab mempool tiered CACHE STRING "backends the GPU tests cover")
set(GPUSHIM_GPU_TORTURE_ARGS --seconds 3 CACHE STRING "arguments every alloc_torture test gets")
set(_gpu_dir ${CMAKE_CURRENT_LIST_DIR}/gpu)
set(_gpu_runner ${_gpu_dir}/run_gpu_test.sh)
get_filename_component(_gpu_repo ${CMAKE_CURRENT_LIST_DIR}/.. ABSOLUTE)

if(GPUSHIM_GPU_TESTS_STANDALONE)
  set(_probe ${GPUSHIM_BUILD_DIR}/test_apps/gpu_probe)
  set(_torture_static ${GPUSHIM_BUILD_DIR}/test_apps/alloc_torture)
  set(_torture_shared ${GPUSHIM_BUILD_DIR}/test_apps/alloc_torture_shared)
  set(_torture_driver ${GPUSHIM_BUILD_DIR}/test_apps/alloc_torture_driver)
  set(_limit_check ${GPUSHIM_BUILD_DIR}/test_apps/limit_check)
  set(_limit_check_shared ${GPUSHIM_BUILD_DIR}/test_apps/limit_check_shared)
  set(_limit_check_ptsz ${GPUSHIM_BUILD_DIR}/test_apps/limit_check_ptsz)
  set(_solo_race ${GPUSHIM_BUILD_DIR}/test_apps/solo_race)
  set(_stream_list_idle ${GPUSHIM_BUILD_DIR}/test_apps/stream_list_idle_check)
  set(_synchronize_release ${GPUSHIM_BUILD_DIR}/test_apps/synchronize_release_check)
  set(_idle_threads_release ${GPUSHIM_BUILD_DIR}/test_apps/idle_threads_release_check)
  foreach(app peer_access peer_copy_check pool_access_check texture_check)
    set(_${app} ${GPUSHIM_BUILD_DIR}/test_apps/${app})
  endforeach()
  set(_lib "")
  set(_search ${GPUSHIM_BUILD_DIR})
else()
  if(NOT TARGET alloc_torture OR NOT TARGET gpu_probe)
    message(STATUS "gpushim: GPU tests not registered (no CUDA compiler, so no test apps)")
    return()
  endif()
  set(_probe $<TARGET_FILE:gpu_probe>)
  set(_torture_static $<TARGET_FILE:alloc_torture>)
  set(_torture_shared $<TARGET_FILE:alloc_torture_shared>)
  set(_torture_driver $<TARGET_FILE:alloc_torture_driver>)
  set(_limit_check $<TARGET_FILE:limit_check>)
  set(_limit_check_shared $<TARGET_FILE:limit_check_shared>)
  set(_limit_check_ptsz $<TARGET_FILE:limit_check_ptsz>)
  set(_solo_race $<TARGET_FILE:solo_race>)
  set(_stream_list_idle $<TARGET_FILE:stream_list_idle_check>)
  set(_synchronize_release $<TARGET_FILE:synchronize_release_check>)
  set(_idle_threads_release $<TARGET_FILE:idle_threads_release_check>)
  foreach(app peer_access peer_copy_check pool_access_check texture_check)
    set(_${app} $<TARGET_FILE:${app}>)
  endforeach()
  if(TARGET gpushim)
    set(_lib $<TARGET_FILE:gpushim>)
  else()
    set(_lib "")  # not a target (yet): the runner searches the build directory at test time
  endif()
  set(_search ${CMAKE_BINARY_DIR})
endif()

set(_gpu_tests "")
foreach(variant static shared driver)
  set(_binary ${_torture_${variant}})
  add_test(NAME gpu_alloc_torture_${variant}_noshim
           COMMAND bash ${_gpu_runner} --probe ${_probe} --backend none -- ${_binary} ${GPUSHIM_GPU_TORTURE_ARGS})
  list(APPEND _gpu_tests gpu_alloc_torture_${variant}_noshim)
  foreach(backend ${GPUSHIM_GPU_BACKENDS})
    add_test(NAME gpu_alloc_torture_${variant}_${backend}
             COMMAND bash ${_gpu_runner} --probe ${_probe} --backend ${backend} --lib "${_lib}" --search ${_search}
                     -- ${_binary} ${GPUSHIM_GPU_TORTURE_ARGS})
    list(APPEND _gpu_tests gpu_alloc_torture_${variant}_${backend})
  endforeach()
endforeach()
set_tests_properties(${_gpu_tests} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 120)

# One GPU app run without gpushim and under the backends with an arena behind their fences (tiered, vmm):
# tests <name>_noshim, <name>_tiered and <name>_vmm. ARGS go to every run, GPUSHIM_ARGS to the app under
# gpushim only; ENVIRONMENT is every run's; SERIAL runs each alone (the apps that read the device's used
# memory).
function(gpu_app_without_and_under_arenas name binary)
  cmake_parse_arguments(arg "SERIAL" "" "ARGS;GPUSHIM_ARGS;ENVIRONMENT" ${ARGN})
  set(tests ${name}_noshim)
  add_test(NAME ${name}_noshim COMMAND bash ${_gpu_runner} --probe ${_probe} --backend none -- ${binary} ${arg_ARGS})
  foreach(backend tiered vmm)
    add_test(NAME ${name}_${backend}
             COMMAND bash ${_gpu_runner} --probe ${_probe} --backend ${backend} --lib "${_lib}" --search ${_search}
                     -- ${binary} ${arg_ARGS} ${arg_GPUSHIM_ARGS})
    list(APPEND tests ${name}_${backend})
  endforeach()
  set_tests_properties(${tests} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 120)
  if(arg_SERIAL)
    set_tests_properties(${tests} PROPERTIES RUN_SERIAL TRUE RESOURCE_LOCK gpu_memory)
  endif()
  if(arg_ENVIRONMENT)
    set_tests_properties(${tests} PROPERTIES ENVIRONMENT "${arg_ENVIRONMENT}")
  endif()
endfunction()

# Solo's race (test_apps/solo_race.cu): without gpushim (the test proves itself right on the real
# driver), and under the backends that reuse a freed block at once, where every kind of overwriter must
# get the freed address at least once (solo happened) and no reader may see it overwritten.
gpu_app_without_and_under_arenas(gpu_solo_race ${_solo_race} GPUSHIM_ARGS --expect-reuse)

# A quiet stream's async free list (test_apps/stream_list_idle_check.cu): without gpushim (the driver's
# pool gives the block back at the synchronize), and under the backends that keep such lists with an
# arena behind them, the list aged out after 50 ms. It reads the device's used memory (NVML), so it runs
# alone.
gpu_app_without_and_under_arenas(gpu_stream_list_idle ${_stream_list_idle} SERIAL
  ENVIRONMENT GPUSHIM_STREAM_LIST_IDLE=50ms)

# Idle memory given back at cudaDeviceSynchronize once the program stopped freeing, and never at a
# stream's or an event's synchronization, which must not wait for another stream
# (test_apps/synchronize_release_check.cu): without gpushim (cudaFree gives it back at once) and under the
# arena backends, with a 256 MiB threshold and a 50 ms delay. It reads the device's used memory (NVML), so
# it runs alone.
gpu_app_without_and_under_arenas(gpu_synchronize_release ${_synchronize_release} SERIAL
  GPUSHIM_ARGS --expect-held
  ENVIRONMENT GPUSHIM_VMM_RELEASE_THRESHOLD=256MiB GPUSHIM_VMM_RELEASE_DELAY=50ms)

# Idle threads' free blocks (the thread caches' classes; with a stream each, the returned lists too) given
# back at cudaDeviceSynchronize once the release is due counting them
# (test_apps/idle_threads_release_check.cu): without gpushim (cudaFree gives them back at once) and under
# the arena backends, with threshold 0 ("keep nothing idle") and a 50 ms delay. It reads the device's used
# memory (NVML), so it runs alone.
gpu_app_without_and_under_arenas(gpu_idle_threads_release ${_idle_threads_release} SERIAL
  GPUSHIM_ARGS --expect-held
  ENVIRONMENT GPUSHIM_VMM_RELEASE_THRESHOLD=0 GPUSHIM_VMM_RELEASE_DELAY=50ms)
# With a stream each: creating 16 streams alone took 8 MiB (without gpushim, H200), and gpushim's fences
# keep a little more.
gpu_app_without_and_under_arenas(gpu_idle_threads_release_streams ${_idle_threads_release} SERIAL
  ARGS --streams --want-mib 24
  GPUSHIM_ARGS --expect-held
  ENVIRONMENT GPUSHIM_VMM_RELEASE_THRESHOLD=0 GPUSHIM_VMM_RELEASE_DELAY=50ms)

# The cap (GPUSHIM_LIMIT=1GiB) and the out-of-memory report and recovery, under every backend; once more
# from a program linked to libcudart.so, whose cudaMalloc/cudaFree and cudaMallocAsync/cudaFreeAsync
# gpushim serves without the runtime, and once from that program built with a per-thread default stream
# (the runtime's _ptsz forms).
set(_limit_tests "")
foreach(backend ${GPUSHIM_GPU_BACKENDS})
  add_test(NAME gpu_limit_${backend}
           COMMAND bash ${_gpu_runner} --probe ${_probe} --backend ${backend} --lib "${_lib}" --search ${_search}
                   -- ${_limit_check})
  add_test(NAME gpu_limit_shared_${backend}
           COMMAND bash ${_gpu_runner} --probe ${_probe} --backend ${backend} --lib "${_lib}" --search ${_search}
                   -- ${_limit_check_shared})
  add_test(NAME gpu_limit_ptsz_${backend}
           COMMAND bash ${_gpu_runner} --probe ${_probe} --backend ${backend} --lib "${_lib}" --search ${_search}
                   -- ${_limit_check_ptsz})
  list(APPEND _limit_tests gpu_limit_${backend} gpu_limit_shared_${backend} gpu_limit_ptsz_${backend})
endforeach()
set_tests_properties(${_limit_tests} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 60
                     ENVIRONMENT "GPUSHIM_LIMIT=1GiB" RESOURCE_LOCK gpu_memory)

# alloc_torture links the runtime statically (nvcc's default): gpushim must have redirected all six of its
# allocate and free functions (shim/static_runtime_redirects.cpp), so the real runtime's prologues are
# ones the redirect can move; the static runtime's tests above (torture, limit_check's errors) then ran
# through them. The pattern also asks for the runner's last line, printed only when the test passed.
add_test(NAME gpu_static_runtime_redirected
         COMMAND bash ${_gpu_runner} --probe ${_probe} --backend tiered --lib "${_lib}" --search ${_search}
                 -- ${_torture_static} --seconds 1)
set_tests_properties(gpu_static_runtime_redirected PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 60
                     ENVIRONMENT "GPUSHIM_LOG=info"
                     PASS_REGULAR_EXPRESSION "6 of a static runtime's 6 functions redirected.*gpushim backend tiered served [0-9]+ allocations")

# Safe under ctest -j (scripts/gpu_check.sh runs -j4): a test that fills a GPU makes any other test's
# context creation or allocation fail there (seen: peer_access.local's cudaSetDevice failed with
# cudaErrorMemoryAllocation while peer_access.spill filled GPU 0). Such tests run alone (RUN_SERIAL)
# and hold the gpu_memory lock that the tests measuring free memory (GPUSHIM_LIMIT) take too.
function(gpushim_gpu_fills_device)
  set_tests_properties(${ARGN} PROPERTIES RUN_SERIAL TRUE RESOURCE_LOCK gpu_memory)
endfunction()

# The transparency checks of docs/peers.md, without gpushim and under every backend: peer copies after
# cudaDeviceEnablePeerAccess, a default pool shared by cudaMemPoolSetAccess (both skip, exit 77, with
# fewer than 2 GPUs), and texture objects over small blocks.
set(_transparency_tests "")
foreach(app peer_copy_check pool_access_check texture_check)
  foreach(backend none ${GPUSHIM_GPU_BACKENDS})
    set(_suffix ${backend})
    if(backend STREQUAL "none")
      set(_suffix noshim)
    endif()
    add_test(NAME gpu_${app}_${_suffix}
             COMMAND bash ${_gpu_runner} --probe ${_probe} --backend ${backend} --lib "${_lib}" --search ${_search}
                     -- ${_${app}})
    list(APPEND _transparency_tests gpu_${app}_${_suffix})
  endforeach()
endforeach()
set_tests_properties(${_transparency_tests} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 120)

# test_apps/peer_access under GPUSHIM_PEERS=all, per placement (docs/peers.md); spill fills GPU 0 on
# purpose. With one GPU it runs its local part.
set(_peer_access_tests "")
foreach(policy local interleave spill)
  add_test(NAME peer_access.${policy}
           COMMAND bash ${_gpu_runner} --probe ${_probe} --backend vmm --lib "${_lib}" --search ${_search}
                   -- ${_peer_access})
  set_tests_properties(peer_access.${policy} PROPERTIES ENVIRONMENT
    "GPUSHIM_PEERS=all;GPUSHIM_PLACEMENT=${policy};NCCL_NVLS_ENABLE=0")
  list(APPEND _peer_access_tests peer_access.${policy})
endforeach()
set_tests_properties(${_peer_access_tests} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 120)
gpushim_gpu_fills_device(peer_access.spill)

# Frameworks: each check runs twice (without and with gpushim) inside run_framework_check.py.
set(_framework_tests "")
foreach(pair torch:passthrough torch:vmm torch:tiered cupy:vmm cupy:tiered jax:vmm jax:tiered)
  string(REPLACE ":" ";" _parts ${pair})
  list(GET _parts 0 framework)
  list(GET _parts 1 backend)
  add_test(NAME gpu_framework_${framework}_${backend}
           COMMAND bash ${_gpu_runner} --probe ${_probe} --backend none --
                   python3 ${_gpu_dir}/run_framework_check.py --lib "${_lib}" --search ${_search}
                   --backend ${backend} ${_gpu_repo}/test_apps/frameworks/${framework}_check.py)
  list(APPEND _framework_tests gpu_framework_${framework}_${backend})
endforeach()
set_tests_properties(${_framework_tests} PROPERTIES LABELS "gpu;framework" SKIP_RETURN_CODE 77 TIMEOUT 600
                     ENVIRONMENT "PYTHONUNBUFFERED=1")

# The torture workload's own checks, on the CPU (no label "gpu": runs in CI): on host memory with
# deferred stream work, a correct allocator passes and one that reuses a freed block at once is caught.
if(NOT GPUSHIM_GPU_TESTS_STANDALONE AND TARGET alloc_torture_core AND TARGET GTest::gtest_main)
  add_executable(torture_core_test ${_gpu_dir}/torture_core_test.cpp)
  target_link_libraries(torture_core_test PRIVATE alloc_torture_core GTest::gtest_main)
  gtest_discover_tests(torture_core_test DISCOVERY_TIMEOUT 30)
endif()

# When memory runs out (docs/oom-dump.md): PyTorch under GPUSHIM_LIMIT with GPUSHIM_OOM_DUMP, the dump
# read by `gpushim trace summary` and exported for torch's memory_viz, and GPUSHIM_FAIL raising
# torch.cuda.OutOfMemoryError at the chosen allocation (tests/gpu/run_oom_check.py).
set(_oom_tests "")
if(TARGET gpushim_cli)
  set(_oom_cli --cli $<TARGET_FILE:gpushim_cli>)
else()
  set(_oom_cli "")  # searched under the build directory at test time
endif()
foreach(backend tiered vmm)
  add_test(NAME gpu_torch_oom_${backend}
           COMMAND bash ${_gpu_runner} --probe ${_probe} --backend none --
                   python3 ${_gpu_dir}/run_oom_check.py --lib "${_lib}" --search ${_search} ${_oom_cli}
                   --backend ${backend} --require-names)
  list(APPEND _oom_tests gpu_torch_oom_${backend})
endforeach()
set_tests_properties(${_oom_tests} PROPERTIES LABELS "gpu;framework" SKIP_RETURN_CODE 77 TIMEOUT 600)
