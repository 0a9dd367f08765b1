// Harness: adapter_config.json parsing (lora::parse_adapter_config) and
// matching its target_modules / exclude_modules / modules_to_save / patterns
// against a small TinyGPT (lora::plan_lora, then lora::apply_lora). The input
// is the JSON text.
//
// Beyond "no crash, no exception but loragrad::Error": a config that parses
// must write out (adapter_config_json) and parse back to the same JSON, and
// apply_lora must adapt exactly the modules plan_lora planned.
#include "fuzz_common.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"

using namespace loragrad;

// Adapters bigger than this are not built: a large r is a legitimate request,
// and allocating it only slows the fuzzer down.
static constexpr double kMaxAdapterParams = 1 << 20;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::guarded([&] {
    const lora::LoraConfig cfg = lora::parse_adapter_config(text, "fuzz input");
    try {
      const std::string written = lora::adapter_config_json(cfg);
      if (lora::adapter_config_json(lora::parse_adapter_config(written, "rewritten")) != written)
        fuzz::fail("adapter_config_json -> parse_adapter_config does not round-trip:\n" + written);
    } catch (const Error& e) {
      fuzz::fail(std::string("an accepted config does not write and parse back: ") + e.what());
    }

    auto model = fuzz::tiny_model();
    const lora::LoraPlan plan = lora::plan_lora(*model, cfg);
    double params = 0;
    for (const auto& t : plan.targets) params += double(t.options.r) * double(t.in_features + t.out_features);
    if (params > kMaxAdapterParams) return;
    const lora::LoraReport rep = lora::apply_lora(*model, cfg);
    if (rep.modules.size() != plan.targets.size()) fuzz::fail("apply_lora adapted other modules than plan_lora planned");
    for (size_t i = 0; i < rep.modules.size(); ++i)
      if (rep.modules[i].path != plan.targets[i].path || rep.modules[i].r != plan.targets[i].options.r)
        fuzz::fail("apply_lora and plan_lora disagree on " + plan.targets[i].path);
    fuzz::smoke_forward(*model);
  });
  return 0;
}
