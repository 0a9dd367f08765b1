// The Module tree and the layers: parameter names and order (the spec's
// table), counts and sizes, freezing, replace_module by dotted path, dtype
// conversion, state dicts and strict-load errors, train / eval, printing,
// initialisation, and a float64 gradcheck of a TransformerBlock.
#define BOOST_TEST_MODULE nn_modules
#include <boost/test/unit_test.hpp>

#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/nn/nn.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;
using namespace loragrad::nn;

namespace {

TinyGPTConfig small_config(uint64_t seed = 1) {
  TinyGPTConfig c;
  c.vocab_size = 32;
  c.block_size = 8;
  c.d_model = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.d_ff = 24;
  c.seed = seed;
  return c;
}

Tensor batch_ids(const TinyGPTConfig& c, int64_t B, int64_t t, uint64_t seed = 5) {
  Generator gen(seed);
  return randint({B, t}, 0, c.vocab_size, gen);
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector(), y = b.to_vector();
  BOOST_REQUIRE_EQUAL(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// A wrapper that stands in for a projection: base(x) * scale, counting calls.
struct ScaledWrapper : Module {
  ScaledWrapper(ModulePtr b, double s) : base(std::move(b)), scale(s) { register_module("base", base); }
  Tensor forward(const Tensor& x) override {
    ++calls;
    return mul(base->forward(x), scalar(scale, x.dtype()));
  }
  std::string type_name() const override { return "ScaledWrapper"; }
  ModulePtr base;
  double scale;
  int calls = 0;
};

}  // namespace

BOOST_AUTO_TEST_CASE(named_parameters_follow_the_spec_table) {
  const TinyGPTConfig c = small_config();
  TinyGPT model(c);
  const int64_t V = c.vocab_size, T = c.block_size, d = c.d_model, F = c.d_ff;
  std::vector<std::pair<std::string, Shape>> expected = {{"tok_emb.weight", {V, d}}, {"pos_emb.weight", {T, d}}};
  for (int i = 0; i < c.n_layer; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    expected.push_back({b + "ln1.weight", {d}});
    expected.push_back({b + "ln1.bias", {d}});
    for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      expected.push_back({b + "attn." + p + ".weight", {d, d}});
      expected.push_back({b + "attn." + p + ".bias", {d}});
    }
    expected.push_back({b + "ln2.weight", {d}});
    expected.push_back({b + "ln2.bias", {d}});
    expected.push_back({b + "mlp.fc_in.weight", {F, d}});
    expected.push_back({b + "mlp.fc_in.bias", {F}});
    expected.push_back({b + "mlp.fc_out.weight", {d, F}});
    expected.push_back({b + "mlp.fc_out.bias", {d}});
  }
  expected.push_back({"ln_f.weight", {d}});
  expected.push_back({"ln_f.bias", {d}});
  expected.push_back({"lm_head.weight", {V, d}});

  NamedTensors params = model.named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), expected.size());
  for (size_t i = 0; i < params.size(); ++i) {
    BOOST_CHECK_EQUAL(params[i].first, expected[i].first);
    BOOST_CHECK_MESSAGE(params[i].second.shape() == expected[i].second,
                        params[i].first << " has shape " << shape_str(params[i].second.shape()));
    BOOST_CHECK(params[i].second.requires_grad());
    BOOST_CHECK(params[i].second.dtype() == DType::f32);
  }
  // state_dict has the same names in the same order (there are no buffers)
  NamedTensors sd = model.state_dict();
  BOOST_REQUIRE_EQUAL(sd.size(), expected.size());
  for (size_t i = 0; i < sd.size(); ++i) BOOST_CHECK_EQUAL(sd[i].first, expected[i].first);
}

BOOST_AUTO_TEST_CASE(counts_sizes_and_modules) {
  const TinyGPTConfig c = small_config();
  TinyGPT model(c);
  const int64_t V = 32, T = 8, d = 16, F = 24;
  const int64_t per_block = 2 * d + 4 * (d * d + d) + 2 * d + (F * d + F) + (d * F + d);
  const int64_t total = V * d + T * d + 2 * per_block + 2 * d + V * d;
  BOOST_CHECK_EQUAL(model.num_parameters(), total);
  BOOST_CHECK_EQUAL(model.num_parameters(true), total);
  BOOST_CHECK_EQUAL(model.parameters().size(), 2u + 2 * 16 + 3);
  BOOST_CHECK_EQUAL(model.parameter_bytes(), static_cast<size_t>(total) * 4);
  BOOST_CHECK_EQUAL(model.gradient_bytes(), 0u);

  Tensor ids = batch_ids(c, 2, 5);
  model.loss(ids, batch_ids(c, 2, 5, 6)).backward();
  BOOST_CHECK_EQUAL(model.gradient_bytes(), static_cast<size_t>(total) * 4);
  model.zero_grad();
  BOOST_CHECK_EQUAL(model.gradient_bytes(), 0u);

  NamedModules mods = model.named_modules();
  BOOST_REQUIRE(!mods.empty());
  BOOST_CHECK_EQUAL(mods[0].first, "");
  BOOST_CHECK_EQUAL(mods[0].second.get(), &model);  // a stack-held root is returned without owning it
  std::vector<std::string> names;
  for (auto& [n, m] : mods) names.push_back(n);
  auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  BOOST_CHECK(has("blocks") && has("blocks.1") && has("blocks.0.attn.q_proj") && has("blocks.1.mlp.fc_out") &&
              has("lm_head") && has("ln_f"));
  BOOST_CHECK_EQUAL(model.get_submodule("blocks.1.mlp.fc_in")->type_name(), "Linear");
  BOOST_CHECK_EQUAL(model.get_submodule("")->type_name(), "TinyGPT");
  BOOST_CHECK_EQUAL(model.named_children().size(), 6u);  // tok_emb pos_emb emb_drop blocks ln_f lm_head
  check_throws<ValueError>([&] { model.get_submodule("blocks.7.attn"); }, {"blocks.7.attn", "'blocks'", "0, 1"});
  check_throws<ValueError>([&] { model.get_submodule("blocks.0.atn"); }, {"blocks.0.atn", "'atn'"});
}

BOOST_AUTO_TEST_CASE(freezing_a_subtree) {
  const TinyGPTConfig c = small_config();
  auto model = std::make_shared<TinyGPT>(c);
  model->requires_grad_(false);
  BOOST_CHECK_EQUAL(model->num_parameters(true), 0);
  model->get_submodule("blocks.0.attn")->requires_grad_(true);
  const int64_t d = c.d_model;
  BOOST_CHECK_EQUAL(model->num_parameters(true), 4 * (d * d + d));
  BOOST_CHECK_EQUAL(model->num_parameters(false), TinyGPT(c).num_parameters());

  model->loss(batch_ids(c, 2, 6), batch_ids(c, 2, 6, 9)).backward();
  for (auto& [name, p] : model->named_parameters()) {
    const bool in_attn0 = name.rfind("blocks.0.attn.", 0) == 0;
    BOOST_CHECK_MESSAGE(p.grad().defined() == in_attn0, name << " grad defined: " << p.grad().defined());
  }
  BOOST_CHECK_EQUAL(model->gradient_bytes(), static_cast<size_t>(4 * (d * d + d)) * 4);
}

BOOST_AUTO_TEST_CASE(replace_module_by_dotted_path) {
  const TinyGPTConfig c = small_config();
  auto model = std::make_shared<TinyGPT>(c);
  Tensor ids = batch_ids(c, 2, 6);
  Tensor before = model->forward(ids);

  ModulePtr old = model->get_submodule("blocks.0.attn.q_proj");
  auto wrapper = std::make_shared<ScaledWrapper>(old, 1.0);
  ModulePtr returned = model->replace_module("blocks.0.attn.q_proj", wrapper);
  BOOST_CHECK_EQUAL(returned.get(), old.get());
  BOOST_CHECK_EQUAL(model->get_submodule("blocks.0.attn.q_proj").get(), wrapper.get());
  BOOST_CHECK_EQUAL(model->blocks->items()[0].get(),
                    model->get_submodule("blocks.0").get());  // the member itself was rewritten

  // scale 1: same logits, and forward went through the wrapper
  Tensor same = model->forward(ids);
  BOOST_CHECK_EQUAL(wrapper->calls, 1);
  BOOST_CHECK_EQUAL(max_abs_diff(same, before), 0.0);
  // scale 0 kills the queries of block 0: different logits
  wrapper->scale = 0.0;
  Tensor changed = model->forward(ids);
  BOOST_CHECK_EQUAL(wrapper->calls, 2);
  BOOST_CHECK_GT(max_abs_diff(changed, before), 1e-6);

  // the wrapped Linear's parameters are now found under the wrapper's name
  bool found = false;
  for (auto& [name, p] : model->named_parameters()) {
    BOOST_CHECK(name != "blocks.0.attn.q_proj.weight");
    found |= name == "blocks.0.attn.q_proj.base.weight";
  }
  BOOST_CHECK(found);
  BOOST_CHECK(model->repr().find("(q_proj): ScaledWrapper(") != std::string::npos);

  // a whole block in the ModuleList can be replaced too
  auto block_wrapper = std::make_shared<ScaledWrapper>(model->get_submodule("blocks.1"), 1.0);
  model->replace_module("blocks.1", block_wrapper);
  model->forward(ids);
  BOOST_CHECK_EQUAL(block_wrapper->calls, 1);

  // errors name the path
  check_throws<ValueError>([&] { model->replace_module("blocks.0.attn.x_proj", wrapper); }, {"blocks.0.attn.x_proj"});
  check_throws<ValueError>([&] { model->replace_module("blocks.9.attn.q_proj", wrapper); }, {"blocks.9.attn.q_proj"});
  // a LayerNorm slot is typed: a wrapper does not fit
  check_throws<ValueError>([&] { model->replace_module("blocks.0.ln1", wrapper); },
                           {"blocks.0.ln1", "LayerNorm", "ScaledWrapper"});
  check_throws<ValueError>([&] { model->replace_module("", wrapper); }, {"replace_module"});
  check_throws<ValueError>([&] { model->replace_module("lm_head", nullptr); }, {"lm_head", "null"});
  // but another LayerNorm does
  auto ln = std::make_shared<LayerNorm>(c.d_model);
  model->replace_module("blocks.0.ln1", ln);
  BOOST_CHECK_EQUAL(std::static_pointer_cast<TransformerBlock>(model->get_submodule("blocks.0"))->ln1.get(), ln.get());
}

BOOST_AUTO_TEST_CASE(to_float64_agrees_with_float32) {
  const TinyGPTConfig c = small_config(3);
  TinyGPT m32(c), m64(c);
  m64.get_submodule("blocks.1")->requires_grad_(false);
  m64.to(DType::f64);
  BOOST_CHECK(m64.dtype() == DType::f64);
  for (auto& [name, p] : m64.named_parameters()) {
    BOOST_CHECK(p.dtype() == DType::f64);
    BOOST_CHECK_EQUAL(p.requires_grad(), name.rfind("blocks.1.", 0) != 0);
  }
  Tensor ids = batch_ids(c, 3, 8);
  Tensor l32 = m32.forward(ids), l64 = m64.forward(ids);
  BOOST_CHECK(l64.dtype() == DType::f64);
  BOOST_CHECK_LT(max_abs_diff(l32, l64), 1e-5);
  check_throws<DTypeError>([&] { m64.to(DType::i64); }, {"TinyGPT.to", "int64"});
  // the layers read the converted members
  Tensor loss = m64.loss(ids, batch_ids(c, 3, 8, 11));
  loss.backward();
  BOOST_CHECK(m64.tok_emb->weight.grad().dtype() == DType::f64);
  m64.to(DType::f32);
  BOOST_CHECK_LT(max_abs_diff(m64.forward(ids), l32), 1e-6);
}

BOOST_AUTO_TEST_CASE(state_dict_round_trip) {
  const TinyGPTConfig c = small_config(1);
  TinyGPT a(c), b(small_config(2));
  Tensor ids = batch_ids(c, 2, 7);
  Tensor la = a.forward(ids);
  BOOST_CHECK_GT(max_abs_diff(la, b.forward(ids)), 1e-4);

  LoadResult r = b.load_state_dict(a.state_dict());
  BOOST_CHECK(r.missing_keys.empty() && r.unexpected_keys.empty());
  BOOST_CHECK(bit_equal(b.forward(ids), la));
  // values were copied, not shared
  b.tok_emb->weight.fill_(0.0);
  BOOST_CHECK(bit_equal(a.forward(ids), la));

  // the state dict shares storage with the model (as in PyTorch)
  NamedTensors sd = a.state_dict();
  BOOST_CHECK_EQUAL(sd[0].second.raw_data(), a.tok_emb->weight.raw_data());
  BOOST_CHECK(!sd[0].second.requires_grad());

  // a float64 state dict loads into a float32 model, converted
  TinyGPT a64(c);
  a64.to(DType::f64);
  TinyGPT d(small_config(4));
  d.load_state_dict(a64.state_dict());
  BOOST_CHECK(d.dtype() == DType::f32);
  BOOST_CHECK(bit_equal(d.forward(ids), la));
}

BOOST_AUTO_TEST_CASE(strict_load_errors_name_every_entry) {
  const TinyGPTConfig c = small_config(1);
  TinyGPT model(c);
  Tensor ids = batch_ids(c, 1, 4);
  Tensor before = model.forward(ids);

  NamedTensors sd;
  for (auto& [name, t] : TinyGPT(small_config(2)).state_dict()) {
    if (name == "blocks.1.attn.k_proj.bias") continue;                          // missing
    if (name == "ln_f.weight") sd.push_back({name, zeros({c.d_model + 1})});    // mis-shaped
    else sd.push_back({name, t});
  }
  sd.push_back({"blocks.0.attn.rotary.weight", zeros({4})});                   // unexpected
  check_throws<ValueError>([&] { model.load_state_dict(sd); },
                           {"load_state_dict(TinyGPT)", "missing: blocks.1.attn.k_proj.bias",
                            "unexpected: blocks.0.attn.rotary.weight", "ln_f.weight (state dict [17], model [16])"});
  // nothing was copied
  BOOST_CHECK(bit_equal(model.forward(ids), before));

  // non-strict: missing / unexpected are reported, but shapes still have to fit
  check_throws<ValueError>([&] { model.load_state_dict(sd, false); }, {"ln_f.weight (state dict [17], model [16])"});
  for (auto& [name, t] : sd)
    if (name == "ln_f.weight") t = ones({c.d_model});
  LoadResult r = model.load_state_dict(sd, false);
  BOOST_REQUIRE_EQUAL(r.missing_keys.size(), 1u);
  BOOST_CHECK_EQUAL(r.missing_keys[0], "blocks.1.attn.k_proj.bias");
  BOOST_REQUIRE_EQUAL(r.unexpected_keys.size(), 1u);
  BOOST_CHECK_EQUAL(r.unexpected_keys[0], "blocks.0.attn.rotary.weight");
  BOOST_CHECK_GT(max_abs_diff(model.forward(ids), before), 1e-6);

  // index tensors cannot stand in for float parameters; duplicates are refused
  NamedTensors bad = model.state_dict();
  bad[1].second = from_indices(std::vector<int64_t>(bad[1].second.numel(), 0), bad[1].second.shape());
  check_throws<ValueError>([&] { model.load_state_dict(bad); }, {"pos_emb.weight", "int64"});
  NamedTensors dup = model.state_dict();
  dup.push_back(dup[0]);
  check_throws<ValueError>([&] { model.load_state_dict(dup); }, {"duplicate", "tok_emb.weight"});
}

BOOST_AUTO_TEST_CASE(train_and_eval_switch_dropout) {
  TinyGPTConfig c = small_config(7);
  c.dropout = 0.5;
  TinyGPT with_dropout(c);
  c.dropout = 0.0;
  TinyGPT without(c);
  Tensor ids = batch_ids(c, 2, 8);

  BOOST_CHECK(with_dropout.is_training());
  Tensor t1 = with_dropout.forward(ids), t2 = with_dropout.forward(ids);
  BOOST_CHECK_GT(max_abs_diff(t1, t2), 1e-6);  // fresh masks each call

  with_dropout.eval();
  for (auto& [name, m] : with_dropout.named_modules()) BOOST_CHECK_MESSAGE(!m->is_training(), name);
  Tensor e1 = with_dropout.forward(ids);
  BOOST_CHECK(bit_equal(e1, with_dropout.forward(ids)));
  BOOST_CHECK(bit_equal(e1, without.forward(ids)));  // same seed, same weights, dropout off

  with_dropout.train();
  BOOST_CHECK(std::static_pointer_cast<TransformerBlock>(with_dropout.get_submodule("blocks.1"))->mlp->drop->is_training());

  // a seeded model draws the same masks on every run
  TinyGPTConfig cd = small_config(7);
  cd.dropout = 0.5;
  TinyGPT again(cd);
  BOOST_CHECK(bit_equal(again.forward(ids), t1));

  // a standalone Dropout: scaling by 1 / (1 - p), identity in eval
  Dropout drop(0.25, 3);
  Tensor x = ones({1000});
  auto y = drop.forward(x).to_vector();
  int kept = 0;
  for (double v : y) {
    BOOST_CHECK(v == 0.0 || std::abs(v - 1 / 0.75) < 1e-6);
    kept += v != 0.0;
  }
  BOOST_CHECK(kept > 700 && kept < 800);
  drop.eval();
  BOOST_CHECK(bit_equal(drop.forward(x), x));
  check_throws<ValueError>([] { Dropout(1.0); }, {"Dropout", "p"});
}

BOOST_AUTO_TEST_CASE(initialisation) {
  Generator gen(0);
  Linear lin(100, 300, true, gen);
  const double bound = 0.1;  // 1 / sqrt(100)
  double sum2 = 0;
  for (double v : lin.weight.to_vector()) {
    BOOST_CHECK(std::abs(v) <= bound);
    sum2 += v * v;
  }
  BOOST_CHECK_CLOSE(std::sqrt(sum2 / 30000), bound / std::sqrt(3.0), 3.0);  // std of U(-b, b), within 3 %
  for (double v : lin.bias.to_vector()) BOOST_CHECK(std::abs(v) <= bound);

  Embedding emb(200, 100, gen);
  double m = 0, s2 = 0;
  for (double v : emb.weight.to_vector()) { m += v; s2 += v * v; }
  BOOST_CHECK_SMALL(m / 20000, 0.03);
  BOOST_CHECK_CLOSE(std::sqrt(s2 / 20000), 1.0, 3.0);

  // TinyGPT: N(0, 0.02) weights, zero biases, LayerNorm (1, 0); seeded
  TinyGPTConfig c = small_config(11);
  c.vocab_size = 256;
  c.d_model = 32;
  TinyGPT model(c), twin(c);
  for (auto& [name, p] : model.named_parameters()) {
    auto v = p.to_vector();
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    const bool ln_weight = name.find("ln") != std::string::npos && !bias;
    if (bias) {
      for (double x : v) BOOST_CHECK_EQUAL(x, 0.0);
    } else if (ln_weight) {
      for (double x : v) BOOST_CHECK_EQUAL(x, 1.0);
    } else if (v.size() >= 1024) {
      double q = 0;
      for (double x : v) q += x * x;
      BOOST_CHECK_CLOSE(std::sqrt(q / v.size()), 0.02, 8.0);
    }
  }
  NamedTensors a = model.named_parameters(), b = twin.named_parameters();
  for (size_t i = 0; i < a.size(); ++i) BOOST_CHECK_MESSAGE(bit_equal(a[i].second, b[i].second), a[i].first);
  c.seed = 12;
  BOOST_CHECK_GT(max_abs_diff(TinyGPT(c).lm_head->named_parameters()[0].second, model.lm_head->named_parameters()[0].second), 1e-3);
}

BOOST_AUTO_TEST_CASE(printing_like_pytorch) {
  TinyGPT model(small_config());
  const std::string r = model.repr();
  BOOST_TEST_MESSAGE(r);
  BOOST_CHECK_EQUAL(r.rfind("TinyGPT(\n  (tok_emb): Embedding(32, 16)\n", 0), 0u);
  for (const char* part :
       {"  (blocks): ModuleList(\n    (0): TransformerBlock(\n      (ln1): LayerNorm((16,), eps=1e-05)\n",
        "      (attn): MultiHeadAttention(\n        n_head=2\n        (q_proj): Linear(in_features=16, out_features=16, bias=True)\n",
        "        (fc_in): Linear(in_features=16, out_features=24, bias=True)\n",
        "  (lm_head): Linear(in_features=16, out_features=32, bias=False)\n)"})
    BOOST_CHECK_MESSAGE(r.find(part) != std::string::npos, "repr lacks:\n" << part);
  std::ostringstream os;
  os << *model.get_submodule("blocks.0.mlp.drop");
  BOOST_CHECK_EQUAL(os.str(), "Dropout(p=0.0)");
}

BOOST_AUTO_TEST_CASE(bad_input_and_config) {
  const TinyGPTConfig c = small_config();
  TinyGPT model(c);
  check_throws<ShapeError>([&] { model.forward(batch_ids(c, 1, 9)); }, {"TinyGPT.forward", "9", "block_size = 8"});
  check_throws<ShapeError>([&] { model.forward(from_indices({1, 2, 3}, {3})); }, {"TinyGPT.forward", "(B, t)", "[3]"});
  check_throws<DTypeError>([&] { model.forward(zeros({1, 3})); }, {"TinyGPT.forward", "int64", "float32"});
  check_throws<IndexError>([&] { model.forward(from_indices({1, 32}, {1, 2})); }, {"embedding", "32"});
  check_throws<ShapeError>([&] { model.loss(batch_ids(c, 1, 4), batch_ids(c, 1, 3)); }, {"cross_entropy"});

  TinyGPTConfig bad = c;
  bad.n_head = 3;
  check_throws<ValueError>([&] { TinyGPT m(bad); }, {"TinyGPTConfig", "d_model 16", "n_head 3"});
  bad = c;
  bad.vocab_size = 0;
  check_throws<ValueError>([&] { TinyGPT m(bad); }, {"vocab_size"});
  bad = c;
  bad.dropout = 1.5;
  check_throws<ValueError>([&] { TinyGPT m(bad); }, {"dropout"});
  check_throws<Error>([&] { model.blocks->forward(zeros({1})); }, {"ModuleList", "no forward"});

  // d_ff = 0 means 4 * d_model
  TinyGPTConfig wide = c;
  wide.d_ff = 0;
  TinyGPT w(wide);
  BOOST_CHECK_EQUAL(w.config().d_ff, 64);
  BOOST_CHECK(w.get_submodule("blocks.0.mlp.fc_in")->named_parameters()[0].second.shape() == (Shape{64, 16}));
}

BOOST_AUTO_TEST_CASE(gradcheck_transformer_block) {
  Generator gen(21);
  auto block = std::make_shared<TransformerBlock>(8, 2, 12, 0.0, gen);
  block->to(DType::f64);
  // Spread the parameters away from the trivial init so every path matters.
  {
    NoGradGuard no_grad;
    Generator g2(22);
    for (auto& [name, p] : block->named_parameters()) p.add_(normal(p.shape(), 0.0, 0.3, g2, DType::f64));
  }
  auto q_proj = std::dynamic_pointer_cast<Linear>(block->attn->q_proj);
  auto fc_in = std::dynamic_pointer_cast<Linear>(block->mlp->fc_in);
  auto o_proj = std::dynamic_pointer_cast<Linear>(block->attn->o_proj);
  BOOST_REQUIRE(q_proj && fc_in && o_proj);

  Tensor x = normal({2, 3, 8}, 0.0, 1.0, gen, DType::f64).requires_grad_();
  // gradcheck passes its own copies: put them into the block's members
  auto fn = [&](const std::vector<Tensor>& in) {
    block->ln1->weight = in[1];
    q_proj->weight = in[2];
    o_proj->bias = in[3];
    fc_in->bias = in[4];
    block->ln2->bias = in[5];
    return block->forward(in[0]);
  };
  GradcheckResult r = gradcheck(fn, {x, block->ln1->weight, q_proj->weight, o_proj->bias, fc_in->bias, block->ln2->bias});
  BOOST_CHECK_MESSAGE(r.ok, r.report);
}
