# What `cmake --install` writes besides headers and libraries (those are
# installed by loragrad_folder_library and the top-level CMakeLists):
#   lib/cmake/loragrad/  find_package(loragrad CONFIG) -> loragrad::loragrad
#                        (and one target per folder: loragrad::core, ::nn, ...)
#   lib/pkgconfig/loragrad.pc
include(CMakePackageConfigHelpers)
set(LORAGRAD_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/loragrad)

install(EXPORT loragradTargets NAMESPACE loragrad:: DESTINATION ${LORAGRAD_CMAKE_DIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/loragradConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/loragradConfig.cmake
                              INSTALL_DESTINATION ${LORAGRAD_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/loragradConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/loragradConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/loragradConfigVersion.cmake
        DESTINATION ${LORAGRAD_CMAKE_DIR})

# pkg-config: the libraries from the top of the layers down, so a static link resolves.
set(LORAGRAD_PC_LIBS "")
foreach(t loragrad_train loragrad_lora loragrad_data loragrad_optim loragrad_nn loragrad_core)
  string(APPEND LORAGRAD_PC_LIBS " -l${t}")
endforeach()
# Relocatable: the prefix is found from the .pc file's own place, so
# `cmake --install build --prefix P` gives a right file for any P.
file(RELATIVE_PATH LORAGRAD_PC_TO_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
configure_file(${CMAKE_CURRENT_LIST_DIR}/loragrad.pc.in ${CMAKE_CURRENT_BINARY_DIR}/loragrad.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/loragrad.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
