#pragma once
// The loragrad::Error family. Every bad input becomes one of these, with a
// message that names the operation, the shapes (or file) and what was expected.
#include <stdexcept>
#include <string>

namespace loragrad {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct ShapeError : Error { using Error::Error; };     // shapes do not fit the op
struct DTypeError : Error { using Error::Error; };     // wrong or mixed dtypes
struct IndexError : Error { using Error::Error; };     // index / dim out of range
struct ValueError : Error { using Error::Error; };     // a bad value (NaN target, p outside [0,1), ...)
struct AutogradError : Error { using Error::Error; };  // misuse of backward / graph
struct IOError : Error { using Error::Error; };        // files

}  // namespace loragrad
