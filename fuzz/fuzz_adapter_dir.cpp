// Harness: loading a whole PEFT adapter directory onto a base model
// (lora::load_adapter on fuzz::tiny_model()). The input is split into
// adapter_config.json and adapter_model.safetensors (see fuzz::unpack_adapter:
// a 4-byte little-endian config length, the config, then the weights), which
// are written into a scratch directory and loaded.
//
// Beyond "no crash, no exception but loragrad::Error": a loaded adapter must be
// finite, run forward, and save (save_adapter) into a directory that loads
// onto a fresh base with the same adapter tensors.
#include <cstring>

#include "fuzz_common.hpp"
#include "loragrad/lora/peft_io.hpp"

using namespace loragrad;

static bool same(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].first != b[i].first || a[i].second.shape() != b[i].second.shape() ||
        a[i].second.dtype() != b[i].second.dtype() ||
        (a[i].second.nbytes() &&
         std::memcmp(a[i].second.raw_data(), b[i].second.raw_data(), a[i].second.nbytes()) != 0))
      return false;
  return true;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = fuzz::temp_dir() + "/adapter";
  const std::string resaved = fuzz::temp_dir() + "/resaved";
  const auto [config, weights] = fuzz::unpack_adapter(data, size);
  std::filesystem::create_directories(dir);
  fuzz::write_file(dir + "/adapter_config.json", reinterpret_cast<const uint8_t*>(config.data()), config.size());
  fuzz::write_file(dir + "/adapter_model.safetensors", reinterpret_cast<const uint8_t*>(weights.data()),
                   weights.size());

  fuzz::guarded([&] {
    auto model = fuzz::tiny_model();
    lora::load_adapter(*model, dir);
    fuzz::require_finite(*model, "load_adapter");
    fuzz::smoke_forward(*model);

    // What was loaded saves and loads back (a refusal to save is not a finding:
    // save_adapter documents adapters one config cannot describe).
    lora::save_adapter(*model, resaved, "default", /*overwrite=*/true);
    try {
      auto again = fuzz::tiny_model();
      lora::load_adapter(*again, resaved);
      if (!same(lora::adapter_state_dict(*model), lora::adapter_state_dict(*again)))
        fuzz::fail("save_adapter + load_adapter changed the adapter");
    } catch (const Error& e) {
      fuzz::fail(std::string("a loaded adapter saved by save_adapter does not load back: ") + e.what());
    }
  });
  return 0;
}
