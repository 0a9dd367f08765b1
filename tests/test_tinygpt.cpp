// TinyGPT end to end: checkpoint save / load (bit-identical), refused
// checkpoints (other hyper-parameters, wrong shapes, truncated, garbage),
// seeded and greedy generation, and a few SGD steps that lower the loss.
#define BOOST_TEST_MODULE tinygpt
#include <boost/test/unit_test.hpp>

#include "test_util.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;
using namespace loragrad::nn;
namespace fs = std::filesystem;

namespace {

TinyGPTConfig small_config(uint64_t seed = 1) {
  TinyGPTConfig c;
  c.vocab_size = 40;
  c.block_size = 12;
  c.d_model = 16;
  c.n_layer = 2;
  c.n_head = 4;
  c.d_ff = 32;
  c.seed = seed;
  return c;
}

Tensor batch_ids(int64_t V, int64_t B, int64_t t, uint64_t seed) {
  Generator gen(seed);
  return randint({B, t}, 0, V, gen);
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}




}  // namespace

BOOST_AUTO_TEST_CASE(save_load_round_trip_is_bit_identical) {
  TempDir dir;
  const TinyGPTConfig c = small_config(3);
  TinyGPT model(c);
  Tensor ids = batch_ids(c.vocab_size, 2, 10, 4);
  Tensor logits = model.forward(ids);
  const std::string path = dir.file("model.safetensors");
  model.save(path);

  // the file is a plain safetensors file with the spec's names and metadata
  SafetensorsFile f = load_safetensors(path);
  NamedTensors params = model.named_parameters();
  BOOST_REQUIRE_EQUAL(f.tensors.size(), params.size());
  for (auto& [name, p] : params) {
    BOOST_REQUIRE_MESSAGE(f.contains(name), name);
    BOOST_CHECK(f.at(name).dtype() == DType::f32);
    BOOST_CHECK(bit_equal(f.at(name), p.detach()));
  }
  BOOST_CHECK_EQUAL(f.metadata.at("vocab_size"), "40");
  BOOST_CHECK_EQUAL(f.metadata.at("block_size"), "12");
  BOOST_CHECK_EQUAL(f.metadata.at("d_model"), "16");
  BOOST_CHECK_EQUAL(f.metadata.at("n_layer"), "2");
  BOOST_CHECK_EQUAL(f.metadata.at("n_head"), "4");
  BOOST_CHECK_EQUAL(f.metadata.at("d_ff"), "32");

  std::shared_ptr<TinyGPT> loaded = TinyGPT::load(path);
  BOOST_CHECK(bit_equal(loaded->forward(ids), logits));
  BOOST_CHECK_EQUAL(loaded->config().d_ff, 32);

  TinyGPT other(small_config(99));  // same shape, other weights
  other.load_weights(path);
  BOOST_CHECK(bit_equal(other.forward(ids), logits));

  // float64: the f32 checkpoint loads exactly into an f64 model; an f64
  // checkpoint keeps f64 values
  auto m64 = TinyGPT::load(path, DType::f64);
  BOOST_CHECK(m64->dtype() == DType::f64);
  Tensor l64 = m64->forward(ids);
  double worst = 0;
  auto a = l64.to_vector(), b = logits.to_vector();
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  BOOST_CHECK_LT(worst, 1e-5);
  m64->save(dir.file("f64.safetensors"), DType::f64);
  BOOST_CHECK(load_safetensors(dir.file("f64.safetensors")).at("lm_head.weight").dtype() == DType::f64);
  BOOST_CHECK(bit_equal(TinyGPT::load(dir.file("f64.safetensors"), DType::f64)->forward(ids), l64));
}

BOOST_AUTO_TEST_CASE(other_hyper_parameters_are_refused_by_name) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  TinyGPT(small_config()).save(path);

  TinyGPTConfig c = small_config();
  c.d_model = 32;
  TinyGPT wide(c);
  check_throws<IOError>([&] { wide.load_weights(path); }, {path, "d_model: checkpoint 16, model 32"});
  c = small_config();
  c.n_head = 2;  // same shapes, different model: still refused
  TinyGPT two_heads(c);
  check_throws<IOError>([&] { two_heads.load_weights(path); }, {path, "n_head: checkpoint 4, model 2"});
  c = small_config();
  c.n_layer = 3;
  c.block_size = 16;
  TinyGPT deeper(c);
  check_throws<IOError>([&] { deeper.load_weights(path); },
                        {"block_size: checkpoint 12, model 16", "n_layer: checkpoint 2, model 3"});
}

BOOST_AUTO_TEST_CASE(bad_checkpoints_are_refused) {
  TempDir dir;
  const TinyGPTConfig c = small_config();
  TinyGPT model(c);
  const std::string good = dir.file("good.safetensors");
  model.save(good);
  const std::string bytes = read_bytes(good);

  // truncated: the reader notices, names the file
  const std::string truncated = dir.file("truncated.safetensors");
  write_bytes(truncated, bytes.substr(0, bytes.size() / 2));
  check_throws<IOError>([&] { TinyGPT::load(truncated); }, {truncated});
  check_throws<IOError>([&] { model.load_weights(truncated); }, {truncated});

  // garbage header
  const std::string garbage = dir.file("garbage.safetensors");
  std::string g(8, '\0');
  const std::string junk = "this is not json at all!";
  g[0] = static_cast<char>(junk.size());
  write_bytes(garbage, g + junk);
  check_throws<IOError>([&] { TinyGPT::load(garbage); }, {garbage});

  // a missing file
  check_throws<IOError>([&] { TinyGPT::load(dir.file("nope.safetensors")); }, {"nope.safetensors"});

  // right metadata, one tensor of the wrong shape, one missing, one extra
  NamedTensors sd = model.state_dict();
  NamedTensors bad;
  for (auto& [name, t] : sd) {
    if (name == "blocks.0.mlp.fc_in.weight") bad.push_back({name, zeros({c.d_ff, c.d_model + 1})});
    else if (name != "ln_f.bias") bad.push_back({name, t});
  }
  bad.push_back({"blocks.0.attn.extra", zeros({2})});
  const std::string wrong = dir.file("wrong_shapes.safetensors");
  save_safetensors(wrong, bad, c.to_metadata());
  check_throws<IOError>([&] { TinyGPT::load(wrong); },
                        {wrong, "blocks.0.mlp.fc_in.weight is [32, 17] in the file, [32, 16] by the metadata", "missing: ln_f.bias",
                         "unexpected: blocks.0.attn.extra"});

  // not a TinyGPT checkpoint: no hyper-parameters
  const std::string bare = dir.file("bare.safetensors");
  save_safetensors(bare, sd);
  check_throws<IOError>([&] { TinyGPT::load(bare); }, {bare, "vocab_size"});
  // ... which load_weights accepts: the shapes decide
  TinyGPT fresh(small_config(8));
  fresh.load_weights(bare);
  Tensor ids = batch_ids(c.vocab_size, 1, 5, 2);
  BOOST_CHECK(bit_equal(fresh.forward(ids), model.forward(ids)));

  // hyper-parameters that are not numbers, or nonsense
  Metadata meta = c.to_metadata();
  meta["d_model"] = "sixteen";
  save_safetensors(dir.file("nan.safetensors"), sd, meta);
  check_throws<IOError>([&] { TinyGPT::load(dir.file("nan.safetensors")); }, {"d_model", "sixteen"});
  meta = c.to_metadata();
  meta["n_head"] = "5";
  save_safetensors(dir.file("heads.safetensors"), sd, meta);
  check_throws<IOError>([&] { TinyGPT::load(dir.file("heads.safetensors")); }, {"heads.safetensors", "n_head 5"});
}

BOOST_AUTO_TEST_CASE(generate_is_seeded_and_greedy_is_argmax) {
  TinyGPTConfig c = small_config(5);
  TinyGPT model(c);
  {  // sharpen the output distribution so sampling and argmax are not trivial
    NoGradGuard no_grad;
    model.tok_emb->weight.mul_(50.0);
  }
  model.eval();
  const std::vector<int64_t> prompt = {1, 2, 3};

  Generator g1(7), g2(7), g3(8);
  auto s1 = model.generate(prompt, 20, 1.0, 10, g1);
  auto s2 = model.generate(prompt, 20, 1.0, 10, g2);
  auto s3 = model.generate(prompt, 20, 1.0, 10, g3);
  BOOST_REQUIRE_EQUAL(s1.size(), 23u);
  BOOST_CHECK(std::equal(prompt.begin(), prompt.end(), s1.begin()));
  BOOST_CHECK(s1 == s2);
  BOOST_CHECK(s1 != s3);
  for (int64_t t : s1) BOOST_CHECK(t >= 0 && t < c.vocab_size);

  // greedy: independent of the generator, each token the argmax of the logits
  // at the previous position (the whole sequence fits in block_size)
  Generator a(1), b(2);
  auto greedy = model.generate(prompt, 8, 0.0, 0, a);
  BOOST_CHECK(greedy == model.generate(prompt, 8, 0.0, 0, b));
  Tensor logits = model.forward(from_indices(greedy, {1, static_cast<int64_t>(greedy.size())}));  // (1, n, V)
  auto v = logits.to_vector();
  for (size_t pos = prompt.size() - 1; pos + 1 < greedy.size(); ++pos) {
    const double* row = v.data() + pos * c.vocab_size;
    const int64_t argmax = std::max_element(row, row + c.vocab_size) - row;
    BOOST_CHECK_EQUAL(greedy[pos + 1], argmax);
  }
  // top_k = 1 is greedy too
  Generator g4(3);
  BOOST_CHECK(model.generate(prompt, 8, 1.5, 1, g4) == greedy);

  // a prompt longer than block_size is cropped to the last block_size tokens
  std::vector<int64_t> long_prompt(30, 4);
  Generator g5(1);
  auto long_seq = model.generate(long_prompt, 3, 0.8, 0, g5);
  BOOST_CHECK_EQUAL(long_seq.size(), 33u);

  // no graph is recorded
  Generator g6(1);
  model.generate(prompt, 2, 1.0, 0, g6);
  BOOST_CHECK(!model.tok_emb->weight.grad().defined());

  check_throws<ValueError>([&] { model.generate({}, 3, 1.0, 0, g6); }, {"TinyGPT.generate", "empty"});
  check_throws<ValueError>([&] { model.generate(prompt, 3, -1.0, 0, g6); }, {"TinyGPT.generate", "temperature"});
  check_throws<ValueError>([&] { model.generate(prompt, -1, 1.0, 0, g6); }, {"TinyGPT.generate", "max_new_tokens"});
  check_throws<IndexError>([&] { model.generate({1, 40}, 3, 1.0, 0, g6); }, {"embedding", "40"});
}

BOOST_AUTO_TEST_CASE(sgd_steps_lower_the_loss) {
  TinyGPTConfig c = small_config(9);
  c.n_layer = 1;
  TinyGPT model(c);
  Tensor ids = batch_ids(c.vocab_size, 4, 8, 10);
  Tensor targets = batch_ids(c.vocab_size, 4, 8, 11);
  const double lr = 0.02;  // small: LayerNorm of the 0.02-scale embeddings amplifies their gradient step
  std::vector<double> losses;
  for (int step = 0; step < 20; ++step) {
    model.zero_grad();
    Tensor loss = model.loss(ids, targets);
    losses.push_back(loss.item());
    loss.backward();
    NoGradGuard no_grad;
    for (Tensor& p : model.parameters()) p.add_(p.grad(), -lr);
  }
  BOOST_TEST_MESSAGE("loss " << losses.front() << " -> " << losses.back());
  BOOST_CHECK_CLOSE(losses.front(), std::log(40.0), 2.0);  // a fresh model is near uniform
  BOOST_CHECK_LT(losses.back(), losses.front() - 0.3);
  for (size_t i = 1; i < losses.size(); ++i) BOOST_CHECK_LT(losses[i], losses[i - 1] + 1e-6);
}

// Issue 8, defect 2: the metadata of a 48 KB file asked for d_model 4,000,000
// or n_layer 1e8 and the model was built (minutes, gigabytes) before a shape
// was checked; vocab_size 2^62 overflowed an element count. Now the metadata is
// checked against the tensors in the file before anything is allocated.
BOOST_AUTO_TEST_CASE(metadata_is_checked_against_the_tensors_before_building) {
  TempDir dir;
  const TinyGPTConfig c = small_config();
  TinyGPT model(c);
  const NamedTensors sd = model.state_dict();
  auto with = [&](const std::string& key, const std::string& value) {
    Metadata m = c.to_metadata();
    m[key] = value;
    const std::string path = dir.file(key + ".safetensors");
    save_safetensors(path, sd, m);
    return path;
  };
  const std::string d = with("d_model", "4000000");
  check_throws<IOError>([&] { TinyGPT::load(d); },
                        {d, "d_model 4000000", "tok_emb.weight is [40, 16] in the file, [40, 4000000] by the metadata"});
  const std::string l = with("n_layer", "100000000");
  check_throws<IOError>([&] { TinyGPT::load(l); }, {l, "n_layer 100000000 needs", "the file holds 37"});
  const std::string v = with("vocab_size", "4611686018427387904");
  check_throws<IOError>([&] { TinyGPT::load(v); }, {v, "tok_emb.weight is [40, 16] in the file"});
  const std::string b = with("block_size", "9000000000");
  check_throws<IOError>([&] { TinyGPT::load(b); }, {b, "pos_emb.weight is [12, 16] in the file, [9000000000, 16]"});
  const std::string f = with("d_ff", "9223372036854775807");
  check_throws<IOError>([&] { TinyGPT::load(f); }, {f, "blocks.0.mlp.fc_in.weight is [32, 16] in the file"});
  const std::string h = with("n_head", "3");
  check_throws<IOError>([&] { TinyGPT::load(h); }, {h, "not a multiple of n_head 3"});
  const std::string big = with("d_model", "99999999999999999999");
  check_throws<IOError>([&] { TinyGPT::load(big); }, {big, "is not an integer"});
}

// parameter_shapes() is what the check above trusts: it must be the real model's.
BOOST_AUTO_TEST_CASE(parameter_shapes_equal_the_state_dict) {
  for (int64_t layers : {1, 3}) {
    TinyGPTConfig c = small_config();
    c.n_layer = layers;
    c.d_ff = 24;
    TinyGPT model(c);
    const NamedTensors sd = model.state_dict();
    const auto shapes = c.parameter_shapes();
    BOOST_REQUIRE_EQUAL(shapes.size(), sd.size());
    for (size_t i = 0; i < sd.size(); ++i) {
      BOOST_TEST(shapes[i].first == sd[i].first);
      BOOST_TEST(shape_str(shapes[i].second) == shape_str(sd[i].second.shape()));
    }
  }
}

// Issue 8, defect 5: NaN / Inf weights were loaded and only gave `loss nan`.
BOOST_AUTO_TEST_CASE(non_finite_weights_are_refused_on_load) {
  TempDir dir;
  const TinyGPTConfig c = small_config();
  TinyGPT model(c);
  for (double bad : {std::nan(""), HUGE_VAL, -HUGE_VAL}) {
    NamedTensors sd = model.state_dict();
    for (auto& [name, t] : sd)
      if (name == "blocks.1.ln2.bias") {
        t = t.clone();
        t.data<float>()[5] = static_cast<float>(bad);
      }
    const std::string path = dir.file("bad.safetensors");
    save_safetensors(path, sd, c.to_metadata());
    const std::string what = std::isnan(bad) ? "NaN" : bad > 0 ? "+Inf" : "-Inf";
    check_throws<IOError>([&] { TinyGPT::load(path); }, {path, "'blocks.1.ln2.bias'", what, "flat index 5"});
    check_throws<IOError>([&] { model.load_weights(path); }, {path, "'blocks.1.ln2.bias'", what});
  }
  // Found by the fuzzer: a finite float64 weight of 1e300 is +Inf once loaded into a float32 model.
  NamedTensors sd = model.state_dict();
  for (auto& [name, t] : sd) {
    t = t.to(DType::f64);
    if (name == "tok_emb.weight") t.data<double>()[3] = 1e300;
  }
  const std::string wide = dir.file("wide.safetensors");
  save_safetensors(wide, sd, c.to_metadata());
  check_throws<IOError>([&] { TinyGPT::load(wide); }, {wide, "(as float32)", "'tok_emb.weight'", "+Inf"});
  BOOST_TEST(TinyGPT::load(wide, DType::f64)->tok_emb->weight.data<double>()[3] == 1e300);  // fits float64
}
