#define BOOST_TEST_MODULE train_loop
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>
#include <thread>

#include "test_util.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/train/progress.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/train/step.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/optim/clip_grad.hpp"

using namespace loragrad;
using namespace loragrad::nn;
using namespace loragrad::train;

namespace {

bool message_contains(const std::exception& e, const std::string& what) {
  return std::string(e.what()).find(what) != std::string::npos;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

std::shared_ptr<TinyGPT> tiny_model(uint64_t seed = 3) {
  TinyGPTConfig c;
  c.block_size = 16;
  c.d_model = 16;
  c.n_layer = 1;
  c.n_head = 2;
  c.seed = seed;
  return std::make_shared<TinyGPT>(c);
}

const data::ByteDataset& stories() {
  static const data::ByteDataset data(data::builtin_corpus(data::Domain::stories, 20000, 7), 0.1);
  return data;
}

}  // namespace

// ---------------------------------------------------------------- formatting

BOOST_AUTO_TEST_CASE(format_duration_and_count) {
  BOOST_TEST(format_duration(0.2) == "0s");
  BOOST_TEST(format_duration(42.4) == "42s");
  BOOST_TEST(format_duration(168) == "2m48s");
  BOOST_TEST(format_duration(3900) == "1h05m");
  BOOST_TEST(format_duration(std::nan("")) == "?");
  BOOST_TEST(format_duration(-1) == "?");
  BOOST_TEST(format_count(950) == "950");
  BOOST_TEST(format_count(4321) == "4.32k");
  BOOST_TEST(format_count(41234) == "41.2k");
  BOOST_TEST(format_count(412345) == "412k");
  BOOST_TEST(format_count(3.1e6) == "3.10M");
  BOOST_TEST(format_count(std::numeric_limits<double>::infinity()) == "?");
}

// ---------------------------------------------------------------- Progress

BOOST_AUTO_TEST_CASE(progress_lines_every_tenth_and_the_last) {
  std::ostringstream os;
  {
    Progress p(25, 100, Progress::Style::lines, os);  // log_every 0 -> 25 / 10 = 2
    for (int64_t s = 1; s <= 25; ++s) {
      p.update(s, 1.0 / static_cast<double>(s), "lr 1.0e-03");
      if (s == 10) p.log("step 10: validation loss 0.5000");
    }
    p.finish();
    BOOST_TEST(p.steps_done() == 25);
  }
  const std::string out = os.str();
  BOOST_TEST(count(out, "\r") == 0u);
  BOOST_TEST(count(out, "step ") == 14u);  // steps 2, 4, ..., 24 (12), 25, and the logged line
  BOOST_TEST(out.find("step 2/25  loss 0.5000  lr 1.0e-03  ") != std::string::npos);
  BOOST_TEST(out.find("step 25/25  loss 0.0400") != std::string::npos);
  BOOST_TEST(out.find("tok/s  elapsed ") != std::string::npos);
  BOOST_TEST(out.find("\nstep 10: validation loss 0.5000\n") != std::string::npos);
  BOOST_TEST(out.find("step 3/25") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(progress_lines_explicit_interval_and_steps_per_s) {
  std::ostringstream os;
  Progress p(7, 0, Progress::Style::lines, os, 3);  // no token count: steps/s instead
  for (int64_t s = 1; s <= 7; ++s) p.update(s, 2.0);
  const std::string out = os.str();
  BOOST_TEST(count(out, "step ") == 3u);  // 3, 6 and the last
  BOOST_TEST(out.find("step 7/7") != std::string::npos);
  BOOST_TEST(out.find("steps/s") != std::string::npos);
  BOOST_TEST(out.find("tok/s") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(progress_bar_redraws_in_place) {
  std::ostringstream os;
  {
    Progress p(4, 64, Progress::Style::bar, os);
    p.update(1, 3.0);
    p.log("a logged line");
    p.update(4, 1.5);  // the last step is always drawn
    // the destructor finishes the line
  }
  const std::string out = os.str();
  BOOST_TEST(out.find("\r[") == 0u);
  BOOST_TEST(out.find("[#####...............] 1/4  loss 3.0000") != std::string::npos);
  BOOST_TEST(out.find("[####################] 4/4  loss 1.5000") != std::string::npos);
  // log() blanks the bar, prints its own line, then redraws the bar
  BOOST_TEST(out.find("\ra logged line\n\r[#####") != std::string::npos);
  BOOST_TEST(out.back() == '\n');
  BOOST_TEST(count(out, "\n") == 2u);
}

BOOST_AUTO_TEST_CASE(progress_pause_excludes_time_from_throughput) {
  std::ostringstream os;
  Progress p(10, 1000, Progress::Style::lines, os);
  {
    Progress::Paused pause(p);
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
  }
  p.update(1, 1.0);
  BOOST_TEST(p.elapsed_s() >= 0.06);
  BOOST_TEST(p.train_s() < p.elapsed_s() - 0.05);
  BOOST_TEST(p.train_s() >= 0.0);
  BOOST_TEST(p.steps_per_s() > 0.0);
  BOOST_TEST(p.tokens_per_s() > 0.0);
}

BOOST_AUTO_TEST_CASE(progress_rejects_bad_arguments) {
  std::ostringstream os;
  BOOST_CHECK_EXCEPTION(Progress(0, 10, Progress::Style::lines, os), ValueError,
                        [](const ValueError& e) { return message_contains(e, "Progress: total_steps"); });
  BOOST_CHECK_EXCEPTION(Progress(5, -1, Progress::Style::lines, os), ValueError,
                        [](const ValueError& e) { return message_contains(e, "Progress: tokens_per_step"); });
  BOOST_CHECK_EXCEPTION(Progress(5, 1, Progress::Style::lines, os, -2), ValueError,
                        [](const ValueError& e) { return message_contains(e, "Progress: log_every"); });
}

// ---------------------------------------------------------------- evaluation

BOOST_AUTO_TEST_CASE(fixed_batches_are_reproducible) {
  const auto a = fixed_batches(stories(), data::Split::validation, 3, 2, 8, 11);
  const auto b = fixed_batches(stories(), data::Split::validation, 3, 2, 8, 11);
  const auto c = fixed_batches(stories(), data::Split::validation, 3, 2, 8, 12);
  BOOST_TEST(a.size() == 3u);
  for (size_t i = 0; i < a.size(); ++i) {
    BOOST_TEST((a[i].x.shape() == Shape{2, 8}));
    BOOST_TEST(a[i].x.to_vector() == b[i].x.to_vector());
    BOOST_TEST(a[i].y.to_vector() == b[i].y.to_vector());
  }
  BOOST_TEST(a[0].x.to_vector() != c[0].x.to_vector());
  BOOST_CHECK_EXCEPTION(fixed_batches(stories(), data::Split::validation, 0, 2, 8, 1), ValueError,
                        [](const ValueError& e) { return message_contains(e, "fixed_batches"); });
}

BOOST_AUTO_TEST_CASE(evaluate_is_the_mean_loss_in_eval_mode_without_a_graph) {
  auto model = tiny_model();
  const auto batches = fixed_batches(stories(), data::Split::validation, 3, 2, 8, 5);
  BOOST_TEST(model->is_training());
  const double v = evaluate(*model, batches);
  BOOST_TEST(model->is_training());  // mode restored
  for (const Tensor& p : model->parameters()) BOOST_TEST(!p.grad().defined());
  double sum = 0.0;
  for (const data::Batch& b : batches) sum += model->loss(b.x, b.y).item();
  BOOST_TEST(v == sum / 3.0, boost::test_tools::tolerance(1e-12));
  // Weights of std 0.02 predict nearly uniformly over 256 bytes.
  BOOST_TEST(std::fabs(v - std::log(256.0)) < 0.05);

  model->eval();
  evaluate(*model, batches);
  BOOST_TEST(!model->is_training());
  BOOST_CHECK_EXCEPTION(evaluate(*model, {}), ValueError,
                        [](const ValueError& e) { return message_contains(e, "evaluate"); });
}

// ---------------------------------------------------------------- train_step

BOOST_AUTO_TEST_CASE(train_step_lowers_the_loss_and_clips) {
  auto model = tiny_model();
  optim::AdamW opt(model->parameters(), 1e-2, 0.0);
  const data::Batch batch = fixed_batches(stories(), data::Split::train, 1, 4, 16, 9)[0];
  const StepResult first = train_step(*model, opt, {batch}, 1.0);
  BOOST_TEST(first.applied);
  BOOST_TEST(first.grad_norm > 0.0);
  BOOST_TEST(std::fabs(first.loss - std::log(256.0)) < 0.05);
  StepResult last;
  for (int i = 0; i < 30; ++i) last = train_step(*model, opt, {batch}, 1.0);
  BOOST_TEST(last.applied);
  BOOST_TEST(last.loss < first.loss - 1.0);
  BOOST_TEST(opt.step_count(0, 0) == 31);

  // The reported norm is the one before clipping; the grads left behind are clipped.
  const StepResult clipped = train_step(*model, opt, {batch}, 1e-3);
  BOOST_TEST(clipped.grad_norm > 1e-2);
  BOOST_TEST(optim::grad_norm(model->parameters()) == 1e-3, boost::test_tools::tolerance(1e-3));
  // max_grad_norm 0: no clipping.
  const StepResult unclipped = train_step(*model, opt, {batch}, 0.0);
  BOOST_TEST(optim::grad_norm(model->parameters()) == unclipped.grad_norm, boost::test_tools::tolerance(1e-9));
}

BOOST_AUTO_TEST_CASE(train_step_skips_a_non_finite_loss) {
  auto model = tiny_model();
  optim::AdamW opt(model->parameters(), 1e-2, 0.0);
  const data::Batch batch = fixed_batches(stories(), data::Split::train, 1, 2, 8, 9)[0];
  model->ln_f->weight.set({0}, std::nan(""));
  const std::vector<double> before = model->tok_emb->weight.to_vector();
  const StepResult r = train_step(*model, opt, {batch}, 1.0);
  BOOST_TEST(!r.applied);
  BOOST_TEST(std::isnan(r.loss));
  BOOST_TEST(model->tok_emb->weight.to_vector() == before);
  BOOST_TEST(opt.step_count(0, 0) == 0);
  // Issue 8, defect 5: a run stops there (every entry point calls this) instead of
  // skipping every step and still writing an adapter with exit 0.
  check_throws<ValueError>([&] { stop_unless_finite(r, 7); }, {"step 7", "the loss is nan", "training stopped"});
  StepResult bad_grad;
  bad_grad.loss = 1.5;
  bad_grad.grad_norm = INFINITY;
  check_throws<ValueError>([&] { stop_unless_finite(bad_grad, 2); }, {"step 2", "gradient norm is inf"});
  StepResult good;
  good.applied = true;
  stop_unless_finite(good, 1);
  // And no file that load would refuse is ever written.
  TempDir tmp;
  check_throws<IOError>([&] { model->save(tmp.file("m.safetensors")); }, {"TinyGPT.save", "'ln_f.weight'", "NaN"});
  BOOST_TEST(tmp.listing().empty());
}

// ---------------------------------------------------------------- sampling

BOOST_AUTO_TEST_CASE(sample_text_extends_the_prompt_reproducibly) {
  auto model = tiny_model();
  const std::string a = sample_text(*model, "Once", 20, 0.8, 40, 1);
  const std::string b = sample_text(*model, "Once", 20, 0.8, 40, 1);
  const std::string c = sample_text(*model, "Once", 20, 0.8, 40, 2);
  BOOST_TEST(a.size() == 24u);
  BOOST_TEST(a.substr(0, 4) == "Once");
  BOOST_TEST(a == b);
  BOOST_TEST(a != c);
  BOOST_TEST(model->is_training());  // mode restored
  BOOST_CHECK_EXCEPTION(sample_text(*model, "", 5, 0.8, 40, 1), ValueError,
                        [](const ValueError& e) { return message_contains(e, "generate"); });
}

// Gradient accumulation: K micro-batches of B sequences give the step of one
// batch of K*B sequences (same gradients up to round-off, so the same update).
BOOST_AUTO_TEST_CASE(accumulating_k_micro_batches_equals_a_k_times_larger_batch) {
  TinyGPTConfig c;
  c.block_size = 8;
  c.d_model = 16;
  c.n_layer = 1;
  c.n_head = 2;
  c.seed = 11;
  c.dtype = DType::f64;
  auto big = std::make_shared<TinyGPT>(c), accumulated = std::make_shared<TinyGPT>(c);
  Generator g(5);
  const int64_t T = 8, B = 2, K = 3;
  std::vector<int64_t> x, y;
  for (int64_t i = 0; i < K * B * T; ++i) {
    x.push_back(g.randint(0, 256));
    y.push_back(g.randint(0, 256));
  }
  std::vector<data::Batch> micro;
  for (int64_t k = 0; k < K; ++k) {
    const auto at = [&](const std::vector<int64_t>& v) {
      return from_indices(std::vector<int64_t>(v.begin() + k * B * T, v.begin() + (k + 1) * B * T), {B, T});
    };
    micro.push_back({at(x), at(y)});
  }
  const data::Batch whole{from_indices(x, {K * B, T}), from_indices(y, {K * B, T})};
  optim::AdamW opt_big(big->parameters(), 1e-2, 0.1), opt_acc(accumulated->parameters(), 1e-2, 0.1);
  for (int step = 0; step < 3; ++step) {
    const StepResult a = train_step(*big, opt_big, {whole}, 0.5);
    const StepResult b = train_step(*accumulated, opt_acc, micro, 0.5);
    BOOST_TEST(a.loss == b.loss, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(a.grad_norm == b.grad_norm, boost::test_tools::tolerance(1e-12));
  }
  const NamedTensors pa = big->state_dict(), pb = accumulated->state_dict();
  double worst = 0;
  for (size_t i = 0; i < pa.size(); ++i) {
    const auto va = pa[i].second.to_vector(), vb = pb[i].second.to_vector();
    for (size_t j = 0; j < va.size(); ++j) worst = std::max(worst, std::fabs(va[j] - vb[j]));
  }
  BOOST_TEST(worst < 1e-12);
  // And K = 1 is the plain step, bit for bit.
  auto one = std::make_shared<TinyGPT>(c), same = std::make_shared<TinyGPT>(c);
  optim::AdamW o1(one->parameters(), 1e-2, 0.0), o2(same->parameters(), 1e-2, 0.0);
  BOOST_TEST(train_step(*one, o1, {whole}, 1.0).loss == train_step(*same, o2, {whole}, 1.0).loss);
  BOOST_TEST(one->state_dict()[0].second.to_vector() == same->state_dict()[0].second.to_vector());
}
