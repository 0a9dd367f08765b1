// AdamW against PyTorch over a short training run: the Tiny GPT checkpoint of
// tests/reference/fixtures is trained for 5 steps with the usual GPT recipe
// (two groups: decay 0.1 on matrices and embeddings, none on biases and
// LayerNorm weights), by torch.optim.AdamW in tests/reference/make_adamw_fixtures.py
// and by loragrad here, in float64 and in float32. The losses of every step,
// the size of every parameter's update at every step, and every parameter at
// the end must agree: float64 to 1e-10, float32 to 1e-4 (relative to each
// tensor's largest magnitude). The fixture holds the final parameters of the
// float64 run only (size); both runs are held to them. The attention key
// biases are the exception, see key_bias(). A run stopped after 2 steps,
// saved and resumed in a fresh model and optimizer must end bit for bit where
// the uninterrupted run ends.
#define BOOST_TEST_MODULE adamw_conformance
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;
using namespace loragrad::nn;

namespace {

const std::string kDir = LORAGRAD_FIXTURE_DIR;
const std::string kCheckpoint = kDir + "/tinygpt_small.safetensors";
const std::string kTrajectory = kDir + "/adamw_trajectory.safetensors";

// The recipe's hyper-parameters, as the script wrote them into the fixture.
struct Recipe {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t steps;
};

Recipe recipe_of(const SafetensorsFile& fx) {
  auto num = [&](const char* key) { return std::stod(fx.metadata.at(key)); };
  return {num("lr"), num("beta1"), num("beta2"), num("eps"), num("weight_decay"), fx.at("f64.loss").numel()};
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Biases and LayerNorm weights (ln1, ln2, ln_f) are not decayed: the same
// name rule as the script's no_decay().
bool no_decay(const std::string& name) {
  if (ends_with(name, ".bias")) return true;
  const size_t last_dot = name.rfind('.');
  if (last_dot == std::string::npos) return false;
  const size_t module_start = name.rfind('.', last_dot - 1);  // "blocks.0.ln1.weight" -> "ln1"
  return name.compare(module_start == std::string::npos ? 0 : module_start + 1, 2, "ln") == 0;
}

// The attention key biases have a zero gradient in exact arithmetic (softmax
// ignores a shift shared by all keys of a query), so AdamW divides pure
// round-off g by |g| + eps. Any two implementations move them differently:
// by about lr * 1e-17 / eps per step in float64 (PyTorch's moved 2e-11 in
// all), by up to lr per step in float32 (PyTorch's moved 7e-3). Instead of
// being compared, they are checked to stay within 1e-9 of the checkpoint in
// float64, and within 1.1 * steps * lr in float32 (an Adam step moves an
// element by at most about lr with these betas).
bool key_bias(const std::string& name) { return ends_with(name, "attn.k_proj.bias"); }

std::unique_ptr<optim::AdamW> gpt_adamw(const TinyGPT& model, const Recipe& r) {
  optim::ParamGroup decay("decay", {}, r.lr, r.weight_decay), plain("no_decay", {}, r.lr, 0.0);
  for (const auto& [name, p] : model.named_parameters()) (no_decay(name) ? plain : decay).params.push_back(p);
  for (optim::ParamGroup* g : {&decay, &plain}) {
    g->beta1 = r.beta1;
    g->beta2 = r.beta2;
    g->eps = r.eps;
  }
  return std::make_unique<optim::AdamW>(std::vector<optim::ParamGroup>{decay, plain});
}

// Batch s of the fixture's (S, B, t) token ids.
Tensor batch(const Tensor& all, int64_t s) {
  const int64_t B = all.size(1), t = all.size(2);
  const int64_t* first = all.data<int64_t>() + s * B * t;
  return from_indices(std::vector<int64_t>(first, first + B * t), {B, t});
}

double l2_distance(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  double sum = 0;
  for (size_t i = 0; i < x.size(); ++i) sum += (x[i] - y[i]) * (x[i] - y[i]);
  return std::sqrt(sum);
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// max |got - want|; NaN anywhere counts as infinitely far.
double max_abs_difference(const Tensor& got, const Tensor& want) {
  const auto g = got.to_vector(), w = want.to_vector();
  BOOST_REQUIRE_EQUAL(g.size(), w.size());
  double diff = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i])) return INFINITY;
    diff = std::max(diff, std::abs(g[i] - w[i]));
  }
  return diff;
}

// The difference relative to the tensor's scale, so that entries close to
// zero do not demand impossible elementwise accuracy.
double relative_error(const Tensor& got, const Tensor& want) {
  const double scale = max_abs(want);
  return scale > 0 ? max_abs_difference(got, want) / scale : max_abs_difference(got, want);
}

// What a run records, as the script does.
struct Trajectory {
  std::vector<double> losses;                     // (S): before each step's update
  std::vector<std::vector<double>> update_norms;  // (S, P): ||p after - p before||
};

// Steps [first, last) of the fixture's batches.
void train(TinyGPT& model, optim::AdamW& opt, const SafetensorsFile& fx, int64_t first, int64_t last,
           Trajectory& out) {
  const NamedTensors params = model.named_parameters();
  for (int64_t s = first; s < last; ++s) {
    opt.zero_grad();
    Tensor loss = model.loss(batch(fx.at("idx"), s), batch(fx.at("targets"), s));
    loss.backward();
    std::vector<Tensor> before;
    for (const auto& [name, p] : params) before.push_back(p.clone());
    opt.step();
    out.losses.push_back(loss.item());
    std::vector<double> norms;
    for (size_t k = 0; k < params.size(); ++k) norms.push_back(l2_distance(params[k].second, before[k]));
    out.update_norms.push_back(norms);
  }
}

// The checkpoint as a model of dtype dt: float64 by converting the float32
// model, as the script does with model.to(torch.float64).
std::shared_ptr<TinyGPT> load_model(DType dt) {
  std::shared_ptr<TinyGPT> model = TinyGPT::load(kCheckpoint);
  model->to(dt);
  model->eval();
  BOOST_REQUIRE(model->dtype() == dt);
  return model;
}

void check_against_pytorch(DType dt, const std::string& tag, double tol) {
  const SafetensorsFile fx = load_safetensors(kTrajectory);
  const SafetensorsFile start = load_safetensors(kCheckpoint);
  const Recipe r = recipe_of(fx);
  std::shared_ptr<TinyGPT> model = load_model(dt);
  std::unique_ptr<optim::AdamW> opt = gpt_adamw(*model, r);
  Trajectory run;
  train(*model, *opt, fx, 0, r.steps, run);

  // The losses of every step: loss s sees the parameters after s updates.
  const std::vector<double> want_losses = fx.at(tag + ".loss").to_vector();
  BOOST_REQUIRE_EQUAL(want_losses.size(), run.losses.size());
  for (size_t s = 0; s < want_losses.size(); ++s) {
    const double err = std::abs(run.losses[s] - want_losses[s]) / std::abs(want_losses[s]);
    BOOST_CHECK_MESSAGE(err <= tol, tag << std::setprecision(15) << " step " << s << ": loss " << run.losses[s] << " vs PyTorch "
                                        << want_losses[s] << ", relative error " << err);
  }

  // Every update's size, to tell which step and which tensor went wrong first.
  // Adam moves each element by about lr, so lr * sqrt(numel) is the scale.
  const NamedTensors params = model->named_parameters();
  const Tensor& want_norms = fx.at(tag + ".update_norm");  // (S, P)
  BOOST_REQUIRE(want_norms.shape() == (Shape{r.steps, static_cast<int64_t>(params.size())}));
  double worst = 0;
  for (int64_t s = 0; s < r.steps; ++s)
    for (size_t k = 0; k < params.size(); ++k) {
      const auto& [name, p] = params[k];
      if (key_bias(name)) continue;
      const double want = want_norms.at({s, static_cast<int64_t>(k)}), got = run.update_norms[s][k];
      const double err = std::abs(got - want) / std::max(want, r.lr * std::sqrt(static_cast<double>(p.numel())));
      worst = std::max(worst, err);
      BOOST_CHECK_MESSAGE(err <= tol, tag << std::setprecision(15) << " step " << s << ", " << name << ": update norm " << got
                                          << " vs PyTorch " << want << ", relative error " << err);
    }
  BOOST_TEST_MESSAGE(tag << " worst update norm relative error " << worst);

  // Every parameter at the end, in PyTorch's order. The float32 run is held
  // to PyTorch's float64 result: the script checked that PyTorch's own
  // float32 run is within 1e-5 of it.
  const std::string prefix = "f64.final.";
  std::vector<std::string> pytorch_order;
  for (const auto& [name, t] : fx.tensors)
    if (name.rfind(prefix, 0) == 0) pytorch_order.push_back(name.substr(prefix.size()));
  BOOST_REQUIRE_EQUAL(params.size(), pytorch_order.size());
  worst = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    const auto& [name, p] = params[k];
    BOOST_CHECK_EQUAL(name, pytorch_order[k]);
    if (key_bias(name)) {
      const double moved = max_abs_difference(p, start.at(name));
      const double bound = dt == DType::f64 ? 1e-9 : 1.1 * r.steps * r.lr;
      BOOST_CHECK_MESSAGE(moved <= bound, tag << " " << name << " moved by " << moved << " (bound " << bound << ")");
      BOOST_TEST_MESSAGE(tag << " " << name << " (zero gradient) moved by " << moved);
      continue;
    }
    const double err = relative_error(p, fx.at(prefix + name));
    worst = std::max(worst, err);
    BOOST_CHECK_MESSAGE(err <= tol, tag << " final " << name << ": relative error " << err);
  }
  BOOST_TEST_MESSAGE(tag << " worst final parameter relative error " << worst);
}

std::string temp_path(const std::string& what) {
  return "/tmp/loragrad_test_adamw_conformance_" + std::to_string(getpid()) + "_" + what + ".safetensors";
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// Stop after 2 steps, save model and optimizer, resume both from the files in
// fresh objects: the last steps must give the same bits as not stopping.
void check_resume(DType dt, const std::string& tag) {
  const SafetensorsFile fx = load_safetensors(kTrajectory);
  const Recipe r = recipe_of(fx);
  const int64_t stop = 2;
  const std::string model_file = temp_path(tag + "_model"), optimizer_file = temp_path(tag + "_optimizer");

  std::shared_ptr<TinyGPT> straight = load_model(dt);
  std::unique_ptr<optim::AdamW> straight_opt = gpt_adamw(*straight, r);
  Trajectory straight_run, resumed_run;
  train(*straight, *straight_opt, fx, 0, stop, straight_run);
  straight->save(model_file, dt);  // in the run's dtype, so nothing is rounded
  straight_opt->save(optimizer_file);
  train(*straight, *straight_opt, fx, stop, r.steps, straight_run);

  std::shared_ptr<TinyGPT> resumed = TinyGPT::load(model_file, dt);
  std::unique_ptr<optim::AdamW> resumed_opt = gpt_adamw(*resumed, r);
  resumed_opt->load(optimizer_file);
  std::remove(model_file.c_str());
  std::remove(optimizer_file.c_str());
  BOOST_CHECK_EQUAL(resumed_opt->step_count(0, 0), stop);
  BOOST_CHECK_EQUAL(resumed_opt->step_count(1, 0), stop);
  train(*resumed, *resumed_opt, fx, stop, r.steps, resumed_run);

  for (int64_t s = stop; s < r.steps; ++s)
    BOOST_CHECK_MESSAGE(resumed_run.losses[s - stop] == straight_run.losses[s],
                        tag << std::setprecision(17) << " step " << s << ": resumed loss " << resumed_run.losses[s - stop]
                            << " vs uninterrupted " << straight_run.losses[s]);
  const NamedTensors want = straight->named_parameters(), got = resumed->named_parameters();
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k)
    BOOST_CHECK_MESSAGE(same_bits(got[k].second, want[k].second), tag << " " << got[k].first << " differs after resuming");
  const optim::OptimizerState a = straight_opt->state_dict(), b = resumed_opt->state_dict();
  BOOST_REQUIRE_EQUAL(a.tensors.size(), b.tensors.size());
  for (size_t k = 0; k < a.tensors.size(); ++k)
    BOOST_CHECK_MESSAGE(same_bits(a.tensors[k].second, b.tensors[k].second), tag << " " << a.tensors[k].first << " differs");
  BOOST_CHECK(a.metadata == b.metadata);
}

}  // namespace

// The name rule gives exactly the groups of the usual `p.dim() < 2` rule.
BOOST_AUTO_TEST_CASE(groups_follow_the_gpt_recipe) {
  const SafetensorsFile fx = load_safetensors(kTrajectory);
  std::shared_ptr<TinyGPT> model = load_model(DType::f32);
  std::unique_ptr<optim::AdamW> opt = gpt_adamw(*model, recipe_of(fx));
  int64_t vectors = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    BOOST_CHECK_MESSAGE(no_decay(name) == (p.dim() == 1), name);
    vectors += p.dim() == 1;
  }
  BOOST_CHECK_EQUAL(opt->group("no_decay").params.size(), static_cast<size_t>(vectors));
  BOOST_CHECK_EQUAL(opt->group("decay").params.size(), model->named_parameters().size() - vectors);
  BOOST_CHECK_EQUAL(opt->group("decay").weight_decay, 0.1);
  BOOST_CHECK_EQUAL(opt->group("no_decay").weight_decay, 0.0);
  BOOST_CHECK(!no_decay("tok_emb.weight"));
  BOOST_CHECK(no_decay("ln_f.weight"));
  BOOST_CHECK(no_decay("blocks.1.ln2.weight"));
  BOOST_CHECK(!no_decay("lm_head.weight"));
}

BOOST_AUTO_TEST_CASE(float64_trajectory_matches_pytorch_to_1e_10) { check_against_pytorch(DType::f64, "f64", 1e-10); }

BOOST_AUTO_TEST_CASE(float32_trajectory_matches_pytorch_to_1e_4) { check_against_pytorch(DType::f32, "f32", 1e-4); }

BOOST_AUTO_TEST_CASE(float64_resume_after_two_steps_is_bit_identical) { check_resume(DType::f64, "f64"); }

BOOST_AUTO_TEST_CASE(float32_resume_after_two_steps_is_bit_identical) { check_resume(DType::f32, "f32"); }
