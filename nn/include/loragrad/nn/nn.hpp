#pragma once
// Everything in loragrad::nn: the Module tree, the layers, the Tiny GPT.
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/module.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/nn/transformer.hpp"
