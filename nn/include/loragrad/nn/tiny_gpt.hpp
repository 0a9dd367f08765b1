#pragma once
// TinyGPT: the reference decoder-only transformer of docs/tiny-gpt.md,
// with exactly its parameter names and checkpoint format.
//
//   x      = tok_emb[idx] + pos_emb[0..t-1]          (B, t, d)
//   x      = blocks[i](x)  for i in 0..L-1            pre-LN TransformerBlock
//   logits = lm_head(ln_f(x))                          (B, t, V)
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/generator.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/module.hpp"
#include "loragrad/nn/transformer.hpp"
#include "loragrad/safetensors.hpp"

namespace loragrad::nn {

struct TinyGPTConfig {
  int64_t vocab_size = 256;
  int64_t block_size = 128;
  int64_t d_model = 64;
  int64_t n_layer = 2;
  int64_t n_head = 2;
  int64_t d_ff = 0;        // 0 means 4 * d_model
  double dropout = 0.0;    // embedding, attention-output and residual dropout
  uint64_t seed = 0;       // initial weights and dropout masks
  DType dtype = DType::f32;

  int64_t ffn_width() const { return d_ff > 0 ? d_ff : 4 * d_model; }
  // Throws ValueError naming the first bad field.
  void validate() const;
  // The hyper-parameters as checkpoint metadata (strings, d_ff resolved).
  Metadata to_metadata() const;
  // From a checkpoint's metadata; `source` (the file) is named in errors.
  static TinyGPTConfig from_metadata(const Metadata& meta, const std::string& source);
  // Every parameter's name and shape, in state_dict order, without building
  // the model: a checkpoint is checked against this before anything is
  // allocated (its metadata could ask for terabytes). A test keeps it equal
  // to the constructed model's state_dict.
  std::vector<std::pair<std::string, Shape>> parameter_shapes() const;
};

class TinyGPT : public Module {
 public:
  explicit TinyGPT(const TinyGPTConfig& config);

  // idx i64 (B, t) with t <= block_size -> logits (B, t, V).
  Tensor forward(const Tensor& idx) override;
  // Packed rows: starts i64 (B, t), where the example at each position begins.
  // Each example is computed as if alone: attention stays inside it (a
  // block-diagonal causal mask) and positions count from its start
  // (pos_emb[i - starts[b, i]]), as HF's padding-free packing does with
  // position_ids. An undefined starts is forward(idx).
  Tensor forward(const Tensor& idx, const Tensor& starts);
  // Mean cross entropy of forward(idx, starts) against targets i64 (B, t): a
  // 0-d tensor. Targets equal to -100 are ignored (PyTorch's ignore_index): the
  // mean is over the others, and NaN when every target is ignored.
  Tensor loss(const Tensor& idx, const Tensor& targets, const Tensor& starts = Tensor());
  // Extends `prompt` by max_new_tokens sampled tokens and returns the whole
  // sequence. temperature == 0 is greedy (argmax, ties to the lowest id);
  // otherwise softmax(logits / temperature), restricted to the top_k largest
  // logits when 0 < top_k < V. The context is cropped to the last block_size
  // tokens. Runs without recording a graph, in the model's current mode
  // (call eval() first, as in PyTorch, or dropout stays on).
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens, double temperature,
                                int64_t top_k, Generator& gen);

  // Writes the parameters (as float32 unless told otherwise) and the
  // hyper-parameters as metadata.
  void save(const std::string& path, DType on_disk = DType::f32) const;
  // Loads a checkpoint into this model. Hyper-parameters that differ are
  // refused with an IOError naming each one ("d_model: checkpoint 128, model 64").
  void load_weights(const std::string& path);
  // A new model built from a checkpoint's hyper-parameters and weights.
  static std::shared_ptr<TinyGPT> load(const std::string& path, DType dt = DType::f32, double dropout = 0.0);

  std::string type_name() const override { return "TinyGPT"; }
  std::string extra_repr() const override;
  const TinyGPTConfig& config() const { return config_; }

  std::shared_ptr<Embedding> tok_emb;  // (V, d)
  std::shared_ptr<Embedding> pos_emb;  // (T, d)
  std::shared_ptr<Dropout> emb_drop;
  std::shared_ptr<ModuleList> blocks;  // TransformerBlock "0" .. "L-1"
  std::shared_ptr<LayerNorm> ln_f;
  ModulePtr lm_head;                   // Linear(d, V), no bias, until replaced

 private:
  Tensor hidden_states(const Tensor& idx, const Tensor& starts);  // (B, t) -> (B, t, d), before ln_f
  void init_weights(Generator& gen);

  TinyGPTConfig config_;
  std::shared_ptr<Generator> dropout_gen_;
};

// A short digest of a model's tensors (names, dtypes, shapes and bytes, in
// state_dict order): "fnv1a64:" + 16 hex digits. Equal models give equal
// fingerprints; an adapter records its base's, so that loading it onto
// another base can be noticed.
std::string fingerprint(const NamedTensors& tensors);

// The prompt's bytes followed by max_new_bytes sampled ones, as text
// (TinyGPT::generate in eval mode; the mode is restored). A byte model may
// emit any byte value: the caller decides how to print it.
std::string sample_text(TinyGPT& model, const std::string& prompt, int64_t max_new_bytes, double temperature,
                        int64_t top_k, uint64_t seed);

}  // namespace loragrad::nn
