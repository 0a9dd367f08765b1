// The KL to the base (train/kl.hpp, issue 12 item 2): exactly 0 while the
// adapter is a no-op, for LoRA, DoRA and QLoRA; the convention checked
// against the formula written out; float64 gradchecks through a whole tiny
// model; models without a base refused; the penalty keeps a trained adapter
// closer to its base; and the Trainer's KL stream resumes bit for bit.
#define BOOST_TEST_MODULE kl_to_base
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <filesystem>
#include <sstream>

#include "loragrad/autograd.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/train/kl.hpp"
#include "loragrad/train/trainer.hpp"
#include "test_util.hpp"
#include "train_fixtures.hpp"

using namespace loragrad;
using namespace loragrad::train;
using namespace fixtures;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<nn::TinyGPT> tiny(DType dt = DType::f32, int64_t d_model = 32, int64_t block = 16) {
  auto m = tiny_gpt(block, d_model, dt);
  // A fresh head (std 0.02) makes every distribution nearly uniform, and every
  // KL nearly 0: give it the scale of a trained one.
  for (auto& [name, p] : m->named_parameters())
    if (name == "lm_head.weight") p.mul_(10.0);
  return m;
}

data::Batch text_batch(int64_t batch, int64_t seq, uint64_t seed = 11) {
  Generator gen(seed);
  return stories().sample(data::Split::train, batch, seq, gen);
}

lora::LoraConfig adapter(bool dora, bool qlora, lora::LoraInit init = lora::LoraInit::standard) {
  lora::LoraConfig cfg;
  cfg.target_modules = {"all-linear"};
  cfg.r = 2;
  cfg.lora_alpha = 4;
  cfg.use_dora = dora;
  cfg.qlora = qlora;
  cfg.init_lora_weights = init;
  cfg.seed = 5;
  return cfg;
}

// KL(p_base || p_adapted) written out in double from the two models' logits,
// over the positions whose target is not -100.
double reference_kl(nn::TinyGPT& model, const data::Batch& b) {
  NoGradGuard no_grad;
  nn::ModeScope eval_mode(model, false);
  std::vector<double> zb, za;
  {
    lora::AdaptersDisabled off(model);
    zb = model.forward(b.x, b.starts).to_vector();
  }
  za = model.forward(b.x, b.starts).to_vector();
  const std::vector<double> y = b.y.to_vector();
  const size_t V = 256;
  double total = 0;
  int64_t n = 0;
  for (size_t pos = 0; pos < y.size(); ++pos) {
    if (y[pos] == data::kIgnoreIndex) continue;
    auto log_softmax_row = [&](const std::vector<double>& z) {
      double mx = -INFINITY, s = 0;
      for (size_t v = 0; v < V; ++v) mx = std::max(mx, z[pos * V + v]);
      for (size_t v = 0; v < V; ++v) s += std::exp(z[pos * V + v] - mx);
      std::vector<double> out(V);
      for (size_t v = 0; v < V; ++v) out[v] = z[pos * V + v] - mx - std::log(s);
      return out;
    };
    const std::vector<double> lb = log_softmax_row(zb), la = log_softmax_row(za);
    for (size_t v = 0; v < V; ++v) total += std::exp(lb[v]) * (lb[v] - la[v]);
    ++n;
  }
  return total / static_cast<double>(n);
}

bool any_disabled(const nn::Module& m) {
  for (const auto& [path, layer] : lora::lora_layers(m))
    if (layer->adapters_disabled()) return true;
  return false;
}

}  // namespace

// The done-when of issue 12 item 2: at step 0 (B = 0, so the adapter's output
// is the base's) the KL is exactly 0, for every adapter method, in training
// mode with adapter dropout too (the KL's passes run in eval mode).
BOOST_AUTO_TEST_CASE(kl_is_zero_at_step_0) {
  const data::Batch b = text_batch(2, 16);
  for (bool dora : {false, true})
    for (bool qlora : {false, true})
      BOOST_TEST_CONTEXT("dora " << dora << " qlora " << qlora) {
        auto model = tiny();
        lora::LoraConfig cfg = adapter(dora, qlora);
        cfg.lora_dropout = 0.3;
        lora::apply_lora(*model, cfg);
        model->train();
        const Tensor kl = kl_to_base(*model, b);
        BOOST_TEST(kl.dim() == 0);
        BOOST_TEST(kl.item() == 0.0);
        BOOST_TEST(evaluate_kl_to_base(*model, {b, text_batch(2, 16, 12)}) == 0.0);
        BOOST_TEST(model->is_training());  // the mode comes back
        BOOST_TEST(!any_disabled(*model));  // and so do the adapters
        // The gradient is 0 as well (the KL is at its minimum), but it exists.
        kl.backward();
        for (const Tensor& p : trainable(*model)) BOOST_TEST(p.grad().defined());
      }
}

// Away from 0 (random A and B), the value is the formula written out in
// double, for plain text and for packed rows (prompt and padding left out),
// and positive.
BOOST_AUTO_TEST_CASE(kl_follows_the_convention) {
  auto model = tiny(DType::f64, 32, 64);  // recipe-qa needs a block of 64
  lora::apply_lora(*model, adapter(false, false, lora::LoraInit::random));
  const data::Batch b = text_batch(2, 16);
  const double kl = kl_to_base(*model, b).item();
  BOOST_TEST(kl > 1e-4);
  BOOST_TEST(std::abs(kl - reference_kl(*model, b)) < 1e-12 * std::max(1.0, kl));

  // Packed instruction rows: only the response positions count.
  const data::InstructionDataset qa(data::recipe_questions(40, 3), 0.0);
  Generator gen(2);
  const data::Batch packed = qa.sample(data::Split::train, 2, 64, gen);
  BOOST_REQUIRE(packed.num_targets() < packed.y.numel());
  BOOST_REQUIRE(packed.num_targets() > 0);
  const double kp = kl_to_base(*model, packed).item();
  BOOST_TEST(std::abs(kp - reference_kl(*model, packed)) < 1e-12 * std::max(1.0, kp));

  // No scored position: refused rather than NaN.
  data::Batch none = b;
  none.y = from_indices(std::vector<int64_t>(static_cast<size_t>(b.y.numel()), data::kIgnoreIndex), b.y.shape());
  check_throws<ValueError>([&] { kl_to_base(*model, none); }, {"kl_to_base", "no scored position"});
}

// float64 gradcheck of the KL through a whole tiny model, with respect to
// every adapter parameter (B moved away from 0 by init = false, so the
// gradient is not trivially 0): LoRA and QLoRA w.r.t. A and B; DoRA w.r.t.
// its magnitude (its row norm n is detached, as in PEFT, so a finite
// difference in A or B moves n and is not what the analytic gradient follows:
// see test_lora_gradcheck.cpp). Also on packed rows with masked positions.
BOOST_AUTO_TEST_CASE(kl_gradchecks_in_float64) {
  const data::InstructionDataset qa(data::recipe_questions(40, 3), 0.0);
  Generator gen(2);
  const data::Batch packed = qa.sample(data::Split::train, 1, 64, gen);
  const data::Batch plain = text_batch(2, 6);
  struct Case {
    bool dora, qlora;
    const data::Batch* batch;
  };
  for (const Case& c : {Case{false, false, &plain}, Case{false, false, &packed}, Case{false, true, &plain},
                        Case{true, false, &plain}, Case{true, true, &plain}})
    BOOST_TEST_CONTEXT("dora " << c.dora << " qlora " << c.qlora << " packed " << (c.batch == &packed)) {
      // QLoRA quantises float32 layers: its model goes to float64 after (the
      // NF4 codes stay; they run in float64 then, as nf4_linear does).
      auto model = tiny(c.qlora ? DType::f32 : DType::f64, 8, 64);
      lora::LoraConfig cfg = adapter(c.dora, c.qlora, lora::LoraInit::random);
      cfg.target_modules = {"q_proj", "fc_out"};  // an attention and an MLP layer, few inputs
      lora::apply_lora(*model, cfg);
      if (c.qlora) model->to(DType::f64);
      std::vector<Tensor*> slots;
      for (const auto& [path, layer] : lora::lora_layers(*model)) {
        if (c.dora) {  // moved off n, so m / n != 1
          NoGradGuard no_grad;
          layer->magnitude("default").mul_(1.25);
          slots.push_back(&layer->magnitude("default"));
        } else {
          slots.push_back(&layer->lora_A_weight("default"));
          slots.push_back(&layer->lora_B_weight("default"));
        }
      }
      std::vector<Tensor> inputs;
      for (Tensor* s : slots) inputs.push_back(s->detach().clone().requires_grad_(true));
      const data::Batch& b = *c.batch;
      auto fn = [&](const std::vector<Tensor>& in) {
        for (size_t i = 0; i < in.size(); ++i) *slots[i] = in[i];
        return kl_to_base(*model, b);
      };
      BOOST_TEST(fn(inputs).item() > 1e-6);
      const GradcheckResult r = gradcheck(fn, inputs);
      BOOST_TEST(r.ok, r.report);
    }
}

// Models that have no base to compare with are refused, naming why; the
// adapters come back when a forward in the scope throws.
BOOST_AUTO_TEST_CASE(models_without_a_base_are_refused) {
  const data::Batch b = text_batch(2, 16);
  auto full_ft = tiny();
  full_ft->requires_grad_(true);
  check_throws<ValueError>([&] { kl_to_base(*full_ft, b); }, {"no LoRA layer", "full fine-tuning"});

  auto saved = tiny();
  lora::LoraConfig cfg = adapter(false, false);
  cfg.modules_to_save = {"lm_head"};
  lora::apply_lora(*saved, cfg);
  check_throws<ValueError>([&] { kl_to_base(*saved, b); }, {"'lm_head.weight' is trained outside the adapters"});

  auto pissa = tiny();
  lora::apply_lora(*pissa, adapter(false, false, lora::LoraInit::pissa));
  check_throws<ValueError>([&] { kl_to_base(*pissa, b); }, {"PiSSA", "residual"});

  auto model = tiny();
  lora::apply_lora(*model, adapter(false, false));
  const data::Batch too_long = text_batch(1, 32);  // 32 > block size 16: forward throws in the base pass
  BOOST_CHECK_THROW(kl_to_base(*model, too_long), std::exception);
  BOOST_TEST(!any_disabled(*model));

  // The Trainer refuses at setup, not at the first step.
  optim::AdamW opt(trainable(*full_ft), 1e-3, 0.0);
  Trainer t(*full_ft, opt, {&recipes(), data::Split::train}, {}, small_config(), {}, {});
  check_throws<ValueError>([&] { t.add_kl_to_base({&stories(), data::Split::train}, 0.5); }, {"no LoRA layer"});
  optim::AdamW opt2(trainable(*model), 1e-3, 0.0);
  Trainer t2(*model, opt2, {&recipes(), data::Split::train}, {}, small_config(), {}, {});
  for (double w : {0.0, -1.0, double(NAN), double(INFINITY)})
    check_throws<ValueError>([&] { t2.add_kl_to_base({&stories(), data::Split::train}, w); },
                             {"weight must be positive and finite"});
}

// The penalty does what it is for: after the same training on recipes, an
// adapter trained with lambda > 0 is closer (in KL, on stories) to its base
// than one trained without; and the run with the penalty reports the KL of
// each step and before / after.
BOOST_AUTO_TEST_CASE(kl_penalty_keeps_the_adapter_near_its_base) {
  const std::vector<data::Batch> probe = stories().fixed_batches(data::Split::validation, 4, 4, 16, 77);
  auto train = [&](double weight) {
    auto model = tiny();
    lora::apply_lora(*model, adapter(false, false));
    optim::AdamW opt(trainable(*model), 3e-2, 0.0);
    TrainConfig c = small_config();
    c.steps = 25;
    c.batch = 4;
    Trainer t(*model, opt, {&recipes(), data::Split::train}, {}, c, {}, {});
    if (weight > 0) t.add_kl_to_base({&stories(), data::Split::train}, weight);
    const TrainResult r = t.fit();
    if (weight > 0) {
      BOOST_TEST(r.kl_before == 0.0);
      BOOST_TEST(r.kl_after > 0.0);
      BOOST_REQUIRE(r.metrics.size() == 25u);
      BOOST_TEST(r.metrics[0].kl == 0.0);  // step 1 is measured before its update: at B = 0
      for (const MetricsRow& m : r.metrics) BOOST_TEST(std::isfinite(m.kl));
    } else {
      BOOST_TEST(std::isnan(r.kl_after));
      for (const MetricsRow& m : r.metrics) BOOST_TEST(std::isnan(m.kl));
    }
    return std::make_pair(evaluate_kl_to_base(*model, probe), r.last_train_loss);
  };
  const auto [free_kl, free_loss] = train(0.0);
  const auto [held_kl, held_loss] = train(2.0);
  BOOST_TEST_MESSAGE("KL on stories after 25 steps: lambda 0 " << free_kl << ", lambda 2 " << held_kl);
  BOOST_TEST(free_kl > 0.01);
  BOOST_TEST(held_kl < 0.5 * free_kl);
}

// The KL batches come from a generator of their own, checkpointed with the
// others: 2 + 2 steps write the same adapter and metrics.csv bytes as 4; with
// gradient accumulation and dropout (whose masks the KL passes do not touch).
// A checkpoint of a run with another KL weight, or none, is refused.
BOOST_AUTO_TEST_CASE(resume_with_kl_continues_bit_for_bit) {
  TempDir tmp;
  auto run = [&](const std::string& out, const std::string& resume_from, double weight) {
    auto model = tiny();
    lora::LoraConfig cfg = adapter(false, false);
    cfg.target_modules = {"q_proj", "v_proj"};
    cfg.lora_dropout = 0.2;
    lora::apply_lora(*model, cfg);
    optim::AdamW opt(trainable(*model), 1e-2, 0.0);
    TrainConfig c = resumable_config(out);
    const Trainer::Output o = adapter_output(*model);
    Trainer t(*model, opt, {&recipes(), data::Split::train}, {&recipes(), data::Split::validation}, c, o,
              {{"method", "lora"}});
    if (weight > 0) t.add_kl_to_base({&stories(), data::Split::train}, weight);
    if (!resume_from.empty()) t.resume(resume_from);
    const TrainResult r = t.fit();
    BOOST_TEST(r.steps_done == 4);
    lora::save_adapter(*model, out + "/final", "default", true);
    return r;
  };
  run(tmp.file("a"), "", 0.5);
  run(tmp.file("b"), tmp.file("a") + "/checkpoint-2", 0.5);
  BOOST_TEST(read_bytes(tmp.file("a") + "/final/adapter_model.safetensors") ==
             read_bytes(tmp.file("b") + "/final/adapter_model.safetensors"));
  // metrics.csv: equal but for tokens_per_s (column 5, a timing).
  auto without_speed = [](const std::string& csv) {
    std::string out, line;
    std::istringstream in(csv);
    while (std::getline(in, line)) {
      std::vector<std::string> cells;
      std::stringstream ls(line);
      std::string cell;
      while (std::getline(ls, cell, ',')) cells.push_back(cell);
      if (cells.size() > 4) cells[4].clear();
      for (const std::string& c : cells) out += c + ",";
      out += "\n";
    }
    return out;
  };
  const std::string csv_a = read_bytes(tmp.file("a") + "/metrics.csv");
  BOOST_TEST(without_speed(csv_a) == without_speed(read_bytes(tmp.file("b") + "/metrics.csv")));
  BOOST_TEST(csv_a.rfind("step,train_loss,val_loss,lr,tokens_per_s,grad_norm,old_loss,kl\n", 0) == 0u);
  const std::string state = read_bytes(tmp.file("a") + "/checkpoint-2/trainer_state.json");
  BOOST_TEST(state.find("\"kl\"") != std::string::npos);
  BOOST_TEST(state.find("\"kl_weight\": 0.5") != std::string::npos);

  check_throws<IOError>([&] { run(tmp.file("c"), tmp.file("a") + "/checkpoint-2", 0.25); },
                        {"kl_weight: checkpoint 0.5, now 0.25"});
  check_throws<IOError>([&] { run(tmp.file("d"), tmp.file("a") + "/checkpoint-2", 0.0); },
                        {"kl_weight: checkpoint 0.5, now null"});
  run(tmp.file("e"), "", 0.0);
  check_throws<IOError>([&] { run(tmp.file("f"), tmp.file("e") + "/checkpoint-2", 0.5); },
                        {"kl_weight: checkpoint null, now 0.5"});
}

// metrics.csv of a checkpoint written before the kl column (7 columns) and
// before old_loss (6) still resumes; its rows come back with kl empty.
BOOST_AUTO_TEST_CASE(old_metrics_files_still_resume) {
  TempDir tmp;
  auto run = [&](const std::string& out, const std::string& resume_from) {
    auto model = tiny();
    lora::apply_lora(*model, adapter(false, false));
    optim::AdamW opt(trainable(*model), 1e-2, 0.0);
    TrainConfig c = small_config();
    c.save_every = 2;
    c.out_dir = out;
    const Trainer::Output o = adapter_output(*model);
    Trainer t(*model, opt, {&recipes(), data::Split::train}, {&recipes(), data::Split::validation}, c, o, {});
    if (!resume_from.empty()) t.resume(resume_from);
    return t.fit();
  };
  const TrainResult straight = run(tmp.file("a"), "");
  const std::string metrics = tmp.file("a") + "/checkpoint-2/metrics.csv";
  const std::string now = read_bytes(metrics);
  for (int columns : {7, 6}) {
    BOOST_TEST_CONTEXT(columns << " columns") {
      std::string old, line;
      std::istringstream in(now);
      while (std::getline(in, line)) {
        size_t cut = line.size();
        for (int drop = 8 - columns; drop > 0; --drop) cut = line.rfind(',', cut - 1);
        old += line.substr(0, cut) + "\n";
      }
      write_bytes(metrics, old);
      const TrainResult resumed = run(tmp.file(std::to_string(columns)), tmp.file("a") + "/checkpoint-2");
      BOOST_REQUIRE(resumed.metrics.size() == straight.metrics.size());
      for (size_t i = 0; i < straight.metrics.size(); ++i) {
        BOOST_TEST(resumed.metrics[i].step == straight.metrics[i].step);
        BOOST_TEST(std::isnan(resumed.metrics[i].kl));
        const double a = resumed.metrics[i].train_loss, b = straight.metrics[i].train_loss;
        BOOST_TEST((a == b || (std::isnan(a) && std::isnan(b))));
      }
      BOOST_TEST(resumed.final_val_loss == straight.final_val_loss);
    }
  }
}
