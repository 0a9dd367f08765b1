// One-sided Jacobi SVD (Hestenes) in double, and rank-r factors from it.
//
// The idea: rotate pairs of columns of G = A (m >= n) until all columns are
// mutually orthogonal, accumulating the same rotations in V. Then
// G = A V = U diag(S), so A = U diag(S) V^T with S the column norms of G.
// Each rotation makes one pair orthogonal exactly; sweeps over all pairs
// converge quadratically in the end. Plenty for (out, in) weights of small models.
#include "loragrad/lora/linalg.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

namespace loragrad::lora {

namespace {

// A dense column-major matrix of doubles: column j is cols[j] (rows entries).
struct Columns {
  int64_t rows = 0;
  std::vector<std::vector<double>> cols;
};

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Rotates columns p and q of g and of v so that g's two columns become orthogonal.
// Returns false when they already were (to working precision).
bool rotate_pair(std::vector<double>& gp, std::vector<double>& gq, std::vector<double>& vp,
                 std::vector<double>& vq) {
  const double alpha = dot(gp, gp), beta = dot(gq, gq), gamma = dot(gp, gq);
  const double eps = std::numeric_limits<double>::epsilon();
  if (gamma == 0 || std::abs(gamma) <= eps * std::sqrt(alpha * beta)) return false;
  // The rotation angle that zeroes the (p, q) entry of G^T G (the symmetric 2x2 Schur step).
  const double zeta = (beta - alpha) / (2 * gamma);
  const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::abs(zeta) + std::sqrt(1 + zeta * zeta));
  const double c = 1 / std::sqrt(1 + t * t), s = c * t;
  auto apply = [c, s](std::vector<double>& x, std::vector<double>& y) {
    for (size_t i = 0; i < x.size(); ++i) {
      const double xi = x[i], yi = y[i];
      x[i] = c * xi - s * yi;
      y[i] = s * xi + c * yi;
    }
  };
  apply(gp, gq);
  apply(vp, vq);
  return true;
}

// SVD of a tall (m >= n) matrix given as its columns: returns U (m x n, columns), S (n), V (n x n, columns).
void jacobi_tall(Columns& g, std::vector<double>& S, Columns& V) {
  const int64_t n = static_cast<int64_t>(g.cols.size());
  V.rows = n;
  V.cols.assign(n, std::vector<double>(n, 0.0));
  for (int64_t j = 0; j < n; ++j) V.cols[j][j] = 1;
  const int max_sweeps = 80;  // convergence takes ~6-12 sweeps for matrices of this size
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    bool rotated = false;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) rotated |= rotate_pair(g.cols[p], g.cols[q], V.cols[p], V.cols[q]);
    if (!rotated) break;
  }
  S.resize(n);
  for (int64_t j = 0; j < n; ++j) S[j] = std::sqrt(dot(g.cols[j], g.cols[j]));
}

}  // namespace

Svd svd(const Tensor& a) {
  check_defined(a, "svd");
  check_floating(a, "svd");
  if (a.dim() != 2) throw ShapeError("svd: expected a 2-d matrix, got " + shape_str(a.shape()));
  const int64_t m = a.size(0), n = a.size(1);
  if (m == 0 || n == 0) throw ShapeError("svd: empty matrix " + shape_str(a.shape()));
  const std::vector<double> v = a.to_vector();  // row-major
  // Work on the tall one of a and a^T: a^T = U' S V'^T means a = V' S U'^T.
  const bool wide = m < n;
  const int64_t rows = wide ? n : m, k = wide ? m : n;
  Columns g;
  g.rows = rows;
  g.cols.assign(k, std::vector<double>(rows));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (wide) g.cols[i][j] = v[i * n + j];  // column i of a^T is row i of a
      else g.cols[j][i] = v[i * n + j];
    }
  std::vector<double> S;
  Columns V;
  jacobi_tall(g, S, V);

  // Descending order.
  std::vector<int64_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return S[x] > S[y]; });

  // Left vectors of the tall problem: g_j / S_j. Columns whose singular value
  // is (numerically) zero carry no direction: complete them to an orthonormal
  // set by Gram-Schmidt against the standard basis instead.
  const double smax = S[order[0]];
  const double tiny = static_cast<double>(rows) * std::numeric_limits<double>::epsilon() * smax;
  std::vector<std::vector<double>> left;  // (k) columns of length rows
  std::vector<std::vector<double>> right; // (k) columns of length k
  std::vector<double> sv;
  for (int64_t j : order) {
    std::vector<double> u(g.cols[j]);
    if (S[j] > tiny && S[j] > 0) {
      for (double& x : u) x /= S[j];
    } else {
      u.assign(rows, 0.0);
      for (int64_t e = 0; e < rows; ++e) {
        std::vector<double> cand(rows, 0.0);
        cand[e] = 1;
        for (int pass = 0; pass < 2; ++pass)  // twice is enough for orthogonality to working precision
          for (const auto& w : left) {
            const double d = dot(cand, w);
            for (int64_t i = 0; i < rows; ++i) cand[i] -= d * w[i];
          }
        const double norm = std::sqrt(dot(cand, cand));
        if (norm > 0.5) {
          for (double& x : cand) x /= norm;
          u = cand;
          break;
        }
      }
    }
    std::vector<double> r(V.cols[j]);
    // Deterministic signs: the largest-magnitude entry of the a-side left vector is positive.
    const std::vector<double>& a_left = wide ? r : u;
    size_t imax = 0;
    for (size_t i = 1; i < a_left.size(); ++i)
      if (std::abs(a_left[i]) > std::abs(a_left[imax])) imax = i;
    if (a_left[imax] < 0) {
      for (double& x : u) x = -x;
      for (double& x : r) x = -x;
    }
    left.push_back(std::move(u));
    right.push_back(std::move(r));
    sv.push_back(S[j]);
  }

  // Tall: a = left diag(S) right^T. Wide: a = right diag(S) left^T.
  const auto& ucols = wide ? right : left;  // U columns, length m
  const auto& vcols = wide ? left : right;  // V columns, length n
  std::vector<double> U(m * k), Vh(k * n);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t i = 0; i < m; ++i) U[i * k + c] = ucols[c][i];
    for (int64_t j = 0; j < n; ++j) Vh[c * n + j] = vcols[c][j];
  }
  const DType dt = a.dtype();
  return {from_values(U, {m, k}, dt), from_values(sv, {k}, dt), from_values(Vh, {k, n}, dt)};
}

std::pair<Tensor, Tensor> low_rank_factors(const Tensor& a, int64_t r) {
  check_defined(a, "low_rank_factors");
  if (a.dim() != 2) throw ShapeError("low_rank_factors: expected a 2-d matrix, got " + shape_str(a.shape()));
  const int64_t m = a.size(0), n = a.size(1), k = std::min(m, n);
  if (r <= 0 || r > k)
    throw ValueError("low_rank_factors: rank r must be in [1, min(m, n)] = [1, " + std::to_string(k) + "] for " +
                     shape_str(a.shape()) + ", got " + std::to_string(r));
  const Svd d = svd(a.to(DType::f64).detach());
  const std::vector<double> U = d.U.to_vector(), S = d.S.to_vector(), Vh = d.Vh.to_vector();
  std::vector<double> B(m * r), A(r * n);
  for (int64_t c = 0; c < r; ++c) {
    const double root = std::sqrt(S[c]);
    for (int64_t i = 0; i < m; ++i) B[i * r + c] = U[i * k + c] * root;
    for (int64_t j = 0; j < n; ++j) A[c * n + j] = root * Vh[c * n + j];
  }
  return {from_values(B, {m, r}, a.dtype()), from_values(A, {r, n}, a.dtype())};
}

}  // namespace loragrad::lora
