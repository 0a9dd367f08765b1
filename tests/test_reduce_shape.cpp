// Reductions, shape ops and index ops: values against hand-computed numbers,
// shapes, storage sharing, error messages, gradients.
#define BOOST_TEST_MODULE reduce_shape
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "loragrad/gradcheck.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;

namespace {

// BOOST_CHECK_EXCEPTION predicate: the message names `what` (the op, a value, ...).
auto mentions(std::string what) {
  return [what](const Error& e) {
    const bool ok = std::string(e.what()).find(what) != std::string::npos;
    if (!ok) BOOST_TEST_MESSAGE("message '" << e.what() << "' does not mention '" << what << "'");
    return ok;
  };
}

void check_values(const Tensor& t, const Shape& shape, const std::vector<double>& want, double tol = 1e-12) {
  BOOST_REQUIRE_EQUAL(shape_str(t.shape()), shape_str(shape));
  const std::vector<double> got = t.to_vector();
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    BOOST_CHECK_MESSAGE(std::abs(got[i] - want[i]) <= tol * std::max(1.0, std::abs(want[i])),
                        "element " << i << ": got " << got[i] << ", want " << want[i]);
}

// arange(n) as a tensor of `shape`, float64.
Tensor iota(const Shape& shape, DType dt = DType::f64) {
  return reshape(arange(shape_numel(shape), dt), shape);
}

Tensor leaf(Tensor t) {
  t.requires_grad_(true);
  return t;
}

Tensor rnd(const Shape& shape, uint64_t seed, DType dt = DType::f64) {
  Generator gen(seed);
  return uniform(shape, -1.0, 1.0, gen, dt);
}

}  // namespace

// ---------------------------------------------------------------- reductions

BOOST_AUTO_TEST_CASE(sum_of_arange) {
  Tensor x = iota({3, 4});  // [[0 1 2 3] [4 5 6 7] [8 9 10 11]]
  check_values(sum(x), {}, {66});
  check_values(sum(x, {0}), {4}, {12, 15, 18, 21});
  check_values(sum(x, {1}), {3}, {6, 22, 38});
  check_values(sum(x, {-1}, true), {3, 1}, {6, 22, 38});
  check_values(sum(x, {0, 1}, true), {1, 1}, {66});
  check_values(sum(x, {1, 0}), {}, {66});
  check_values(mean(x, {0}), {4}, {4, 5, 6, 7});
  check_values(mean(x), {}, {5.5});
  check_values(mean(x, {-1}, true), {3, 1}, {1.5, 5.5, 9.5});
}

BOOST_AUTO_TEST_CASE(sum_over_non_adjacent_dims) {
  Tensor x = iota({2, 3, 4});  // x[i][j][k] = 12 i + 4 j + k
  // sum over i and k: sum_i sum_k (12 i + 4 j + k) = 2*4*4j + 4*12 + 2*6 = 32 j + 60
  check_values(sum(x, {0, 2}), {3}, {60, 92, 124});
  check_values(sum(x, {2, 0}, true), {1, 3, 1}, {60, 92, 124});
  check_values(mean(x, {0, -1}), {3}, {7.5, 11.5, 15.5});
  // over j: sum_j (12 i + 4 j + k) = 36 i + 12 + 3 k
  check_values(sum(x, {1}), {2, 4}, {12, 15, 18, 21, 48, 51, 54, 57});
  Tensor y = iota({2, 3, 4, 5});
  check_values(sum(y, {0, 1, 2, 3}), {}, {119.0 * 120 / 2});
  BOOST_CHECK_EQUAL(shape_str(sum(y, {0, 3}, true).shape()), "[1, 3, 4, 1]");
  BOOST_CHECK_EQUAL(shape_str(sum(y, {1, 3}).shape()), "[2, 4]");
  BOOST_CHECK_CLOSE(sum(sum(y, {1, 3})).item(), 7140.0, 1e-12);
}

BOOST_AUTO_TEST_CASE(zero_d_and_size_one) {
  Tensor s = scalar(3.5, DType::f64);
  check_values(sum(s), {}, {3.5});
  check_values(mean(s, {0}), {}, {3.5});
  check_values(sum(s, {-1}, true), {}, {3.5});
  check_values(max(s), {}, {3.5});
  check_values(max(s, 0), {}, {3.5});
  Tensor one = full({1, 1}, 2.0, DType::f64);
  check_values(sum(one, {0}), {1}, {2});
  check_values(mean(one, {1}, true), {1, 1}, {2});
  Tensor col = iota({4, 1});
  check_values(sum(col, {1}), {4}, {0, 1, 2, 3});
  check_values(max(col, 0, true), {1, 1}, {3});
  // a dim of size 0: sum is 0, mean is NaN, as in PyTorch
  Tensor empty_rows = zeros({0, 3}, DType::f64);
  check_values(sum(empty_rows, {0}), {3}, {0, 0, 0});
  BOOST_CHECK(std::isnan(mean(empty_rows, {0}).at({1})));
}

BOOST_AUTO_TEST_CASE(max_values_and_first_max_gradient) {
  Tensor x = from_values(std::vector<double>{1, 5, 2, 7, 7, 0, -1, -3, -2}, {3, 3}, DType::f64);
  check_values(max(x, 1), {3}, {5, 7, -1});
  check_values(max(x, 0, true), {1, 3}, {7, 7, 2});
  check_values(max(x), {}, {7});
  // ties: the gradient goes to the first maximum only
  Tensor a = leaf(from_values(std::vector<double>{1, 3, 3, 2}, {4}, DType::f64));
  max(a).backward();
  check_values(a.grad(), {4}, {0, 1, 0, 0});
  Tensor b = leaf(x.clone());
  Tensor m = max(b, 0);  // [7 (row 1), 7 (row 1), 2 (row 0)]
  m.backward(from_values(std::vector<double>{10, 20, 30}, {3}, DType::f64));
  check_values(b.grad(), {3, 3}, {0, 0, 30, 10, 20, 0, 0, 0, 0});
}

BOOST_AUTO_TEST_CASE(sum_and_mean_gradients_broadcast_back) {
  Tensor x = leaf(iota({2, 3, 4}));
  sum(sum(x, {0, 2}) * from_values(std::vector<double>{1, 2, 3}, {3}, DType::f64)).backward();
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) BOOST_CHECK_EQUAL(x.grad().at({i, j, k}), j + 1.0);
  Tensor y = leaf(iota({2, 5}));
  mean(y, {-1}, true).backward(from_values(std::vector<double>{5, 10}, {2, 1}, DType::f64));
  check_values(y.grad(), {2, 5}, {1, 1, 1, 1, 1, 2, 2, 2, 2, 2});
}

BOOST_AUTO_TEST_CASE(float32_sums_are_accurate) {
  // Large enough to take the threaded paths (rows, columns and one long row).
  Tensor x = rnd({1000, 300}, 7, DType::f32);
  std::vector<double> v = x.to_vector();
  std::vector<double> rows(1000, 0.0), cols(300, 0.0);
  double all = 0;
  for (int64_t i = 0; i < 1000; ++i)
    for (int64_t j = 0; j < 300; ++j) {
      rows[i] += v[i * 300 + j];
      cols[j] += v[i * 300 + j];
      all += v[i * 300 + j];
    }
  check_values(sum(x, {1}), {1000}, rows, 1e-5);
  check_values(sum(x, {0}), {300}, cols, 1e-5);
  check_values(mean(x, {0}, true), {1, 300}, [&] {
    std::vector<double> m = cols;
    for (double& c : m) c /= 1000;
    return m;
  }(), 1e-5);
  BOOST_CHECK_SMALL(sum(x).item() - all, 1e-5 * 300000 / 2);
  // a constant sum, where float32 accumulation would drift: 0.1 a million times
  Tensor tenths = full({1000000}, 0.1, DType::f32);
  BOOST_CHECK_CLOSE(sum(tenths).item(), 100000.0 * static_cast<double>(0.1f) / 0.1, 1e-4);
}

// ---------------------------------------------------------------- shape ops

BOOST_AUTO_TEST_CASE(reshape_shares_storage) {
  Tensor x = iota({2, 6});
  Tensor y = reshape(x, {3, -1});
  BOOST_CHECK_EQUAL(shape_str(y.shape()), "[3, 4]");
  BOOST_CHECK_EQUAL(y.raw_data(), x.raw_data());
  y.set({2, 3}, 100.0);
  BOOST_CHECK_EQUAL(x.at({1, 5}), 100.0);
  x.set({0, 1}, -5.0);
  BOOST_CHECK_EQUAL(y.at({0, 1}), -5.0);
  BOOST_CHECK_EQUAL(shape_str(reshape(x, {-1}).shape()), "[12]");
  BOOST_CHECK_EQUAL(shape_str(reshape(scalar(1.0), {1, 1, 1}).shape()), "[1, 1, 1]");
  BOOST_CHECK_EQUAL(shape_str(reshape(ones({1, 1}), {}).shape()), "[]");
  // reshape's backward reshapes back
  Tensor w = leaf(iota({2, 3}));
  sum(reshape(w, {3, 2}) * iota({3, 2})).backward();
  check_values(w.grad(), {2, 3}, {0, 1, 2, 3, 4, 5});
}

BOOST_AUTO_TEST_CASE(modifying_a_saved_tensor_through_a_reshape_is_caught) {
  // embedding saves its indices; writing them through a reshape (same storage)
  // bumps the shared version, and backward refuses to use them.
  Tensor w = leaf(rnd({5, 3}, 1));
  Tensor idx = from_indices({0, 1, 2, 3}, {2, 2});
  Tensor flat = reshape(idx, {4});
  Tensor e = embedding(w, flat);
  reshape(idx, {-1}).set({1}, 4.0);
  BOOST_CHECK_EXCEPTION(sum(e).backward(), AutogradError, mentions("embedding"));
  // the same through a float op that saves its output: exp
  Tensor a = leaf(rnd({2, 3}, 2));
  Tensor b = exp(a);
  Tensor view = reshape(b, {6});
  Tensor c = sum(b);
  view.set({0}, 0.0);
  BOOST_CHECK_EXCEPTION(c.backward(), AutogradError, mentions("exp"));
}

BOOST_AUTO_TEST_CASE(transpose_and_permute_values) {
  Tensor x = iota({2, 3});
  check_values(transpose(x, 0, 1), {3, 2}, {0, 3, 1, 4, 2, 5});
  check_values(transpose(x, -1, 0), {3, 2}, {0, 3, 1, 4, 2, 5});
  check_values(transpose(x, 1, 1), {2, 3}, {0, 1, 2, 3, 4, 5});
  Tensor y = iota({2, 3, 4});
  Tensor p = permute(y, {2, 0, 1});  // p[k][i][j] = y[i][j][k]
  BOOST_CHECK_EQUAL(shape_str(p.shape()), "[4, 2, 3]");
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) BOOST_CHECK_EQUAL(p.at({k, i, j}), 12.0 * i + 4 * j + k);
  // bigger than a tile and the thread threshold, every path: last-two swap, heads, general
  Tensor z = rnd({3, 5, 67, 71}, 3);
  Tensor zt = transpose(z, -1, -2), zh = permute(z, {0, 2, 1, 3}), zg = permute(z, {3, 1, 0, 2});
  int bad = 0;
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t b = 0; b < 5; ++b)
      for (int64_t c = 0; c < 67; ++c)
        for (int64_t d = 0; d < 71; ++d) {
          const double v = z.at({a, b, c, d});
          bad += zt.at({a, b, d, c}) != v;
          bad += zh.at({a, c, b, d}) != v;
          bad += zg.at({d, b, a, c}) != v;
        }
  BOOST_CHECK_EQUAL(bad, 0);
  // i64 tensors permute too (byte copies)
  check_values(transpose(from_indices({1, 2, 3, 4, 5, 6}, {3, 2}), 0, 1), {2, 3}, {1, 3, 5, 2, 4, 6});
}

BOOST_AUTO_TEST_CASE(transpose_gradient_is_the_inverse_permutation) {
  Tensor x = leaf(iota({2, 3, 4}));
  Tensor g = rnd({4, 2, 3}, 4);
  permute(x, {2, 0, 1}).backward(g);
  BOOST_CHECK_EQUAL(shape_str(x.grad().shape()), "[2, 3, 4]");
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) BOOST_CHECK_EQUAL(x.grad().at({i, j, k}), g.at({k, i, j}));
}

BOOST_AUTO_TEST_CASE(narrow_concat_split_values) {
  Tensor x = iota({3, 4});
  check_values(narrow(x, 1, 1, 2), {3, 2}, {1, 2, 5, 6, 9, 10});
  check_values(narrow(x, 0, 2, 1), {1, 4}, {8, 9, 10, 11});
  check_values(narrow(x, -1, -1, 1), {3, 1}, {3, 7, 11});
  BOOST_CHECK_EQUAL(shape_str(narrow(x, 0, 3, 0).shape()), "[0, 4]");
  Tensor a = iota({2, 2}), b = full({2, 1}, -1.0, DType::f64);
  check_values(concat({a, b}, 1), {2, 3}, {0, 1, -1, 2, 3, -1});
  check_values(concat({a, transpose(b, 0, 1)}, 0), {3, 2}, {0, 1, 2, 3, -1, -1});
  std::vector<Tensor> parts = split(iota({7, 2}), 3, 0);
  BOOST_REQUIRE_EQUAL(parts.size(), 3u);
  check_values(parts[0], {3, 2}, {0, 1, 2, 3, 4, 5});
  check_values(parts[2], {1, 2}, {12, 13});  // the last piece is shorter
  check_values(concat(parts, 0), {7, 2}, iota({7, 2}).to_vector());
  BOOST_CHECK_EQUAL(split(iota({2, 4}), 4, -1).size(), 1u);
}

// narrow scatters into zeros, concat narrows back
BOOST_AUTO_TEST_CASE(narrow_and_concat_gradients) {
  Tensor p = leaf(iota({2, 3})), q = leaf(iota({2, 1}));
  Tensor y = concat({narrow(p, 1, 1, 2), q}, 1);  // (2, 3): p[:, 1:3] then q
  y.backward(from_values(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64));
  check_values(p.grad(), {2, 3}, {0, 1, 2, 0, 4, 5});
  check_values(q.grad(), {2, 1}, {3, 6});
}

// ---------------------------------------------------------------- index ops

BOOST_AUTO_TEST_CASE(index_select_values_and_scatter_add) {
  Tensor x = leaf(iota({3, 4}));
  Tensor rows = index_select(x, 0, from_indices({2, 0, 2}, {3}));
  check_values(rows, {3, 4}, {8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11});
  Tensor cols = index_select(x, -1, from_indices({3, 3}, {2}));
  check_values(cols, {3, 2}, {3, 3, 7, 7, 11, 11});
  (sum(rows) + sum(cols)).backward();
  // rows: row 2 twice, row 0 once; cols: column 3 twice
  check_values(x.grad(), {3, 4}, {1, 1, 1, 3, 0, 0, 0, 2, 2, 2, 2, 4});
}

BOOST_AUTO_TEST_CASE(embedding_values_and_scatter_add) {
  Tensor w = leaf(iota({4, 3}));
  Tensor idx = from_indices({1, 3, 1, 1, 0, 3}, {2, 3});
  Tensor e = embedding(w, idx);
  check_values(e, {2, 3, 3}, {3, 4, 5, 9, 10, 11, 3, 4, 5, 3, 4, 5, 0, 1, 2, 9, 10, 11});
  sum(e * iota({2, 3, 3})).backward();
  // row r of the gradient = sum over tokens t with idx t == r of g[t]; g[t] = (3t, 3t+1, 3t+2)
  check_values(w.grad(), {4, 3}, {12, 13, 14, 0 + 6 + 9, 1 + 7 + 10, 2 + 8 + 11, 0, 0, 0, 3 + 15, 4 + 16, 5 + 17});
  // 0-d idx: one row, shape (d)
  check_values(embedding(w.detach(), from_indices({2}, {})), {3}, {6, 7, 8});
}

BOOST_AUTO_TEST_CASE(embedding_scatter_add_large) {
  // wide rows and many repeated tokens: the threaded scatter must not race
  const int64_t V = 50, D = 600, N = 4000;
  std::vector<int64_t> ids(N);
  for (int64_t t = 0; t < N; ++t) ids[t] = (t * 7) % V;
  Tensor w = leaf(rnd({V, D}, 5));
  Tensor e = embedding(w, from_indices(ids, {N}));
  e.backward(ones({N, D}, DType::f64));
  std::vector<double> count(V, 0.0);
  for (int64_t id : ids) count[id] += 1;
  int bad = 0;
  for (int64_t v = 0; v < V; ++v)
    for (int64_t d = 0; d < D; ++d) bad += w.grad().at({v, d}) != count[v];
  BOOST_CHECK_EQUAL(bad, 0);
}

// ---------------------------------------------------------------- errors

BOOST_AUTO_TEST_CASE(errors_name_the_op) {
  Tensor x = iota({2, 3});
  BOOST_CHECK_EXCEPTION(sum(x, {0, 0}), ValueError, mentions("sum"));
  BOOST_CHECK_EXCEPTION(sum(x, {1, -1}), ValueError, mentions("sum"));
  BOOST_CHECK_EXCEPTION(mean(x, {2}), IndexError, mentions("mean"));
  BOOST_CHECK_EXCEPTION(sum(from_indices({1, 2}, {2})), DTypeError, mentions("sum"));
  BOOST_CHECK_EXCEPTION(max(x, -3), IndexError, mentions("max"));
  BOOST_CHECK_EXCEPTION(max(zeros({0, 3}, DType::f64)), ValueError, mentions("max"));
  BOOST_CHECK_EXCEPTION(max(zeros({0, 3}, DType::f64), 0), ValueError, mentions("max"));
  BOOST_CHECK_EXCEPTION(reshape(x, {4, 2}), ShapeError, mentions("reshape"));
  BOOST_CHECK_EXCEPTION(reshape(x, {-1, -1}), ShapeError, mentions("reshape"));
  BOOST_CHECK_EXCEPTION(reshape(x, {4, -1}), ShapeError, mentions("[2, 3]"));
  BOOST_CHECK_EXCEPTION(transpose(x, 0, 2), IndexError, mentions("transpose"));
  BOOST_CHECK_EXCEPTION(permute(x, {0}), ShapeError, mentions("permute"));
  BOOST_CHECK_EXCEPTION(permute(x, {1, 1}), ValueError, mentions("permute"));
  BOOST_CHECK_EXCEPTION(narrow(x, 1, 2, 2), IndexError, mentions("narrow"));
  BOOST_CHECK_EXCEPTION(narrow(x, 0, 0, -1), IndexError, mentions("narrow"));
  BOOST_CHECK_EXCEPTION(concat({}, 0), ValueError, mentions("concat"));
  BOOST_CHECK_EXCEPTION(concat({x, iota({3, 3})}, 1), ShapeError, mentions("concat"));
  BOOST_CHECK_EXCEPTION(concat({x, iota({2, 3, 1})}, 0), ShapeError, mentions("concat"));
  BOOST_CHECK_EXCEPTION(concat({x, iota({2, 3}, DType::f32)}, 0), DTypeError, mentions("concat"));
  BOOST_CHECK_EXCEPTION(split(x, 0, 0), ValueError, mentions("split"));
  BOOST_CHECK_EXCEPTION(index_select(x, 1, from_indices({0, 3}, {2})), IndexError, mentions("index_select"));
  BOOST_CHECK_EXCEPTION(index_select(x, 1, from_indices({0, 3}, {2})), IndexError, mentions("index 3"));
  BOOST_CHECK_EXCEPTION(index_select(x, 0, from_indices({-1}, {1})), IndexError, mentions("[0, 2)"));
  BOOST_CHECK_EXCEPTION(index_select(x, 0, arange(2, DType::f64)), DTypeError, mentions("index_select"));
  BOOST_CHECK_EXCEPTION(index_select(x, 0, from_indices({0, 1}, {1, 2})), ShapeError, mentions("index_select"));
  Tensor w = iota({5, 3});
  BOOST_CHECK_EXCEPTION(embedding(w, from_indices({1, 5}, {2})), IndexError, mentions("embedding"));
  BOOST_CHECK_EXCEPTION(embedding(w, from_indices({1, 5}, {2})), IndexError, mentions("index 5"));
  BOOST_CHECK_EXCEPTION(embedding(w, from_indices({1, 5}, {2})), IndexError, mentions("[0, 5)"));
  BOOST_CHECK_EXCEPTION(embedding(w, from_values(std::vector<double>{1, 2}, {2})), DTypeError, mentions("embedding"));
  BOOST_CHECK_EXCEPTION(embedding(iota({5}), from_indices({1}, {1})), ShapeError, mentions("embedding"));
}

// ---------------------------------------------------------------- gradcheck of compositions

BOOST_AUTO_TEST_CASE(gradcheck_compositions) {
  // attention-style head split and merge, with a column mean and a max
  auto heads = [](const std::vector<Tensor>& in) {
    Tensor x = in[0];                                   // (B=2, T=3, C=4)
    Tensor h = permute(reshape(x, {2, 3, 2, 2}), {0, 2, 1, 3});  // (B, H, T, hd)
    Tensor back = reshape(transpose(h, 1, 2), {2, 3, 4});
    return max(mean(back * x, {1}), -1) + sum(narrow(h, 3, 1, 1), {1, 2, 3});  // (2)
  };
  Tensor x = rnd({2, 3, 4}, 11);
  x.requires_grad_(true);
  GradcheckResult r = gradcheck(heads, {x});
  BOOST_CHECK_MESSAGE(r.ok, r.report);

  // embedding + index_select + concat + split, the weight used twice
  Tensor idx = from_indices({0, 2, 2, 1, 0, 2}, {2, 3});
  auto tokens = [idx](const std::vector<Tensor>& in) {
    Tensor w = in[0], b = in[1];               // (V=3, d=4), (2, 4)
    Tensor e = embedding(w, idx);             // (2, 3, 4)
    Tensor rows = index_select(w, 0, from_indices({1, 1}, {2}));  // (2, 4)
    Tensor cat = concat({sum(e, {1}), rows * b}, 0);              // (4, 4)
    std::vector<Tensor> parts = split(cat, 3, 1);                 // (4, 3), (4, 1)
    return sum(parts[0], {0}, true) * mean(parts[1]);
  };
  Tensor w = rnd({3, 4}, 12), b = rnd({2, 4}, 13);
  w.requires_grad_(true);
  b.requires_grad_(true);
  r = gradcheck(tokens, {w, b});
  BOOST_CHECK_MESSAGE(r.ok, r.report);
}
