# How each folder of the library becomes a target.
#
#   loragrad_folder_library(nn DEPENDS loragrad_core)
#
# makes loragrad_nn (exported as loragrad::nn) from nn/src/**/*.cpp, with
# nn/include as its public header directory and nn/src as a private one (for
# internal headers), linked PUBLIC to what it DEPENDS on and nothing else: a
# header of a folder that is not a dependency is not on the include path.
# Static by default, shared with BUILD_SHARED_LIBS=ON.

# Flags for building loragrad's own code, never passed on to a user's targets:
# warnings, and the instruction set.
add_library(loragrad_build_flags INTERFACE)
target_compile_options(loragrad_build_flags INTERFACE -Wall -Wextra -Wno-unused-parameter
                       $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>  # GCC's AVX-512 headers under xsimd
                       # Never -O0: a project without a build type (add_subdirectory) would get
                       # kernels 20x slower, and at -O0 GCC 12 cannot compile xsimd's AVX-512 code
                       # (some intrinsics are macros there). Debug builds get -Og.
                       $<$<CONFIG:>:-O3> $<$<CONFIG:Debug>:-Og>
                       # `#pragma omp simd` only: threads are loragrad's own (thread_pool.hpp),
                       # no OpenMP runtime is linked.
                       -fopenmp-simd)
# The kernels (GEMM tiles, xsimd loops) are chosen at compile time from the
# instruction set the library is compiled for, so it is stated here, once:
# this CPU's (-march=native), or LORAGRAD_ARCH. A build without AVX2 + FMA
# gets the SSE2 tile, a quarter of the speed: said at configure time.
if(LORAGRAD_NATIVE)
  target_compile_options(loragrad_build_flags INTERFACE -march=native)
  set(LORAGRAD_ISA_TEXT "this machine's CPU (-march=native)")
elseif(LORAGRAD_ARCH)
  target_compile_options(loragrad_build_flags INTERFACE -march=${LORAGRAD_ARCH})
  set(LORAGRAD_ISA_TEXT "-march=${LORAGRAD_ARCH}")
else()
  set(LORAGRAD_ISA_TEXT "the compiler's default (SSE2)")
  message(WARNING "loragrad: LORAGRAD_NATIVE=OFF and no LORAGRAD_ARCH: the kernels use their SSE2 tile "
                  "(about 4x slower than AVX2 + FMA). Set -DLORAGRAD_ARCH=x86-64-v3 (or v4) for a portable fast build.")
endif()
message(STATUS "loragrad: kernels compiled for ${LORAGRAD_ISA_TEXT}")

set(LORAGRAD_FOLDER_TARGETS "" CACHE INTERNAL "")

function(loragrad_folder_library folder)
  cmake_parse_arguments(ARG "" "" "DEPENDS" ${ARGN})
  set(target loragrad_${folder})
  file(GLOB_RECURSE sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp)
  add_library(${target} ${sources})
  add_library(loragrad::${folder} ALIAS ${target})
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${folder} POSITION_INDEPENDENT_CODE ON)
  target_include_directories(${target}
    PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(${target} PUBLIC ${ARG_DEPENDS} PRIVATE $<BUILD_INTERFACE:loragrad_build_flags>)
  if(LORAGRAD_INSTALL)
    install(DIRECTORY include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
    install(TARGETS ${target} EXPORT loragradTargets)
  endif()
  set(LORAGRAD_FOLDER_TARGETS ${LORAGRAD_FOLDER_TARGETS} ${target} CACHE INTERNAL "")
endfunction()
