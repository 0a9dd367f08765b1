// Harness: the safetensors reader (loragrad::load_safetensors) and TinyGPT
// checkpoint loading (nn::TinyGPT::load). The input is one whole file.
//
// Beyond "no crash, no exception but loragrad::Error", a file that loads must
// survive save_safetensors + load_safetensors unchanged (the writer and the
// reader agree), and a checkpoint that loads must be finite and run forward.
#include <cstring>

#include "fuzz_common.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;

static bool same(const SafetensorsFile& a, const SafetensorsFile& b) {
  if (a.metadata != b.metadata || a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const auto& [na, ta] = a.tensors[i];
    const auto& [nb, tb] = b.tensors[i];
    if (na != nb || ta.dtype() != tb.dtype() || ta.shape() != tb.shape() ||
        (ta.nbytes() && std::memcmp(ta.raw_data(), tb.raw_data(), ta.nbytes()) != 0))
      return false;
  }
  return true;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::temp_dir() + "/input.safetensors";
  const std::string copy = fuzz::temp_dir() + "/resaved.safetensors";
  fuzz::write_file(path, data, size);

  fuzz::guarded([&] {
    const SafetensorsFile file = load_safetensors(path);
    // Accepted: writing it back and reading that must give the same tensors.
    // (Widened F16 / BF16 come back as the F32 they were read as.)
    try {
      save_safetensors(copy, file.tensors, file.metadata);
      if (!same(file, load_safetensors(copy))) fuzz::fail("save + load of an accepted file changed it");
    } catch (const Error& e) {
      fuzz::fail(std::string("an accepted file does not save and load back: ") + e.what());
    }
  });

  fuzz::guarded([&] {
    auto model = nn::TinyGPT::load(path);
    fuzz::require_finite(*model, "TinyGPT::load");
    fuzz::smoke_forward(*model);
  });
  return 0;
}
