#include "loragrad/app/workload.hpp"

#include <algorithm>

#include "loragrad/app/args.hpp"

namespace loragrad::app {

Method parse_method(const std::string& name, const std::string& flag) {
  if (name == "full") return Method::full;
  if (name == "lora") return Method::lora;
  if (name == "dora") return Method::dora;
  if (name == "qlora") return Method::qlora;
  throw UsageError(flag + " must be lora, dora, qlora or full, got '" + name + "'");
}

const char* method_name(Method m) {
  switch (m) {
    case Method::full: return "full";
    case Method::lora: return "lora";
    case Method::dora: return "dora";
    case Method::qlora: return "qlora";
  }
  return "?";
}

const std::vector<std::string>& adaptable_linears() {
  static const std::vector<std::string> names = {"q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"};
  return names;
}

bool Workload::is_target(const std::string& linear) const {
  return std::find(targets.begin(), targets.end(), linear) != targets.end();
}

Workload workload_preset(const std::string& name, const std::string& flag) {
  Workload w;
  if (name == "S") {
    w.name = "S";  // the defaults above are S
  } else if (name == "M") {
    w.name = "M";
    w.d_model = 256;
    w.n_layer = 6;
    w.n_head = 8;
    w.seq = 256;
    w.batch = 8;
    w.r = 16;
    w.alpha = 32;
    w.targets = adaptable_linears();
  } else {
    throw UsageError(flag + " must be S or M, got '" + name + "'");
  }
  return w;
}

// The spec's formula, with N = batch x seq tokens, T = seq, d = d_model:
//
//   forward, per layer: 8 N d^2 (q, k, v, o: 4 linears of 2 N d d) + 16 N d^2
//   (fc_in and fc_out: 2 x 2 N d 4d) + 4 N T d (q k^T and probabilities x v:
//   2 N T d each); the head 2 N d V; LoRA 2 N r (in + out) per target (x A^T,
//   then (x A^T) B^T).
//
//   backward: a matmul y = x W^T has two gradients, each as costly as the
//   forward: dW = dy^T x (needed when W is trained) and dx = dy W (needed when
//   anything before it is trained). Hence "2x forward for matmuls whose weight
//   is trained, 1x (input gradient only) for frozen linears", and 2x for the
//   attention core (dq, dk from q k^T; dP, dv from P v).
//
// The one refinement the spec's numbers carry: an input gradient is only
// computed when the input depends on a trained parameter (autograd skips it
// otherwise, in loragrad and PyTorch alike). With adapters and a frozen
// embedding, the first block's q, k, v and their LoRA A see an input that
// needs no gradient, so they cost 1x less. That is how the spec gets 8.51
// GFLOP for S (8.72 without the refinement) and 53.4 for M (54.3); the walk
// below follows "needs a gradient" through the network in forward order.
double step_flops(const Workload& w, Method m) {
  const bool full = m == Method::full;
  const double N = static_cast<double>(w.tokens()), T = static_cast<double>(w.seq);
  const double d = static_cast<double>(w.d_model), ff = static_cast<double>(w.d_ff());
  const double V = static_cast<double>(w.vocab), r = static_cast<double>(w.r);
  double flops = 0;

  // One linear layer (in -> out) whose input needs a gradient or not; returns
  // whether its output does.
  auto linear = [&](const std::string& name, double in, double out, bool input_grad) {
    const double mm = 2 * N * in * out;
    flops += mm + (full ? mm : 0) + (input_grad ? mm : 0);
    const bool adapted = !full && name != "lm_head" && w.is_target(name);
    if (adapted) {
      const double a = 2 * N * in * r, b = 2 * N * r * out;
      flops += a + a + (input_grad ? a : 0);  // x A^T: forward, dA, dx
      flops += 3 * b;                         // (x A^T) B^T: forward, dB, d(x A^T), which feeds dA
    }
    return full || adapted || input_grad;
  };

  bool x_grad = full;  // the residual stream needs a gradient: the embeddings are trained
  for (int64_t layer = 0; layer < w.n_layer; ++layer) {
    const bool h = x_grad || full;  // ln1's output (its gain and bias are trained in full)
    const bool q = linear("q_proj", d, d, h), k = linear("k_proj", d, d, h), v = linear("v_proj", d, d, h);
    const double core = 2 * N * T * d;  // each of q k^T and P v
    flops += 2 * core;
    flops += (q || k ? core : 0) + (q ? core : 0) + (k ? core : 0);  // dP = dy v^T, dq, dk
    flops += v ? core : 0;                                           // dv = P^T dy
    const bool attn = linear("o_proj", d, d, q || k || v);
    x_grad = x_grad || attn;
    const bool h2 = x_grad || full;
    const bool up = linear("fc_in", d, ff, h2);
    const bool down = linear("fc_out", ff, d, up);
    x_grad = x_grad || down;
  }
  linear("lm_head", d, V, x_grad || full);
  return flops;
}

}  // namespace loragrad::app
