// LR schedules: the transformers formulas (see lr_schedule.hpp).
#include "loragrad/optim/lr_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace loragrad::optim {

LRSchedule::LRSchedule(Kind kind, int64_t warmup, int64_t total, double min_ratio, double cycles)
    : kind_(kind), warmup_(warmup), total_(total), min_ratio_(min_ratio), cycles_(cycles) {
  const std::string op = "LRSchedule";
  if (warmup < 0) throw ValueError(op + ": warmup_steps must be >= 0, got " + std::to_string(warmup));
  if (kind != Kind::constant && total <= 0)
    throw ValueError(op + ": total_steps must be > 0, got " + std::to_string(total));
  if (kind != Kind::constant && warmup > total)
    throw ValueError(op + ": warmup_steps " + std::to_string(warmup) + " exceeds total_steps " + std::to_string(total));
  if (!(min_ratio >= 0.0 && min_ratio <= 1.0))
    throw ValueError(op + ": min_lr_ratio must be in [0, 1], got " + std::to_string(min_ratio));
  if (!(cycles > 0.0)) throw ValueError(op + ": num_cycles must be > 0, got " + std::to_string(cycles));
}

LRSchedule LRSchedule::constant(int64_t warmup_steps) { return {Kind::constant, warmup_steps, 0, 0.0, 0.5}; }

LRSchedule LRSchedule::linear(int64_t warmup_steps, int64_t total_steps) {
  return {Kind::linear, warmup_steps, total_steps, 0.0, 0.5};
}

LRSchedule LRSchedule::cosine(int64_t warmup_steps, int64_t total_steps, double min_lr_ratio, double num_cycles) {
  return {Kind::cosine, warmup_steps, total_steps, min_lr_ratio, num_cycles};
}

double LRSchedule::factor(int64_t step) const {
  if (step < 0) throw ValueError("LRSchedule::factor: step must be >= 0, got " + std::to_string(step));
  const double t = static_cast<double>(step);
  if (step < warmup_) return t / static_cast<double>(std::max<int64_t>(1, warmup_));
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, total_ - warmup_));
  switch (kind_) {
    case Kind::constant:
      return 1.0;
    case Kind::linear:
      return std::max(0.0, static_cast<double>(total_ - step) / decay_steps);
    case Kind::cosine: {
      const double progress = static_cast<double>(step - warmup_) / decay_steps;
      const double c = 0.5 * (1.0 + std::cos(M_PI * cycles_ * 2.0 * progress));
      return std::max(0.0, min_ratio_ + (1.0 - min_ratio_) * c);
    }
  }
  return 1.0;
}

void LRSchedule::apply(Optimizer& optimizer, int64_t step) const {
  const double f = factor(step);
  for (ParamGroup& g : optimizer.groups()) g.lr = g.initial_lr * f;
}

std::string LRSchedule::str() const {
  std::ostringstream os;
  switch (kind_) {
    case Kind::constant: os << "constant(warmup=" << warmup_ << ")"; break;
    case Kind::linear: os << "linear(warmup=" << warmup_ << ", total=" << total_ << ")"; break;
    case Kind::cosine:
      os << "cosine(warmup=" << warmup_ << ", total=" << total_ << ", min_lr_ratio=" << min_ratio_;
      if (cycles_ != 0.5) os << ", cycles=" << cycles_;
      os << ")";
      break;
  }
  return os.str();
}

}  // namespace loragrad::optim
