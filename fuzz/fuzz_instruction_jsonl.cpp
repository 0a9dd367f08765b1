// Harness: instruction data as JSON Lines (data::read_jsonl, via
// data::InstructionDataset::from_file). The input is the .jsonl file.
//
// Beyond "no crash, no exception but loragrad::Error": reading the file and
// parsing its text give the same examples; an accepted file makes a dataset
// whose statistics, sampled batches (also mixed with plain text,
// data::MixedSource) and fixed validation batches are well formed at several
// seq: x bytes, y bytes or -100, starts inside the row and the example, every
// target a response byte that follows its input, and as many targets as the
// usable examples promise.
#include "fuzz_common.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/data/jsonl.hpp"
#include "loragrad/data/mixed_source.hpp"

using namespace loragrad;
using namespace loragrad::data;

namespace {

// x, y, starts (rows, seq) as packed rows must be.
void check_batch(const Batch& b, int64_t seq, const std::string& what) {
  if (!b.x.defined() || !b.y.defined() || !b.starts.defined()) fuzz::fail(what + ": a tensor is missing");
  if (b.x.dim() != 2 || b.x.size(1) != seq || b.y.shape() != b.x.shape() || b.starts.shape() != b.x.shape())
    fuzz::fail(what + ": shapes do not agree");
  const int64_t rows = b.x.size(0);
  const int64_t *x = b.x.data<int64_t>(), *y = b.y.data<int64_t>(), *s = b.starts.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t i = r * seq + t;
      if (x[i] < 0 || x[i] > 255) fuzz::fail(what + ": an input outside 0..255");
      if (y[i] != kIgnoreIndex && (y[i] < 0 || y[i] > 255)) fuzz::fail(what + ": a target outside 0..255 and not -100");
      if (s[i] < 0 || s[i] > t) fuzz::fail(what + ": starts outside [0, t]");
      if (t > 0 && s[i] < s[i - 1]) fuzz::fail(what + ": starts decrease along a row");
      // A target inside the same example is the next position's input.
      if (y[i] != kIgnoreIndex && t + 1 < seq && s[i + 1] == s[i] && y[i] != x[i + 1])
        fuzz::fail(what + ": a target is not the next input");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::temp_dir() + "/input.jsonl";
  fuzz::write_file(path, data, size);
  fuzz::guarded([&] {
    const std::vector<Example> examples = read_jsonl(path);
    const std::vector<Example> again =
        parse_jsonl(std::string_view(reinterpret_cast<const char*>(data), size), path);
    if (again.size() != examples.size()) fuzz::fail("read_jsonl and parse_jsonl disagree on the count");
    for (size_t i = 0; i < examples.size(); ++i) {
      if (examples[i].prompt != again[i].prompt || examples[i].response != again[i].response)
        fuzz::fail("read_jsonl and parse_jsonl disagree on example " + std::to_string(i));
      if (examples[i].response.empty()) fuzz::fail("an empty response was accepted");
    }

    const InstructionDataset ds = InstructionDataset::from_file(path, 0.25);
    if (static_cast<size_t>(ds.num_examples(Split::train) + ds.num_examples(Split::validation)) != examples.size())
      fuzz::fail("the splits do not hold every example");
    static const ByteDataset general("General text, one causal context per row. 0123456789\n", 0.0);
    for (int64_t seq : {1, 7, 64}) {
      for (Split split : {Split::train, Split::validation}) {
        const std::string what = std::string(split_name(split)) + " seq " + std::to_string(seq);
        const PackStats st = ds.stats(split, seq);
        if (st.examples != ds.num_examples(split) || st.skipped > st.examples || st.targets < 0)
          fuzz::fail(what + ": inconsistent stats " + st.str());
        const std::string why = ds.cannot_sample(split, seq);
        if (why.empty() != (st.targets > 0)) fuzz::fail(what + ": cannot_sample '" + why + "' with " + st.str());
        if (!why.empty()) continue;

        Generator gen(size);
        const Batch b = ds.sample(split, 2, seq, gen);
        check_batch(b, seq, what + " sample");
        if (b.x.size(0) != 2) fuzz::fail(what + ": sample gave another number of rows");
        if (b.num_targets() < 1) fuzz::fail(what + ": a sampled batch without a target");

        // Every usable example once: as many targets as the stats count.
        const std::vector<Batch> fixed = ds.fixed_batches(split, 1 << 20, 3, seq, 0);
        int64_t targets = 0;
        for (const Batch& f : fixed) {
          check_batch(f, seq, what + " fixed_batches");
          targets += f.num_targets();
        }
        if (targets != st.targets) fuzz::fail(what + ": fixed_batches score another number of targets than stats");

        if (split == Split::train && general.cannot_sample(Split::train, seq).empty()) {
          const MixedSource mix(ds, general, 0.5);
          const Batch m = mix.sample(Split::train, 3, seq, gen);
          check_batch(m, seq, what + " mixed");
          if (m.x.size(0) != 3) fuzz::fail(what + ": a mixed batch with another number of rows");
        }
      }
    }
  });
  return 0;
}
