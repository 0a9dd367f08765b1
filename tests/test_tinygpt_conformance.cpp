// TinyGPT against PyTorch: the checkpoint in tests/reference/fixtures (written
// by loragrad) was loaded by an independent PyTorch module with the same
// names (tests/reference/make_tinygpt_fixtures.py), which recorded logits,
// loss and every parameter gradient for a fixed batch, in float64 and
// float32. Here loragrad runs the same batch and must agree: float64 to
// 1e-10 and float32 to 1e-4, relative to each tensor's largest magnitude.
#define BOOST_TEST_MODULE tinygpt_conformance
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;
using namespace loragrad::nn;

namespace {

const std::string kDir = LORAGRAD_FIXTURE_DIR;
const std::string kCheckpoint = kDir + "/tinygpt_small.safetensors";
const std::string kExpected = kDir + "/tinygpt_small_expected.safetensors";

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// max |got - want| / max(max |want|, floor): the error relative to the
// tensor's scale, so that entries close to zero do not demand impossible
// elementwise accuracy. The floor matters for the k_proj biases: their
// gradient is zero in exact arithmetic (softmax ignores a shift shared by all
// keys of a query), so both sides hold round-off of about 1e-17 there, and
// they are measured against the scale of the other gradients instead.
double relative_error(const Tensor& got, const Tensor& want, double floor = 0) {
  auto g = got.to_vector(), w = want.to_vector();
  BOOST_REQUIRE_EQUAL(g.size(), w.size());
  double diff = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i])) return INFINITY;
    diff = std::max(diff, std::abs(g[i] - w[i]));
  }
  const double scale = std::max(max_abs(want), floor);
  return scale > 0 ? diff / scale : diff;
}

void check_against_pytorch(DType dt, const std::string& tag, double tol) {
  SafetensorsFile expected = load_safetensors(kExpected);
  std::shared_ptr<TinyGPT> model = TinyGPT::load(kCheckpoint, dt);
  BOOST_REQUIRE(model->dtype() == dt);
  const Tensor& idx = expected.at("idx");          // (B, t) i64
  const Tensor& targets = expected.at("targets");  // (B, t) i64
  BOOST_REQUIRE(idx.dtype() == DType::i64);
  BOOST_REQUIRE_LT(idx.size(1), model->config().block_size);  // pos_emb is cropped

  Tensor logits = model->forward(idx);
  Tensor loss = cross_entropy(logits, targets);
  loss.backward();

  const Tensor& want_logits = expected.at(tag + ".logits");
  BOOST_REQUIRE(logits.shape() == want_logits.shape());
  BOOST_CHECK(want_logits.dtype() == dt);
  double err = relative_error(logits, want_logits);
  BOOST_CHECK_MESSAGE(err <= tol, tag << " logits: relative error " << err);
  err = relative_error(loss, expected.at(tag + ".loss"));
  BOOST_CHECK_MESSAGE(err <= tol, tag << " loss " << loss.item() << " vs " << expected.at(tag + ".loss").item()
                                      << ": relative error " << err);
  BOOST_TEST_MESSAGE(tag << " loss " << loss.item());

  // Every parameter has a gradient matching PyTorch's, and PyTorch listed the
  // parameters in the same order (its named_parameters order is the file order).
  std::vector<std::string> pytorch_order;
  const std::string prefix = tag + ".grad.";
  for (const auto& [name, t] : expected.tensors)
    if (name.rfind(prefix, 0) == 0) pytorch_order.push_back(name.substr(prefix.size()));
  NamedTensors params = model->named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), pytorch_order.size());
  double largest_gradient = 0;
  for (const auto& name : pytorch_order) largest_gradient = std::max(largest_gradient, max_abs(expected.at(prefix + name)));
  const double floor = 1e-3 * largest_gradient;
  double worst = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, p] = params[i];
    BOOST_CHECK_EQUAL(name, pytorch_order[i]);
    BOOST_REQUIRE_MESSAGE(p.grad().defined(), name << " has no gradient");
    const double e = relative_error(p.grad(), expected.at(prefix + name), floor);
    worst = std::max(worst, e);
    BOOST_CHECK_MESSAGE(e <= tol, tag << " grad " << name << ": relative error " << e);
  }
  BOOST_TEST_MESSAGE(tag << " worst gradient relative error " << worst);
}

}  // namespace

BOOST_AUTO_TEST_CASE(float64_matches_pytorch_to_1e_10) { check_against_pytorch(DType::f64, "f64", 1e-10); }

BOOST_AUTO_TEST_CASE(float32_matches_pytorch_to_1e_4) { check_against_pytorch(DType::f32, "f32", 1e-4); }

// The fixture checkpoint is a loragrad checkpoint: it round-trips through save.
BOOST_AUTO_TEST_CASE(fixture_checkpoint_metadata) {
  SafetensorsFile f = load_safetensors(kCheckpoint);
  TinyGPTConfig c = TinyGPTConfig::from_metadata(f.metadata, kCheckpoint);
  BOOST_CHECK_EQUAL(c.vocab_size, 256);
  BOOST_CHECK_EQUAL(c.block_size, 16);
  BOOST_CHECK_EQUAL(c.d_model, 32);
  BOOST_CHECK_EQUAL(c.n_layer, 2);
  BOOST_CHECK_EQUAL(c.n_head, 4);
  BOOST_CHECK_EQUAL(c.d_ff, 128);
  for (const auto& [name, t] : f.tensors) BOOST_CHECK_MESSAGE(t.dtype() == DType::f32, name);
}
