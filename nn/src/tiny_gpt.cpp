// TinyGPT: construction, forward, loss, sampling.
#include "loragrad/nn/tiny_gpt.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "loragrad/autograd.hpp"
#include "loragrad/ops.hpp"

namespace loragrad::nn {

// ============================ config ============================

void TinyGPTConfig::validate() const {
  auto positive = [](int64_t v, const char* name) {
    if (v <= 0) throw ValueError(std::string("TinyGPTConfig: ") + name + " must be positive, got " + std::to_string(v));
  };
  positive(vocab_size, "vocab_size");
  positive(block_size, "block_size");
  positive(d_model, "d_model");
  positive(n_layer, "n_layer");
  positive(n_head, "n_head");
  if (d_ff < 0) throw ValueError("TinyGPTConfig: d_ff must be positive (or 0 for 4 * d_model), got " + std::to_string(d_ff));
  if (d_model % n_head != 0)
    throw ValueError("TinyGPTConfig: d_model " + std::to_string(d_model) + " is not a multiple of n_head " +
                     std::to_string(n_head));
  if (!(dropout >= 0 && dropout < 1))
    throw ValueError("TinyGPTConfig: dropout must be in [0, 1), got " + std::to_string(dropout));
  if (!is_floating(dtype))
    throw DTypeError(std::string("TinyGPTConfig: dtype must be float32 or float64, got ") + dtype_name(dtype));
}

// The hyper-parameters a checkpoint records, in the spec's order.
static const char* const kHyperParameters[] = {"vocab_size", "block_size", "d_model", "n_layer", "n_head", "d_ff"};

static int64_t config_field(const TinyGPTConfig& c, const std::string& key) {
  if (key == "vocab_size") return c.vocab_size;
  if (key == "block_size") return c.block_size;
  if (key == "d_model") return c.d_model;
  if (key == "n_layer") return c.n_layer;
  if (key == "n_head") return c.n_head;
  return c.ffn_width();  // d_ff
}

static int64_t& config_field(TinyGPTConfig& c, const std::string& key) {
  if (key == "vocab_size") return c.vocab_size;
  if (key == "block_size") return c.block_size;
  if (key == "d_model") return c.d_model;
  if (key == "n_layer") return c.n_layer;
  if (key == "n_head") return c.n_head;
  return c.d_ff;
}

Metadata TinyGPTConfig::to_metadata() const {
  Metadata m;
  for (const char* key : kHyperParameters) m[key] = std::to_string(config_field(*this, key));
  return m;
}

// A metadata value that must be a whole decimal number.
static int64_t parse_field(const Metadata& meta, const std::string& key, const std::string& source) {
  const std::string& s = meta.at(key);
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (s.empty() || used != s.size())
    throw IOError(source + ": metadata " + key + " = '" + printable(s) + "' is not an integer");
  return v;
}

TinyGPTConfig TinyGPTConfig::from_metadata(const Metadata& meta, const std::string& source) {
  TinyGPTConfig c;
  for (const char* key : kHyperParameters) {
    if (!meta.count(key))
      throw IOError(source + ": not a TinyGPT checkpoint: __metadata__ lacks '" + key +
                    "' (expected vocab_size, block_size, d_model, n_layer, n_head, d_ff)");
    config_field(c, key) = parse_field(meta, key, source);
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw IOError(source + ": bad hyper-parameters in __metadata__: " + e.what());
  }
  return c;
}

std::vector<std::pair<std::string, Shape>> TinyGPTConfig::parameter_shapes() const {
  const int64_t V = vocab_size, T = block_size, d = d_model, f = ffn_width();
  std::vector<std::pair<std::string, Shape>> out = {{"tok_emb.weight", {V, d}}, {"pos_emb.weight", {T, d}}};
  for (int64_t i = 0; i < n_layer; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    const std::vector<std::pair<std::string, Shape>> block = {
        {"ln1.weight", {d}},         {"ln1.bias", {d}},
        {"attn.q_proj.weight", {d, d}}, {"attn.q_proj.bias", {d}},
        {"attn.k_proj.weight", {d, d}}, {"attn.k_proj.bias", {d}},
        {"attn.v_proj.weight", {d, d}}, {"attn.v_proj.bias", {d}},
        {"attn.o_proj.weight", {d, d}}, {"attn.o_proj.bias", {d}},
        {"ln2.weight", {d}},         {"ln2.bias", {d}},
        {"mlp.fc_in.weight", {f, d}},   {"mlp.fc_in.bias", {f}},
        {"mlp.fc_out.weight", {d, f}},  {"mlp.fc_out.bias", {d}}};
    for (const auto& [name, shape] : block) out.push_back({b + name, shape});
  }
  out.push_back({"ln_f.weight", {d}});
  out.push_back({"ln_f.bias", {d}});
  out.push_back({"lm_head.weight", {V, d}});
  return out;
}

// ============================ construction ============================

TinyGPT::TinyGPT(const TinyGPTConfig& config) : config_(config) {
  config_.validate();
  config_.d_ff = config_.ffn_width();
  const TinyGPTConfig& c = config_;
  Generator init_gen(c.seed);
  // A stream of its own, so dropout masks are not correlated with the initial weights.
  dropout_gen_ = std::make_shared<Generator>(c.seed ^ 0x9E3779B97F4A7C15ull);

  register_module("tok_emb", tok_emb = std::make_shared<Embedding>(c.vocab_size, c.d_model, init_gen));
  register_module("pos_emb", pos_emb = std::make_shared<Embedding>(c.block_size, c.d_model, init_gen));
  register_module("emb_drop", emb_drop = std::make_shared<Dropout>(c.dropout, dropout_gen_));
  register_module("blocks", blocks = std::make_shared<ModuleList>());
  for (int64_t i = 0; i < c.n_layer; ++i)
    blocks->push_back(
        std::make_shared<TransformerBlock>(c.d_model, c.n_head, c.d_ff, c.dropout, init_gen, dropout_gen_));
  register_module("ln_f", ln_f = std::make_shared<LayerNorm>(c.d_model));
  register_module("lm_head", lm_head = std::make_shared<Linear>(c.d_model, c.vocab_size, false, init_gen));
  init_weights(init_gen);
  to(c.dtype);
}

// The spec's initialisation: N(0, 0.02) weights, zero biases, LayerNorm (1, 0).
// The layers' own defaults (PyTorch's) are overwritten, as nanoGPT does.
void TinyGPT::init_weights(Generator& gen) {
  NoGradGuard no_grad;
  for (auto& [name, m] : named_modules()) {
    if (auto* lin = dynamic_cast<Linear*>(m.get())) {
      lin->weight.copy_(normal(lin->weight.shape(), 0.0, 0.02, gen, lin->weight.dtype()));
      if (lin->bias.defined()) lin->bias.fill_(0.0);
    } else if (auto* emb = dynamic_cast<Embedding*>(m.get())) {
      emb->weight.copy_(normal(emb->weight.shape(), 0.0, 0.02, gen, emb->weight.dtype()));
    } else if (auto* ln = dynamic_cast<LayerNorm*>(m.get())) {
      ln->weight.fill_(1.0);
      ln->bias.fill_(0.0);
    }
  }
}

std::string TinyGPT::extra_repr() const { return ""; }

// ============================ forward ============================

Tensor TinyGPT::hidden_states(const Tensor& idx, const Tensor& starts) {
  check_defined(idx, "TinyGPT.forward");
  if (idx.dtype() != DType::i64)
    throw DTypeError(std::string("TinyGPT.forward: token ids must be int64, got ") + dtype_name(idx.dtype()) + " " +
                     shape_str(idx.shape()));
  if (idx.dim() != 2)
    throw ShapeError("TinyGPT.forward: token ids must be (B, t), got " + shape_str(idx.shape()));
  const int64_t t = idx.size(1);
  if (t < 1 || t > config_.block_size)
    throw ShapeError("TinyGPT.forward: sequence length " + std::to_string(t) + " of ids " + shape_str(idx.shape()) +
                     " is outside [1, block_size = " + std::to_string(config_.block_size) + "]");
  if (!starts.defined()) {
    Tensor pos = narrow(pos_emb->weight, 0, 0, t);             // (t, d)
    Tensor x = emb_drop->forward(add(tok_emb->forward(idx), pos));  // (B, t, d)
    for (const ModulePtr& block : blocks->items()) x = block->forward(x);  // (B, t, d)
    return x;
  }
  if (starts.dtype() != DType::i64 || starts.shape() != idx.shape())
    throw ShapeError("TinyGPT.forward: starts must be int64 of the ids' shape " + shape_str(idx.shape()) + ", got " +
                     dtype_name(starts.dtype()) + " " + shape_str(starts.shape()));
  // Each position's place in its own example; causal_attention checks 0 <= starts[b, i] <= i.
  const int64_t* s = starts.data<int64_t>();  // (B, t)
  std::vector<int64_t> pos_ids(static_cast<size_t>(starts.numel()));
  for (int64_t n = 0; n < starts.numel(); ++n) pos_ids[static_cast<size_t>(n)] = std::max<int64_t>(0, n % t - s[n]);
  Tensor pos = pos_emb->forward(from_indices(pos_ids, idx.shape()));  // (B, t, d)
  Tensor x = emb_drop->forward(add(tok_emb->forward(idx), pos));     // (B, t, d)
  for (const ModulePtr& block : blocks->items()) {
    auto* tb = dynamic_cast<TransformerBlock*>(block.get());
    if (!tb) throw ValueError("TinyGPT.forward: packed rows (starts) need TransformerBlock blocks, found " +
                              block->type_name());
    x = tb->forward(x, starts);  // (B, t, d)
  }
  return x;
}

Tensor TinyGPT::forward(const Tensor& idx) { return forward(idx, Tensor()); }

Tensor TinyGPT::forward(const Tensor& idx, const Tensor& starts) {
  return lm_head->forward(ln_f->forward(hidden_states(idx, starts)));  // (B, t, V)
}

Tensor TinyGPT::loss(const Tensor& idx, const Tensor& targets, const Tensor& starts) {
  return cross_entropy(forward(idx, starts), targets);
}

// ============================ sampling ============================

// One token id from the last position's logits.
static int64_t sample_token(std::vector<double> z, double temperature, int64_t top_k, Generator& gen) {
  const int64_t V = static_cast<int64_t>(z.size());
  if (temperature == 0) return std::max_element(z.begin(), z.end()) - z.begin();
  for (double& v : z) v /= temperature;
  if (top_k > 0 && top_k < V) {
    std::vector<double> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[static_cast<size_t>(top_k - 1)];  // ties with the k-th largest stay in
    for (double& v : z)
      if (v < kth) v = -std::numeric_limits<double>::infinity();
  }
  const double m = *std::max_element(z.begin(), z.end());
  double total = 0;
  for (double& v : z) total += (v = std::exp(v - m));
  const double u = gen.uniform() * total;
  double cum = 0;
  for (int64_t i = 0; i < V; ++i) {
    cum += z[static_cast<size_t>(i)];
    if (u < cum) return i;
  }
  for (int64_t i = V - 1; i >= 0; --i)  // u landed on the rounding slack at the end
    if (z[static_cast<size_t>(i)] > 0) return i;
  return V - 1;
}

std::vector<int64_t> TinyGPT::generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens, double temperature,
                                       int64_t top_k, Generator& gen) {
  if (prompt.empty()) throw ValueError("TinyGPT.generate: the prompt is empty (give at least one token id)");
  if (max_new_tokens < 0)
    throw ValueError("TinyGPT.generate: max_new_tokens must be >= 0, got " + std::to_string(max_new_tokens));
  if (!(temperature >= 0) || !std::isfinite(temperature))
    throw ValueError("TinyGPT.generate: temperature must be finite and >= 0, got " + std::to_string(temperature));
  if (top_k < 0) throw ValueError("TinyGPT.generate: top_k must be >= 0 (0 = all), got " + std::to_string(top_k));

  NoGradGuard no_grad;
  std::vector<int64_t> seq = prompt;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(seq.size()), config_.block_size);
    std::vector<int64_t> context(seq.end() - n, seq.end());
    Tensor h = hidden_states(from_indices(context, {1, n}), Tensor());  // (1, n, d)
    Tensor last = narrow(h, 1, n - 1, 1);                      // (1, 1, d): only the last position is needed
    Tensor logits = lm_head->forward(ln_f->forward(last));     // (1, 1, V)
    seq.push_back(sample_token(logits.to_vector(), temperature, top_k, gen));
  }
  return seq;
}

std::string sample_text(TinyGPT& model, const std::string& prompt, int64_t max_new_bytes, double temperature,
                        int64_t top_k, uint64_t seed) {
  std::vector<int64_t> ids;
  ids.reserve(prompt.size());
  for (unsigned char c : prompt) ids.push_back(c);
  ModeScope eval_mode(model, false);
  Generator gen(seed);
  const std::vector<int64_t> out = model.generate(ids, max_new_bytes, temperature, top_k, gen);
  std::string text;
  text.reserve(out.size());
  for (int64_t id : out) text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  return text;
}

}  // namespace loragrad::nn
