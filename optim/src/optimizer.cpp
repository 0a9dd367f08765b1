// The optimizer base: parameter bookkeeping, lazy state, and the state's
// round trip through NamedTensors + Metadata (safetensors).
#include "loragrad/optim/optimizer.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace loragrad::optim {

namespace {

// %.17g round-trips a double exactly through text.
std::string num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string join(const std::vector<std::string>& xs) {
  std::string out;
  for (size_t i = 0; i < xs.size(); ++i) out += (i ? "," : "") + xs[i];
  return out;
}

std::string state_key(const ParamGroup& g, size_t i, const std::string& what) {
  return "state." + g.name + "." + std::to_string(i) + "." + what;
}

}  // namespace

Optimizer::Optimizer(const char* name, std::vector<ParamGroup> groups) : name_(name), groups_(std::move(groups)) {
  for (ParamGroup& g : groups_)
    if (std::isnan(g.initial_lr)) g.initial_lr = g.lr;
  state_.resize(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) state_[gi].resize(groups_[gi].params.size());
}

void Optimizer::check_groups() const {
  const std::string op = std::string(name_) + ": ";
  if (groups_.empty()) throw ValueError(op + "no parameter groups");
  std::set<std::string> names;
  std::unordered_set<const TensorImpl*> seen;
  for (const ParamGroup& g : groups_) {
    if (g.name.empty() || g.name.find_first_of(".,") != std::string::npos)
      throw ValueError(op + "group name '" + g.name + "' must be non-empty and contain no '.' or ','");
    if (!names.insert(g.name).second) throw ValueError(op + "two groups are named '" + g.name + "'");
    if (!(g.lr >= 0.0)) throw ValueError(op + "group '" + g.name + "': lr must be >= 0, got " + num(g.lr));
    if (!(g.weight_decay >= 0.0))
      throw ValueError(op + "group '" + g.name + "': weight_decay must be >= 0, got " + num(g.weight_decay));
    check_group(g);
    for (size_t i = 0; i < g.params.size(); ++i) {
      const Tensor& p = g.params[i];
      const std::string where = op + "group '" + g.name + "' parameter " + std::to_string(i);
      if (!p.defined()) throw ValueError(where + " is undefined");
      if (!is_floating(p.dtype())) throw DTypeError(where + ": expected float32 or float64, got " + dtype_name(p.dtype()));
      if (!p.is_leaf()) throw ValueError(where + " is not a leaf (it has a grad_fn); optimize the leaf it came from");
      if (!seen.insert(p.impl()).second) throw ValueError(where + " appears more than once");
    }
  }
}

ParamGroup& Optimizer::group(const std::string& name) {
  for (ParamGroup& g : groups_)
    if (g.name == name) return g;
  throw ValueError(std::string(name_) + ": no parameter group named '" + name + "'");
}

int64_t Optimizer::step_count(size_t group, size_t index) const {
  if (group >= state_.size() || index >= state_[group].size())
    throw IndexError(std::string(name_) + ".step_count: no parameter (" + std::to_string(group) + ", " +
                     std::to_string(index) + ")");
  return state_[group][index].step;
}

void Optimizer::step() {
  // groups() is editable: parameters appended since the last step get fresh state.
  if (state_.size() != groups_.size()) state_.resize(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& g = groups_[gi];
    if (state_[gi].size() != g.params.size()) {
      check_groups();
      state_[gi].resize(g.params.size());
    }
    for (size_t i = 0; i < g.params.size(); ++i) {
      Tensor p = g.params[i];
      const Tensor grad = p.grad();
      if (!grad.defined()) continue;
      if (grad.shape() != p.shape() || grad.dtype() != p.dtype())
        throw ShapeError(std::string(name_) + ".step: group '" + g.name + "' parameter " + std::to_string(i) +
                         " is " + shape_str(p.shape()) + " " + dtype_name(p.dtype()) + " but its grad is " +
                         shape_str(grad.shape()) + " " + dtype_name(grad.dtype()));
      ParamState& s = state_[gi][i];
      // Lazily, like torch; also covers SGD's momentum being switched on later.
      const size_t n_buffers = buffer_names(g).size();
      while (s.buffers.size() < n_buffers) s.buffers.push_back(zeros(p.shape(), p.dtype()));
      s.step += 1;
      update(g, p, grad, s);
      p.bump_version();  // the parameter changed in place: saved copies of it are now stale
    }
  }
}

void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_)
    for (Tensor& p : g.params) p.zero_grad();
}

size_t Optimizer::state_bytes() const {
  size_t total = 0;
  for (const auto& group_state : state_)
    for (const ParamState& s : group_state)
      for (const Tensor& b : s.buffers) total += b.nbytes();
  return total;
}

OptimizerState Optimizer::state_dict() const {
  OptimizerState out;
  Metadata& md = out.metadata;
  md["optimizer"] = name_;
  std::vector<std::string> names;
  for (const ParamGroup& g : groups_) names.push_back(g.name);
  md["groups"] = join(names);
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& g = groups_[gi];
    const std::string k = "group." + g.name + ".";
    md[k + "params"] = std::to_string(g.params.size());
    md[k + "lr"] = num(g.lr);
    md[k + "initial_lr"] = num(g.initial_lr);
    md[k + "weight_decay"] = num(g.weight_decay);
    md[k + "beta1"] = num(g.beta1);
    md[k + "beta2"] = num(g.beta2);
    md[k + "eps"] = num(g.eps);
    md[k + "momentum"] = num(g.momentum);
    md[k + "nesterov"] = g.nesterov ? "true" : "false";
    const std::vector<std::string> buffers = buffer_names(g);
    for (size_t i = 0; i < g.params.size() && gi < state_.size() && i < state_[gi].size(); ++i) {
      const ParamState& s = state_[gi][i];
      if (s.step == 0) continue;  // never updated: no state, as in torch
      md[state_key(g, i, "step")] = std::to_string(s.step);
      for (size_t b = 0; b < s.buffers.size(); ++b) out.tensors.emplace_back(state_key(g, i, buffers[b]), s.buffers[b]);
    }
  }
  return out;
}

void Optimizer::load_state_dict(const NamedTensors& tensors, const Metadata& metadata) {
  const std::string op = std::string(name_) + ".load_state_dict: ";
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = metadata.find(key);
    if (it == metadata.end()) throw ValueError(op + "missing metadata entry '" + key + "'");
    return it->second;
  };
  auto get_double = [&](const std::string& key) {
    const std::string& s = get(key);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0') throw ValueError(op + "metadata entry '" + key + "' is not a number: '" + s + "'");
    return v;
  };
  auto get_int = [&](const std::string& key) {
    const std::string& s = get(key);
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || v < 0)
      throw ValueError(op + "metadata entry '" + key + "' is not a count: '" + s + "'");
    return static_cast<int64_t>(v);
  };

  if (get("optimizer") != name_) throw ValueError(op + "the state is for optimizer '" + get("optimizer") + "'");
  std::vector<std::string> names;
  for (const ParamGroup& g : groups_) names.push_back(g.name);
  if (get("groups") != join(names))
    throw ValueError(op + "the state has groups '" + get("groups") + "', this optimizer has '" + join(names) + "'");

  std::unordered_map<std::string, const Tensor*> by_name;
  for (const auto& [key, t] : tensors)
    if (!by_name.emplace(key, &t).second) throw ValueError(op + "entry '" + key + "' appears twice");

  // Build the new groups and state aside; commit only when everything checked out.
  std::vector<ParamGroup> new_groups = groups_;
  std::vector<std::vector<ParamState>> new_state(groups_.size());
  std::unordered_set<std::string> used_tensors, used_steps;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    ParamGroup& g = new_groups[gi];
    const std::string k = "group." + g.name + ".";
    const int64_t n = get_int(k + "params");
    if (n != static_cast<int64_t>(g.params.size()))
      throw ValueError(op + "'" + k + "params': group '" + g.name + "' has " + std::to_string(g.params.size()) +
                       " parameters, the state has " + std::to_string(n));
    g.lr = get_double(k + "lr");
    g.initial_lr = get_double(k + "initial_lr");
    g.weight_decay = get_double(k + "weight_decay");
    g.beta1 = get_double(k + "beta1");
    g.beta2 = get_double(k + "beta2");
    g.eps = get_double(k + "eps");
    g.momentum = get_double(k + "momentum");
    const std::string& nesterov = get(k + "nesterov");
    if (nesterov != "true" && nesterov != "false")
      throw ValueError(op + "metadata entry '" + k + "nesterov' must be true or false, got '" + nesterov + "'");
    g.nesterov = nesterov == "true";
    check_group(g);

    const std::vector<std::string> buffers = buffer_names(g);
    new_state[gi].resize(g.params.size());
    for (size_t i = 0; i < g.params.size(); ++i) {
      const std::string step_key = state_key(g, i, "step");
      if (!metadata.count(step_key)) continue;  // never updated
      used_steps.insert(step_key);
      ParamState& s = new_state[gi][i];
      s.step = get_int(step_key);
      const Tensor& p = g.params[i];
      for (const std::string& b : buffers) {
        const std::string key = state_key(g, i, b);
        auto it = by_name.find(key);
        if (it == by_name.end()) throw ValueError(op + "missing entry '" + key + "' (the state has '" + step_key + "')");
        const Tensor& t = *it->second;
        if (t.shape() != p.shape())
          throw ShapeError(op + "entry '" + key + "' has shape " + shape_str(t.shape()) + ", its parameter is " +
                           shape_str(p.shape()));
        if (!is_floating(t.dtype()))
          throw DTypeError(op + "entry '" + key + "' is " + dtype_name(t.dtype()) + ", expected a float tensor");
        Tensor buf = uninitialized(p.shape(), p.dtype());
        buf.copy_(t);  // a private copy, in the parameter's dtype
        s.buffers.push_back(buf);
        used_tensors.insert(key);
      }
    }
  }
  for (const auto& [key, t] : tensors)
    if (!used_tensors.count(key)) throw ValueError(op + "unexpected entry '" + key + "' (no such parameter or buffer)");
  for (const auto& [key, value] : metadata)
    if (key.rfind("state.", 0) == 0 && !used_steps.count(key))
      throw ValueError(op + "unexpected metadata entry '" + key + "' (no such parameter)");

  groups_ = std::move(new_groups);
  state_ = std::move(new_state);
}

void Optimizer::save(const std::string& path) const {
  OptimizerState s = state_dict();
  save_safetensors(path, s.tensors, s.metadata);
}

void Optimizer::load(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  load_state_dict(f.tensors, f.metadata);
}

}  // namespace loragrad::optim
