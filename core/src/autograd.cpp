// The autograd engine: grad mode, saved tensors, nodes, backward.
#include "loragrad/autograd.hpp"

#include <unordered_map>
#include <unordered_set>

#include "loragrad/ops.hpp"

namespace loragrad {

// ---- grad mode ----

static thread_local bool t_grad_enabled = true;
bool grad_enabled() { return t_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = prev_; }

// ---- saved tensors ----

SavedTensor::SavedTensor(const Tensor& t, Op op)
    : t_(t.defined() ? t.detach() : Tensor()), version_(t.defined() ? t.version() : 0), op_(op) {}

const Tensor& SavedTensor::get() const {
  if (t_.defined() && t_.version() != version_)
    throw AutogradError(std::string("backward of ") + op_name(op_) + ": a tensor of shape " +
                        shape_str(t_.shape()) + " that this op saved for backward was modified in place "
                        "(version " + std::to_string(version_) + " -> " + std::to_string(t_.version()) +
                        "); the gradient would be wrong. Clone it before modifying.");
  return t_;
}

// ---- nodes ----

Node::~Node() {
  // Destroying a node releases its inputs, which may release theirs, ...: a
  // long chain would recurse once per node. Instead, steal the inputs of every
  // node about to die into a worklist and drop them one at a time.
  std::vector<std::shared_ptr<Node>> work;
  for (auto& e : inputs)
    if (e.node) work.push_back(std::move(e.node));
  while (!work.empty()) {
    std::shared_ptr<Node> n = std::move(work.back());
    work.pop_back();
    if (n.use_count() == 1) {
      for (auto& e : n->inputs)
        if (e.node) work.push_back(std::move(e.node));
    }
    // n dies here with no node inputs left, so its destructor does not recurse.
  }
}

Tensor record(Op op, Tensor out, const std::vector<Tensor>& inputs, BackwardFn fn) {
  if (!grad_enabled()) return out;
  bool any = false;
  for (const Tensor& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return out;

  auto node = std::make_shared<Node>();
  node->op = op;
  node->backward = std::move(fn);
  node->inputs.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    Edge e;
    if (t.defined()) {
      e.shape = t.shape();
      e.dtype = t.dtype();
      if (t.requires_grad()) {
        if (t.grad_fn()) e.node = t.grad_fn();
        else e.leaf = t.impl_ptr();
      }
    }
    node->inputs.push_back(std::move(e));
  }
  // `out` may share storage with an input (reshape): give it its own impl.
  if (out.impl()->grad_fn || out.impl()->requires_grad) out = out.detach();
  out.impl()->requires_grad = true;
  out.impl()->grad_fn = std::move(node);
  return out;
}

// Accumulate g into slot (a gradient being summed): the first one is taken as
// is, later ones are added into a fresh sum (never into a tensor the caller
// might still hold).
static void accumulate(Tensor& slot, const Tensor& g) {
  if (!slot.defined()) slot = g;
  else slot = add(slot, g);
}

static void check_grad(const Tensor& g, const Edge& e, const Node& n, size_t i) {
  if (g.shape() != e.shape || g.dtype() != e.dtype)
    throw AutogradError(std::string("backward of ") + n.name() + ": gradient for input " +
                        std::to_string(i) + " has " + dtype_name(g.dtype()) + shape_str(g.shape()) +
                        ", expected " + dtype_name(e.dtype) + shape_str(e.shape));
}

void Tensor::backward(const Tensor& grad_in, bool retain_graph) const {
  if (!requires_grad())
    throw AutogradError("backward: tensor of shape " + shape_str(shape()) +
                        " does not require grad and has no grad_fn");
  Tensor seed;
  if (!grad_in.defined()) {
    if (numel() != 1)
      throw AutogradError("backward: grad can be implicitly created only for a one-element output; "
                          "this output has shape " + shape_str(shape()) + ", pass a gradient of that shape");
    seed = ones(shape(), dtype());
  } else {
    if (grad_in.shape() != shape() || grad_in.dtype() != dtype())
      throw AutogradError("backward: gradient " + std::string(dtype_name(grad_in.dtype())) +
                          shape_str(grad_in.shape()) + " does not match output " + dtype_name(dtype()) +
                          shape_str(shape()));
    seed = grad_in;
  }

  NoGradGuard no_grad;
  if (is_leaf()) {
    Tensor g = impl()->grad ? add(Tensor(impl()->grad), seed) : seed.clone();
    impl()->grad = g.impl_ptr();
    return;
  }

  // Topological order by iterative DFS (post-order), then walk it reversed.
  std::vector<Node*> order;
  {
    std::unordered_set<Node*> seen;
    std::vector<std::pair<Node*, size_t>> stack{{grad_fn().get(), 0}};
    seen.insert(grad_fn().get());
    while (!stack.empty()) {
      auto& [n, next] = stack.back();
      if (next < n->inputs.size()) {
        Node* child = n->inputs[next++].node.get();
        if (child && seen.insert(child).second) stack.push_back({child, 0});
      } else {
        order.push_back(n);
        stack.pop_back();
      }
    }
  }

  grad_fn()->grad_accum = seed;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node& n = **it;
    Tensor g = std::move(n.grad_accum);
    n.grad_accum = Tensor();
    if (!g.defined()) continue;  // no gradient reached this node
    if (n.released)
      throw AutogradError(std::string("backward: trying to backward through the graph a second time "
                                      "(node ") + n.name() + "); its saved tensors were freed. Pass "
                          "retain_graph=true to the first backward.");
    NeedsGrad needs(n.inputs.size());
    for (size_t i = 0; i < needs.size(); ++i) needs[i] = n.inputs[i].active();
    Grads grads = n.backward(g, needs);
    if (grads.size() != n.inputs.size())
      throw AutogradError(std::string("backward of ") + n.name() + " returned " +
                          std::to_string(grads.size()) + " gradients for " +
                          std::to_string(n.inputs.size()) + " inputs");
    for (size_t i = 0; i < grads.size(); ++i) {
      const Edge& e = n.inputs[i];
      if (!e.active() || !grads[i].defined()) continue;
      check_grad(grads[i], e, n, i);
      if (e.node) {
        accumulate(e.node->grad_accum, grads[i]);
      } else {
        Tensor slot(e.leaf->grad);
        accumulate(slot, grads[i]);
        // A gradient taken as is may alias a tensor an op still uses: own it.
        if (slot.impl() == grads[i].impl()) slot = slot.clone();
        e.leaf->grad = slot.impl_ptr();
      }
    }
    if (!retain_graph) {
      n.backward = nullptr;  // frees the saved tensors
      n.released = true;
    }
  }
}

}  // namespace loragrad

