#pragma once
// Module: a node of the model tree, like torch.nn.Module.
//
// A layer keeps its parameters and children as ordinary members (Tensor,
// std::shared_ptr<...>) and registers them once in its constructor. The
// registry stores *where* those members live, not copies of them, so
// to(dtype), load_state_dict and replace_module write straight into the
// members that forward() reads: there is one source of truth.
//
// Modules are not copyable or movable (the registry points into them): hold
// them by std::shared_ptr (std::make_shared<Linear>(...)).
//
// Names are dotted paths, in registration order, exactly like PyTorch:
// "blocks.0.attn.q_proj.weight". An adapter (LoRA, DoRA, ...) replaces a
// child by path with replace_module("blocks.0.attn.q_proj", wrapper); the
// parent's forward then calls the wrapper through its member.
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "loragrad/safetensors.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::nn {

class Module;
using ModulePtr = std::shared_ptr<Module>;
using NamedModules = std::vector<std::pair<std::string, ModulePtr>>;

// What load_state_dict(strict = false) skipped (strict loads throw instead).
struct LoadResult {
  std::vector<std::string> missing_keys;     // in the module, not in the state dict
  std::vector<std::string> unexpected_keys;  // in the state dict, not in the module
};

class Module : public std::enable_shared_from_this<Module> {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // ---- what a layer implements ----
  // The default throws: containers such as ModuleList have no forward.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }
  virtual std::string type_name() const = 0;       // "Linear"
  virtual std::string extra_repr() const { return ""; }  // "in_features=32, out_features=32, bias=True"

  // ---- the tree ----
  // Every parameter once (shared ones by their first name), own parameters
  // before the children's, in registration order, as PyTorch orders them.
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;                // non-trainable state saved in state_dict
  // Every module once, pre-order, the root first under the name "".
  NamedModules named_modules() const;
  NamedModules named_children() const;               // direct children only
  // The module at a dotted path ("" is this module). Throws ValueError naming
  // the path and the children that do exist at the point where it failed.
  ModulePtr get_submodule(const std::string& path) const;
  // Puts `replacement` where the module at `path` was and returns the old one.
  // The slot's static type must accept it (a LayerNorm slot takes a LayerNorm;
  // the projection slots of attention and FFN, and lm_head, take any Module).
  ModulePtr replace_module(const std::string& path, ModulePtr replacement);

  // ---- modes and dtypes (whole subtree) ----
  Module& train(bool on = true);
  Module& eval() { return train(false); }
  bool is_training() const { return training_; }
  // Converts every floating parameter and buffer; requires_grad is kept,
  // gradients are dropped. f32 or f64 only.
  Module& to(DType dt);
  DType dtype() const;                              // of the first parameter (f32 when none)
  Module& requires_grad_(bool on = true);           // freeze (false) or unfreeze a subtree
  Module& zero_grad();                              // every parameter's grad = undefined

  // ---- sizes ----
  int64_t num_parameters(bool trainable_only = false) const;
  size_t parameter_bytes() const;
  size_t gradient_bytes() const;                    // gradients that exist now

  // ---- state ----
  // Parameters then buffers of each module, named like named_parameters.
  // The tensors are detached handles sharing storage with the module (as in
  // PyTorch): clone() them to keep a snapshot.
  NamedTensors state_dict() const;
  // Copies values into the existing tensors (converting f32 <-> f64). Shapes
  // must match. strict: missing or unexpected names are errors too. On any
  // error nothing is copied and a ValueError lists every offending name.
  LoadResult load_state_dict(const NamedTensors& state, bool strict = true);

  // A PyTorch-style print of the tree.
  std::string repr() const;

 protected:
  // Register members in the constructor. Names are unique within a module and
  // contain no '.'. Returns the member, for chaining.
  Tensor& register_parameter(const std::string& name, Tensor& member);
  Tensor& register_buffer(const std::string& name, Tensor& member);

  // A child slot typed std::shared_ptr<M>: replace_module accepts any module
  // that dynamic_casts to M.
  template <class M>
  std::shared_ptr<M>& register_module(const std::string& name, std::shared_ptr<M>& member) {
    static_assert(std::is_base_of<Module, M>::value, "register_module: M must derive from Module");
    add_child(name, [&member] { return ModulePtr(member); },
              [&member](const ModulePtr& m) {
                auto typed = std::dynamic_pointer_cast<M>(m);
                if (!typed) return false;
                member = std::move(typed);
                return true;
              });
    return member;
  }

  // For containers whose children live in a vector: how to read and write the slot.
  void add_child(const std::string& name, std::function<ModulePtr()> get,
                 std::function<bool(const ModulePtr&)> set);

 private:
  struct TensorSlot {
    std::string name;
    Tensor* tensor;
  };
  struct ChildSlot {
    std::string name;
    std::function<ModulePtr()> get;
    std::function<bool(const ModulePtr&)> set;  // false when the module's type does not fit
  };
  void check_new_name(const std::string& name) const;
  const ChildSlot* find_child(const std::string& name) const;
  ModulePtr self() const;
  // Visit every module once, pre-order, with its dotted prefix ("" or "a.b.").
  void visit(const std::function<void(const std::string& prefix, Module& m)>& f) const;
  // Every (name, slot) of parameters (or buffers) of the subtree, each tensor once.
  std::vector<std::pair<std::string, Tensor*>> tensor_slots(bool buffers) const;
  void repr_into(std::string& out, int indent) const;

  std::vector<TensorSlot> params_;
  std::vector<TensorSlot> buffers_;
  std::vector<ChildSlot> children_;
  bool training_ = true;
};

std::ostream& operator<<(std::ostream& os, const Module& m);

// Sets a module's train/eval mode for a scope and puts the old one back.
class ModeScope {
 public:
  ModeScope(Module& m, bool training) : m_(m), was_training_(m.is_training()) { m_.train(training); }
  ~ModeScope() { m_.train(was_training_); }
  ModeScope(const ModeScope&) = delete;
  ModeScope& operator=(const ModeScope&) = delete;

 private:
  Module& m_;
  bool was_training_;
};

}  // namespace loragrad::nn
