# ctest example_train_softmax_resume (cmake -P): the demo with a durable state (--dir) killed
# with SIGKILL right after the commit of one optimizer step, then the same command again: it
# must resume from that step (nothing acknowledged is lost), finish the run and pass its own
# checks. The state's directory is removed on every path.
# Inputs: -DEXE=<train_softmax> -DDIR=<scratch directory> [-DSTEPS=120] [-DKILL_AT=53]
if(NOT DEFINED STEPS)
  set(STEPS 120)
endif()
if(NOT DEFINED KILL_AT)
  set(KILL_AT 53)
endif()
file(REMOVE_RECURSE "${DIR}")

function(fail why out)
  file(REMOVE_RECURSE "${DIR}")
  message(FATAL_ERROR "${why}\n--- output ---\n${out}")
endfunction()

execute_process(COMMAND "${EXE}" --quick --steps ${STEPS} --dir "${DIR}" --kill-at-step ${KILL_AT}
                RESULT_VARIABLE rc1 OUTPUT_VARIABLE out1 ERROR_VARIABLE err1)
if(rc1 EQUAL 0)
  fail("the first run was to be killed after step ${KILL_AT}; it exited 0" "${out1}${err1}")
endif()
string(FIND "${out1}" "killed after step ${KILL_AT} (--kill-at-step)" at)
if(at EQUAL -1)
  fail("the first run did not reach step ${KILL_AT} (status ${rc1})" "${out1}${err1}")
endif()

execute_process(COMMAND "${EXE}" --quick --steps ${STEPS} --dir "${DIR}"
                RESULT_VARIABLE rc2 OUTPUT_VARIABLE out2 ERROR_VARIABLE err2)
if(NOT rc2 EQUAL 0)
  fail("the resumed run failed (status ${rc2})" "${out2}${err2}")
endif()
foreach(want "resumed from ${DIR} at version" ", step ${KILL_AT}\n"
             "the workflow resumed at its step" "invariants: step = ${STEPS}," "\nOK: ")
  string(FIND "${out2}" "${want}" at)
  if(at EQUAL -1)
    fail("the resumed run's output lacks '${want}'" "${out2}${err2}")
  endif()
endforeach()
file(REMOVE_RECURSE "${DIR}")
message(STATUS "killed after step ${KILL_AT}, resumed there, finished ${STEPS} steps")
