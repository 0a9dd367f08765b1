#pragma once
// What the training tests share: a tiny TinyGPT, the built-in texts they
// train on (made once per test program), the trainable parameters of a model
// and a short TrainConfig.
#include <memory>
#include <string>
#include <vector>

#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/train/trainer.hpp"

namespace fixtures {

// 2 layers, 2 heads, d_model 32 unless said; block 16 (recipe-qa needs 64:
// the task's longest example is 65 bytes).
inline std::shared_ptr<loragrad::nn::TinyGPT> tiny_gpt(int64_t block = 16, int64_t d_model = 32,
                                                       loragrad::DType dtype = loragrad::DType::f32) {
  loragrad::nn::TinyGPTConfig c;
  c.block_size = block;
  c.d_model = d_model;
  c.n_layer = 2;
  c.n_head = 2;
  c.seed = 4;
  c.dtype = dtype;
  return std::make_shared<loragrad::nn::TinyGPT>(c);
}

// 30 kB of a built-in domain (seed 3), 10% held out.
inline const loragrad::data::ByteDataset& recipes() {
  static const loragrad::data::ByteDataset data(
      loragrad::data::builtin_corpus(loragrad::data::Domain::recipes, 30000, 3), 0.1);
  return data;
}
inline const loragrad::data::ByteDataset& stories() {
  static const loragrad::data::ByteDataset data(
      loragrad::data::builtin_corpus(loragrad::data::Domain::stories, 30000, 3), 0.1);
  return data;
}
// 300 recipe-qa examples (seed 3), 10% held out.
inline const loragrad::data::InstructionDataset& questions() {
  static const loragrad::data::InstructionDataset data(loragrad::data::recipe_questions(300, 3), 0.1);
  return data;
}

inline std::vector<loragrad::Tensor> trainable(const loragrad::nn::Module& m) {
  std::vector<loragrad::Tensor> ps;
  for (const loragrad::Tensor& p : m.parameters())
    if (p.requires_grad()) ps.push_back(p);
  return ps;
}

// 4 steps of 2 x 16 bytes, no progress bar.
inline loragrad::train::TrainConfig small_config() {
  loragrad::train::TrainConfig c;
  c.steps = 4;
  c.batch = 2;
  c.seq = 16;
  c.quiet = true;
  return c;
}

// small_config() for the resume tests: accumulation 2 (micro-batches of
// different target counts with instruction data), a validation and a
// checkpoint every 2 steps, into out.
inline loragrad::train::TrainConfig resumable_config(const std::string& out) {
  loragrad::train::TrainConfig c = small_config();
  c.grad_accum = 2;
  c.eval_every = 2;
  c.save_every = 2;
  c.out_dir = out;
  return c;
}

// The Trainer's checkpoint part of an adapter run: the adapter "default" in PEFT's files.
inline loragrad::train::Trainer::Output adapter_output(loragrad::nn::TinyGPT& model) {
  return {[&model](const std::string& dir) { loragrad::lora::save_adapter(model, dir, "default", true); },
          [&model](const std::string& dir) { loragrad::lora::load_adapter_weights(model, dir); }};
}

}  // namespace fixtures
