#pragma once
// Low-level helpers of the two atomic writers, files.cpp (write_file_atomically)
// and safetensors.cpp (save_safetensors). Internal to core: not installed.
#include <cstddef>
#include <string>

namespace loragrad::detail {

// Writes all n bytes of buf to fd, retrying partial writes and EINTR; false on
// error (errno set).
bool write_all(int fd, const void* buf, size_t n);

// The directory that holds path ("." for a bare file name): the one to fsync
// after renaming a file into place.
std::string parent_of(const std::string& path);

}  // namespace loragrad::detail
