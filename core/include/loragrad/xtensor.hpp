#pragma once
// Conversion between loragrad tensors and xtensor containers. Kept out of
// tensor.hpp on purpose: xtensor headers cost seconds of compile time per file.
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>

#include "loragrad/tensor.hpp"

namespace loragrad {

namespace detail {
template <class T> constexpr DType dtype_for();
template <> constexpr DType dtype_for<float>() { return DType::f32; }
template <> constexpr DType dtype_for<double>() { return DType::f64; }
template <> constexpr DType dtype_for<int64_t>() { return DType::i64; }
}  // namespace detail

// A copy of the tensor's values as an xt::xarray<T> (T must match the dtype).
template <class T>
xt::xarray<T> to_xarray(const Tensor& t) {
  const T* p = t.data<T>();
  std::vector<size_t> shape(t.shape().begin(), t.shape().end());
  xt::xarray<T> out = xt::adapt(p, static_cast<size_t>(t.numel()), xt::no_ownership(), shape);
  return out;
}

// A new tensor holding a copy of any xtensor expression's values.
template <class E>
Tensor from_xtensor(const xt::xexpression<E>& expr) {
  using T = typename E::value_type;
  const auto& e = expr.derived_cast();
  Shape shape(e.shape().begin(), e.shape().end());
  Tensor t = uninitialized(shape, detail::dtype_for<T>());
  auto view = xt::adapt(t.data<T>(), static_cast<size_t>(t.numel()), xt::no_ownership(),
                        std::vector<size_t>(e.shape().begin(), e.shape().end()));
  view = e;
  return t;
}

// A non-owning xtensor view of the tensor's storage: writes go to the tensor.
// Call t.bump_version() after writing if the tensor was saved for backward.
template <class T>
auto as_xtensor(Tensor& t) {
  return xt::adapt(t.data<T>(), static_cast<size_t>(t.numel()), xt::no_ownership(),
                   std::vector<size_t>(t.shape().begin(), t.shape().end()));
}

}  // namespace loragrad
