// apply_lora's matching and freezing, trainable counts, LoRA+ groups, and the
// model-wide adapter utilities (set / disable / delete / combine / merge).
#define BOOST_TEST_MODULE lora_inject
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/linalg.hpp"
#include "loragrad/lora/loraplus.hpp"
#include "loragrad/nn/linear_base.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/quant/nf4.hpp"

using namespace loragrad;
using namespace loragrad::lora;

namespace {

// The storage of a base layer ("f32", "nf4", ...); "" for any other module.
std::string storage_of(const nn::ModulePtr& m) {
  auto base = std::dynamic_pointer_cast<nn::LinearBase>(m);
  return base ? base->storage() : "";
}

// A small tree with look-alike names: q_proj, xq_proj, attn.q_proj, attn.v_proj, norm.
class ToyAttn : public nn::Module {
 public:
  explicit ToyAttn(Generator& g) {
    q_proj = std::make_shared<nn::Linear>(4, 4, true, g, DType::f64);
    v_proj = std::make_shared<nn::Linear>(4, 4, true, g, DType::f64);
    register_module("q_proj", q_proj);
    register_module("v_proj", v_proj);
  }
  Tensor forward(const Tensor& x) override { return v_proj->forward(q_proj->forward(x)); }
  std::string type_name() const override { return "ToyAttn"; }
  nn::ModulePtr q_proj, v_proj;
};

class Toy : public nn::Module {
 public:
  explicit Toy(Generator& g) {
    q_proj = std::make_shared<nn::Linear>(4, 4, true, g, DType::f64);
    xq_proj = std::make_shared<nn::Linear>(4, 4, true, g, DType::f64);
    attn = std::make_shared<ToyAttn>(g);
    norm = std::make_shared<nn::LayerNorm>(4, 1e-5, DType::f64);
    register_module("q_proj", q_proj);
    register_module("xq_proj", xq_proj);
    register_module("attn", attn);
    register_module("norm", norm);
  }
  Tensor forward(const Tensor& x) override {
    return norm->forward(attn->forward(xq_proj->forward(q_proj->forward(x))));
  }
  std::string type_name() const override { return "Toy"; }
  nn::ModulePtr q_proj, xq_proj, attn, norm;
};

std::shared_ptr<Toy> toy() {
  Generator g(5);
  return std::make_shared<Toy>(g);
}

// The checkpoint's shape: V 256, T 16, d 32, 2 blocks of 4 heads, d_ff 128.
std::shared_ptr<nn::TinyGPT> tiny(DType dt = DType::f64) {
  nn::TinyGPTConfig c;
  c.vocab_size = 256;
  c.block_size = 16;
  c.d_model = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.d_ff = 128;
  c.seed = 1;
  c.dtype = dt;
  return std::make_shared<nn::TinyGPT>(c);
}
constexpr int64_t kTinyParams = 8192 + 512 + 2 * (64 + 4 * (1024 + 32) + 64 + (4096 + 128) + (4096 + 32)) + 64 + 8192;

Tensor batch_idx() {
  Generator g(9);
  return randint({2, 12}, 0, 256, g);
}

LoraConfig config(std::vector<std::string> targets, int64_t r = 4, double alpha = 8) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.target_modules = std::move(targets);
  return c;
}

std::vector<std::string> adapted(const nn::Module& m, const std::string& adapter = "default") {
  std::vector<std::string> out;
  for (const auto& [path, layer] : lora_layers(m))
    if (layer->has_adapter(adapter)) out.push_back(path);
  return out;
}

// Gives every adapter non-zero values (B = 0 at init would hide mistakes).
void randomise(nn::Module& m, uint64_t seed, const std::string& adapter) {
  Generator g(seed);
  NoGradGuard no_grad;
  for (const auto& [path, layer] : lora_layers(m)) {
    if (!layer->has_adapter(adapter)) continue;
    Tensor& A = layer->lora_A_weight(adapter);
    Tensor& B = layer->lora_B_weight(adapter);
    A.copy_(randn(A.shape(), g, A.dtype()) * 0.2);
    B.copy_(randn(B.shape(), g, B.dtype()) * 0.2);
    if (layer->is_dora(adapter)) {
      Tensor& mag = layer->magnitude(adapter);
      mag.copy_(mul(mag.detach(), randn(mag.shape(), g, mag.dtype()) * 0.1 + 1.0));
    }
  }
}

std::vector<double> logits(nn::TinyGPT& m) {
  NoGradGuard no_grad;
  return m.forward(batch_idx()).to_vector();
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  BOOST_REQUIRE_EQUAL(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double v : a) m = std::max(m, std::abs(v));
  return m;
}

template <class E, class F>
void check_throws(F f, const std::vector<std::string>& must_mention) {
  try {
    f();
    BOOST_ERROR("expected an exception");
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& s : must_mention) BOOST_CHECK_MESSAGE(msg.find(s) != std::string::npos, "'" << msg << "' lacks '" << s << "'");
  }
}

}  // namespace

// ============================ matching ============================

BOOST_AUTO_TEST_CASE(list_targets_match_equal_paths_and_dotted_suffixes_only) {
  auto m = toy();
  apply_lora(*m, config({"q_proj"}, 2));
  // "q_proj" is the path itself, and "attn.q_proj" ends with ".q_proj"; "xq_proj" does not.
  BOOST_CHECK(adapted(*m) == (std::vector<std::string>{"q_proj", "attn.q_proj"}));
  BOOST_CHECK(std::dynamic_pointer_cast<nn::Linear>(m->xq_proj) != nullptr);
  BOOST_CHECK(std::dynamic_pointer_cast<LoraLinear>(m->q_proj) != nullptr);

  auto m2 = toy();
  apply_lora(*m2, config({"attn.q_proj", "v_proj"}, 2));
  BOOST_CHECK(adapted(*m2) == (std::vector<std::string>{"attn.q_proj", "attn.v_proj"}));

  // a piece of a name is not a name
  auto m3 = toy();
  check_throws<ValueError>([&] { apply_lora(*m3, config({"proj"}, 2)); }, {"'proj'", "matched no module"});
  check_throws<ValueError>([&] { apply_lora(*m3, config({"tn.q_proj"}, 2)); }, {"matched no module"});
  BOOST_CHECK(lora_layers(*m3).empty());
}

BOOST_AUTO_TEST_CASE(a_single_string_target_is_a_full_match_regex) {
  auto m = toy();
  LoraConfig c = config({"attn\\..*"}, 2);
  c.target_regex = true;
  apply_lora(*m, c);
  BOOST_CHECK(adapted(*m) == (std::vector<std::string>{"attn.q_proj", "attn.v_proj"}));

  // "q_proj" as a regex must match the whole path: only the top-level q_proj.
  auto m2 = toy();
  c = config({"q_proj"}, 2);
  c.target_regex = true;
  apply_lora(*m2, c);
  BOOST_CHECK(adapted(*m2) == (std::vector<std::string>{"q_proj"}));

  auto m3 = toy();
  c = config({".*q_proj"}, 2);
  c.target_regex = true;
  apply_lora(*m3, c);
  BOOST_CHECK(adapted(*m3) == (std::vector<std::string>{"q_proj", "xq_proj", "attn.q_proj"}));

  c = config({"(unclosed"}, 2);
  c.target_regex = true;
  check_throws<ValueError>([&] { apply_lora(*toy(), c); }, {"target_modules", "(unclosed"});
}

BOOST_AUTO_TEST_CASE(exclude_modules_win_over_targets) {
  auto m = toy();
  LoraConfig c = config({"q_proj", "v_proj"}, 2);
  c.exclude_modules = {"attn.q_proj"};
  apply_lora(*m, c);
  BOOST_CHECK(adapted(*m) == (std::vector<std::string>{"q_proj", "attn.v_proj"}));
}

BOOST_AUTO_TEST_CASE(non_linear_targets_and_empty_matches_are_errors_that_leave_the_model_alone) {
  auto m = toy();
  check_throws<ValueError>([&] { apply_lora(*m, config({"q_proj", "norm"}, 2)); }, {"'norm'", "LayerNorm", "linear"});
  check_throws<ValueError>([&] { apply_lora(*m, config({"nothing_here", "nor"}, 2)); },
                           {"'nothing_here'", "'nor'", "matched no module"});
  BOOST_CHECK(lora_layers(*m).empty());
  for (const auto& [n, p] : m->named_parameters()) BOOST_CHECK(p.requires_grad());  // nothing was frozen
  check_throws<ValueError>([&] { apply_lora(*m, config({"q_proj"}, 0)); }, {"rank r"});
  LoraConfig c = config({"q_proj"}, 2);
  c.modules_to_save = {"missing"};
  check_throws<ValueError>([&] { apply_lora(*m, c); }, {"modules_to_save", "'missing'"});
  apply_lora(*m, config({"q_proj"}, 2), "a");
  check_throws<ValueError>([&] { apply_lora(*m, config({"q_proj"}, 2), "a"); }, {"already has an adapter", "'a'"});
}

BOOST_AUTO_TEST_CASE(all_linear_targets_every_projection_but_the_output_layer) {
  auto m = tiny();
  LoraConfig c = config({"all-linear"});
  apply_lora(*m, c);
  const auto paths = adapted(*m);
  BOOST_CHECK_EQUAL(paths.size(), 12u);
  BOOST_CHECK(std::find(paths.begin(), paths.end(), "lm_head") == paths.end());
}

// PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", path), first key wins.
BOOST_AUTO_TEST_CASE(rank_and_alpha_patterns_follow_peft_matching) {
  auto m = tiny();
  LoraConfig c = config({"q_proj", "v_proj", "fc_in"}, 4, 8);
  c.rank_pattern = {{"q_proj", 2}, {"blocks\\.0\\.attn\\.q_proj", 6}, {"1.mlp.fc_in", 3}, {"proj", 7}};
  c.alpha_pattern = {{"blocks.1.attn.v_proj", 32}};
  apply_lora(*m, c);
  auto layer = [&](const std::string& p) { return std::dynamic_pointer_cast<LoraLinear>(m->get_submodule(p)); };
  BOOST_CHECK_EQUAL(layer("blocks.0.attn.q_proj")->adapter_options("default").r, 2);  // "q_proj" comes first
  BOOST_CHECK_EQUAL(layer("blocks.1.attn.q_proj")->adapter_options("default").r, 2);
  BOOST_CHECK_EQUAL(layer("blocks.0.attn.v_proj")->adapter_options("default").r, 4);  // "proj" is not ".proj"
  BOOST_CHECK_EQUAL(layer("blocks.0.mlp.fc_in")->adapter_options("default").r, 4);
  BOOST_CHECK_EQUAL(layer("blocks.1.mlp.fc_in")->adapter_options("default").r, 3);
  BOOST_CHECK_EQUAL(layer("blocks.1.attn.v_proj")->scaling("default"), 32.0 / 4);
  BOOST_CHECK_EQUAL(layer("blocks.0.attn.v_proj")->scaling("default"), 8.0 / 4);
  BOOST_CHECK_EQUAL(layer("blocks.0.attn.q_proj")->scaling("default"), 8.0 / 2);
  BOOST_CHECK_EQUAL(layer("blocks.1.attn.q_proj")->lora_A_weight("default").size(0), 2);
}

// PiSSA moves the top singular directions into the adapter: at init the model
// computes the same function. A rank above min(d_in, d_out) is refused up front.
BOOST_AUTO_TEST_CASE(pissa_init_through_apply_lora) {
  auto m = tiny();
  const auto base = logits(*m);
  LoraConfig c = config({"q_proj", "fc_out"});
  c.init_lora_weights = LoraInit::pissa;
  apply_lora(*m, c);
  BOOST_CHECK_LE(max_diff(logits(*m), base), 1e-12 * max_abs(base));
  auto q = std::dynamic_pointer_cast<LoraLinear>(m->get_submodule("blocks.0.attn.q_proj"));
  BOOST_CHECK_GT(max_abs(q->lora_B_weight("default").to_vector()), 0.0);  // B is not zero

  auto big = tiny();
  c.r = 40;  // q_proj is 32 x 32
  check_throws<ValueError>([&] { apply_lora(*big, c); }, {"PiSSA", "blocks.0.attn.q_proj", "32"});
  BOOST_CHECK(lora_layers(*big).empty());
}

// ============================ freezing and counting ============================

BOOST_AUTO_TEST_CASE(trainable_counts_on_tinygpt_follow_r_times_din_plus_dout) {
  auto m = tiny();
  BOOST_REQUIRE_EQUAL(m->num_parameters(), kTinyParams);
  const LoraReport rep = apply_lora(*m, config({"q_proj", "v_proj"}, 4, 8));
  BOOST_REQUIRE_EQUAL(rep.modules.size(), 4u);
  for (const auto& row : rep.modules) {
    BOOST_CHECK_EQUAL(row.in_features, 32);
    BOOST_CHECK_EQUAL(row.out_features, 32);
    BOOST_CHECK_EQUAL(row.trainable, 4 * (32 + 32));
  }
  const int64_t lora = 4 * 4 * (32 + 32);  // 1024
  BOOST_CHECK_EQUAL(rep.trainable_params, lora);
  BOOST_CHECK_EQUAL(rep.all_params, kTinyParams + lora);
  BOOST_CHECK_EQUAL(m->num_parameters(true), lora);
  // PEFT's print_trainable_parameters line: 100 * 1024 / 43392 = 2.35988...
  BOOST_CHECK_EQUAL(rep.summary(), "trainable params: 1,024 || all params: 43,392 || trainable%: 2.3599");
  BOOST_CHECK(rep.str().find("blocks.1.attn.v_proj") != std::string::npos);

  // DoRA adds d_out per module; fc_in (32 -> 128), fc_out (128 -> 32).
  auto d = tiny();
  LoraConfig c = config({"fc_in", "fc_out"}, 8, 16);
  c.use_dora = true;
  const LoraReport rd = apply_lora(*d, c);
  const int64_t expect = 2 * ((8 * (32 + 128) + 128) + (8 * (128 + 32) + 32));
  BOOST_CHECK_EQUAL(rd.trainable_params, expect);
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.4f", 100.0 * expect / (kTinyParams + expect));
  BOOST_CHECK_EQUAL(rd.summary(), "trainable params: 5,440 || all params: 47,808 || trainable%: " + std::string(pct));
}

BOOST_AUTO_TEST_CASE(only_adapters_and_modules_to_save_train) {
  auto m = tiny();
  LoraConfig c = config({"q_proj"});
  c.modules_to_save = {"lm_head", "ln_f"};
  const LoraReport rep = apply_lora(*m, c);
  BOOST_CHECK(rep.modules_to_save == (std::vector<std::string>{"ln_f", "lm_head"}));
  std::set<std::string> trainable;
  for (const auto& [n, p] : m->named_parameters())
    if (p.requires_grad()) trainable.insert(n);
  const std::set<std::string> want = {"blocks.0.attn.q_proj.lora_A.default.weight",
                                      "blocks.0.attn.q_proj.lora_B.default.weight",
                                      "blocks.1.attn.q_proj.lora_A.default.weight",
                                      "blocks.1.attn.q_proj.lora_B.default.weight",
                                      "ln_f.weight", "ln_f.bias", "lm_head.weight"};
  BOOST_CHECK(trainable == want);
  BOOST_CHECK_EQUAL(rep.trainable_params, 2 * 4 * 64 + 64 + 8192);
  // Backward computes gradients for exactly those.
  Tensor loss = m->loss(batch_idx(), batch_idx());
  loss.backward();
  for (const auto& [n, p] : m->named_parameters())
    BOOST_CHECK_MESSAGE(p.grad().defined() == (want.count(n) > 0), n);
}

// ============================ LoRA+ ============================

BOOST_AUTO_TEST_CASE(loraplus_groups_put_B_and_vectors_at_ratio_times_lr) {
  auto m = tiny();
  LoraConfig c = config({"q_proj", "fc_in"});
  c.use_dora = true;
  c.modules_to_save = {"ln_f", "lm_head", "tok_emb"};
  apply_lora(*m, c);
  const auto groups = loraplus_param_groups(*m, 2e-4, 16, 0.01);
  BOOST_REQUIRE_EQUAL(groups.size(), 4u);
  auto ids = [](const optim::ParamGroup& g) {
    std::set<const TensorImpl*> s;
    for (const auto& p : g.params) s.insert(p.impl());
    return s;
  };
  std::set<const TensorImpl*> A, B, B_no_decay, emb;
  for (const auto& [n, p] : m->named_parameters()) {
    if (!p.requires_grad()) continue;
    if (n.find("lora_B") != std::string::npos || n.find("lora_magnitude_vector") != std::string::npos)
      B.insert(p.impl());
    else if (n.rfind("ln_f.", 0) == 0) B_no_decay.insert(p.impl());
    else if (n == "tok_emb.weight") emb.insert(p.impl());
    else A.insert(p.impl());  // lora_A and lm_head.weight (2-d, not an embedding)
  }
  BOOST_CHECK_EQUAL(groups[0].name, "groupA");
  BOOST_CHECK(ids(groups[0]) == A);
  BOOST_CHECK_EQUAL(groups[0].lr, 2e-4);
  BOOST_CHECK_EQUAL(groups[0].weight_decay, 0.01);
  BOOST_CHECK_EQUAL(groups[1].name, "embedding");
  BOOST_CHECK(ids(groups[1]) == emb);
  BOOST_CHECK_EQUAL(groups[1].lr, 1e-6);
  BOOST_CHECK_EQUAL(groups[2].name, "groupB");
  BOOST_CHECK(ids(groups[2]) == B);
  BOOST_CHECK_EQUAL(groups[2].lr, 2e-4 * 16);
  BOOST_CHECK_EQUAL(groups[2].weight_decay, 0.01);
  BOOST_CHECK_EQUAL(groups[3].name, "groupB_no_decay");
  BOOST_CHECK(ids(groups[3]) == B_no_decay);
  BOOST_CHECK_EQUAL(groups[3].weight_decay, 0.0);
  BOOST_CHECK_EQUAL(A.size(), 5u);  // 4 lora_A + lm_head
  BOOST_CHECK_EQUAL(B.size(), 8u);  // 4 lora_B + 4 magnitudes

  // A plain LoRA model: two groups only, and an optimizer takes them.
  auto p = tiny();
  apply_lora(*p, config({"v_proj"}));
  auto g2 = loraplus_param_groups(*p, 1e-3, 4);
  BOOST_REQUIRE_EQUAL(g2.size(), 2u);
  BOOST_CHECK_EQUAL(g2[1].lr, 4e-3);
  optim::AdamW opt(g2);
  p->loss(batch_idx(), batch_idx()).backward();
  opt.step();
  check_throws<ValueError>([&] { loraplus_param_groups(*p, -1); }, {"loraplus_param_groups", "lr"});
  p->requires_grad_(false);
  check_throws<ValueError>([&] { loraplus_param_groups(*p, 1e-3); }, {"no trainable parameter"});
}

// ============================ several adapters ============================

BOOST_AUTO_TEST_CASE(disabled_adapters_give_the_base_logits_bit_for_bit) {
  auto m = tiny();
  const auto base = logits(*m);
  LoraConfig c = config({"q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"});
  c.use_dora = true;
  apply_lora(*m, c);
  randomise(*m, 3, "default");
  const auto adapted_logits = logits(*m);
  BOOST_CHECK_GT(max_diff(adapted_logits, base), 1e-3);
  disable_adapters(*m);
  BOOST_CHECK(logits(*m) == base);
  BOOST_CHECK_EQUAL(active_adapter(*m), "default");
  enable_adapters(*m);
  BOOST_CHECK(logits(*m) == adapted_logits);
}

BOOST_AUTO_TEST_CASE(second_adapter_is_added_inactive_and_set_adapter_switches) {
  auto m = tiny();
  apply_lora(*m, config({"q_proj", "v_proj"}), "a");
  randomise(*m, 1, "a");
  const auto out_a = logits(*m);
  apply_lora(*m, config({"q_proj", "v_proj"}, 2, 4), "b");
  randomise(*m, 2, "b");
  BOOST_CHECK_EQUAL(lora_layers(*m).size(), 4u);  // "b" went into the existing layers
  BOOST_CHECK(adapter_names(*m) == (std::vector<std::string>{"a", "b"}));
  BOOST_CHECK_EQUAL(active_adapter(*m), "a");
  BOOST_CHECK(logits(*m) == out_a);
  for (const auto& [n, p] : m->named_parameters())
    BOOST_CHECK_MESSAGE(p.requires_grad() == (n.find(".a.weight") != std::string::npos), n);

  set_adapter(*m, "b");
  BOOST_CHECK_EQUAL(active_adapter(*m), "b");
  const auto out_b = logits(*m);
  BOOST_CHECK_GT(max_diff(out_b, out_a), 1e-3);
  for (const auto& [n, p] : m->named_parameters())
    BOOST_CHECK_MESSAGE(p.requires_grad() == (n.find(".b.weight") != std::string::npos), n);

  // A third adapter on other modules: where it is new the layers run as their
  // base until it is set; set, the layers without it run as base instead.
  apply_lora(*m, config({"fc_in"}), "c");
  BOOST_CHECK(logits(*m) == out_b);
  randomise(*m, 4, "c");
  BOOST_CHECK(logits(*m) == out_b);
  set_adapter(*m, "c");
  auto only_c = tiny();
  apply_lora(*only_c, config({"fc_in"}), "c");
  randomise(*only_c, 4, "c");
  BOOST_CHECK(logits(*m) == logits(*only_c));
  check_throws<ValueError>([&] { set_adapter(*m, "zz"); }, {"'zz'", "'a'", "'b'", "'c'"});

  // Deleting the active adapter makes the alphabetically first one active.
  set_adapter(*m, "b");
  delete_adapter(*m, "b");
  BOOST_CHECK_EQUAL(active_adapter(*m), "a");
  BOOST_CHECK(logits(*m) == out_a);
  BOOST_CHECK(adapter_names(*m) == (std::vector<std::string>{"a", "c"}));
  for (const auto& [n, p] : m->named_parameters()) BOOST_CHECK(n.find(".b.") == std::string::npos);
  check_throws<ValueError>([&] { delete_adapter(*m, "b"); }, {"delete_adapter", "'b'"});
}

// ============================ add_weighted_adapter ============================

namespace {

// The model with adapters "x" (r 2, alpha 4) and "y" (r 3 or 2, alpha 6) on q_proj.
std::shared_ptr<nn::TinyGPT> two_adapters(int64_t ry) {
  auto m = tiny();
  apply_lora(*m, config({"q_proj"}, 2, 4), "x");
  apply_lora(*m, config({"q_proj"}, ry, 6), "y");
  randomise(*m, 11, "x");
  randomise(*m, 12, "y");
  return m;
}

Tensor weighted_delta(LoraLinear& l, const std::vector<std::string>& names, const std::vector<double>& w) {
  Tensor sum;
  for (size_t i = 0; i < names.size(); ++i) {
    Tensor d = l.delta_weight(names[i]) * w[i];
    sum = sum.defined() ? add(sum, d) : d;
  }
  return sum;
}

}  // namespace

BOOST_AUTO_TEST_CASE(cat_combination_is_the_exact_weighted_sum) {
  auto m = two_adapters(3);
  add_weighted_adapter(*m, {"x", "y"}, {0.7, -1.3}, "xy", "cat");
  for (const auto& [path, l] : lora_layers(*m)) {
    BOOST_CHECK_EQUAL(l->adapter_options("xy").r, 5);
    BOOST_CHECK_EQUAL(l->scaling("xy"), 1.0);
    BOOST_CHECK_EQUAL(l->active_adapter(), "x");  // the new adapter is not active
    BOOST_CHECK(!l->lora_A_weight("xy").requires_grad());
    const double err = max_diff(l->delta_weight("xy").to_vector(),
                                weighted_delta(*l, {"x", "y"}, {0.7, -1.3}).to_vector());
    BOOST_CHECK_LE(err, 1e-14);
  }
}

BOOST_AUTO_TEST_CASE(linear_combination_follows_peft) {
  // One adapter: PEFT uses "linear", which is then exact: B' A' = w s B A.
  auto m = two_adapters(2);
  add_weighted_adapter(*m, {"y"}, {0.5}, "half_y", "svd");
  // Two adapters of equal rank: A' = sum sqrt(w s) A_i, B' = sum sqrt(w s) B_i.
  add_weighted_adapter(*m, {"x", "y"}, {0.3, 0.6}, "lin", "linear");
  for (const auto& [path, l] : lora_layers(*m)) {
    BOOST_CHECK_LE(max_diff(l->delta_weight("half_y").to_vector(), weighted_delta(*l, {"y"}, {0.5}).to_vector()),
                   1e-14);
    const double cx = std::sqrt(0.3 * l->scaling("x")), cy = std::sqrt(0.6 * l->scaling("y"));
    Tensor A = add(l->lora_A_weight("x").detach() * cx, l->lora_A_weight("y").detach() * cy);
    Tensor B = add(l->lora_B_weight("x").detach() * cx, l->lora_B_weight("y").detach() * cy);
    BOOST_CHECK_LE(max_diff(l->delta_weight("lin").to_vector(), matmul(B, A).to_vector()), 1e-14);
    BOOST_CHECK_EQUAL(l->adapter_options("lin").r, 2);
  }
  auto m3 = two_adapters(3);
  check_throws<ValueError>([&] { add_weighted_adapter(*m3, {"x", "y"}, {1, 1}, "bad", "linear"); },
                           {"equal ranks"});
  auto m2 = two_adapters(2);
  check_throws<ValueError>([&] { add_weighted_adapter(*m2, {"x", "y"}, {-1, 1}, "neg", "linear"); },
                           {"must not be negative"});
  check_throws<ValueError>([&] { add_weighted_adapter(*m3, {"x", "y"}, {1}, "bad2", "cat"); }, {"weights"});
  check_throws<ValueError>([&] { add_weighted_adapter(*m3, {"x", "q"}, {1, 1}, "bad3", "cat"); }, {"'q'"});
  check_throws<ValueError>([&] { add_weighted_adapter(*m3, {"x", "y"}, {1, 1}, "bad4", "ties"); }, {"'ties'"});
}

BOOST_AUTO_TEST_CASE(svd_combination_is_the_best_low_rank_approximation) {
  auto m = two_adapters(3);
  add_weighted_adapter(*m, {"x", "y"}, {1.0, 0.5}, "s3", "svd");       // rank max(2, 3) = 3 < 5
  add_weighted_adapter(*m, {"x", "y"}, {1.0, 0.5}, "s5", "svd", 5);    // rank 5: exact
  for (const auto& [path, l] : lora_layers(*m)) {
    const Tensor want = weighted_delta(*l, {"x", "y"}, {1.0, 0.5});
    const Svd s = svd(want);
    const auto S = s.S.to_vector();
    // Eckart-Young: the rank-3 error in Frobenius norm is sqrt(S_4^2 + S_5^2).
    const double tail = std::sqrt(S[3] * S[3] + S[4] * S[4]);
    const auto got3 = l->delta_weight("s3").to_vector(), w = want.to_vector();
    double fro = 0;
    for (size_t i = 0; i < w.size(); ++i) fro += (got3[i] - w[i]) * (got3[i] - w[i]);
    BOOST_CHECK_GT(tail, 1e-3);
    BOOST_CHECK_CLOSE(std::sqrt(fro), tail, 1e-6);
    BOOST_CHECK_LE(max_diff(l->delta_weight("s5").to_vector(), w), 1e-12 * max_abs(w));
    BOOST_CHECK_EQUAL(l->adapter_options("s3").r, 3);
  }
  check_throws<ValueError>([&] { add_weighted_adapter(*m, {"x", "y"}, {1, 1}, "s99", "svd", 99); },
                           {"exceeds min(d_in, d_out)"});
  check_throws<ValueError>([&] { add_weighted_adapter(*m, {"x", "y"}, {1, 1}, "s3", "svd"); }, {"already exists"});
}

BOOST_AUTO_TEST_CASE(dora_adapters_cannot_be_combined) {
  auto m = tiny();
  LoraConfig c = config({"q_proj"});
  c.use_dora = true;
  apply_lora(*m, c, "d1");
  apply_lora(*m, c, "d2");
  check_throws<ValueError>([&] { add_weighted_adapter(*m, {"d1", "d2"}, {1, 1}, "dd", "cat"); }, {"DoRA", "'d1'"});
  BOOST_CHECK(adapter_names(*m) == (std::vector<std::string>{"d1", "d2"}));
}

// ============================ merge_and_unload ============================

BOOST_AUTO_TEST_CASE(merge_and_unload_matches_the_unmerged_model) {
  for (bool dora : {false, true}) {
    auto m = tiny();
    LoraConfig c = config({"q_proj", "v_proj", "fc_out"});
    c.use_dora = dora;
    c.use_rslora = dora;
    apply_lora(*m, c);
    randomise(*m, 21, "default");
    const auto unmerged = logits(*m);
    const MergeReport rep = merge_and_unload(*m);
    BOOST_CHECK_EQUAL(rep.merged.size(), 6u);
    BOOST_CHECK_EQUAL(rep.max_requantization_error, 0.0);
    BOOST_CHECK(lora_layers(*m).empty());
    BOOST_CHECK_EQUAL(m->num_parameters(), kTinyParams);
    BOOST_CHECK(std::dynamic_pointer_cast<nn::Linear>(m->get_submodule("blocks.0.attn.q_proj")) != nullptr);
    BOOST_CHECK_LE(max_diff(logits(*m), unmerged), 1e-12 * max_abs(unmerged));
  }
  // unload drops the adapters: the base model again, bit for bit.
  auto u = tiny();
  const auto base = logits(*u);
  apply_lora(*u, config({"k_proj"}));
  randomise(*u, 5, "default");
  BOOST_CHECK_EQUAL(unload(*u), 2);
  BOOST_CHECK(logits(*u) == base);
}

// QLoRA: NF4 bases. Merging with requantize = true dequantises, adds and
// requantises, and reports what the second rounding costs.
BOOST_AUTO_TEST_CASE(qlora_bases_are_nf4_and_merge_reports_requantisation_error) {
  auto m = tiny(DType::f32);
  LoraConfig c = config({"q_proj", "v_proj"});
  c.qlora = true;
  auto wide = tiny(DType::f64);
  check_throws<ValueError>([&] { apply_lora(*wide, c); }, {"qlora", "blocks.0.attn.q_proj", "float64"});
  BOOST_CHECK(lora_layers(*wide).empty());
  const int64_t dense_params = m->num_parameters();
  const LoraReport qrep = apply_lora(*m, c);
  for (const auto& [path, l] : lora_layers(*m)) {
    BOOST_CHECK_EQUAL(storage_of(l->base_layer), "nf4");
    BOOST_CHECK(l->lora_A_weight("default").requires_grad());
  }
  // Real QLoRA: the whole frozen base is 4-bit, not only the adapted layers;
  // lm_head and the embeddings stay float (bitsandbytes' load_in_4bit).
  for (const char* p : {"blocks.0.attn.k_proj", "blocks.1.attn.o_proj", "blocks.0.mlp.fc_in", "blocks.1.mlp.fc_out"})
    BOOST_CHECK_MESSAGE(storage_of(m->get_submodule(p)) == "nf4", p << " is not NF4");
  BOOST_CHECK(std::dynamic_pointer_cast<nn::Linear>(m->get_submodule("lm_head")) != nullptr);
  for (const auto& [p, l] : quantizable_linears(*m)) BOOST_ERROR("still float: " << p);
  // PEFT counts an NF4 weight as its logical values: all = the dense model + the adapters.
  BOOST_CHECK_EQUAL(qrep.all_params, dense_params + qrep.trainable_params);
  BOOST_CHECK_EQUAL(peft_parameter_counts(*m).second, qrep.all_params);
  randomise(*m, 8, "default");
  const auto unmerged = logits(*m);
  // The exact merged weight of one layer, computed as the merge does (float32).
  auto v1 = std::dynamic_pointer_cast<LoraLinear>(m->get_submodule("blocks.1.attn.v_proj"));
  const Tensor exact = add(v1->base_weight(), v1->delta_weight("default"));  // (out, in)
  const MergeReport rep = merge_and_unload(*m, /*requantize=*/true);
  BOOST_CHECK_EQUAL(rep.merged.size(), 4u);
  BOOST_CHECK(rep.dequantized.empty());
  auto q = std::dynamic_pointer_cast<nn::LinearBase>(m->get_submodule("blocks.1.attn.v_proj"));
  BOOST_REQUIRE(q != nullptr);
  BOOST_REQUIRE_EQUAL(q->storage(), "nf4");
  // merged = quant(dequant(W0) + s B A), with the base's blocksize and double quantisation
  BOOST_CHECK(q->dense_weight().to_vector() == quantize_nf4(exact, 64, true).dequantize().to_vector());
  const double err = max_diff(q->dense_weight().to_vector(), exact.to_vector());
  BOOST_CHECK_GT(err, 0.0);  // NF4 cannot hold W0 + s B A exactly
  BOOST_CHECK_LE(err, rep.max_requantization_error);
  // NF4's widest gap is between codes 0.7230 and 1: at most half of it, times the block's absmax.
  BOOST_CHECK_LE(err, 0.1386 * max_abs(exact.to_vector()));
  const auto merged = logits(*m);
  BOOST_CHECK_LT(max_diff(merged, unmerged), 0.3 * max_abs(unmerged));
}

// QLoRA and QDoRA merged by default: no second rounding. Each adapted layer
// becomes a float32 nn::Linear holding dequant(W0) + delta (DoRA: scaled by
// m / n), so the merged model matches the unmerged one to float32 rounding,
// far closer than the requantised merge; layers without an adapter stay NF4.
BOOST_AUTO_TEST_CASE(qlora_merge_defaults_to_float32_without_requantisation) {
  for (bool dora : {false, true}) {
    BOOST_TEST_CONTEXT("dora " << dora) {
      auto make = [&] {
        auto m = tiny(DType::f32);
        LoraConfig c = config({"q_proj", "v_proj"});
        c.qlora = true;
        c.use_dora = dora;
        apply_lora(*m, c);
        randomise(*m, 8, "default");
        return m;
      };
      auto m = make();
      const auto unmerged = logits(*m);
      auto v1 = std::dynamic_pointer_cast<LoraLinear>(m->get_submodule("blocks.1.attn.v_proj"));
      const Tensor w0 = v1->base_weight();  // dequant(W0), float32
      const Tensor exact = add(w0, v1->delta_weight("default"));
      const Tensor bias = v1->base_bias();
      const MergeReport rep = merge_and_unload(*m);  // requantize = false
      BOOST_CHECK_EQUAL(rep.merged.size(), 4u);
      BOOST_CHECK_EQUAL(rep.dequantized.size(), 4u);
      BOOST_CHECK_EQUAL(rep.max_requantization_error, 0.0);
      BOOST_CHECK(lora_layers(*m).empty());
      auto lin = std::dynamic_pointer_cast<nn::Linear>(m->get_submodule("blocks.1.attn.v_proj"));
      BOOST_REQUIRE(lin != nullptr);
      BOOST_CHECK(lin->weight.dtype() == DType::f32);
      BOOST_CHECK(!lin->weight.requires_grad());
      if (!dora) {
        // bit for bit the float32 sum the unmerged layer stands for
        BOOST_CHECK(lin->weight.to_vector() == exact.to_vector());
      } else {
        BOOST_CHECK_GT(max_diff(lin->weight.to_vector(), exact.to_vector()), 0.0);  // m / n rescales the rows
      }
      if (bias.defined()) BOOST_CHECK(lin->bias.to_vector() == bias.to_vector());
      // Layers without an adapter keep their NF4 base.
      BOOST_CHECK_EQUAL(storage_of(m->get_submodule("blocks.0.attn.k_proj")), "nf4");
      const double float_diff = max_diff(logits(*m), unmerged);
      BOOST_CHECK_LE(float_diff, 1e-4 * max_abs(unmerged));

      // The requantising merge of the same model is much further off.
      auto r = make();
      const MergeReport rq = merge_and_unload(*r, /*requantize=*/true);
      BOOST_CHECK_GT(rq.max_requantization_error, 0.0);
      BOOST_CHECK_EQUAL(storage_of(r->get_submodule("blocks.1.attn.v_proj")), "nf4");
      BOOST_CHECK_GT(max_diff(logits(*r), unmerged), 10 * float_diff);
    }
  }
}
