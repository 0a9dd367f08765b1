// Thread-count determinism: every kernel sums in an order fixed by the problem
// size alone, so 1, 2 and 3 threads give bit-identical results (forward,
// backward, optimizer steps). Each case runs one computation with 1 thread,
// then again with 2 and 3, and compares every output byte for byte. The sizes
// are chosen to cross the parallel thresholds of parallel.hpp and gemm.cpp.
#define BOOST_TEST_MODULE thread_determinism
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/train/step.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/optim/clip_grad.hpp"
#include "loragrad/thread_pool.hpp"

using namespace loragrad;

namespace {

// One named result of a computation, copied out (parameters change in place later).
struct Snapshot {
  std::string name;
  DType dtype;
  Shape shape;
  std::vector<unsigned char> bytes;
};
using Results = std::vector<Snapshot>;

void keep(Results& out, const std::string& name, const Tensor& t) {
  BOOST_REQUIRE_MESSAGE(t.defined(), name << " is undefined");
  const auto* p = static_cast<const unsigned char*>(t.raw_data());
  out.push_back({name, t.dtype(), t.shape(), std::vector<unsigned char>(p, p + t.nbytes())});
}

void keep_value(Results& out, const std::string& name, double v) {
  const auto* p = reinterpret_cast<const unsigned char*>(&v);
  out.push_back({name, DType::f64, {}, std::vector<unsigned char>(p, p + sizeof v)});
}

double max_abs_diff(const Snapshot& a, const Snapshot& b) {
  double m = 0;
  const size_t n = a.bytes.size() / dtype_size(a.dtype);
  for (size_t i = 0; i < n; ++i) {
    double x, y;
    if (a.dtype == DType::f32) {
      float fx, fy;
      std::memcpy(&fx, a.bytes.data() + i * 4, 4);
      std::memcpy(&fy, b.bytes.data() + i * 4, 4);
      x = fx, y = fy;
    } else if (a.dtype == DType::f64) {
      std::memcpy(&x, a.bytes.data() + i * 8, 8);
      std::memcpy(&y, b.bytes.data() + i * 8, 8);
    } else {
      return NAN;
    }
    m = std::max(m, std::fabs(x - y));
  }
  return m;
}

Results run_with_threads(int threads, const std::function<Results()>& f) {
  const int before = num_threads();
  set_num_threads(threads);
  Results r = f();
  set_num_threads(before);
  return r;
}

// f with 1 thread is the reference; other thread counts must match it bit for bit.
void check_thread_independent(const std::function<Results()>& f, const std::vector<int>& counts = {2, 3}) {
  const Results ref = run_with_threads(1, f);
  BOOST_REQUIRE(!ref.empty());
  for (int threads : counts) {
    const Results got = run_with_threads(threads, f);
    BOOST_REQUIRE_EQUAL(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      BOOST_REQUIRE(got[i].name == ref[i].name && got[i].shape == ref[i].shape);
      const bool same = got[i].bytes == ref[i].bytes;
      BOOST_TEST(same, ref[i].name << " " << shape_str(ref[i].shape) << ": " << threads
                                   << " threads differ from 1 thread by up to " << max_abs_diff(ref[i], got[i]));
    }
  }
}

Tensor randn_leaf(const Shape& s, uint64_t seed, DType dt = DType::f32) {
  Generator gen(seed);
  Tensor t = randn(s, gen, dt);
  t.requires_grad_(true);
  return t;
}

// sum(y * w) for a fixed random w: a backward seed that is not all ones.
Tensor weighted(const Tensor& y, uint64_t seed) {
  Generator gen(seed);
  return sum(mul(y, randn(y.shape(), gen, y.dtype())));
}

}  // namespace

// ---------------------------------------------------------------- kernels

BOOST_AUTO_TEST_CASE(gemm_float_and_double) {
  // (M, N, K): many rows; few rows (columns split too); K over KC (several
  // depth blocks); N over NC (several column panels); ragged edges everywhere.
  const std::vector<std::array<int64_t, 3>> shapes = {
      {512, 384, 128}, {8, 1000, 300}, {100, 200, 1100}, {30, 4200, 40}, {257, 129, 513},
      // the narrow path (N or M <= 16, gemm_narrow.hpp): rank-r products
      {2048, 16, 256}, {1000, 8, 300}, {16, 256, 2048}, {300, 5, 1030}};
  check_thread_independent([&] {
    Results out;
    for (const auto& [M, N, K] : shapes)
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
          Generator gen(M * 7 + N * 3 + K);
          Tensor A = randn({M * K}, gen), B = randn({K * N}, gen), C = randn({M * N}, gen);
          const std::string name = "gemm " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) +
                                   (ta ? " A^T" : "") + (tb ? " B^T" : "");
          kernels::gemm(ta, tb, M, N, K, 0.5f, A.data<float>(), ta ? M : K, B.data<float>(), tb ? K : N, 1.0f,
                        C.data<float>(), N);
          keep(out, name, C);
          Tensor Ad = cast(A, DType::f64), Bd = cast(B, DType::f64), Cd = zeros({M * N}, DType::f64);
          kernels::gemm(ta, tb, M, N, K, 1.0, Ad.data<double>(), ta ? M : K, Bd.data<double>(), tb ? K : N, 0.0,
                        Cd.data<double>(), N);
          keep(out, name + " f64", Cd);
        }
    return out;
  });
}

BOOST_AUTO_TEST_CASE(linear_and_matmul_backward) {
  check_thread_independent([] {
    Results out;
    Tensor x = randn_leaf({8, 64, 128}, 1), w = randn_leaf({384, 128}, 2), b = randn_leaf({384}, 3);
    Tensor y = linear(x, w, b);
    weighted(y, 4).backward();
    keep(out, "linear y", y);
    keep(out, "linear dx", x.grad());
    keep(out, "linear dW", w.grad());
    keep(out, "linear db", b.grad());
    // Batched products with a broadcast operand: its gradient is a sum over the batch.
    Tensor a = randn_leaf({4, 96, 80}, 5), c = randn_leaf({80, 112}, 6), d = randn_leaf({1, 112, 72}, 7);
    Tensor z = matmul(matmul(a, c), d);
    weighted(z, 8).backward();
    keep(out, "matmul z", z);
    keep(out, "matmul da", a.grad());
    keep(out, "matmul dc", c.grad());
    keep(out, "matmul dd", d.grad());
    return out;
  });
}

BOOST_AUTO_TEST_CASE(layer_norm_backward) {
  check_thread_independent([] {
    Results out;
    for (int64_t C : {128, 200, 1000}) {
      const int64_t N = 40000 / C * 4;
      Tensor x = randn_leaf({N, C}, 10 + C), w = randn_leaf({C}, 11), b = randn_leaf({C}, 12);
      Tensor y = layer_norm(x, w, b);
      weighted(y, 13).backward();
      const std::string n = "layer_norm C=" + std::to_string(C);
      keep(out, n + " y", y);
      keep(out, n + " dx", x.grad());
      keep(out, n + " dgamma", w.grad());
      keep(out, n + " dbeta", b.grad());
    }
    // Only dgamma / dbeta wanted (a frozen input), and float64.
    Generator gen(14);
    Tensor x = randn({512, 128}, gen);
    Tensor w = randn_leaf({128}, 15), b = randn_leaf({128}, 16);
    weighted(layer_norm(x, w, b), 17).backward();
    keep(out, "layer_norm frozen x dgamma", w.grad());
    keep(out, "layer_norm frozen x dbeta", b.grad());
    Tensor xd = randn_leaf({300, 128}, 18, DType::f64), wd = randn_leaf({128}, 19, DType::f64);
    weighted(layer_norm(xd, wd, Tensor()), 20).backward();
    keep(out, "layer_norm f64 dx", xd.grad());
    keep(out, "layer_norm f64 dgamma", wd.grad());
    return out;
  });
}

BOOST_AUTO_TEST_CASE(reductions) {
  check_thread_independent([] {
    Results out;
    Tensor x = randn_leaf({16, 96, 130}, 21);
    keep(out, "sum all", sum(x));
    keep(out, "mean all", mean(x));
    keep(out, "sum dim 0", sum(x, {0}));
    keep(out, "sum dims 0,1", sum(x, {0, 1}));
    keep(out, "sum dims 0,2", sum(x, {0, 2}));
    keep(out, "mean dim 1", mean(x, {1}));
    keep(out, "sum dim 2", sum(x, {2}));
    keep(out, "max dim 1", max(x, 1));
    Tensor rows = randn_leaf({8, 70000}, 22);  // few long rows
    keep(out, "sum long rows", sum(rows, {1}));
    keep(out, "sum long column blocks", sum(reshape(rows, {70, 8000}), {0}));
    Tensor loss = add(add(sum(mean(x, {0, 2})), sum(max(x, 2))), sum(rows));
    loss.backward();
    keep(out, "reduction dx", x.grad());
    keep(out, "reduction drows", rows.grad());
    return out;
  });
}

BOOST_AUTO_TEST_CASE(softmax_cross_entropy_attention) {
  check_thread_independent([] {
    Results out;
    Tensor s = randn_leaf({512, 256}, 30);
    Tensor y = softmax(s, -1), ly = log_softmax(s, 0);
    weighted(add(y, ly), 31).backward();
    keep(out, "softmax y", y);
    keep(out, "log_softmax y", ly);
    keep(out, "softmax ds", s.grad());

    Tensor logits = randn_leaf({8, 64, 256}, 32);
    Generator gen(33);
    Tensor targets = randint({8, 64}, 0, 256, gen);
    Tensor ce = cross_entropy(logits, targets);
    ce.backward();
    keep(out, "cross_entropy", ce);
    keep(out, "cross_entropy dlogits", logits.grad());

    Tensor q = randn_leaf({4, 64, 128}, 34), k = randn_leaf({4, 64, 128}, 35), v = randn_leaf({4, 64, 128}, 36);
    Tensor o = causal_attention(q, k, v, 4);
    weighted(o, 37).backward();
    keep(out, "attention out", o);
    keep(out, "attention dq", q.grad());
    keep(out, "attention dk", k.grad());
    keep(out, "attention dv", v.grad());
    // One (batch, head) pair: gemm runs over the threads inside the head.
    Tensor q1 = randn_leaf({1, 256, 64}, 38), k1 = randn_leaf({1, 256, 64}, 39), v1 = randn_leaf({1, 256, 64}, 40);
    Tensor o1 = causal_attention(q1, k1, v1, 1);
    weighted(o1, 41).backward();
    keep(out, "attention 1 pair out", o1);
    keep(out, "attention 1 pair dq", q1.grad());
    keep(out, "attention 1 pair dk", k1.grad());
    keep(out, "attention 1 pair dv", v1.grad());
    return out;
  });
}

BOOST_AUTO_TEST_CASE(embedding_index_and_elementwise) {
  check_thread_independent([] {
    Results out;
    // Repeated indices: the scatter-add backward sums several rows into one.
    Tensor table = randn_leaf({256, 128}, 50);
    Generator gen(51);
    Tensor idx = randint({8, 64}, 0, 40, gen);
    Tensor e = embedding(table, idx);
    Tensor sel = index_select(table, 1, randint({300}, 0, 128, gen));
    weighted(e, 52).backward();
    weighted(sel, 53).backward();
    keep(out, "embedding dW", table.grad());

    // Broadcasting binary ops reduce their gradient to each operand's shape.
    Tensor a = randn_leaf({16, 64, 128}, 54), b = randn_leaf({128}, 55), c = randn_leaf({16, 1, 128}, 56);
    Tensor d = randn_leaf({1}, 57);
    Tensor z = div(mul(add(a, b), sub(c, d)), exp(neg(c)) + 2.0);
    Tensor u = add(add(gelu(z), tanh(z)), add(sigmoid(z), pow(relu(z), 1.5)));
    weighted(add(u, silu(z)), 58).backward();
    keep(out, "elementwise u", u);
    keep(out, "elementwise da", a.grad());
    keep(out, "elementwise db", b.grad());
    keep(out, "elementwise dc", c.grad());
    keep(out, "elementwise dd", d.grad());
    return out;
  });
}

BOOST_AUTO_TEST_CASE(grad_norm_and_clipping) {
  // Gradients of very different magnitudes, so that the double sum of squares
  // rounds differently when its terms are grouped differently. Drawn once:
  // each run clips copies.
  std::vector<std::vector<Tensor>> sets;
  for (uint64_t seed = 0; seed < 8; ++seed) {
    std::vector<Tensor> grads;
    for (int64_t n : {100, 70000, 300000, 65536, 1 << 20}) {
      Generator gen(61 + n + seed);
      grads.push_back(mul(randn({n}, gen), exp(mul(randn({n}, gen), scalar(4.0)))));
    }
    sets.push_back(grads);
  }
  check_thread_independent([&] {
    Results out;
    for (size_t k = 0; k < sets.size(); ++k) {
      std::vector<Tensor> params;
      for (const Tensor& g : sets[k]) {
        Tensor p = zeros(g.shape()).requires_grad_(true);
        p.set_grad(g.clone());
        params.push_back(p);
      }
      const std::string s = " set " + std::to_string(k);
      keep_value(out, "grad_norm" + s, optim::grad_norm(params));
      keep_value(out, "clip_grad_norm" + s, optim::clip_grad_norm(params, 1.0));
      for (size_t i = 0; i < params.size(); ++i) keep(out, "clipped grad " + std::to_string(i) + s, params[i].grad());
    }
    return out;
  });
}

// ---------------------------------------------------------------- training

namespace {

nn::TinyGPTConfig gpt_config() {
  nn::TinyGPTConfig c;
  c.block_size = 64;
  c.d_model = 128;
  c.n_layer = 2;
  c.n_head = 4;
  c.seed = 5;
  return c;
}

data::Batch random_batch(int64_t B, int64_t T, uint64_t seed) {
  Generator gen(seed);
  Tensor x = randint({B, T + 1}, 0, 256, gen);
  return {narrow(x, 1, 0, T), narrow(x, 1, 1, T)};
}

// A few clipped AdamW steps of `model` (its trainable parameters): the loss,
// every trainable gradient of each step, and every parameter at the end.
Results train_and_snapshot(nn::TinyGPT& model, int steps) {
  Results out;
  std::vector<Tensor> trainable;
  auto named = model.named_parameters();
  for (const auto& [name, p] : named)
    if (p.requires_grad()) trainable.push_back(p);
  optim::AdamW opt(trainable, 1e-3);
  for (int s = 0; s < steps; ++s) {
    const train::StepResult r = train::train_step(model, opt, {random_batch(8, 64, 100 + s)}, 1.0);
    BOOST_REQUIRE(r.applied);
    keep_value(out, "loss step " + std::to_string(s), r.loss);
    keep_value(out, "grad norm step " + std::to_string(s), r.grad_norm);
    for (const auto& [name, p] : named)
      if (p.requires_grad()) keep(out, "grad " + name + " step " + std::to_string(s), p.grad());
  }
  for (const auto& [name, p] : named) keep(out, "param " + name, p);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(tinygpt_full_training) {
  check_thread_independent([] {
    nn::TinyGPT model(gpt_config());
    model.train();
    return train_and_snapshot(model, 3);
  });
}

BOOST_AUTO_TEST_CASE(tinygpt_lora_family_training) {
  for (const std::string method : {"lora", "dora", "qlora"}) {
    BOOST_TEST_CONTEXT(method) {
      check_thread_independent([&] {
        nn::TinyGPT model(gpt_config());
        lora::LoraConfig cfg;
        cfg.r = 8;
        cfg.lora_alpha = 16;
        cfg.target_modules = {"all-linear"};
        cfg.use_dora = method == "dora";
        cfg.qlora = method == "qlora";
        cfg.seed = 9;
        lora::apply_lora(model, cfg);
        model.train();
        return train_and_snapshot(model, 2);
      }, {2});  // (3 threads: the full-training case covers odd team sizes)
    }
  }
}
