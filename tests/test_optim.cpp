// Optimizers, LR schedules, gradient clipping and the optimizer state's round
// trip, against numbers printed by PyTorch 1.13.1 (Debian's python3-torch) on
// this machine. The script that printed them (run with /usr/bin/python3):
//
//   import math, torch
//   torch.set_default_dtype(torch.float64)
//   def f(n, fn): return torch.tensor([fn(k) for k in range(n)])
//   x = f(20, lambda k: math.sin(0.7 * k + 0.3)).reshape(5, 4)
//   t = f(10, lambda k: 0.5 * math.cos(1.3 * k)).reshape(5, 2)
//   def params():
//       W = f(12, lambda k: 0.3 * math.sin(0.9 * k + 1.0)).reshape(3, 4).requires_grad_()
//       b = f(3, lambda k: 0.1 * math.cos(k + 0.5)).requires_grad_()
//       V = f(6, lambda k: 0.4 * math.sin(1.7 * k + 0.2)).reshape(2, 3).requires_grad_()
//       U = f(2, lambda k: 1.0 + k).requires_grad_()  # never in the loss: grad stays None
//       return W, b, V, U
//   def loss_of(W, b, V):
//       y = torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(x, W, b)), V)
//       return ((y - t) * (y - t)).mean()
//   def show(name, vals): print(name, "= {" + ", ".join(repr(float(v)) for v in vals) + "};")
//   def run(opt, W, b, V, U, steps, clip=None, sched=None):
//       losses, norms = [], []
//       for _ in range(steps):
//           opt.zero_grad()
//           loss = loss_of(W, b, V); losses.append(loss.item()); loss.backward()
//           if clip: norms.append(torch.nn.utils.clip_grad_norm_([W, b, V, U], clip).item())
//           opt.step()
//           if sched: sched.step()
//       show("  losses", losses)
//       if clip: show("  norms", norms)
//       show("  final", torch.cat([W.detach().flatten(), b.detach(), V.detach().flatten(), U.detach()]))
//   print("// AdamW, two groups"); W, b, V, U = params()
//   run(torch.optim.AdamW([{"params": [W, b], "lr": 0.01, "weight_decay": 0.1},
//                          {"params": [V, U], "lr": 0.05, "weight_decay": 0.2, "betas": (0.8, 0.99), "eps": 1e-6}]), W, b, V, U, 6)
//   print("// SGD, three groups"); W, b, V, U = params()
//   run(torch.optim.SGD([{"params": [W], "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
//                        {"params": [b], "lr": 0.2, "weight_decay": 0.1},
//                        {"params": [V, U], "lr": 0.05, "momentum": 0.5}], lr=0.1), W, b, V, U, 6)
//   print("// AdamW + cosine(warmup 2, total 6, min ratio 0.1) + clip 0.05"); W, b, V, U = params()
//   opt = torch.optim.AdamW([{"params": [W, b], "lr": 0.02, "weight_decay": 0.1}, {"params": [V, U], "lr": 0.05, "weight_decay": 0.0}])
//   def cosine(s, W_=2, N=6, r=0.1):
//       if s < W_: return s / max(1, W_)
//       q = (s - W_) / max(1, N - W_)
//       return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * q)) * (1 - r) + r)
//   run(opt, W, b, V, U, 6, clip=0.05, sched=torch.optim.lr_scheduler.LambdaLR(opt, cosine))
#define BOOST_TEST_MODULE optim
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>

#include "loragrad/ops.hpp"
#include "loragrad/optim/optim.hpp"

using namespace loragrad;
using namespace loragrad::optim;

template <class E>
static bool message_has(const E& e, const std::string& part) {
  return std::string(e.what()).find(part) != std::string::npos;
}

// ---- the problem of the PyTorch script ----

static Tensor formula(int64_t n, const Shape& shape, DType dt, const std::function<double(int64_t)>& fn) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) v[static_cast<size_t>(k)] = fn(k);
  return from_values(v, shape, dt);
}

struct Problem {
  explicit Problem(DType dt = DType::f64) {
    x = formula(20, {5, 4}, dt, [](int64_t k) { return std::sin(0.7 * k + 0.3); });
    t = formula(10, {5, 2}, dt, [](int64_t k) { return 0.5 * std::cos(1.3 * k); });
    W = formula(12, {3, 4}, dt, [](int64_t k) { return 0.3 * std::sin(0.9 * k + 1.0); }).requires_grad_();
    b = formula(3, {3}, dt, [](int64_t k) { return 0.1 * std::cos(k + 0.5); }).requires_grad_();
    V = formula(6, {2, 3}, dt, [](int64_t k) { return 0.4 * std::sin(1.7 * k + 0.2); }).requires_grad_();
    U = formula(2, {2}, dt, [](int64_t k) { return 1.0 + k; }).requires_grad_();  // never in the loss
  }
  Tensor loss() const {
    Tensor d = linear(tanh(linear(x, W, b)), V) - t;  // (5, 2)
    return mean(d * d);
  }
  std::vector<Tensor> all() const { return {W, b, V, U}; }
  std::vector<double> flat() const {  // W, b, V, U concatenated, as the script's "final"
    std::vector<double> out;
    for (const Tensor& p : all())
      for (double v : p.to_vector()) out.push_back(v);
    return out;
  }
  Tensor x, t, W, b, V, U;
};

// One training step as the script does it; returns the loss before the update.
static double train_step(Problem& pb, Optimizer& opt, double clip = 0.0, double* norm = nullptr) {
  opt.zero_grad();
  Tensor loss = pb.loss();
  loss.backward();
  if (clip > 0.0) {
    const double n = clip_grad_norm(pb.all(), clip);
    if (norm) *norm = n;
  }
  opt.step();
  return loss.item();
}

static void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    BOOST_TEST(std::abs(got[i] - want[i]) <= tol, "element " << i << ": got " << got[i] << ", torch " << want[i]);
}

static std::vector<ParamGroup> adamw_groups(const Problem& pb) {
  ParamGroup body("body", {pb.W, pb.b}, 0.01, 0.1);
  ParamGroup head("head", {pb.V, pb.U}, 0.05, 0.2);
  head.beta1 = 0.8;
  head.beta2 = 0.99;
  head.eps = 1e-6;
  return {body, head};
}

static std::vector<ParamGroup> sgd_groups(const Problem& pb) {
  ParamGroup body("body", {pb.W}, 0.1, 0.01);
  body.momentum = 0.9;
  body.nesterov = true;
  ParamGroup bias("bias", {pb.b}, 0.2, 0.1);  // plain SGD: no momentum buffer
  ParamGroup head("head", {pb.V, pb.U}, 0.05);
  head.momentum = 0.5;
  return {body, bias, head};
}

// ---- printed by the script ----

static const std::vector<double> kAdamWLosses = {0.1450703413374695, 0.11574457770756859, 0.09299482775378044,
                                                 0.07676343040116992, 0.06636853100796097, 0.06041701541644734};
static const std::vector<double> kAdamWFinal = {
    0.3076170558519263,   0.22618904973990514,   0.043514061961648226, -0.21446998646992085, -0.24562776614268933,
    -0.15122978815992133, 0.0942249638835935,    0.3132268072169395,   0.2320712855976965,   0.15363220820531834,
    -0.10997477400854665, -0.245865129173444,    0.032432375963748504, 0.06079896310359579,  -0.029886173147977577,
    0.3472477807751439,   0.14155057675594587,   -0.012849767024744038, -0.5286907468156677, 0.515862294197349,
    -0.009291674863005393, 1.0,                  2.0};
static const std::vector<double> kSGDLosses = {0.1450703413374695,  0.1314382511041332,  0.11439104578989245,
                                               0.09675313235345077, 0.08050979169072778, 0.06686402446353512};
static const std::vector<double> kSGDFinal = {
    0.3317877395170281,   0.2331215818778178,   -0.05472652295402935, -0.34499330751837265, -0.24274291741111167,
    -0.04261793830027944, 0.236855093366846,    0.3951349338506949,   0.19709579709467737,  0.09555176901053355,
    -0.07775355205736914, -0.16876248500563593, 0.05735802246154781,  0.012571430668507352, -0.060262667959816614,
    0.12037149380185853,  0.3495583692055051,   -0.1554498601492727,  -0.3496802139176584,  0.31305905602648,
    0.20821910089369627,  1.0,                  2.0};
static const std::vector<double> kLoopLosses = {0.1450703413374695,  0.1450703413374695, 0.12608802381832432,
                                                0.09412198138377162, 0.0737153058849265, 0.06458531469662088};
static const std::vector<double> kLoopNorms = {0.3341141588237332,  0.3341141588237332,  0.30802146542570075,
                                               0.25166333754472037, 0.19809279973248273, 0.1638590912616662};
static const std::vector<double> kLoopFinal = {
    0.3138669887674611,   0.21982158225796838,  0.037110411415023796, -0.2207933009848016,  -0.2354795872879714,
    -0.14720473023282238, 0.09791525527995365,  0.3166729142228612,   0.22014010920766658,  0.15805384878029496,
    -0.10096941508657928, -0.2358541833530375,  0.026259040969051725, 0.06344748839616321,  -0.020756315095642127,
    0.23693526937000733,  0.22866589098219917,  -0.027432332546877356, -0.48850793697102185, 0.4204473816452698,
    0.11046977597897087,  1.0,                  2.0};

// ---- trajectories ----

BOOST_AUTO_TEST_CASE(adamw_two_groups_matches_torch) {
  Problem pb;
  AdamW opt(adamw_groups(pb));
  std::vector<double> losses;
  for (int s = 0; s < 6; ++s) losses.push_back(train_step(pb, opt));
  check_close(losses, kAdamWLosses, 1e-13);
  check_close(pb.flat(), kAdamWFinal, 1e-13);
  // U never had a grad: skipped, no decay, no state (as torch).
  BOOST_TEST(opt.step_count(1, 1) == 0);
  BOOST_TEST(opt.step_count(0, 0) == 6);
  BOOST_TEST(opt.state_bytes() == 2 * (12 + 3 + 6) * sizeof(double));
}

BOOST_AUTO_TEST_CASE(adamw_float32_tracks_torch) {
  // Updated in float32 throughout; the float64 reference bounds the round-off.
  Problem pb(DType::f32);
  AdamW opt(adamw_groups(pb));
  std::vector<double> losses;
  for (int s = 0; s < 6; ++s) losses.push_back(train_step(pb, opt));
  check_close(losses, kAdamWLosses, 2e-6);
  check_close(pb.flat(), kAdamWFinal, 2e-6);
  BOOST_TEST(opt.state_bytes() == 2 * (12 + 3 + 6) * sizeof(float));
  BOOST_TEST(opt.groups()[0].params[0].dtype() == DType::f32);
}

BOOST_AUTO_TEST_CASE(sgd_three_groups_matches_torch) {
  // Nesterov + weight decay, plain SGD + weight decay, momentum without Nesterov.
  Problem pb;
  SGD opt(sgd_groups(pb));
  std::vector<double> losses;
  for (int s = 0; s < 6; ++s) losses.push_back(train_step(pb, opt));
  check_close(losses, kSGDLosses, 1e-13);
  check_close(pb.flat(), kSGDFinal, 1e-13);
  BOOST_TEST(opt.state_bytes() == (12 + 6) * sizeof(double));  // no buffer for the momentum-0 group

  Problem pb32(DType::f32);
  SGD opt32(sgd_groups(pb32));
  for (int s = 0; s < 6; ++s) train_step(pb32, opt32);
  check_close(pb32.flat(), kSGDFinal, 2e-6);
}

BOOST_AUTO_TEST_CASE(training_loop_schedule_and_clip_match_torch) {
  // LambdaLR(cosine) before each step, clip_grad_norm_ after backward. The
  // first step has lr 0 (warm-up), yet it advances Adam's moments and step count.
  Problem pb;
  AdamW opt({ParamGroup("body", {pb.W, pb.b}, 0.02, 0.1), ParamGroup("head", {pb.V, pb.U}, 0.05, 0.0)});
  const LRSchedule schedule = LRSchedule::cosine(2, 6, 0.1);
  std::vector<double> losses, norms;
  for (int64_t s = 0; s < 6; ++s) {
    schedule.apply(opt, s);
    double norm = 0.0;
    losses.push_back(train_step(pb, opt, 0.05, &norm));
    norms.push_back(norm);
  }
  check_close(losses, kLoopLosses, 1e-13);
  check_close(norms, kLoopNorms, 1e-13);
  check_close(pb.flat(), kLoopFinal, 1e-13);
  BOOST_TEST(opt.groups()[0].initial_lr == 0.02);
  BOOST_TEST(opt.groups()[1].lr == 0.05 * schedule.factor(5));
}

// ---- schedules ----

BOOST_AUTO_TEST_CASE(schedule_values) {
  const double pi = M_PI;
  const LRSchedule constant = LRSchedule::constant();
  BOOST_TEST(constant.factor(0) == 1.0);
  BOOST_TEST(constant.factor(1000) == 1.0);

  const LRSchedule warm = LRSchedule::constant(4);
  BOOST_TEST(warm.factor(0) == 0.0);
  BOOST_TEST(warm.factor(1) == 0.25);
  BOOST_TEST(warm.factor(3) == 0.75);
  BOOST_TEST(warm.factor(4) == 1.0);
  BOOST_TEST(warm.factor(99) == 1.0);

  const LRSchedule lin = LRSchedule::linear(10, 110);  // up over 10 steps, down to 0 over 100
  BOOST_TEST(lin.factor(0) == 0.0);
  BOOST_TEST(lin.factor(5) == 0.5);
  BOOST_TEST(lin.factor(10) == 1.0);
  BOOST_TEST(lin.factor(35) == 0.75);
  BOOST_TEST(lin.factor(60) == 0.5);
  BOOST_TEST(lin.factor(110) == 0.0);
  BOOST_TEST(lin.factor(500) == 0.0);  // clamped at 0

  const LRSchedule cos = LRSchedule::cosine(10, 110);
  BOOST_TEST(cos.factor(5) == 0.5);
  BOOST_TEST(cos.factor(10) == 1.0);
  BOOST_TEST(std::abs(cos.factor(35) - 0.5 * (1 + std::cos(pi * 0.25))) < 1e-15);  // 0.8535...
  BOOST_TEST(std::abs(cos.factor(60) - 0.5) < 1e-15);
  BOOST_TEST(std::abs(cos.factor(110)) < 1e-15);
  BOOST_TEST(std::abs(cos.factor(160) - 0.5) < 1e-15);  // unclamped past the end, as transformers

  const LRSchedule floor = LRSchedule::cosine(0, 100, 0.1);
  BOOST_TEST(floor.factor(0) == 1.0);
  BOOST_TEST(std::abs(floor.factor(50) - 0.55) < 1e-15);
  BOOST_TEST(std::abs(floor.factor(100) - 0.1) < 1e-15);
  BOOST_TEST(std::abs(floor.factor(25) - (0.1 + 0.9 * 0.5 * (1 + std::cos(pi * 0.25)))) < 1e-15);

  const LRSchedule two_cycles = LRSchedule::cosine(0, 100, 0.0, 1.0);  // down and back up
  BOOST_TEST(std::abs(two_cycles.factor(50)) < 1e-15);
  BOOST_TEST(std::abs(two_cycles.factor(100) - 1.0) < 1e-15);

  BOOST_TEST(floor.str() == "cosine(warmup=0, total=100, min_lr_ratio=0.1)");
  BOOST_TEST(lin.str() == "linear(warmup=10, total=110)");
}

BOOST_AUTO_TEST_CASE(schedule_apply_scales_each_groups_initial_lr) {
  Tensor a = zeros({2}).requires_grad_(), b = zeros({2}).requires_grad_();
  AdamW opt({ParamGroup("a", {a}, 1e-3), ParamGroup("b", {b}, 4e-3)});
  const LRSchedule lin = LRSchedule::linear(0, 4);
  lin.apply(opt, 1);
  BOOST_TEST(opt.group("a").lr == 1e-3 * 0.75);
  BOOST_TEST(opt.group("b").lr == 4e-3 * 0.75);
  lin.apply(opt, 2);  // from initial_lr, not from the lr the last apply left
  BOOST_TEST(opt.group("a").lr == 1e-3 * 0.5);
  BOOST_TEST(opt.group("b").lr == 4e-3 * 0.5);
  BOOST_TEST(opt.group("b").initial_lr == 4e-3);
}

BOOST_AUTO_TEST_CASE(schedule_errors) {
  auto expect = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      BOOST_FAIL("no ValueError for " << part);
    } catch (const ValueError& e) {
      BOOST_TEST(message_has(e, "LRSchedule"), e.what());
      BOOST_TEST(message_has(e, part), e.what());
    }
  };
  expect([] { LRSchedule::linear(-1, 10); }, "warmup_steps");
  expect([] { LRSchedule::linear(0, 0); }, "total_steps");
  expect([] { LRSchedule::cosine(20, 10); }, "exceeds total_steps");
  expect([] { LRSchedule::cosine(0, 10, 1.5); }, "min_lr_ratio");
  expect([] { LRSchedule::cosine(0, 10, 0.0, 0.0); }, "num_cycles");
  expect([] { LRSchedule::constant().factor(-1); }, "step");
}

// ---- clipping ----

BOOST_AUTO_TEST_CASE(clip_grad_norm_values) {
  Tensor a = zeros({2}, DType::f64).requires_grad_(), b = zeros({1}).requires_grad_(), c = zeros({3}).requires_grad_();
  auto set = [&] {
    a.set_grad(from_values({3.0, 4.0}, {2}, DType::f64));
    b.set_grad(from_values({12.0}, {1}, DType::f32));
  };
  set();  // c has no grad: skipped. Norm = sqrt(9 + 16 + 144) = 13.
  BOOST_TEST(grad_norm({a, b, c}) == 13.0);
  BOOST_TEST(clip_grad_norm({a, b, c}, 100.0) == 13.0);  // below the limit: untouched
  BOOST_TEST(a.grad().to_vector() == (std::vector<double>{3.0, 4.0}));

  BOOST_TEST(clip_grad_norm({a, b, c}, 6.5) == 13.0);
  const double coef = 6.5 / (13.0 + 1e-6);
  BOOST_TEST(std::abs(a.grad().at({0}) - 3.0 * coef) < 1e-15);
  BOOST_TEST(std::abs(a.grad().at({1}) - 4.0 * coef) < 1e-15);
  BOOST_TEST(std::abs(b.grad().at({0}) - 12.0 * coef) < 1e-5);  // float32 grad
  BOOST_TEST(std::abs(grad_norm({a, b}) - 6.5) < 1e-5);

  BOOST_TEST(clip_grad_norm({c}, 1.0) == 0.0);  // no grads at all

  // A big tensor takes the threaded path; its norm is still exact in double.
  Tensor big = zeros({300000}).requires_grad_();
  big.set_grad(full({300000}, 0.5));
  BOOST_TEST(std::abs(clip_grad_norm({big}, 1.0) - 0.5 * std::sqrt(300000.0)) < 1e-9);
  BOOST_TEST(std::abs(grad_norm({big}) - 1.0) < 1e-6);
}

BOOST_AUTO_TEST_CASE(clip_grad_norm_non_finite_leaves_grads_alone) {
  Tensor a = zeros({2}).requires_grad_();
  a.set_grad(from_values({std::numeric_limits<double>::infinity(), 1.0}, {2}, DType::f32));
  BOOST_TEST(std::isinf(clip_grad_norm({a}, 1.0)));
  BOOST_TEST(a.grad().at({1}) == 1.0);
  a.set_grad(from_values({std::nan(""), 1.0}, {2}, DType::f32));
  BOOST_TEST(std::isnan(clip_grad_norm({a}, 1.0)));
  BOOST_TEST(a.grad().at({1}) == 1.0);
  try {
    clip_grad_norm({a}, 0.0);
    BOOST_FAIL("no error for max_norm 0");
  } catch (const ValueError& e) {
    BOOST_TEST(message_has(e, "clip_grad_norm"), e.what());
    BOOST_TEST(message_has(e, "max_norm"), e.what());
  }
}

// ---- gradient accumulation ----

BOOST_AUTO_TEST_CASE(gradient_accumulation_equals_full_batch) {
  // Summing backward(loss_i / n_micro) over equal micro-batches, without zeroing
  // in between, gives the full batch's mean-loss gradient.
  Generator gen(3);
  Tensor x = randn({8, 5}, gen, DType::f64);
  Tensor targets = randint({8}, 0, 4, gen);
  Tensor W = randn({4, 5}, gen, DType::f64).requires_grad_();
  Tensor bias = randn({4}, gen, DType::f64).requires_grad_();

  cross_entropy(linear(x, W, bias), targets).backward();
  const std::vector<double> full_W = W.grad().to_vector(), full_b = bias.grad().to_vector();

  AdamW opt({W, bias}, 1e-3);
  opt.zero_grad();
  BOOST_TEST(!W.grad().defined());
  const int64_t n_micro = 4;
  for (int64_t m = 0; m < n_micro; ++m) {
    Tensor loss = cross_entropy(linear(narrow(x, 0, 2 * m, 2), W, bias), narrow(targets, 0, 2 * m, 2));
    (loss / static_cast<double>(n_micro)).backward();
  }
  check_close(W.grad().to_vector(), full_W, 1e-15);
  check_close(bias.grad().to_vector(), full_b, 1e-15);
}

// ---- state round trip ----

static std::string temp_path(const std::string& name) {
  return "/tmp/loragrad_test_optim_" + std::to_string(getpid()) + "_" + name + ".safetensors";
}

template <class Opt, class Groups>
static void check_resume_is_identical(Groups make_groups, const std::string& name) {
  Problem straight;
  Opt opt_straight(make_groups(straight));
  for (int s = 0; s < 6; ++s) train_step(straight, opt_straight);

  Problem first;
  Opt opt_first(make_groups(first));
  for (int s = 0; s < 3; ++s) train_step(first, opt_first);
  const std::string path = temp_path(name);
  opt_first.save(path);

  // A fresh process would rebuild the model from its checkpoint: copy the values.
  Problem second;
  for (size_t i = 0; i < 4; ++i) second.all()[i].copy_(first.all()[i]);
  std::vector<ParamGroup> groups = make_groups(second);
  groups[0].lr = 123.0;  // the saved hyper-parameters win, as in torch
  Opt opt_second(groups);
  opt_second.load(path);
  std::remove(path.c_str());
  BOOST_TEST(opt_second.groups()[0].lr == opt_first.groups()[0].lr);
  BOOST_TEST(opt_second.state_bytes() == opt_first.state_bytes());
  BOOST_TEST(opt_second.step_count(0, 0) == 3);
  for (int s = 0; s < 3; ++s) train_step(second, opt_second);

  BOOST_TEST(second.flat() == straight.flat());  // bit for bit
}

BOOST_AUTO_TEST_CASE(state_round_trip_through_safetensors_resumes_exactly) {
  check_resume_is_identical<AdamW>(adamw_groups, "adamw");
  check_resume_is_identical<SGD>(sgd_groups, "sgd");
}

BOOST_AUTO_TEST_CASE(state_dict_layout) {
  Problem pb;
  AdamW opt(adamw_groups(pb));
  BOOST_TEST(opt.state_dict().tensors.empty());  // no state before the first step
  train_step(pb, opt);
  const OptimizerState s = opt.state_dict();
  std::vector<std::string> names;
  for (const auto& [k, t] : s.tensors) names.push_back(k);
  BOOST_TEST(names == (std::vector<std::string>{"state.body.0.exp_avg", "state.body.0.exp_avg_sq", "state.body.1.exp_avg",
                                                "state.body.1.exp_avg_sq", "state.head.0.exp_avg",
                                                "state.head.0.exp_avg_sq"}),
             boost::test_tools::per_element());
  BOOST_TEST(s.metadata.at("optimizer") == "AdamW");
  BOOST_TEST(s.metadata.at("groups") == "body,head");
  BOOST_TEST(s.metadata.at("state.body.1.step") == "1");
  BOOST_TEST(s.metadata.count("state.head.1.step") == 0);  // U: never updated
  BOOST_TEST(s.metadata.at("group.head.params") == "2");
  BOOST_TEST(std::stod(s.metadata.at("group.head.beta1")) == 0.8);
  // After one step m = (1 - beta1) g.
  const std::vector<double> m = s.tensors[0].second.to_vector();
  BOOST_TEST(std::abs(m[0] - 0.1 * pb.W.grad().at({0, 0})) < 1e-15);
}

// ---- errors ----

template <class E>
static void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    BOOST_FAIL("no exception; expected one naming " << parts.front());
  } catch (const E& e) {
    for (const std::string& p : parts) BOOST_TEST(message_has(e, p), "'" << e.what() << "' lacks '" << p << "'");
  }
}

BOOST_AUTO_TEST_CASE(load_state_errors_name_the_entry) {
  Problem pb;
  AdamW opt(adamw_groups(pb));
  train_step(pb, opt);
  const OptimizerState good = opt.state_dict();

  Problem other;
  AdamW fresh(adamw_groups(other));
  auto load = [&](NamedTensors t, Metadata m) { return [&fresh, t, m] { fresh.load_state_dict(t, m); }; };

  Metadata wrong_kind = good.metadata;
  wrong_kind["optimizer"] = "SGD";
  expect_error<ValueError>(load(good.tensors, wrong_kind), {"AdamW.load_state_dict", "SGD"});

  AdamW renamed({ParamGroup("trunk", {other.W, other.b}, 0.01), ParamGroup("head", {other.V, other.U}, 0.05)});
  expect_error<ValueError>([&] { renamed.load_state_dict(good.tensors, good.metadata); }, {"groups", "body,head", "trunk,head"});

  AdamW fewer({ParamGroup("body", {other.W}, 0.01), ParamGroup("head", {other.V, other.U}, 0.05)});
  expect_error<ValueError>([&] { fewer.load_state_dict(good.tensors, good.metadata); }, {"group.body.params", "has 1", "has 2"});

  NamedTensors bad_shape = good.tensors;
  bad_shape[1].second = zeros({4, 3}, DType::f64);
  expect_error<ShapeError>(load(bad_shape, good.metadata), {"state.body.0.exp_avg_sq", "[4, 3]", "[3, 4]"});

  NamedTensors missing(good.tensors.begin() + 1, good.tensors.end());
  expect_error<ValueError>(load(missing, good.metadata), {"missing entry 'state.body.0.exp_avg'"});

  NamedTensors extra = good.tensors;
  extra.emplace_back("state.body.7.exp_avg", zeros({3}, DType::f64));
  expect_error<ValueError>(load(extra, good.metadata), {"unexpected entry 'state.body.7.exp_avg'"});

  Metadata extra_step = good.metadata;
  extra_step["state.head.5.step"] = "2";
  expect_error<ValueError>(load(good.tensors, extra_step), {"state.head.5.step"});

  Metadata no_lr = good.metadata;
  no_lr.erase("group.head.lr");
  expect_error<ValueError>(load(good.tensors, no_lr), {"group.head.lr"});

  Metadata bad_lr = good.metadata;
  bad_lr["group.head.lr"] = "fast";
  expect_error<ValueError>(load(good.tensors, bad_lr), {"group.head.lr", "fast"});

  // Every failed load left the fresh optimizer untouched.
  BOOST_TEST(fresh.state_bytes() == 0);
  BOOST_TEST(fresh.group("body").lr == 0.01);
  fresh.load_state_dict(good.tensors, good.metadata);
  BOOST_TEST(fresh.step_count(0, 1) == 1);

  expect_error<IOError>([&] { fresh.load("/nonexistent/dir/opt.safetensors"); }, {"/nonexistent/dir/opt.safetensors"});
}

BOOST_AUTO_TEST_CASE(constructor_errors) {
  Tensor p = zeros({2}).requires_grad_();
  expect_error<ValueError>([&] { AdamW({p, p}, 1e-3); }, {"AdamW", "appears more than once"});
  expect_error<ValueError>([&] { AdamW({ParamGroup("a", {p}, 1e-3), ParamGroup("b", {p}, 1e-3)}); }, {"group 'b'", "more than once"});
  expect_error<ValueError>([&] { AdamW({ParamGroup("a", {p}, 1e-3), ParamGroup("a", {zeros({1})}, 1e-3)}); }, {"two groups are named 'a'"});
  expect_error<ValueError>([&] { AdamW({ParamGroup("blocks.0", {p}, 1e-3)}); }, {"'blocks.0'"});
  expect_error<ValueError>([&] { AdamW({p}, -1.0); }, {"lr must be >= 0"});
  expect_error<ValueError>([&] { AdamW({p}, 1e-3, -0.1); }, {"weight_decay"});
  expect_error<ValueError>([&] { AdamW({p}, 1e-3, 0.01, 1.0); }, {"beta1"});
  expect_error<ValueError>([&] { AdamW({p}, 1e-3, 0.01, 0.9, -0.5); }, {"beta2"});
  expect_error<ValueError>([&] { SGD({p}, 0.1, 0.0, 0.0, true); }, {"SGD", "nesterov needs momentum"});
  expect_error<ValueError>([&] { SGD({p * 2.0}, 0.1); }, {"SGD", "not a leaf"});
  expect_error<DTypeError>([&] { SGD({from_indices({1, 2}, {2})}, 0.1); }, {"SGD", "int64"});
  expect_error<ValueError>([&] { SGD(std::vector<ParamGroup>{}); }, {"SGD", "no parameter groups"});
  AdamW ok({p}, 1e-3);
  expect_error<ValueError>([&] { ok.group("missing"); }, {"no parameter group named 'missing'"});
}

BOOST_AUTO_TEST_CASE(zero_grad_and_skipping) {
  Tensor a = ones({3}).requires_grad_(), b = ones({3}).requires_grad_();
  SGD opt({a, b}, 0.5, 0.9);
  sum(a * a).backward();
  opt.step();  // b has no grad: untouched, no buffer
  BOOST_TEST(a.to_vector() == (std::vector<double>{0.0, 0.0, 0.0}));  // 1 - 0.5 * 2
  BOOST_TEST(b.to_vector() == (std::vector<double>{1.0, 1.0, 1.0}));
  BOOST_TEST(opt.state_bytes() == 3 * sizeof(float));
  opt.zero_grad();
  BOOST_TEST(!a.grad().defined());
  BOOST_TEST(!b.grad().defined());
  opt.step();  // nothing has a grad: nothing moves
  BOOST_TEST(a.to_vector() == (std::vector<double>{0.0, 0.0, 0.0}));
  BOOST_TEST(opt.step_count(0, 0) == 1);
}

BOOST_AUTO_TEST_CASE(large_parameter_takes_threaded_path_and_agrees) {
  // 200,000 elements go through the threaded loop; the first 10 must equal
  // the same update of a 10-element parameter (single-threaded path).
  const int64_t n = 200000;
  Generator gen(5);
  Tensor big = randn({n}, gen).requires_grad_();
  Tensor small = zeros({10}).requires_grad_();
  Tensor grad = randn({n}, gen);
  for (int64_t i = 0; i < 10; ++i) small.set({i}, big.at({i}));
  AdamW opt({big, small}, 1e-2, 0.1);
  for (int s = 0; s < 3; ++s) {
    big.set_grad(grad.clone());
    small.set_grad(narrow(grad, 0, 0, 10));
    opt.step();
  }
  for (int64_t i = 0; i < 10; ++i) BOOST_TEST(big.at({i}) == small.at({i}));
}
