# The real libgpushim.so (interposer + router + every backend) over the fake driver, end to end: one run
# of router_end_to_end_test per backend, and one per backend under GPUSHIM_LIMIT. CPU only (no "gpu"
# label): the fake driver keeps VMM, events and streams in host memory.
# The pair bench over the same library is bench/router_pair_bench.cpp.
if(NOT TARGET gpushim)
  return()
endif()

# shim_fake_libcuda is defined in tests/shim.cmake; targets resolve at generate time, in any order.
set(router_e2e_fake_dir ${CMAKE_CURRENT_BINARY_DIR}/fake_driver)

add_executable(router_end_to_end_test ${CMAKE_CURRENT_SOURCE_DIR}/router_end_to_end_test.cpp)
target_include_directories(router_end_to_end_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(router_end_to_end_test PRIVATE shim_fake_libcuda GTest::gtest_main Threads::Threads)
add_dependencies(router_end_to_end_test gpushim)

set(router_e2e_limit 268435456)  # 256 MiB: a few 32 MiB blocks, then CUDA_ERROR_OUT_OF_MEMORY
# A filtered run exists for the one test it selects: that test skipping means the run proved nothing.
set(router_e2e_no_skip "\\[  SKIPPED \\]")
# A filtered run of test binary `target` under GPUSHIM_LIMIT (E2E_LIMIT_BYTES tells the tests the cap).
function(router_e2e_limit_test name target filter environment)
  add_test(NAME ${name} COMMAND ${target} --gtest_filter=${filter})
  set_tests_properties(${name} PROPERTIES TIMEOUT 120
    FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}|\\[  FAILED  \\]" ENVIRONMENT
    "${environment};GPUSHIM_LIMIT=${router_e2e_limit};E2E_LIMIT_BYTES=${router_e2e_limit}")
endfunction()
foreach(backend vmm buddy slab tiered passthrough mempool)
  # GPUSHIM_STATS=1: passthrough without anything to count is a pure forward to the driver (router.cpp,
  # g_pure_passthrough); these tests are about the router's own bookkeeping, so they ask for counting.
  set(environment "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend};GPUSHIM_STATS=1")
  gpushim_discover_tests(router_end_to_end_test router_e2e.${backend} ENV "${environment}")
  router_e2e_limit_test(router_e2e_limit.${backend} router_end_to_end_test *Limit* "${environment}")
  if(NOT backend MATCHES "passthrough|mempool")  # those give frees to the driver or its pool: no batch
    router_e2e_limit_test(router_e2e_limit_open_batch.${backend} router_end_to_end_test *AnotherThreadsOpenBatch*
      "${environment}")
  endif()
  add_test(NAME router_e2e_two_devices.${backend} COMMAND router_end_to_end_test --gtest_filter=*TwoDevices*)
  set_tests_properties(router_e2e_two_devices.${backend} PROPERTIES TIMEOUT 120
    FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}" ENVIRONMENT
    "${environment};FAKE_CUDA_DEVICES=2")
endforeach()

# One filtered run of router_end_to_end_test per arena backend (vmm, tiered) with settings of its own:
# `name`.<backend>, the tests matching `filter`, the extra environment in ARGN ("VAR=value" each).
function(router_e2e_arena_run name filter)
  list(JOIN ARGN ";" extra)
  foreach(backend vmm tiered)
    add_test(NAME ${name}.${backend} COMMAND router_end_to_end_test --gtest_filter=${filter})
    set_tests_properties(${name}.${backend} PROPERTIES TIMEOUT 120
      FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}" ENVIRONMENT
      "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend};${extra}")
  endforeach()
endfunction()

# Idle memory above the release threshold goes back after the release delay, though the program then
# frees only small blocks or only synchronizes the context, and never at a stream's synchronization (the
# arenas of vmm and tiered; buddy and slab give back as they always did).
router_e2e_arena_run(router_e2e_release_delay *IdleMemoryGoesBackAfterTheDelay*:*AStreamSynchronizeGivesNothingBack*
  GPUSHIM_VMM_RELEASE_THRESHOLD=128MiB GPUSHIM_VMM_RELEASE_DELAY=50ms E2E_RELEASE_DELAY_MS=50)
# ... and a context synchronization gives back only its own device's.
router_e2e_arena_run(router_e2e_release_delay_two_devices *AContextSynchronizeGivesBackOnlyItsOwn*
  FAKE_CUDA_DEVICES=2 GPUSHIM_VMM_RELEASE_THRESHOLD=128MiB GPUSHIM_VMM_RELEASE_DELAY=50ms E2E_RELEASE_DELAY_MS=50)

# ... and blocks a thread's returned list holds go to the arena at a context synchronization once its
# release is due counting them, then back to the driver after the delay.
router_e2e_arena_run(router_e2e_release_delay_returned_list *WhatAThreadsReturnedListHolds*
  GPUSHIM_VMM_RELEASE_THRESHOLD=128MiB GPUSHIM_VMM_RELEASE_DELAY=50ms E2E_RELEASE_DELAY_MS=50)

# ... and blocks idle threads keep in their thread caches, with threshold 0: back to what the process held
# before the threads.
router_e2e_arena_run(router_e2e_release_delay_idle_threads *WhatIdleThreadsCache*
  GPUSHIM_VMM_RELEASE_THRESHOLD=0 GPUSHIM_VMM_RELEASE_DELAY=50ms E2E_RELEASE_DELAY_MS=50)

# A quiet stream's async free list is closed after GPUSHIM_STREAM_LIST_IDLE, and its blocks reach the
# arena, which gives them back at once here (threshold and delay 0).
router_e2e_arena_run(router_e2e_stream_list_idle *QuietStreamsList*
  GPUSHIM_STREAM_LIST_IDLE=50ms GPUSHIM_VMM_RELEASE_THRESHOLD=0 GPUSHIM_VMM_RELEASE_DELAY=0 E2E_STREAM_LIST_IDLE_MS=50)

# The free-safety rule follows the streams that carry work (router/stream_activity.h): one process per
# test (each starts with every stream idle), per backend. These tests fence a lone stream's frees to
# watch the fences, so they run without solo (GPUSHIM_FREE_FENCE=no-solo); router_solo_test below
# runs solo itself, on the default rule.
add_executable(router_stream_activity_test ${CMAKE_CURRENT_SOURCE_DIR}/router_stream_activity_test.cpp)
add_executable(router_solo_test ${CMAKE_CURRENT_SOURCE_DIR}/router_solo_test.cpp)
add_executable(router_marked_batches_test ${CMAKE_CURRENT_SOURCE_DIR}/router_marked_batches_test.cpp)
foreach(test router_stream_activity_test router_solo_test router_marked_batches_test)
  target_include_directories(${test} PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(${test} PRIVATE shim_fake_libcuda GTest::gtest_main Threads::Threads)
  add_dependencies(${test} gpushim)
endforeach()
foreach(backend vmm buddy slab tiered passthrough)
  gpushim_discover_tests(router_stream_activity_test router_stream_activity.${backend} ENV
    "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend};GPUSHIM_STATS=1;GPUSHIM_FREE_FENCE=no-solo")
  gpushim_discover_tests(router_solo_test router_solo.${backend} ENV
    "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend};GPUSHIM_STATS=1")
endforeach()
# Batches closed while streams work are marked and wait with their thread (router/marked_batches.h), on
# the default rule and without solo. The stream-activity suite runs once more with them off, so the fence
# queue's own behaviour (events shared, answers, waits) is still what it checks.
foreach(backend vmm tiered)
  gpushim_discover_tests(router_marked_batches_test router_marked_batches.${backend} ENV
    "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend};GPUSHIM_STATS=1")
endforeach()
# Under GPUSHIM_LIMIT: an allocation at the limit takes another thread's passed batch before it waits.
foreach(backend vmm tiered)
  router_e2e_limit_test(router_marked_batches_limit.${backend} router_marked_batches_test *TakenUnderPressure*
    "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend};GPUSHIM_STATS=1")
endforeach()
gpushim_discover_tests(router_marked_batches_test router_marked_batches_no_solo.tiered ENV
  "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=tiered;GPUSHIM_STATS=1;GPUSHIM_FREE_FENCE=no-solo")
gpushim_discover_tests(router_marked_batches_test router_marked_batches_event_probes.tiered ENV
  "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=tiered;GPUSHIM_STATS=1;FAKE_CUDA_NO_STREAM_WRITES=1")
# The statistics line counts them, and the blocks that came back by their marks.
add_test(NAME router_marked_batches_statistics.tiered COMMAND router_marked_batches_test
  --gtest_filter=*CallsNoDriverAndComesBack*)
set_tests_properties(router_marked_batches_statistics.tiered PROPERTIES TIMEOUT 120
  PASS_REGULAR_EXPRESSION "[1-9][0-9]* batches marked, [1-9][0-9]* of their blocks back to their thread by the marks"
  FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}|\\[  FAILED  \\]"
  ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=tiered;GPUSHIM_STATS=1")
gpushim_discover_tests(router_stream_activity_test router_stream_activity_queue.tiered ENV
  "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=tiered;GPUSHIM_STATS=1;GPUSHIM_FREE_FENCE=no-solo;GPUSHIM_THREAD_FENCES=0")
# Once more where the driver refuses stream writes: the probes are events (router/probe_words.h).
gpushim_discover_tests(router_stream_activity_test router_stream_activity_event_probes.tiered ENV
  "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=tiered;GPUSHIM_STATS=1;FAKE_CUDA_NO_STREAM_WRITES=1;GPUSHIM_FREE_FENCE=no-solo")
gpushim_discover_tests(router_solo_test router_solo_event_probes.tiered ENV
  "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=tiered;GPUSHIM_STATS=1;FAKE_CUDA_NO_STREAM_WRITES=1")

# A fence delay the fake GPU's pace cannot outlast (GPUSHIM_FENCE_DELAY, router/free_fence_queue.h).
add_test(NAME router_stream_activity_fence_delay.tiered COMMAND router_stream_activity_test --gtest_filter=*FenceDelay*)
set_tests_properties(router_stream_activity_fence_delay.tiered PROPERTIES TIMEOUT 120
  FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}"
  ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=tiered;GPUSHIM_STATS=1;GPUSHIM_FENCE_DELAY=1s;E2E_FENCE_DELAY=1;GPUSHIM_FREE_FENCE=no-solo;GPUSHIM_THREAD_FENCES=0")

# The statistics' "at the peak" line tells why allocations were let past the peak (router/memory_report.h):
# by the growth rule's turn, with too little fenced to wait for, or after a wait in vain, and how many
# of them mapped memory (in both tests every one: the held peak leaves nothing else). Each run is one
# test whose allocations at the peak are let past it for known reasons; the line is printed at exit. (A
# ';' in the expression would split it into a list, any of whose parts passes the test: the line's ';'
# are matched by '.'.)
function(router_e2e_peak_statistics name filter rule unwaited after_wait mapped)
  add_test(NAME router_stream_activity_peak_statistics.${name} COMMAND router_stream_activity_test
    --gtest_filter=*${filter}*)
  set_tests_properties(router_stream_activity_peak_statistics.${name} PROPERTIES TIMEOUT 120
    PASS_REGULAR_EXPRESSION "at the peak while blocks waited for fences: [0-9]+ allocations. [0-9]+ took blocks other threads got back, [0-9]+ waited for fences, [0-9]+ were let past the peak \\(${rule} at once by the growth rule, ${unwaited} with too little fenced to wait for, ${after_wait} after waiting in vain. ${mapped} of them mapped memory\\)"
    FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}|\\[  FAILED  \\]"
    ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=tiered;GPUSHIM_STATS=1;GPUSHIM_FREE_FENCE=no-solo")
endfunction()
router_e2e_peak_statistics(rule KeepFindingThePeak "[1-9]" 0 "1[0-9]" "1[0-9]")
router_e2e_peak_statistics(unwaited TheFencedBlocksCannotServe 0 1 0 1)

# The live-block table against a reference model (router/live_block_table.*, pure C++).
add_executable(router_live_block_table_model_test ${CMAKE_CURRENT_SOURCE_DIR}/router_live_block_table_model_test.cpp)
target_link_libraries(router_live_block_table_model_test PRIVATE gpushim_router_core GTest::gtest_main)
gtest_discover_tests(router_live_block_table_model_test DISCOVERY_MODE PRE_TEST)

# GPUSHIM_PEERS over two fake devices, interleaved, under GPUSHIM_LIMIT: the cap holds on each device
# (docs/peers.md) and the out-of-memory report says which devices back the memory
# (router/out_of_memory.cpp).
add_test(NAME router_e2e_peers_limit.vmm COMMAND router_end_to_end_test --gtest_filter=*Limit*)
set_tests_properties(router_e2e_peers_limit.vmm PROPERTIES TIMEOUT 120
  FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}"
  ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=vmm;GPUSHIM_STATS=1;FAKE_CUDA_DEVICES=2;GPUSHIM_PEERS=all;GPUSHIM_PLACEMENT=interleave;GPUSHIM_LIMIT=${router_e2e_limit};E2E_LIMIT_BYTES=${router_e2e_limit};E2E_LIMIT_DEVICES=2;E2E_EXPECT_PLACEMENT=1")

# The same on four fake devices, under interleave and spill: every device stays under its cap and more
# than one cap's worth fits.
foreach(policy interleave spill)
  add_test(NAME router_e2e_peers_limit4.${policy} COMMAND router_end_to_end_test --gtest_filter=*Limit*)
  set_tests_properties(router_e2e_peers_limit4.${policy} PROPERTIES TIMEOUT 120
    FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}"
    ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=vmm;GPUSHIM_STATS=1;FAKE_CUDA_DEVICES=4;GPUSHIM_PEERS=all;GPUSHIM_PLACEMENT=${policy};GPUSHIM_LIMIT=${router_e2e_limit};E2E_LIMIT_BYTES=${router_e2e_limit};E2E_LIMIT_DEVICES=4;E2E_EXPECT_PLACEMENT=1")
endforeach()

# Peer access follows the program (router/peer_access.h) under every backend; the early run enables
# access before device 0 has a backend. GPUSHIM_STATS=1 keeps passthrough in the router (not a pure
# forward), so its pool path is the one tested.
add_executable(router_peer_access_test ${CMAKE_CURRENT_SOURCE_DIR}/router_peer_access_test.cpp)
target_include_directories(router_peer_access_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(router_peer_access_test PRIVATE shim_fake_libcuda GTest::gtest_main)
add_dependencies(router_peer_access_test gpushim)
foreach(backend vmm buddy slab tiered mempool passthrough)
  set(environment "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend};GPUSHIM_STATS=1;FAKE_CUDA_DEVICES=2")
  add_test(NAME router_peer_access.${backend} COMMAND router_peer_access_test --gtest_filter=*FollowsEnable*)
  add_test(NAME router_peer_access_early.${backend} COMMAND router_peer_access_test --gtest_filter=*BeforeTheFirst*)
  set_tests_properties(router_peer_access.${backend} PROPERTIES TIMEOUT 60
    FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}" ENVIRONMENT "${environment}")
  set_tests_properties(router_peer_access_early.${backend} PROPERTIES TIMEOUT 60
    FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}" ENVIRONMENT "${environment};E2E_PEER_EARLY=1")
endforeach()

# Four devices without a link between 0 and 2, under GPUSHIM_PEERS=all (docs/peers.md, "Participation").
add_test(NAME router_peer_access_partial_topology.vmm COMMAND router_peer_access_test --gtest_filter=*PartialTopology*)
set_tests_properties(router_peer_access_partial_topology.vmm PROPERTIES TIMEOUT 60
  FAIL_REGULAR_EXPRESSION "${router_e2e_no_skip}"
  ENVIRONMENT "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=vmm;GPUSHIM_STATS=1;FAKE_CUDA_DEVICES=4;FAKE_CUDA_NO_PEER=0-2;GPUSHIM_PEERS=all;GPUSHIM_PLACEMENT=interleave")

# GPUSHIM_FAIL and GPUSHIM_OOM_DUMP (router/fault_injection.*, router/out_of_memory.cpp): the program runs
# itself again as a child per case, with that case's settings. Two backends: one carving VMM memory,
# one driver-backed.
add_executable(router_oom_end_to_end_test ${CMAKE_CURRENT_SOURCE_DIR}/router_oom_end_to_end_test.cpp)
target_include_directories(router_oom_end_to_end_test PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(router_oom_end_to_end_test PRIVATE shim_fake_libcuda GTest::gtest_main Threads::Threads)
if(TARGET gpushim_trace_tools)
  target_link_libraries(router_oom_end_to_end_test PRIVATE gpushim_trace_tools)
endif()
add_dependencies(router_oom_end_to_end_test gpushim)
foreach(backend tiered passthrough)
  add_test(NAME router_oom_e2e.${backend} COMMAND router_oom_end_to_end_test)
  set_tests_properties(router_oom_e2e.${backend} PROPERTIES TIMEOUT 120 ENVIRONMENT
    "LD_PRELOAD=$<TARGET_FILE:gpushim>;LD_LIBRARY_PATH=${router_e2e_fake_dir};GPUSHIM_BACKEND=${backend}")
endforeach()
