// Writes the checkpoint that the PyTorch conformance fixtures are made from
// (see make_tinygpt_fixtures.py): a seeded TinyGPT (V=256, T=16, d=32, L=2,
// H=4, d_ff=128) whose parameters are then spread away from the spec's tiny
// initialisation, so that attention is far from uniform and every nonlinearity
// matters in the comparison.
//
//   build/tests/make_tinygpt_checkpoint tests/reference/fixtures/tinygpt_small.safetensors
#include <cmath>
#include <iostream>

#include "loragrad/autograd.hpp"
#include "loragrad/nn/tiny_gpt.hpp"

using namespace loragrad;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " OUT.safetensors\n";
    return 2;
  }
  nn::TinyGPTConfig c;
  c.vocab_size = 256;
  c.block_size = 16;
  c.d_model = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.d_ff = 128;
  c.seed = 2024;
  nn::TinyGPT model(c);
  Generator gen(7);
  NoGradGuard no_grad;
  for (auto& [name, p] : model.named_parameters()) {
    const bool vector = p.dim() == 1;
    const bool embedding = name.find("_emb.") != std::string::npos;
    // LayerNorm weights around 1, biases around 0, matrices with a std near 1/sqrt(fan_in)
    const double stddev = vector ? 0.1 : embedding ? 0.5 : 1.0 / std::sqrt(static_cast<double>(p.size(1)));
    p.add_(normal(p.shape(), 0.0, stddev, gen, p.dtype()));
  }
  model.save(argv[1]);
  std::cout << "wrote " << argv[1] << " (" << model.num_parameters() << " parameters)\n";
  return 0;
}
