// Model-wide adapter switching, deletion, weighted combination and merging.
#include "loragrad/lora/combine.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include "loragrad/autograd.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/linalg.hpp"
#include "loragrad/ops.hpp"

namespace loragrad::lora {

using Layers = std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>>;

std::vector<std::string> adapter_names(const nn::Module& model) {
  std::vector<std::string> names;
  for (const auto& [path, layer] : lora_layers(model))
    for (const auto& n : layer->adapter_names())
      if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  return names;
}

static void require_adapter(const Layers& layers, const nn::Module& model, const std::string& name, const char* op) {
  for (const auto& [path, layer] : layers)
    if (layer->has_adapter(name)) return;
  throw ValueError(std::string(op) + ": no LoRA layer has an adapter called '" + name + "'; adapters: " +
                   quoted_list(adapter_names(model)));
}

std::string active_adapter(const nn::Module& model) {
  const Layers layers = lora_layers(model);
  // While some layer runs an adapter, that is the one (they all run the same).
  std::string running;
  for (const auto& [path, layer] : layers)
    if (!layer->adapters_disabled() && !layer->active_adapter().empty()) {
      if (!running.empty() && running != layer->active_adapter())
        throw Error("active_adapter: layers run different adapters ('" + running + "', '" +
                    layer->active_adapter() + "' at '" + path + "'); call set_adapter(model, name)");
      running = layer->active_adapter();
    }
  if (!running.empty()) return running;
  // All disabled: the model's adapter is active in every layer that holds it.
  // A layer disabled for lacking it keeps an older adapter active, which some
  // other layer holding that older adapter shows to be inactive.
  std::vector<std::string> candidates;
  for (const auto& name : adapter_names(model)) {
    bool active_wherever_held = true;
    for (const auto& [path, layer] : layers)
      if (layer->has_adapter(name) && layer->active_adapter() != name) active_wherever_held = false;
    if (active_wherever_held) candidates.push_back(name);
  }
  if (candidates.size() > 1)
    throw ValueError("active_adapter: adapters " + quoted_list(candidates) +
                     " sit on different layers and all are disabled, so which one is active cannot be told; "
                     "call set_adapter(model, name)");
  return candidates.empty() ? "" : candidates[0];
}

// Freezes every adapter of a layer that will run as its base.
static void run_as_base(LoraLinear& layer) {
  layer.disable_adapters(true);
  for (const auto& n : layer.adapter_names()) {
    layer.lora_A_weight(n).requires_grad_(false);
    layer.lora_B_weight(n).requires_grad_(false);
    if (layer.is_dora(n)) layer.magnitude(n).requires_grad_(false);
  }
}

static bool all_disabled(const Layers& layers) {
  for (const auto& [path, layer] : layers)
    if (!layer->adapters_disabled()) return false;
  return true;
}

void set_adapter(nn::Module& model, const std::string& name) {
  const Layers layers = lora_layers(model);
  require_adapter(layers, model, name, "set_adapter");
  const bool keep_disabled = all_disabled(layers);
  for (const auto& [path, layer] : layers) {
    if (layer->has_adapter(name)) {
      layer->set_adapter(name);  // unmerges, makes `name` trainable and the others frozen
      layer->disable_adapters(keep_disabled);
    } else {
      if (layer->merged()) layer->unmerge();
      run_as_base(*layer);
    }
  }
}

void disable_adapters(nn::Module& model) {
  for (const auto& [path, layer] : lora_layers(model)) layer->disable_adapters(true);
}

void enable_adapters(nn::Module& model) {
  const std::string active = active_adapter(model);
  for (const auto& [path, layer] : lora_layers(model))
    layer->disable_adapters(!(layer->has_adapter(active) && layer->active_adapter() == active));
}

AdaptersDisabled::AdaptersDisabled(nn::Module& model) {
  try {
    for (const auto& [path, layer] : lora_layers(model)) {
      layers_.emplace_back(layer, layer->adapters_disabled());
      layer->disable_adapters(true);  // may unmerge, and so throw: the layers done so far come back
    }
  } catch (...) {
    for (const auto& [layer, was_disabled] : layers_) layer->disable_adapters(was_disabled);
    throw;
  }
}

AdaptersDisabled::~AdaptersDisabled() {
  for (const auto& [layer, was_disabled] : layers_) layer->disable_adapters(was_disabled);
}

void delete_adapter(nn::Module& model, const std::string& name) {
  const Layers layers = lora_layers(model);
  require_adapter(layers, model, name, "delete_adapter");
  const std::string active = active_adapter(model);
  const bool keep_disabled = all_disabled(layers);
  for (const auto& [path, layer] : layers)
    if (layer->has_adapter(name)) layer->delete_adapter(name);
  if (active != name) return;
  std::vector<std::string> rest = adapter_names(model);
  if (rest.empty()) return;
  std::sort(rest.begin(), rest.end());
  set_adapter(model, rest.front());
  if (keep_disabled) disable_adapters(model);
}

// ============================ add_weighted_adapter ============================

namespace {

// The new adapter's A (r, in) and B (out, r) for one layer, in float64.
struct Combined {
  std::shared_ptr<LoraLinear> layer;
  LoraOptions options;
  Tensor A, B;
};

Tensor f64(const Tensor& t) { return t.detach().to(DType::f64); }

Combined combine_layer(const std::string& path, const std::shared_ptr<LoraLinear>& layer,
                       const std::vector<std::string>& names, const std::vector<double>& weights,
                       const std::string& how, int64_t svd_rank) {
  const std::string where = "add_weighted_adapter('" + how + "') at '" + path + "'";
  std::vector<size_t> present;
  for (size_t i = 0; i < names.size(); ++i)
    if (layer->has_adapter(names[i])) {
      if (layer->is_dora(names[i]))
        throw ValueError(where + ": adapter '" + names[i] + "' is a DoRA adapter; DoRA adapters cannot be combined");
      present.push_back(i);
    }
  Combined c{layer, layer->adapter_options(names[present[0]]), {}, {}};
  NoGradGuard no_grad;
  int64_t rank = 0;
  if (how == "linear") {
    for (size_t i : present) {
      const int64_t r = layer->adapter_options(names[i]).r;
      if (rank && r != rank)
        throw ValueError(where + ": 'linear' needs equal ranks, got " + std::to_string(rank) + " and " +
                         std::to_string(r) + " (adapter '" + names[i] + "')");
      rank = r;
      const double ws = weights[i] * layer->scaling(names[i]);
      if (ws < 0)
        throw ValueError(where + ": 'linear' takes sqrt(weight * scale), so weight " + std::to_string(weights[i]) +
                         " of adapter '" + names[i] + "' must not be negative");
      const Tensor a = f64(layer->lora_A_weight(names[i])) * std::sqrt(ws);  // (r, in)
      const Tensor b = f64(layer->lora_B_weight(names[i])) * std::sqrt(ws);  // (out, r)
      c.A = c.A.defined() ? add(c.A, a) : a;
      c.B = c.B.defined() ? add(c.B, b) : b;
    }
  } else if (how == "cat") {
    std::vector<Tensor> as, bs;
    for (size_t i : present) {
      rank += layer->adapter_options(names[i]).r;
      as.push_back(f64(layer->lora_A_weight(names[i])) * (weights[i] * layer->scaling(names[i])));
      bs.push_back(f64(layer->lora_B_weight(names[i])));
    }
    c.A = concat(as, 0);  // (sum r, in)
    c.B = concat(bs, 1);  // (out, sum r)
  } else {  // svd
    Tensor delta;  // (out, in) = sum w_i s_i B_i A_i
    for (size_t i : present) {
      rank = std::max(rank, layer->adapter_options(names[i]).r);
      const Tensor d = matmul(f64(layer->lora_B_weight(names[i])), f64(layer->lora_A_weight(names[i]))) *
                       (weights[i] * layer->scaling(names[i]));
      delta = delta.defined() ? add(delta, d) : d;
    }
    if (svd_rank > 0) rank = svd_rank;
    const int64_t full = std::min(layer->in_features, layer->out_features);
    if (rank > full)
      throw ValueError(where + ": svd rank " + std::to_string(rank) + " exceeds min(d_in, d_out) = " +
                       std::to_string(full));
    const Svd s = svd(delta);
    c.B = mul(narrow(s.U, 1, 0, rank), reshape(narrow(s.S, 0, 0, rank), {1, rank}));  // U_k diag(S_k)
    c.A = narrow(s.Vh, 0, 0, rank);                                                    // Vh_k
  }
  c.options.r = rank;
  c.options.alpha = static_cast<double>(rank);  // scale 1: the weights are inside A / B
  c.options.use_rslora = false;
  c.options.use_dora = false;
  c.options.init = LoraInit::standard;  // overwritten below
  return c;
}

}  // namespace

void add_weighted_adapter(nn::Module& model, const std::vector<std::string>& adapters,
                          const std::vector<double>& weights, const std::string& new_name,
                          const std::string& combination, int64_t svd_rank) {
  const std::string where = "add_weighted_adapter('" + new_name + "')";
  if (adapters.empty()) throw ValueError(where + ": no adapters given");
  if (adapters.size() != weights.size())
    throw ValueError(where + ": " + std::to_string(adapters.size()) + " adapters but " +
                     std::to_string(weights.size()) + " weights");
  if (combination != "linear" && combination != "cat" && combination != "svd")
    throw ValueError(where + ": combination '" + combination + "' is not one of 'linear', 'cat', 'svd'");
  if (new_name.empty() || new_name.find('.') != std::string::npos)
    throw ValueError(where + ": the adapter name must be non-empty and without '.'");
  if (svd_rank < 0) throw ValueError(where + ": svd_rank must be >= 0, got " + std::to_string(svd_rank));
  const Layers layers = lora_layers(model);
  for (const auto& a : adapters) require_adapter(layers, model, a, "add_weighted_adapter");
  for (const auto& [path, layer] : layers)
    if (layer->has_adapter(new_name))
      throw ValueError(where + ": an adapter called '" + new_name + "' already exists (at '" + path + "')");
  // One adapter can only be scaled: PEFT then always uses "linear".
  const std::string how = adapters.size() == 1 ? "linear" : combination;

  std::vector<Combined> planned;  // all checks first, then the model changes
  for (const auto& [path, layer] : layers) {
    bool holds = false;
    for (const auto& a : adapters) holds |= layer->has_adapter(a);
    if (holds) planned.push_back(combine_layer(path, layer, adapters, weights, how, svd_rank));
  }
  NoGradGuard no_grad;
  for (Combined& c : planned) {
    c.layer->add_adapter(new_name, c.options);  // a layer's later adapter: inactive and frozen
    c.layer->lora_A_weight(new_name).copy_(c.A);
    c.layer->lora_B_weight(new_name).copy_(c.B);
  }
}

// ============================ merge and unload ============================

// The merged dense weight of `name` computed here from the layer's parts, to
// measure what NF4 requantisation adds: LoRA W0 + s B A, DoRA (m/n) (W0 + s B A).
static Tensor exact_merged_weight(LoraLinear& layer, const std::string& name) {
  NoGradGuard no_grad;
  Tensor W = add(layer.base_weight().to(DType::f64), layer.delta_weight(name).to(DType::f64));  // (out, in)
  if (!layer.is_dora(name)) return W;
  const Tensor norm = sqrt(sum(mul(W, W), {1}, true));  // (out, 1)
  return mul(div(reshape(layer.magnitude(name).detach().to(DType::f64), {layer.out_features, 1}), norm), W);
}

// Puts a float32 nn::Linear holding dequant(W0) (and the same bias) in the
// place of the layer's quantised base: the merge that follows is then the dense one.
static void dequantize_base(nn::Module& model, const std::string& path, LoraLinear& layer) {
  const std::shared_ptr<nn::LinearBase> q = layer.base_layer;
  const bool bias_trainable = q->bias.defined() && q->bias.requires_grad();
  auto dense = std::make_shared<nn::Linear>(q->dense_weight(), q->bias);
  dense->weight.requires_grad_(false);  // frozen, as the base was
  if (dense->bias.defined()) dense->bias.requires_grad_(bias_trainable);
  dense->train(q->is_training());
  model.replace_module(path + ".base_layer", dense);
}

MergeReport merge_and_unload(nn::Module& model, bool requantize) {
  MergeReport rep;
  const std::string active = active_adapter(model);
  for (const auto& [path, layer] : lora_layers(model)) {
    if (!active.empty() && layer->has_adapter(active)) {
      if (layer->merged() && layer->merged_adapter() != active) layer->unmerge();
      const bool quantized = layer->base_layer->quantized() && !layer->merged();  // NF4
      Tensor want;
      if (quantized && requantize) want = exact_merged_weight(*layer, active);
      if (quantized && !requantize) {
        dequantize_base(model, path, *layer);
        rep.dequantized.push_back(path);
      }
      if (layer->active_adapter() != active) layer->set_adapter(active);
      layer->merge();
      if (want.defined()) {
        const std::vector<double> got = layer->base_weight().to_vector(), w = want.to_vector();
        for (size_t i = 0; i < got.size(); ++i)
          rep.max_requantization_error = std::max(rep.max_requantization_error, std::abs(got[i] - w[i]));
      }
      rep.merged.push_back(path);
    } else {
      if (layer->merged()) layer->unmerge();
      rep.unloaded.push_back(path);
    }
    model.replace_module(path, layer->base_layer);
  }
  return rep;
}

int unload(nn::Module& model) {
  int n = 0;
  for (const auto& [path, layer] : lora_layers(model)) {
    if (layer->merged()) layer->unmerge();
    model.replace_module(path, layer->base_layer);
    ++n;
  }
  return n;
}

}  // namespace loragrad::lora
