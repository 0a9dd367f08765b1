// Supervised fine-tuning with a model: masked targets cost exactly nothing
// (checked against a manual computation), packed rows compute what their
// examples give alone (causal_attention's starts, TinyGPT's positions), and
// the step and the evaluation weigh micro-batches by their target counts.
#define BOOST_TEST_MODULE sft
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "loragrad/autograd.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/optim/sgd.hpp"
#include "loragrad/train/step.hpp"
#include "test_util.hpp"

using namespace loragrad;
using data::Batch;
using data::Example;

namespace {

constexpr int64_t M = data::kIgnoreIndex;

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  BOOST_REQUIRE_EQUAL(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

std::shared_ptr<nn::TinyGPT> f64_model(int64_t block = 32, uint64_t seed = 7) {
  nn::TinyGPTConfig c;
  c.block_size = block;
  c.d_model = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.seed = seed;
  c.dtype = DType::f64;
  auto m = std::make_shared<nn::TinyGPT>(c);
  m->eval();
  return m;
}

// A few examples of different lengths (several fit one row of 32 positions).
std::vector<Example> some_examples() {
  return {{"Q: hi?\nA: ", "hello.\n"},
          {"ab", "cdef"},
          {"Q: Do you bake it?\nA: ", "Yes.\n"},
          {"", "xyz"},
          {"prompt only, nearly", "!"},
          {"Q: 1 tsp salt. Salt?\nA: ", "1 tsp.\n"}};
}

// One row holding only `e`, no padding, no starts: the example on its own.
Batch alone(const Example& e) {
  const int64_t n = data::packed_length(e, 1 << 20);
  data::Packer p(1, n);
  BOOST_REQUIRE(p.add(e));
  Batch b = p.finish();
  b.starts = Tensor();  // one example from position 0: plain causal attention is the same mask
  return b;
}

// The examples packed in order into at most `rows` rows of seq.
Batch pack_rows(const std::vector<Example>& ex, int64_t rows, int64_t seq) {
  data::Packer p(rows, seq);
  for (const Example& e : ex)
    if (!p.add(e)) {
      BOOST_REQUIRE(p.next_row());
      BOOST_REQUIRE(p.add(e));
    }
  return p.finish();
}

// Gradients of every parameter, concatenated.
std::vector<double> grads(const nn::Module& m) {
  std::vector<double> g;
  for (const Tensor& p : m.parameters()) {
    const std::vector<double> v = p.grad().defined() ? p.grad().to_vector() : std::vector<double>(p.numel(), 0.0);
    g.insert(g.end(), v.begin(), v.end());
  }
  return g;
}

}  // namespace

// ---------------------------------------------------------------- masking

// cross_entropy with ignore_index -100, as PyTorch's: the mean over the other
// targets; a masked row adds exactly 0 to the loss and gets exactly 0 gradient.
BOOST_AUTO_TEST_CASE(masked_targets_cost_exactly_nothing) {
  Generator g(3);
  const int64_t N = 7, C = 5;
  Tensor logits = randn({N, C}, g, DType::f64).requires_grad_();
  const std::vector<int64_t> t = {2, M, 0, M, M, 4, 1};
  Tensor loss = cross_entropy(logits, from_indices(t, {N}));
  loss.backward();

  // By hand: lse_n - z[n, t_n] over the 4 kept rows, divided by 4.
  const std::vector<double> z = logits.to_vector();
  double manual = 0;
  std::vector<double> dz(static_cast<size_t>(N * C), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (t[n] == M) continue;
    double m = z[n * C], s = 0;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, z[n * C + c]);
    for (int64_t c = 0; c < C; ++c) s += std::exp(z[n * C + c] - m);
    manual += m + std::log(s) - z[n * C + t[n]];
    for (int64_t c = 0; c < C; ++c) dz[n * C + c] = (std::exp(z[n * C + c] - m) / s - (c == t[n])) / 4.0;
  }
  BOOST_TEST(loss.item() == manual / 4.0, boost::test_tools::tolerance(1e-14));
  const std::vector<double> got = logits.grad().to_vector();
  BOOST_TEST(max_abs_diff(got, dz) < 1e-15);
  for (int64_t n : {1, 3, 4})
    for (int64_t c = 0; c < C; ++c) BOOST_TEST(got[n * C + c] == 0.0);  // exactly

  // Masked rows' logits do not matter at all: change them, same bits.
  std::vector<double> z2 = z;
  for (int64_t c = 0; c < C; ++c) z2[1 * C + c] = 1e3 * (c + 1), z2[4 * C + c] = -7.0;
  BOOST_TEST(cross_entropy(from_values(z2, {N, C}, DType::f64), from_indices(t, {N})).item() == loss.item());

  // Every target masked: 0 / 0 = NaN, as PyTorch; the training step refuses such a batch (below).
  Tensor x = randn({2, C}, g, DType::f64).requires_grad_();
  Tensor all = cross_entropy(x, from_indices({M, M}, {2}));
  BOOST_TEST(std::isnan(all.item()));
  all.backward();
  for (double v : x.grad().to_vector()) BOOST_TEST(v == 0.0);
}

// The model's loss on a packed, masked batch is the manual mean over the
// response targets of -log softmax(logits).
BOOST_AUTO_TEST_CASE(model_loss_is_the_mean_over_response_bytes) {
  auto model = f64_model();
  const Batch b = pack_rows(some_examples(), 4, 32);
  NoGradGuard no_grad;
  const std::vector<double> z = model->forward(b.x, b.starts).to_vector();  // (B, T, V)
  const int64_t* y = b.y.data<int64_t>();
  double sum = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < b.y.numel(); ++i) {
    if (y[i] == M) continue;
    const double* row = z.data() + i * 256;
    double m = row[0], s = 0;
    for (int c = 0; c < 256; ++c) m = std::max(m, row[c]);
    for (int c = 0; c < 256; ++c) s += std::exp(row[c] - m);
    sum += m + std::log(s) - row[y[i]];
    ++n;
  }
  BOOST_TEST(n == b.num_targets());
  BOOST_TEST(model->loss(b.x, b.y, b.starts).item() == sum / static_cast<double>(n), boost::test_tools::tolerance(1e-13));
}

// ---------------------------------------------------------------- packing

// causal_attention with starts: each segment of a row attends to itself only,
// forward and backward equal to running the segments one by one.
BOOST_AUTO_TEST_CASE(attention_starts_make_a_block_diagonal_causal_mask) {
  const int64_t B = 2, T = 7, d = 4, H = 2;
  Generator g(11);
  Tensor q = randn({B, T, d}, g, DType::f64).requires_grad_();
  Tensor k = randn({B, T, d}, g, DType::f64).requires_grad_();
  Tensor v = randn({B, T, d}, g, DType::f64).requires_grad_();
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> segments = {{{0, 3}, {3, 7}}, {{0, 2}, {2, 5}, {5, 7}}};
  std::vector<int64_t> starts;
  for (const auto& row : segments)
    for (const auto& [a, b] : row)
      for (int64_t i = a; i < b; ++i) starts.push_back(a);
  const Tensor go = randn({B, T, d}, g, DType::f64);
  Tensor out = causal_attention(q, k, v, H, from_indices(starts, {B, T}));
  out.backward(go);
  const std::vector<double> o = out.to_vector(), dq = q.grad().to_vector(), dk = k.grad().to_vector(),
                            dv = v.grad().to_vector(), gov = go.to_vector();

  const std::vector<double> qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  double worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (const auto& [a, e] : segments[static_cast<size_t>(b)]) {
      const int64_t n = e - a;
      auto slice = [&](const std::vector<double>& all) {
        return std::vector<double>(all.begin() + (b * T + a) * d, all.begin() + (b * T + e) * d);
      };
      Tensor qs = from_values(slice(qv), {1, n, d}, DType::f64).requires_grad_();
      Tensor ks = from_values(slice(kv), {1, n, d}, DType::f64).requires_grad_();
      Tensor vs = from_values(slice(vv), {1, n, d}, DType::f64).requires_grad_();
      Tensor os = causal_attention(qs, ks, vs, H);
      os.backward(from_values(slice(gov), {1, n, d}, DType::f64));
      worst = std::max({worst, max_abs_diff(os.to_vector(), slice(o)), max_abs_diff(qs.grad().to_vector(), slice(dq)),
                        max_abs_diff(ks.grad().to_vector(), slice(dk)), max_abs_diff(vs.grad().to_vector(), slice(dv))});
    }
  BOOST_TEST(worst < 1e-13);

  // And against finite differences, through a scalar of the output.
  const Tensor st = from_indices(starts, {B, T});
  const GradcheckResult check = gradcheck(
      [&](const std::vector<Tensor>& in) { return sum(causal_attention(in[0], in[1], in[2], H, st) * go); },
      {q.detach().requires_grad_(), k.detach().requires_grad_(), v.detach().requires_grad_()});
  BOOST_TEST(check.ok, check.report);

  // All starts 0 is the plain causal mask, bit for bit.
  const Tensor plain = causal_attention(q, k, v, H);
  BOOST_TEST(causal_attention(q, k, v, H, from_indices(std::vector<int64_t>(B * T, 0), {B, T})).to_vector() ==
             plain.to_vector());
  // Bad starts.
  std::vector<int64_t> late(B * T, 0);
  late[2] = 3;  // position 2 cannot start at 3
  check_throws<ValueError>([&] { causal_attention(q, k, v, H, from_indices(late, {B, T})); },
                           {"causal_attention", "starts[0, 2] = 3", "outside [0, 2]"});
  check_throws<ShapeError>([&] { causal_attention(q, k, v, H, from_indices({0, 0}, {1, 2})); },
                           {"causal_attention", "starts must be int64 (B, T) = [2, 7]"});
}

// The property packing rests on: a packed batch's summed response-token loss
// (mean x count) equals the sum over its examples of their summed loss
// computed one example at a time, and so do the gradients. With plain causal
// attention across examples (TRL's constant-length packing) it does not hold.
BOOST_AUTO_TEST_CASE(packed_rows_equal_examples_alone) {
  auto model = f64_model();
  model->requires_grad_(true);
  const std::vector<Example> ex = some_examples();
  const Batch packed = pack_rows(ex, 4, 32);
  BOOST_TEST(packed.x.size(0) < static_cast<int64_t>(ex.size()));  // some rows really hold several

  const double n = static_cast<double>(packed.num_targets());
  model->zero_grad();
  Tensor lp = model->loss(packed.x, packed.y, packed.starts);
  const double packed_sum = lp.item() * n;
  (lp * n).backward();
  const std::vector<double> g_packed = grads(*model);

  model->zero_grad();
  double alone_sum = 0;
  int64_t alone_targets = 0;
  for (const Example& e : ex) {
    const Batch b = alone(e);
    const double k = static_cast<double>(b.num_targets());
    Tensor l = model->loss(b.x, b.y);
    alone_sum += l.item() * k;
    alone_targets += b.num_targets();
    (l * k).backward();  // gradients accumulate: the gradient of the sum
  }
  BOOST_TEST(alone_targets == packed.num_targets());
  BOOST_TEST(packed_sum == alone_sum, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(max_abs_diff(g_packed, grads(*model)) < 1e-10);

  // Without starts, a later example of a row sees the earlier ones and reads
  // positions from the row's start: another number.
  NoGradGuard no_grad;
  const double causal_sum = model->loss(packed.x, packed.y).item() * n;
  BOOST_TEST(std::fabs(causal_sum - alone_sum) > 1e-3);
}

// ---------------------------------------------------------------- the step and the evaluation

// Micro-batches with different target counts weigh n_k / sum(n): the step is
// the step on the one batch that holds them all (the mean over every target).
BOOST_AUTO_TEST_CASE(accumulation_weighs_micro_batches_by_target_count) {
  const std::vector<Example> ex = some_examples();
  const Batch one = pack_rows({ex[0]}, 1, 32);                // 7 targets
  const Batch two = pack_rows({ex[1], ex[3]}, 1, 32);         // 4 + 2
  const Batch both = pack_rows({ex[0], ex[1], ex[3]}, 2, 32);  // all three in one row
  BOOST_REQUIRE(one.num_targets() != two.num_targets());
  BOOST_REQUIRE_EQUAL(both.num_targets(), one.num_targets() + two.num_targets());
  auto a = f64_model(), b = f64_model();
  a->requires_grad_(true);
  b->requires_grad_(true);
  optim::SGD sa(a->parameters(), 0.5), sb(b->parameters(), 0.5);
  const train::StepResult ra = train::train_step(*a, sa, {one, two}, 0.0);
  const train::StepResult rb = train::train_step(*b, sb, {both}, 0.0);
  BOOST_TEST(ra.loss == rb.loss, boost::test_tools::tolerance(1e-13));
  BOOST_TEST(ra.grad_norm == rb.grad_norm, boost::test_tools::tolerance(1e-12));
  double worst = 0;
  for (size_t i = 0; i < a->parameters().size(); ++i)
    worst = std::max(worst, max_abs_diff(a->parameters()[i].to_vector(), b->parameters()[i].to_vector()));
  BOOST_TEST(worst < 1e-13);

  // Evaluation weighs batches the same way.
  const double l1 = a->loss(one.x, one.y, one.starts).item(), l2 = a->loss(two.x, two.y, two.starts).item();
  const double n1 = static_cast<double>(one.num_targets()), n2 = static_cast<double>(two.num_targets());
  BOOST_TEST(train::evaluate(*a, {one, two}) == (l1 * n1 + l2 * n2) / (n1 + n2), boost::test_tools::tolerance(1e-14));
}

// A batch without a target would give a NaN loss: refused by name, never trained on.
BOOST_AUTO_TEST_CASE(a_batch_without_targets_is_refused) {
  auto model = f64_model();
  model->requires_grad_(true);
  optim::SGD opt(model->parameters(), 0.1);
  const Batch good = pack_rows({some_examples()[0]}, 1, 32);
  Batch empty = good;
  empty.y = from_indices(std::vector<int64_t>(32, M), {1, 32});
  const std::vector<double> before = model->parameters()[0].to_vector();
  check_throws<ValueError>([&] { train::train_step(*model, opt, {good, empty}, 1.0); },
                           {"train_step", "batch 1 has no target"});
  check_throws<ValueError>([&] { train::evaluate(*model, {empty}); }, {"evaluate", "batch 0 has no target"});
  BOOST_TEST(model->parameters()[0].to_vector() == before);
}
