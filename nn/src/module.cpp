// Module: registry, tree walks, dtype / mode changes, state dicts, printing.
#include "loragrad/nn/module.hpp"

#include <map>
#include <ostream>
#include <set>
#include <sstream>

#include "loragrad/autograd.hpp"

namespace loragrad::nn {

Tensor Module::forward(const Tensor&) {
  throw Error(type_name() + ": this module has no forward(x); call its children instead");
}

// ============================ registration ============================

void Module::check_new_name(const std::string& name) const {
  if (name.empty() || name.find('.') != std::string::npos)
    throw ValueError(type_name() + ": bad member name '" + name + "' (must be non-empty, without '.')");
  bool taken = find_child(name) != nullptr;
  for (const auto& s : params_) taken |= s.name == name;
  for (const auto& s : buffers_) taken |= s.name == name;
  if (taken) throw ValueError(type_name() + ": member name '" + name + "' is registered twice");
}

Tensor& Module::register_parameter(const std::string& name, Tensor& member) {
  check_new_name(name);
  if (!member.defined()) throw ValueError(type_name() + ": parameter '" + name + "' is undefined");
  params_.push_back({name, &member});
  return member;
}

Tensor& Module::register_buffer(const std::string& name, Tensor& member) {
  check_new_name(name);
  if (!member.defined()) throw ValueError(type_name() + ": buffer '" + name + "' is undefined");
  buffers_.push_back({name, &member});
  return member;
}

void Module::add_child(const std::string& name, std::function<ModulePtr()> get,
                       std::function<bool(const ModulePtr&)> set) {
  check_new_name(name);
  children_.push_back({name, std::move(get), std::move(set)});
  if (!children_.back().get()) {
    children_.pop_back();
    throw ValueError(type_name() + ": child module '" + name + "' is null");
  }
}

const Module::ChildSlot* Module::find_child(const std::string& name) const {
  for (const auto& c : children_)
    if (c.name == name) return &c;
  return nullptr;
}

// A shared_ptr to this module: owning when the module is held by a
// shared_ptr (the normal case), otherwise a non-owning alias.
ModulePtr Module::self() const {
  Module* me = const_cast<Module*>(this);
  if (ModulePtr p = me->weak_from_this().lock()) return p;
  return ModulePtr(ModulePtr(), me);
}

// ============================ tree walks ============================

void Module::visit(const std::function<void(const std::string&, Module&)>& f) const {
  std::set<const Module*> seen;
  // explicit stack, pre-order, children in registration order
  std::vector<std::pair<std::string, Module*>> stack{{"", const_cast<Module*>(this)}};
  while (!stack.empty()) {
    auto [prefix, m] = stack.back();
    stack.pop_back();
    if (!seen.insert(m).second) continue;
    f(prefix, *m);
    for (auto it = m->children_.rbegin(); it != m->children_.rend(); ++it)
      stack.push_back({prefix + it->name + ".", it->get().get()});
  }
}

std::vector<std::pair<std::string, Tensor*>> Module::tensor_slots(bool buffers) const {
  std::vector<std::pair<std::string, Tensor*>> out;
  std::set<const TensorImpl*> seen;
  visit([&](const std::string& prefix, Module& m) {
    for (auto& s : buffers ? m.buffers_ : m.params_)
      if (seen.insert(s.tensor->impl()).second) out.push_back({prefix + s.name, s.tensor});
  });
  return out;
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  for (auto& [name, t] : tensor_slots(false)) out.push_back({name, *t});
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : tensor_slots(false)) out.push_back(*t);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  for (auto& [name, t] : tensor_slots(true)) out.push_back({name, *t});
  return out;
}

NamedModules Module::named_modules() const {
  NamedModules out;
  visit([&](const std::string& prefix, Module& m) {
    out.push_back({prefix.empty() ? "" : prefix.substr(0, prefix.size() - 1), m.self()});
  });
  return out;
}

NamedModules Module::named_children() const {
  NamedModules out;
  for (const auto& c : children_) out.push_back({c.name, c.get()});
  return out;
}

static std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  if (path.empty()) return parts;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

ModulePtr Module::get_submodule(const std::string& path) const {
  ModulePtr m = self();
  std::string walked;
  for (const std::string& part : split_path(path)) {
    const ChildSlot* c = m->find_child(part);
    if (!c) {
      std::string names;
      for (const auto& ch : m->children_) names += (names.empty() ? "" : ", ") + ch.name;
      throw ValueError("get_submodule: " + type_name() + " has no submodule '" + path + "': " +
                       (walked.empty() ? "the root" : "'" + walked + "'") + " (" + m->type_name() +
                       ") has no child '" + part + "' (children: " + (names.empty() ? "none" : names) + ")");
    }
    m = c->get();
    walked += (walked.empty() ? "" : ".") + part;
  }
  return m;
}

ModulePtr Module::replace_module(const std::string& path, ModulePtr replacement) {
  if (path.empty()) throw ValueError("replace_module: the path is empty (the root cannot replace itself)");
  if (!replacement) throw ValueError("replace_module: the replacement for '" + path + "' is null");
  const size_t dot = path.rfind('.');
  const std::string parent_path = dot == std::string::npos ? "" : path.substr(0, dot);
  const std::string leaf = dot == std::string::npos ? path : path.substr(dot + 1);
  const ChildSlot* slot = nullptr;
  try {
    slot = get_submodule(parent_path)->find_child(leaf);
    if (!slot) get_submodule(path);  // throws the descriptive error
  } catch (const ValueError& e) {
    throw ValueError("replace_module: no module at '" + path + "': " + e.what());
  }
  ModulePtr old = slot->get();
  if (!slot->set(replacement))
    throw ValueError("replace_module: '" + path + "' holds a " + old->type_name() + " in a slot that does not accept a " +
                     replacement->type_name());
  return old;
}

// ============================ modes, dtypes, sizes ============================

Module& Module::train(bool on) {
  visit([&](const std::string&, Module& m) { m.training_ = on; });
  return *this;
}

Module& Module::to(DType dt) {
  if (!is_floating(dt))
    throw DTypeError(type_name() + ".to: expected float32 or float64, got " + dtype_name(dt));
  NoGradGuard no_grad;
  for (bool buffers : {false, true}) {
    for (auto& [name, t] : tensor_slots(buffers)) {
      if (!is_floating(t->dtype()) || t->dtype() == dt) continue;
      const bool rg = t->requires_grad();
      Tensor converted = t->detach().to(dt);
      converted.requires_grad_(rg);
      *t = converted;
    }
  }
  return *this;
}

DType Module::dtype() const {
  for (auto& [name, t] : tensor_slots(false))
    if (is_floating(t->dtype())) return t->dtype();
  return DType::f32;
}

Module& Module::requires_grad_(bool on) {
  for (auto& [name, t] : tensor_slots(false)) t->requires_grad_(on);
  return *this;
}

Module& Module::zero_grad() {
  for (auto& [name, t] : tensor_slots(false)) t->zero_grad();
  return *this;
}

int64_t Module::num_parameters(bool trainable_only) const {
  int64_t n = 0;
  for (auto& [name, t] : tensor_slots(false))
    if (!trainable_only || t->requires_grad()) n += t->numel();
  return n;
}

size_t Module::parameter_bytes() const {
  size_t n = 0;
  for (auto& [name, t] : tensor_slots(false)) n += t->nbytes();
  return n;
}

size_t Module::gradient_bytes() const {
  size_t n = 0;
  for (auto& [name, t] : tensor_slots(false))
    if (t->grad().defined()) n += t->grad().nbytes();
  return n;
}

// ============================ state dicts ============================

NamedTensors Module::state_dict() const {
  NamedTensors out;
  visit([&](const std::string& prefix, Module& m) {
    for (auto& s : m.params_) out.push_back({prefix + s.name, s.tensor->detach()});
    for (auto& s : m.buffers_) out.push_back({prefix + s.name, s.tensor->detach()});
  });
  // a tensor shared by two modules appears once, under its first name
  NamedTensors unique;
  std::set<const TensorImpl*> seen;
  for (auto& [name, t] : out)
    if (seen.insert(t.impl()).second) unique.push_back({name, t});
  return unique;
}

LoadResult Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::map<std::string, const Tensor*> given;
  std::vector<std::string> duplicates;
  for (const auto& [name, t] : state)
    if (!given.emplace(name, &t).second) duplicates.push_back(name);

  std::vector<std::pair<Tensor*, const Tensor*>> copies;  // (destination, source)
  std::vector<std::string> mismatched;
  LoadResult res;
  std::set<std::string> known;
  for (bool buffers : {false, true}) {
    for (auto& [name, dst] : tensor_slots(buffers)) {
      known.insert(name);
      auto it = given.find(name);
      if (it == given.end()) { res.missing_keys.push_back(name); continue; }
      const Tensor& src = *it->second;
      if (!src.defined() || src.shape() != dst->shape()) {
        mismatched.push_back(name + " (state dict " + (src.defined() ? shape_str(src.shape()) : "undefined") +
                             ", model " + shape_str(dst->shape()) + ")");
      } else if (is_floating(src.dtype()) != is_floating(dst->dtype())) {
        mismatched.push_back(name + " (state dict " + dtype_name(src.dtype()) + ", model " +
                             dtype_name(dst->dtype()) + ")");
      } else {
        copies.push_back({dst, &src});
      }
    }
  }
  for (const auto& [name, t] : state)
    if (!known.count(name)) res.unexpected_keys.push_back(name);

  const bool fail = !mismatched.empty() || !duplicates.empty() ||
                    (strict && (!res.missing_keys.empty() || !res.unexpected_keys.empty()));
  if (fail) {
    auto list = [](const std::vector<std::string>& v) {
      std::string s;
      for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
      return s;
    };
    std::string msg = "load_state_dict(" + type_name() + "):";
    if (strict && !res.missing_keys.empty()) msg += " missing: " + list(res.missing_keys) + ";";
    if (strict && !res.unexpected_keys.empty()) msg += " unexpected: " + list(res.unexpected_keys) + ";";
    if (!mismatched.empty()) msg += " shape or dtype mismatch: " + list(mismatched) + ";";
    if (!duplicates.empty()) msg += " duplicate names: " + list(duplicates) + ";";
    msg.pop_back();
    throw ValueError(msg);
  }
  NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst->copy_(*src);
  return res;
}

// ============================ printing ============================

void Module::repr_into(std::string& out, int indent) const {
  if (children_.empty()) {
    out += type_name() + "(" + extra_repr() + ")";
    return;
  }
  const std::string pad(static_cast<size_t>(indent + 2), ' ');
  out += type_name() + "(\n";
  if (!extra_repr().empty()) out += pad + extra_repr() + "\n";
  for (const auto& c : children_) {
    out += pad + "(" + c.name + "): ";
    c.get()->repr_into(out, indent + 2);
    out += "\n";
  }
  out += std::string(static_cast<size_t>(indent), ' ') + ")";
}

std::string Module::repr() const {
  std::string out;
  repr_into(out, 0);
  return out;
}

std::ostream& operator<<(std::ostream& os, const Module& m) { return os << m.repr(); }

}  // namespace loragrad::nn
