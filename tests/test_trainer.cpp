// train::Trainer in-process: measured memory by kind, configuration errors,
// a resume that continues bit for bit, also on packed instruction data and
// with general text mixed in, and the old-domain loss tracked next to validation (the CLI tests cover the files).
#define BOOST_TEST_MODULE trainer
#include <boost/test/unit_test.hpp>

#include "loragrad/data/corpus.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/data/mixed_source.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/train/trainer.hpp"
#include "test_util.hpp"
#include "train_fixtures.hpp"

using namespace loragrad;
using namespace loragrad::train;
using namespace fixtures;

// Item 8 of issue 9: bytes by kind, measured. For an adapter, the gradients
// and AdamW's moments are those of the adapter only, and the frozen base
// (4-bit under QLoRA) dominates the weights.
BOOST_AUTO_TEST_CASE(memory_is_measured_by_kind) {
  for (bool qlora : {false, true}) {
    auto model = tiny_gpt();
    lora::LoraConfig cfg;
    cfg.target_modules = {"all-linear"};
    cfg.qlora = qlora;
    lora::apply_lora(*model, cfg);
    size_t adapter = 0, frozen = 0;
    for (const Tensor& p : model->parameters())
      (p.requires_grad() ? adapter : frozen) += memory::storage_bytes(p.nbytes());
    optim::AdamW opt(trainable(*model), 1e-2, 0.0);
    Trainer t(*model, opt, {&recipes(), data::Split::train}, {&recipes(), data::Split::validation}, small_config(),
              {}, {});
    const MemoryUse m = t.fit().memory;
    BOOST_TEST_CONTEXT("qlora " << qlora) {
      BOOST_TEST(m.trainable_weights == adapter);
      BOOST_TEST(m.gradients == adapter);
      BOOST_TEST(m.optimizer_state == opt.state_bytes());
      BOOST_TEST(m.optimizer_state >= 2 * adapter - 2 * 64 * trainable(*model).size());
      if (qlora) BOOST_TEST(m.frozen_weights > frozen);  // + the NF4 codes and scales, not tensor storage
      else BOOST_TEST(m.frozen_weights == frozen);
      BOOST_TEST(m.activations_peak > 0u);
      BOOST_TEST(m.peak_total >= m.trainable_weights + m.gradients);
      BOOST_TEST(!m.str().empty());
    }
    if (qlora) BOOST_TEST(m.frozen_weights < 4 * model->num_parameters());  // well below float32 of everything
  }
}

BOOST_AUTO_TEST_CASE(bad_configurations_are_refused) {
  auto model = tiny_gpt();
  optim::AdamW opt(model->parameters(), 1e-3, 0.0);
  const TextSource train{&recipes(), data::Split::train};
  auto with = [&](auto change, const std::vector<std::string>& words) {
    TrainConfig c = small_config();
    change(c);
    check_throws<ValueError>([&] { Trainer(*model, opt, train, {}, c, {}, {}); }, words);
  };
  with([](TrainConfig& c) { c.steps = 0; }, {"steps must be >= 1"});
  with([](TrainConfig& c) { c.grad_accum = 0; }, {"grad_accum"});
  with([](TrainConfig& c) { c.schedule = "step"; }, {"schedule must be cosine, linear or constant"});
  with([](TrainConfig& c) { c.warmup = 9; }, {"warmup 9 exceeds steps 4"});
  with([](TrainConfig& c) { c.save_every = 2; }, {"save_every needs an out_dir"});
  with([](TrainConfig& c) { c.seq = 17; }, {"seq 17 exceeds the model's block size 16"});
  with([](TrainConfig& c) { c.clip_norm = -1; }, {"clip_norm"});
}

// A run that saves at step 2 and one resumed from there end with the same bits.
BOOST_AUTO_TEST_CASE(resume_continues_bit_for_bit) {
  TempDir tmp;
  auto run = [&](const std::string& out, const std::string& resume_from) {
    auto model = tiny_gpt();
    lora::LoraConfig cfg;
    cfg.target_modules = {"q_proj", "v_proj"};
    cfg.lora_dropout = 0.2;
    lora::apply_lora(*model, cfg);
    optim::AdamW opt(trainable(*model), 1e-2, 0.0);
    TrainConfig c = small_config();
    c.save_every = 2;
    c.out_dir = out;
    const Trainer::Output o = adapter_output(*model);
    Trainer t(*model, opt, {&recipes(), data::Split::train}, {&recipes(), data::Split::validation}, c, o,
              {{"method", "lora"}});
    if (!resume_from.empty()) t.resume(resume_from);
    const TrainResult r = t.fit();
    BOOST_TEST(r.steps_done == 4);
    return lora::adapter_state_dict(*model);
  };
  const NamedTensors straight = run(tmp.file("a"), "");
  const NamedTensors resumed = run(tmp.file("b"), tmp.file("a") + "/checkpoint-2");
  BOOST_REQUIRE_EQUAL(straight.size(), resumed.size());
  for (size_t i = 0; i < straight.size(); ++i) BOOST_TEST(straight[i].second.to_vector() == resumed[i].second.to_vector());
}

// The same with instruction data: the packed batches come from the batch
// generator alone, whose offset the checkpoint holds.
BOOST_AUTO_TEST_CASE(resume_continues_bit_for_bit_on_instruction_data) {
  TempDir tmp;
  auto run = [&](const std::string& out, const std::string& resume_from, bool track_old) {
    auto model = tiny_gpt(64);
    lora::LoraConfig cfg;
    cfg.target_modules = {"q_proj", "v_proj"};
    cfg.lora_dropout = 0.1;
    lora::apply_lora(*model, cfg);
    optim::AdamW opt(trainable(*model), 1e-2, 0.0);
    TrainConfig c = resumable_config(out);  // micro-batches with different target counts
    c.seq = 64;
    const Trainer::Output o = adapter_output(*model);
    Trainer t(*model, opt, {&questions(), data::Split::train}, {&questions(), data::Split::validation}, c, o,
              {{"method", "lora"}});
    if (track_old) t.track_old_loss({&recipes(), data::Split::validation});
    if (!resume_from.empty()) t.resume(resume_from);
    const TrainResult r = t.fit();
    BOOST_TEST(r.steps_done == 4);
    BOOST_TEST(std::isfinite(r.final_val_loss));
    return std::make_pair(lora::adapter_state_dict(*model), r);
  };
  const auto [straight, rs] = run(tmp.file("a"), "", false);
  const auto [resumed, rr] = run(tmp.file("b"), tmp.file("a") + "/checkpoint-2", false);
  BOOST_REQUIRE_EQUAL(straight.size(), resumed.size());
  for (size_t i = 0; i < straight.size(); ++i) BOOST_TEST(straight[i].second.to_vector() == resumed[i].second.to_vector());
  BOOST_TEST(rs.final_val_loss == rr.final_val_loss);

  // Tracking the old domain measures without changing the training, and
  // fills old_loss at step 0 and at each validation step only.
  const auto [tracked, rt] = run(tmp.file("c"), "", true);
  for (size_t i = 0; i < straight.size(); ++i) BOOST_TEST(straight[i].second.to_vector() == tracked[i].second.to_vector());
  BOOST_TEST(std::isnan(rs.old_loss_before));
  BOOST_TEST(std::isfinite(rt.old_loss_before));
  BOOST_TEST(std::isfinite(rt.final_old_loss));
  std::vector<int64_t> old_steps;
  for (const MetricsRow& m : rt.metrics) {
    if (!std::isnan(m.old_loss)) old_steps.push_back(m.step);
    BOOST_TEST(std::isnan(m.old_loss) == std::isnan(m.val_loss));
  }
  BOOST_TEST(old_steps == (std::vector<int64_t>{0, 2, 4}));
  const std::string csv = read_bytes(tmp.file("c") + "/metrics.csv");
  BOOST_TEST(csv.rfind("step,train_loss,val_loss,lr,tokens_per_s,grad_norm,old_loss,kl\n", 0) == 0u);
  // A tracked run resumed keeps the step-0 old loss it started from.
  const auto [again, ra] = run(tmp.file("d"), tmp.file("c") + "/checkpoint-2", true);
  BOOST_TEST(ra.old_loss_before == rt.old_loss_before);
  BOOST_TEST(ra.final_old_loss == rt.final_old_loss);
}

// Data mixing: the mixture's position is the batch generator's offset, so a
// run resumed at step 2 draws the same mixed batches as one straight through
// (instruction data with general text, micro-batches of different target
// counts), and the validation loss is the primary's alone, as without mixing.
BOOST_AUTO_TEST_CASE(resume_continues_bit_for_bit_with_mixing) {
  TempDir tmp;
  auto run = [&](const std::string& out, const std::string& resume_from, double fraction) {
    auto model = tiny_gpt(64);
    lora::LoraConfig cfg;
    cfg.target_modules = {"q_proj", "v_proj"};
    lora::apply_lora(*model, cfg);
    optim::AdamW opt(trainable(*model), 1e-2, 0.0);
    TrainConfig c = resumable_config(out);
    c.seq = 64;
    c.batch = 3;
    const Trainer::Output o = adapter_output(*model);
    const data::MixedSource mixed(questions(), recipes(), fraction);
    Trainer t(*model, opt, {&mixed, data::Split::train}, {&questions(), data::Split::validation}, c, o,
              {{"method", "lora"}, {"mix", fraction}});
    if (!resume_from.empty()) t.resume(resume_from);
    const TrainResult r = t.fit();
    BOOST_TEST(r.steps_done == 4);
    return std::make_pair(lora::adapter_state_dict(*model), r);
  };
  const auto [straight, rs] = run(tmp.file("a"), "", 0.3);
  const auto [resumed, rr] = run(tmp.file("b"), tmp.file("a") + "/checkpoint-2", 0.3);
  BOOST_REQUIRE_EQUAL(straight.size(), resumed.size());
  for (size_t i = 0; i < straight.size(); ++i) BOOST_TEST(straight[i].second.to_vector() == resumed[i].second.to_vector());
  BOOST_TEST(rs.final_val_loss == rr.final_val_loss);
  BOOST_TEST(read_bytes(tmp.file("a") + "/metrics.csv").size() > 0u);
  // Another share trains on other batches, from the same step-0 validation loss.
  const auto [other, ro] = run(tmp.file("c"), "", 0.6);
  BOOST_TEST(ro.val_loss_before == rs.val_loss_before);
  bool differs = false;
  for (size_t i = 0; i < straight.size(); ++i) differs = differs || straight[i].second.to_vector() != other[i].second.to_vector();
  BOOST_TEST(differs);
  // and a checkpoint of one share does not resume the other.
  check_throws<IOError>([&] { run(tmp.file("d"), tmp.file("a") + "/checkpoint-2", 0.6); }, {"mix: checkpoint 0.3, now 0.6"});
}
