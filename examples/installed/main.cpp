// LoRA on one Linear layer with the installed library: a few AdamW steps, then
// a float64 gradient check of the LoRA formula y = x W0^T + s (x A^T) B^T.
#include <cstdio>
#include <loragrad/loragrad.hpp>

using namespace loragrad;

int main() {
  Generator gen(0);
  auto base = std::make_shared<nn::Linear>(16, 8, /*bias=*/true, gen);  // W0 (8, 16), b (8)
  lora::LoraOptions opts;
  opts.r = 4, opts.alpha = 8;                                            // s = alpha / r = 2
  auto layer = std::make_shared<lora::LoraLinear>(base, "default", opts);  // freezes W0 and b

  Tensor x = randn({32, 16}, gen), target = randn({32, 8}, gen);  // (N, in), (N, out)
  std::vector<Tensor> trainable;                                  // A (4, 16), B (8, 4)
  for (const Tensor& p : layer->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  optim::AdamW opt(trainable, /*lr=*/1e-2);
  for (int step = 1; step <= 20; ++step) {
    Tensor loss = mean(pow(layer->forward(x) - target, 2));
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step % 5 == 0) std::printf("step %2d  loss %.4f\n", step, loss.item());
  }

  auto lora_y = [](const std::vector<Tensor>& t) {  // t = {x, W0, A, B}
    return matmul_nt(t[0], t[1]) + 2.0 * matmul_nt(matmul_nt(t[0], t[2]), t[3]);
  };
  std::vector<Tensor> in = {randn({3, 16}, gen, DType::f64), randn({8, 16}, gen, DType::f64),
                            randn({4, 16}, gen, DType::f64), randn({8, 4}, gen, DType::f64)};
  for (Tensor& t : in) t.requires_grad_();
  GradcheckResult check = gradcheck(lora_y, in);
  std::printf("gradcheck: %s\n", check.ok ? "ok" : check.report.c_str());
  return check.ok ? 0 : 1;
}
