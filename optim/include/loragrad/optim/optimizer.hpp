#pragma once
// Optimizers over named parameter groups, with PyTorch's semantics:
// each group carries its own hyper-parameters, step() updates every parameter
// that has a gradient (an undefined grad is skipped, as PyTorch skips None),
// zero_grad() sets grads to undefined, and the state (moments, step counts)
// is created lazily at a parameter's first update.
//
// The state round-trips through safetensors, so a run can stop and resume:
//   tensors  "state.{group}.{index}.{buffer}"   e.g. "state.body.0.exp_avg"
//   metadata "state.{group}.{index}.step"       per-parameter step count
//            "optimizer", "groups" (names joined by ','), and per group
//            "group.{group}.{params,lr,initial_lr,weight_decay,beta1,beta2,eps,momentum,nesterov}"
// Loading restores the hyper-parameters too, as torch's load_state_dict does.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "loragrad/safetensors.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::optim {

// One set of parameters sharing hyper-parameters. Fields a given optimizer
// does not use are ignored (AdamW: momentum, nesterov; SGD: beta1, beta2, eps).
// weight_decay defaults to 0 for both; note torch.optim.AdamW's default is 0.01.
struct ParamGroup {
  ParamGroup() = default;
  ParamGroup(std::string name, std::vector<Tensor> params, double lr, double weight_decay = 0.0)
      : name(std::move(name)), params(std::move(params)), lr(lr), weight_decay(weight_decay) {}

  std::string name = "default";  // in state keys and messages; no '.' or ','
  std::vector<Tensor> params;    // float leaves; the optimizer writes them in place
  double lr = 1e-3;
  double weight_decay = 0.0;     // AdamW: decoupled (p *= 1 - lr*wd); SGD: L2 (g += wd*p)
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // AdamW
  double momentum = 0.0;         // SGD; dampening is always 0
  bool nesterov = false;         // SGD; needs momentum > 0
  // The lr that LR schedules scale (torch's "initial_lr"). Left NaN, the
  // optimizer sets it to lr when it is built.
  double initial_lr = std::numeric_limits<double>::quiet_NaN();
};

// What state_dict() returns and save_safetensors() takes.
struct OptimizerState {
  NamedTensors tensors;
  Metadata metadata;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter whose grad is defined.
  void step();
  // Every parameter's grad becomes undefined (torch's set_to_none=True).
  void zero_grad();

  // Editable: set lr, weight_decay, ... between steps (LRSchedule does). A
  // parameter appended to a group starts with fresh state at its first update.
  std::vector<ParamGroup>& groups() { return groups_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // The group called name; ValueError if there is none.
  ParamGroup& group(const std::string& name);
  const char* name() const { return name_; }  // "AdamW", "SGD"

  // Times parameter `index` of group `group` has been updated (0 before its first update).
  int64_t step_count(size_t group, size_t index) const;

  // The state's tensors share storage with the live buffers: save (or clone)
  // them before the next step().
  OptimizerState state_dict() const;
  // Validates everything first, so a failed load leaves the optimizer as it
  // was. Throws ValueError (wrong optimizer, group names or counts, missing or
  // unexpected entry) or ShapeError (an entry's shape differs from its
  // parameter's), naming the entry. Buffers are converted to the parameter's dtype.
  void load_state_dict(const NamedTensors& tensors, const Metadata& metadata);
  void save(const std::string& path) const;  // state_dict() to a safetensors file
  void load(const std::string& path);        // load_state_dict() from one

  // Bytes held by the optimizer's buffers (moments, momentum), for memory reports.
  size_t state_bytes() const;

 protected:
  // Per-parameter state: step count and the buffers named by buffer_names(),
  // allocated (zeros, the parameter's shape and dtype) at the first update.
  struct ParamState {
    int64_t step = 0;
    std::vector<Tensor> buffers;
  };

  Optimizer(const char* name, std::vector<ParamGroup> groups);
  // The buffers a parameter of group g keeps, e.g. {"exp_avg", "exp_avg_sq"}.
  virtual std::vector<std::string> buffer_names(const ParamGroup& g) const = 0;
  // Checks one group's hyper-parameters; throws ValueError naming the field.
  virtual void check_group(const ParamGroup& g) const = 0;
  // Updates param from grad in place; s.step is already incremented.
  virtual void update(const ParamGroup& g, Tensor& param, const Tensor& grad, ParamState& s) = 0;
  // Call at the end of the derived constructor (virtual calls are not safe in ours).
  void check_groups() const;

 private:
  const char* name_;
  std::vector<ParamGroup> groups_;
  std::vector<std::vector<ParamState>> state_;  // [group][param]
};

}  // namespace loragrad::optim
