#pragma once
// The loragrad::Error family. Every bad input becomes one of these, with a
// message that names the operation, the shapes (or file) and what was expected.
#include <stdexcept>
#include <string>
#include <vector>

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

// Text from a file, made safe to put in a message: valid UTF-8 and printable
// ASCII stay as they are; control bytes and invalid UTF-8 become \xHH, so a
// hostile file cannot write escape sequences to the user's terminal.
std::string printable(const std::string& bytes);

// Names for a message: ['a', 'b'] (each passed through printable()).
std::string quoted_list(const std::vector<std::string>& names);

}  // namespace loragrad
