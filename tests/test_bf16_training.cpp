// Mixed-precision training on a bf16 base (issue 11): the "bf16" base storage
// (BF16Linear) computes what a manual computation from the bf16-rounded
// operands gives, with every bf16 kernel this CPU runs; LoRA and DoRA on a
// bf16 base get the adapter gradients of a float32 base within a stated
// tolerance, and train to the same loss; an adapter trained on a bf16 base
// saves, loads and merges as any other.
#define BOOST_TEST_MODULE bf16_training
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/kernels/gemm_bf16.hpp"
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/bf16_linear.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/optim/adamw.hpp"
#include "test_util.hpp"

using namespace loragrad;

namespace {

std::vector<float> floats(const Tensor& t) {
  const Tensor f = t.dtype() == DType::f32 ? t : t.to(DType::f32);
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

// ||a - b|| / ||b|| over all elements.
double rel_norm_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// The largest |y - manual| / (n u sum |terms|) of y = bias + bf16(x) W^T
// (rows, out) against its float64 reference from the rounded operands, and of
// dx = bf16(g) W: must be <= 1 (n terms summed, u = 2^-24; see op_table.hpp).
double worst_bound_ratio(const Tensor& x, const BF16Tensor& w, const Tensor& bias, const Tensor& y, const Tensor& g,
                         const Tensor& dx) {
  const int64_t in = w.cols(), out = w.rows(), rows = x.numel() / in;
  std::vector<double> wv(static_cast<size_t>(w.numel()));
  w.decode(0, w.numel(), wv.data());
  auto rounded = [](const Tensor& t) {
    std::vector<double> v = t.to_vector();
    for (double& e : v) e = double(round_to_bf16(static_cast<float>(e)));
    return v;
  };
  const std::vector<double> xr = rounded(x), gr = rounded(g), yv = y.to_vector(), dxv = dx.to_vector();
  const std::vector<double> bv = bias.defined() ? bias.to_vector() : std::vector<double>(out, 0.0);
  const double u = std::ldexp(1.0, -24);
  double worst = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < out; ++j) {
      double acc = bv[j], mag = std::abs(bv[j]);
      for (int64_t c = 0; c < in; ++c) {
        acc += xr[i * in + c] * wv[j * in + c];
        mag += std::abs(xr[i * in + c] * wv[j * in + c]);
      }
      worst = std::max(worst, std::abs(yv[i * out + j] - acc) / ((in + 2) * u * mag + 1e-300));
    }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < in; ++c) {
      double acc = 0, mag = 0;
      for (int64_t j = 0; j < out; ++j) {
        acc += gr[i * out + j] * wv[j * in + c];
        mag += std::abs(gr[i * out + j] * wv[j * in + c]);
      }
      worst = std::max(worst, std::abs(dxv[i * in + c] - acc) / ((out + 2) * u * mag + 1e-300));
    }
  return worst;
}

// The kernels this CPU runs (amx, avx512_bf16, fp32), each made current in turn.
std::vector<std::string> runnable_kernels() {
  std::vector<std::string> ks;
  for (const std::string& k : kernels::bf16_kernel_names())
    if (kernels::bf16_kernel_supported(k)) ks.push_back(k);
  return ks;
}

struct DefaultKernelAfter {
  ~DefaultKernelAfter() { kernels::set_bf16_kernel("auto"); }
};

nn::TinyGPTConfig small_config() {
  nn::TinyGPTConfig cfg;
  cfg.block_size = 32;
  cfg.d_model = 32;
  cfg.n_layer = 2;
  cfg.n_head = 4;
  cfg.seed = 1;
  return cfg;
}

// As tests/test_lora_training.cpp: a frozen head at the scale of a trained one,
// so that the adapters have something to steer.
std::shared_ptr<nn::TinyGPT> small_model() {
  auto model = std::make_shared<nn::TinyGPT>(small_config());
  for (auto& [name, p] : model->named_parameters())
    if (name == "lm_head.weight") p.mul_(10.0);
  return model;
}

lora::LoraConfig all_linear(bool dora, lora::LoraInit init = lora::LoraInit::standard) {
  lora::LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.use_dora = dora;
  cfg.init_lora_weights = init;
  cfg.target_modules = {"all-linear"};
  return cfg;
}

data::Batch fixed_batch(int64_t B, int64_t T, uint64_t seed) {
  data::ByteDataset data(data::builtin_corpus(data::Domain::recipes, 20000, 5));
  Generator gen(seed);
  return data.sample(data::Split::train, B, T, gen);
}

}  // namespace

// ---------------------------------------------------------------- the storage

BOOST_AUTO_TEST_CASE(bf16_storage_holds_the_rounded_weight_in_half_the_bytes) {
  Generator gen(3);
  nn::Linear dense(70, 20, true, gen);
  std::shared_ptr<nn::LinearBase> q = lora::quantize_base("bf16", dense);
  BOOST_CHECK_EQUAL(q->storage(), "bf16");
  BOOST_CHECK(q->quantized());
  BOOST_CHECK_EQUAL(q->type_name(), "Linear");
  BOOST_CHECK(q->extra_repr().find("dtype=bfloat16") != std::string::npos);
  BOOST_CHECK_EQUAL(q->in_features, 70);
  BOOST_CHECK_EQUAL(q->out_features, 20);
  BOOST_CHECK_EQUAL(q->weight_bytes(), 20u * 70u * 2u);  // half of float32's
  BOOST_CHECK(!q->bias.requires_grad());
  BOOST_CHECK(floats(q->bias) == floats(dense.bias));
  // dense_weight: every value rounded to nearest even, widened exactly
  const std::vector<float> w = floats(dense.weight), d = floats(q->dense_weight());
  for (size_t i = 0; i < w.size(); ++i) BOOST_REQUIRE_EQUAL(d[i], round_to_bf16(w[i]));
  std::vector<double> rows(2 * 70);
  q->weight_rows_f64(5, 2, rows.data());
  for (size_t i = 0; i < rows.size(); ++i) BOOST_REQUIRE_EQUAL(rows[i], double(d[5 * 70 + i]));
  // set_weight rounds (a merge into a bf16 base): new values, a new version
  const auto before = q->weight_version();
  const Tensor doubled = mul(dense.weight, scalar(1.001));
  q->set_weight(doubled);
  BOOST_CHECK(q->weight_version().owner != before.owner);
  const std::vector<float> m = floats(doubled), back = floats(q->dense_weight());
  for (size_t i = 0; i < m.size(); ++i) BOOST_REQUIRE_EQUAL(back[i], round_to_bf16(m[i]));

  check_throws<ShapeError>([&] { lora::make_base("bf16", dense.weight, randn({7}, gen)); }, {"BF16Linear", "bias", "[7]"});
  check_throws<ShapeError>([&] { q->set_weight(zeros({70, 20})); }, {"BF16Linear.set_weight", "[20, 70]", "[70, 20]"});
  check_throws<ShapeError>([&] { quantize_bf16(zeros({4})); }, {"quantize_bf16", "[4]"});
  check_throws<ShapeError>([&] { q->forward(zeros({3, 71})); }, {"bf16_linear", "[3, 71]", "[20, 70]"});
}

// The layer's forward and input gradient against the manual computation, for
// every kernel this CPU runs (the op table checks small shapes; these have
// full AMX tiles, ragged edges and several row blocks).
BOOST_AUTO_TEST_CASE(forward_and_input_gradient_match_the_rounded_operands_with_every_kernel) {
  DefaultKernelAfter restore;
  Generator gen(5);
  const Tensor w = uniform({80, 96}, -0.5, 0.5, gen);  // (out, in)
  const Tensor b = uniform({80}, -0.5, 0.5, gen);
  lora::BF16Linear layer(w, b);
  const Tensor g = uniform({2, 101, 80}, -1.0, 1.0, gen);  // dL/dy
  for (const std::string& k : runnable_kernels()) {
    kernels::set_bf16_kernel(k);
    Tensor x = uniform({2, 101, 96}, -2.0, 2.0, gen).requires_grad_();
    const Tensor y = layer.forward(x);
    sum(mul(y, g)).backward();
    const double ratio = worst_bound_ratio(x, layer.weight(), b, y, g, x.grad());
    BOOST_TEST_MESSAGE(k << ": worst error " << ratio << " of the bound n 2^-24 sum|terms|");
    BOOST_CHECK_MESSAGE(ratio <= 1.0, k << ": error " << ratio << " of the bound");
  }
}

// ---------------------------------------------------------------- the model

BOOST_AUTO_TEST_CASE(base_storage_bf16_puts_every_frozen_linear_in_bf16) {
  auto model = small_model();
  lora::LoraConfig cfg = all_linear(false);
  cfg.base_storage = "bf16";
  const lora::LoraReport rep = lora::apply_lora(*model, cfg);
  int bf16 = 0, dense = 0;
  size_t weight_bytes = 0;
  for (const auto& [path, m] : model->named_modules()) {
    auto base = std::dynamic_pointer_cast<nn::LinearBase>(m);
    if (!base || path.find(".lora_") != std::string::npos) continue;
    if (base->storage() == "bf16") {
      ++bf16;
      weight_bytes += base->weight_bytes();
    } else {
      ++dense;
      BOOST_ERROR("still float: " << path);
    }
  }
  // 6 linears per block and lm_head (with "all-linear" lm_head has no adapter, but is bf16)
  BOOST_CHECK_EQUAL(bf16, 2 * 6 + 1);
  BOOST_CHECK(std::dynamic_pointer_cast<lora::BF16Linear>(model->lm_head) != nullptr);
  const int64_t d = 32, V = 256;
  BOOST_CHECK_EQUAL(weight_bytes, size_t(2 * (2 * 12 * d * d + V * d)));  // 2 bytes a weight
  // PEFT's counts see the logical weights, as for NF4
  auto fp32 = small_model();
  const lora::LoraReport rep32 = lora::apply_lora(*fp32, all_linear(false));
  BOOST_CHECK_EQUAL(rep.all_params, rep32.all_params);
  BOOST_CHECK_EQUAL(rep.trainable_params, rep32.trainable_params);

  // modules_to_save stay float32 and trained
  auto saved = small_model();
  cfg.modules_to_save = {"lm_head"};
  lora::apply_lora(*saved, cfg);
  auto head = std::dynamic_pointer_cast<nn::Linear>(saved->lm_head);
  BOOST_REQUIRE(head != nullptr);
  BOOST_CHECK(head->weight.requires_grad());

  // float32 models only, as qlora: the products sum in float32
  auto f64 = small_model();
  f64->to(DType::f64);
  lora::LoraConfig on_f64 = all_linear(false);
  on_f64.base_storage = "bf16";
  check_throws<ValueError>([&] { lora::apply_lora(*f64, on_f64); }, {"base_storage bf16", "float64"});

  lora::LoraConfig bad = all_linear(false);
  bad.base_storage = "fp16";
  check_throws<ValueError>([&] { bad.validate(); }, {"base_storage", "'fp16'", "bf16"});
  bad.base_storage = "bf16";
  bad.qlora = true;
  check_throws<ValueError>([&] { bad.validate(); }, {"base_storage", "qlora"});
}

// One batch through a float32-base model and through the same model with its
// base in bf16: the adapters' gradients agree to the rounding of bf16. The
// adapters start random (init false: B != 0, so A's gradient is not zero).
// Measured relative differences (norm of the difference over the norm): 0.3%
// to 1.5% per tensor (the largest, DoRA's magnitude of blocks.0 v_proj);
// bf16's relative spacing is 2^-8 = 0.4%, and every base product of the
// forward and of the backward rounds its input (activations, then output
// gradients), through two blocks and the head. Tolerance 3%.
BOOST_AUTO_TEST_CASE(adapter_gradients_on_a_bf16_base_match_a_float32_base) {
  const data::Batch b = fixed_batch(4, 32, 7);
  for (bool dora : {false, true}) {
    std::vector<std::pair<std::string, Tensor>> grads[2];
    double losses[2] = {0, 0};
    for (int bf16 = 0; bf16 < 2; ++bf16) {
      auto model = small_model();
      lora::LoraConfig cfg = all_linear(dora, lora::LoraInit::random);
      if (bf16) cfg.base_storage = "bf16";
      lora::apply_lora(*model, cfg);
      model->train();
      Tensor loss = model->loss(b.x, b.y);
      loss.backward();
      losses[bf16] = loss.item();
      for (auto& [name, p] : model->named_parameters())
        if (p.requires_grad()) grads[bf16].push_back({name, p.grad()});
    }
    BOOST_REQUIRE_EQUAL(grads[0].size(), grads[1].size());
    BOOST_TEST_MESSAGE((dora ? "dora" : "lora") << ": loss " << losses[0] << " (f32 base) vs " << losses[1]
                                                << " (bf16 base)");
    BOOST_CHECK_SMALL(losses[1] - losses[0], 2e-2 * std::abs(losses[0]));
    double worst = 0;
    for (size_t i = 0; i < grads[0].size(); ++i) {
      BOOST_REQUIRE_EQUAL(grads[0][i].first, grads[1][i].first);
      BOOST_REQUIRE(grads[1][i].second.defined());
      const double diff = rel_norm_diff(grads[1][i].second, grads[0][i].second);
      worst = std::max(worst, diff);
      BOOST_CHECK_MESSAGE(diff <= 3e-2, (dora ? "dora " : "lora ") << grads[0][i].first << ": gradient differs by "
                                                                     << diff << " (relative norm)");
    }
    BOOST_TEST_MESSAGE((dora ? "dora" : "lora") << ": largest relative gradient difference " << worst);
  }
}

// A short fine-tune: the same runs with the base in float32 and in bf16, for
// three orders of the training batches, end at mean validation losses within
// 0.03 nats of each other (both learn more than 1 nat). One run alone can
// drift further: near a plateau a tiny difference moves the step at which
// the loss drops (measured at lr 3e-2: 0.1 nats either way at step 60, the
// same spread as between two batch orders in float32); at lr 5e-3 over 100
// steps the runs stay within 0.04 (two of three within 1e-3).
BOOST_AUTO_TEST_CASE(a_short_finetune_on_a_bf16_base_reaches_the_float32_loss) {
  data::ByteDataset data(data::builtin_corpus(data::Domain::recipes, 60000, 5));
  auto eval = [&](nn::TinyGPT& model) {
    NoGradGuard ng;
    Generator gen(99);
    double total = 0;
    for (int i = 0; i < 4; ++i) {
      data::Batch b = data.sample(data::Split::validation, 8, 32, gen);
      total += model.loss(b.x, b.y).item();
    }
    return total / 4;
  };
  double before[2] = {0, 0}, after[2] = {0, 0};
  const uint64_t orders[] = {3, 4, 5};
  for (uint64_t order : orders) {
    for (int bf16 = 0; bf16 < 2; ++bf16) {
      auto model = small_model();
      lora::LoraConfig cfg = all_linear(false);
      if (bf16) cfg.base_storage = "bf16";
      lora::apply_lora(*model, cfg);
      std::vector<Tensor> trainable;
      for (auto& p : model->parameters())
        if (p.requires_grad()) trainable.push_back(p);
      optim::AdamW opt(trainable, /*lr=*/5e-3, /*weight_decay=*/0.0);
      before[bf16] += eval(*model) / 3;
      Generator gen(order);
      for (int step = 0; step < 100; ++step) {
        data::Batch b = data.sample(data::Split::train, 8, 32, gen);
        opt.zero_grad();
        model->loss(b.x, b.y).backward();
        opt.step();
      }
      const double end = eval(*model);
      BOOST_TEST_MESSAGE("batch order " << order << ", " << (bf16 ? "bf16" : "float32") << " base: " << end);
      after[bf16] += end / 3;
    }
  }
  BOOST_TEST_MESSAGE("mean over 3 orders: float32 base " << before[0] << " -> " << after[0] << "; bf16 base "
                                                         << before[1] << " -> " << after[1]);
  BOOST_CHECK_LT(after[0], before[0] - 1.0);
  BOOST_CHECK_LT(after[1], before[1] - 1.0);
  BOOST_CHECK_SMALL(after[1] - after[0], 0.03);
}

// An adapter trained on a bf16 base is an ordinary float32 PEFT adapter: it
// saves, loads onto the float base (logits within bf16 rounding of the
// trained model's) and onto a bf16 base again (the same logits, bit for
// bit), and merges (the bf16 base is widened to float32 first, exactly).
BOOST_AUTO_TEST_CASE(an_adapter_trained_on_a_bf16_base_saves_loads_and_merges) {
  TempDir tmp;
  const data::Batch b = fixed_batch(2, 32, 11);
  auto model = small_model();
  lora::LoraConfig cfg = all_linear(false);
  cfg.base_storage = "bf16";
  lora::apply_lora(*model, cfg);
  std::vector<Tensor> trainable;
  for (auto& p : model->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  optim::AdamW opt(trainable, 3e-2, 0.0);
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    model->loss(b.x, b.y).backward();
    opt.step();
  }
  model->eval();
  NoGradGuard ng;
  const Tensor logits = model->forward(b.x);
  lora::save_adapter(*model, tmp.file("adapter"), "default");
  BOOST_CHECK(read_bytes(tmp.file("adapter/adapter_config.json")).find("bf16") == std::string::npos);

  auto on_f32 = small_model();
  lora::load_adapter(*on_f32, tmp.file("adapter"));
  on_f32->eval();
  const Tensor logits32 = on_f32->forward(b.x);
  const double d32 = rel_norm_diff(logits32, logits);
  BOOST_TEST_MESSAGE("logits on the float32 base differ by " << d32 << " (relative norm)");
  BOOST_CHECK_LE(d32, 2e-2);

  auto on_bf16 = small_model();
  BOOST_CHECK_EQUAL(lora::convert_base_to_bf16(*on_bf16), 2 * 6 + 1);
  lora::load_adapter(*on_bf16, tmp.file("adapter"));
  on_bf16->eval();
  BOOST_CHECK(floats(on_bf16->forward(b.x)) == floats(logits));

  const lora::MergeReport rep = lora::merge_and_unload(*on_bf16);
  BOOST_CHECK_EQUAL(rep.dequantized.size(), rep.merged.size());  // every base widened to float32, then merged
  const Tensor merged = on_bf16->forward(b.x);
  BOOST_CHECK_LE(rel_norm_diff(merged, logits), 2e-2);  // the merged model runs in float32 (x no longer rounded)
}
