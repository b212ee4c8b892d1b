# Installs the build tree into a fresh prefix, then configures, builds and runs tests/consumer against it.
# Arguments: BUILD_DIR (bnk's build tree), SOURCE (this folder), WORK (scratch folder).
file(REMOVE_RECURSE "${WORK}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed (${result}): ${ARGN}\n${output}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK}/prefix")
set(ENV{PKG_CONFIG_PATH} "${WORK}/prefix/lib/pkgconfig")
run(${CMAKE_COMMAND} -S "${SOURCE}" -B "${WORK}/build" "-DCMAKE_PREFIX_PATH=${WORK}/prefix"
    "-DCMAKE_BUILD_RPATH=${WORK}/prefix/lib")
run(${CMAKE_COMMAND} --build "${WORK}/build")
run("${WORK}/build/consumer_cmake")
run("${WORK}/build/consumer_pkgconfig")
message(STATUS "an application found the installed bnk through find_package and pkg-config, built and ran")
