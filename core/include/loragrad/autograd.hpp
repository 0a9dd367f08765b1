#pragma once
// Reverse-mode autograd. An op computes its result, then calls record() with
// a closure that maps the gradient of the result to gradients of its inputs.
// record() makes a Node; backward() walks the nodes in topological order
// (iteratively: no recursion, so 100,000-node chains are fine) and frees the
// graph unless retain_graph.
#include <functional>
#include <memory>
#include <vector>

#include "loragrad/ops_list.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad {

// ---- grad mode ----
bool grad_enabled();
// RAII: no graph is recorded while it lives (thread-local, like torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;
 private:
  bool prev_;
};

// A tensor kept for backward. It shares storage with the original but not its
// history (no reference cycles), and remembers the storage version: get()
// throws if the tensor was modified in place after it was saved.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, Op op);
  const Tensor& get() const;
 private:
  Tensor t_;
  uint64_t version_ = 0;
  Op op_ = Op::add;
};

using Grads = std::vector<Tensor>;       // one per input; undefined = no gradient
using NeedsGrad = std::vector<bool>;     // which inputs want a gradient
// The backward closure: gradient of the output -> gradients of the inputs.
using BackwardFn = std::function<Grads(const Tensor& grad_out, const NeedsGrad& needs)>;

struct Edge {
  std::shared_ptr<Node> node;          // input produced by an op
  std::shared_ptr<TensorImpl> leaf;    // input is a leaf that requires grad
  Shape shape;                         // the input's shape (gradients are checked against it)
  DType dtype = DType::f32;
  bool active() const { return node || leaf; }
};

struct Node {
  Op op;
  std::vector<Edge> inputs;
  BackwardFn backward;                 // reset when the graph is freed
  Tensor grad_accum;                   // gradient gathered during one backward pass
  bool released = false;
  ~Node();                             // iterative teardown of long chains
  const char* name() const { return op_name(op); }
};

// Attach history to `out`, the result of op applied to `inputs`. When grad
// mode is off or no input requires grad, `out` is returned unchanged.
Tensor record(Op op, Tensor out, const std::vector<Tensor>& inputs, BackwardFn fn);

}  // namespace loragrad
