#pragma once
// safetensors files (the Hugging Face format; see docs/peft-format.md):
// 8-byte little-endian header length N, N bytes of JSON header, then the data.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "loragrad/tensor.hpp"

namespace loragrad {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;  // keeps order
using Metadata = std::map<std::string, std::string>;

struct SafetensorsFile {
  NamedTensors tensors;   // in data-offset order
  Metadata metadata;      // "__metadata__" (string values)
  // The tensor called name; throws IOError naming the file and the tensor if absent.
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const;
  // Throws IOError naming the file, the tensor and the element if any float
  // tensor holds NaN or +-Inf, or would once converted to `as` (a float64
  // 1e300 is +Inf in float32): weights that would only give `loss nan` later.
  void require_finite(DType as = DType::f64) const;
  std::string path;
};

// Reads F32, F64 (as is), BF16 and F16 (widened to float32), I64 (int64).
// Any other dtype, and every malformed case the spec lists, is refused with an
// IOError that names the file and the problem.
SafetensorsFile load_safetensors(const std::string& path);

// Throws IOError "<where>: tensor '<name>' <shape> holds NaN at flat index i:
// refusing non-finite weights" for the first non-finite float element.
void require_finite(const NamedTensors& tensors, const std::string& where);

// Writes float32 / float64 / int64 tensors (names must be unique) and metadata.
// Atomic: writes "<path>.tmp.<pid>", fsyncs, then renames over path.
void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {});

}  // namespace loragrad
