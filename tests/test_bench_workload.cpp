// The benchmark workload (loragrad/app/workload.hpp): the FLOP count of a
// training step against the spec's own numbers, and the FMA peak measure.
#define BOOST_TEST_MODULE test_bench_workload
#include <boost/test/unit_test.hpp>

#include <string>

#include "loragrad/app/args.hpp"
#include "loragrad/app/fma_peak.hpp"
#include "loragrad/app/workload.hpp"
#include "loragrad/kernels/isa.hpp"

using namespace loragrad::app;

// shared/spec/workload.md: "By that formula a LoRA step is 8.51 GFLOP (S) and
// 53.4 GFLOP (M)", given to the digits printed there.
BOOST_AUTO_TEST_CASE(lora_step_matches_the_spec) {
  BOOST_TEST(step_flops(workload_preset("S"), Method::lora) / 1e9 == 8.51, boost::test_tools::tolerance(0.005 / 8.51));
  BOOST_TEST(step_flops(workload_preset("M"), Method::lora) / 1e9 == 53.4, boost::test_tools::tolerance(0.05 / 53.4));
}

BOOST_AUTO_TEST_CASE(presets_are_the_spec_table) {
  const Workload s = workload_preset("S"), m = workload_preset("M");
  BOOST_TEST(s.d_model == 128);
  BOOST_TEST(s.n_layer == 4);
  BOOST_TEST(s.tokens() == 16 * 128);
  BOOST_TEST(s.targets.size() == 4u);
  BOOST_TEST(m.d_model == 256);
  BOOST_TEST(m.n_head == 8);
  BOOST_TEST(m.tokens() == 8 * 256);
  BOOST_TEST(m.r == 16);
  BOOST_TEST(m.targets.size() == 6u);
  BOOST_CHECK_THROW(workload_preset("L"), UsageError);
}

// dora and qlora count the same useful work as lora; full fine-tuning trains
// every matmul's weight and every input, so its step is exactly 3 forwards.
BOOST_AUTO_TEST_CASE(methods) {
  for (const char* name : {"S", "M"}) {
    const Workload w = workload_preset(name);
    BOOST_TEST(step_flops(w, Method::dora) == step_flops(w, Method::lora));
    BOOST_TEST(step_flops(w, Method::qlora) == step_flops(w, Method::lora));
    const double N = double(w.tokens()), d = double(w.d_model), T = double(w.seq), V = double(w.vocab);
    const double forward = double(w.n_layer) * (24 * N * d * d + 4 * N * T * d) + 2 * N * d * V;
    BOOST_TEST(step_flops(w, Method::full) == 3 * forward, boost::test_tools::tolerance(1e-12));
  }
  BOOST_CHECK(parse_method("qlora") == Method::qlora);
  BOOST_CHECK_THROW(parse_method("lorax"), UsageError);
}

// An adapter on v_proj alone: in the first block q and k need no gradient at
// all, so neither does the score matmul's dq, dk nor dP; only P^T dy for dv.
BOOST_AUTO_TEST_CASE(gradients_follow_the_trained_parameters) {
  Workload w;
  w.d_model = 16;
  w.n_layer = 1;
  w.n_head = 2;
  w.seq = 8;
  w.batch = 2;
  w.r = 2;
  w.targets = {"v_proj"};
  const double N = 16, d = 16, T = 8, V = 256, r = 2, ff = 64;
  const double lin = 2 * N * d * d, core = 2 * N * T * d;
  const double expected = 4 * lin + 2 * (2 * N * d * ff)  // forward of q, k, v, o, fc_in, fc_out
                          + 2 * core                         // q k^T and P v
                          + 2 * N * r * d * 2 + 3 * 2 * N * r * d  // v's LoRA: A forward + dA; B forward, dB, dx
                          + core                             // dv = P^T dy
                          + lin + 2 * (2 * N * d * ff)      // input gradients of o, fc_in, fc_out
                          + 2 * (2 * N * d * V);             // the head: forward and input gradient
  BOOST_TEST(step_flops(w, Method::lora) == expected, boost::test_tools::tolerance(1e-12));
}

BOOST_AUTO_TEST_CASE(fma_peak_is_measured) {
  const FmaPeak p = measure_fma_peak(1, 0.02, 1);
  BOOST_TEST(p.gflops > 0.0);
  BOOST_TEST(p.threads == 1);
  BOOST_TEST(p.isa == loragrad::kernels::compiled_isa());
  BOOST_TEST((p.lanes == 4 || p.lanes == 8 || p.lanes == 16));
  BOOST_TEST(p.str().find("GFLOP/s") != std::string::npos);
}
