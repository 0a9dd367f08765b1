#pragma once
// The whole public API of loragrad in one include:
//
//   #include <loragrad/loragrad.hpp>
//
// Layers, lowest first (each folder of the source tree is a library of its own):
//   core   tensors, autograd, ops, gradient checks, safetensors, NF4, the xtensor bridge
//   nn     modules: Linear, Embedding, LayerNorm, attention, TinyGPT   (loragrad::nn)
//   optim  AdamW, SGD, learning-rate schedules, gradient clipping      (loragrad::optim)
//   data   byte-level datasets, instruction data, the built-in corpora (loragrad::data)
//   lora   LoRA, rsLoRA, LoRA+, DoRA, NF4 (QLoRA), PEFT adapter files   (loragrad::lora)
//   train  the training loop: Trainer, checkpoints, validation         (loragrad::train)
// Including one header of a layer instead is fine, and compiles faster.

// core
#include "loragrad/autograd.hpp"
#include "loragrad/error.hpp"
#include "loragrad/files.hpp"
#include "loragrad/format.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"
#include "loragrad/quant/nf4.hpp"
#include "loragrad/safetensors.hpp"
#include "loragrad/tensor.hpp"
#include "loragrad/thread_pool.hpp"
#include "loragrad/version.hpp"
#include "loragrad/xtensor.hpp"

// nn
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/linear_base.hpp"
#include "loragrad/nn/module.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/nn/transformer.hpp"

// optim
#include "loragrad/optim/optim.hpp"

// data
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/data/jsonl.hpp"
#include "loragrad/data/mixed_source.hpp"
#include "loragrad/data/source.hpp"

// lora
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/linalg.hpp"
#include "loragrad/lora/lora_config.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/lora/loraplus.hpp"
#include "loragrad/lora/nf4_linear.hpp"
#include "loragrad/lora/path_regex.hpp"
#include "loragrad/lora/peft_io.hpp"

// train
#include "loragrad/train/kl.hpp"
#include "loragrad/train/progress.hpp"
#include "loragrad/train/step.hpp"
#include "loragrad/train/trainer.hpp"
