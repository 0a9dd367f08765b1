#pragma once
// Learning-rate schedules: a factor f(t) in [0, 1] at optimizer step t
// (t = 0 for the first step); apply() sets every group's lr to
// initial_lr * f(t). The formulas are those of Hugging Face transformers'
// get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
// get_cosine_schedule_with_warmup and get_cosine_with_min_lr_schedule_with_warmup
// (W = warmup_steps, N = total_steps):
//
//   warm-up (all kinds), t < W:  f = t / max(1, W)
//   constant:                    f = 1
//   linear:                      f = max(0, (N - t) / max(1, N - W))
//   cosine:                      q = (t - W) / max(1, N - W)
//                                c = 0.5 * (1 + cos(pi * 2 * cycles * q))
//                                f = max(0, min_ratio + (1 - min_ratio) * c)
//
// As in transformers, the warm-up's first step (t = 0) has lr 0, and the
// cosine is not clamped at t > N (with cycles = 0.5 it rises again): size N
// to the run. Use it like torch's LambdaLR, called before each step:
//
//   for (int64_t t = 0; t < N; ++t) { schedule.apply(opt, t); ...; opt.step(); }
#include <cstdint>
#include <string>

#include "loragrad/optim/optimizer.hpp"

namespace loragrad::optim {

class LRSchedule {
 public:
  enum class Kind { constant, linear, cosine };

  static LRSchedule constant(int64_t warmup_steps = 0);
  static LRSchedule linear(int64_t warmup_steps, int64_t total_steps);
  // min_lr_ratio: the floor as a fraction of initial_lr (transformers' min_lr_rate).
  static LRSchedule cosine(int64_t warmup_steps, int64_t total_steps, double min_lr_ratio = 0.0,
                           double num_cycles = 0.5);

  double factor(int64_t step) const;
  // Every group: lr = initial_lr * factor(step).
  void apply(Optimizer& optimizer, int64_t step) const;

  Kind kind() const { return kind_; }
  int64_t warmup_steps() const { return warmup_; }
  int64_t total_steps() const { return total_; }
  std::string str() const;  // e.g. "cosine(warmup=10, total=300, min_lr_ratio=0.1)"

 private:
  LRSchedule(Kind kind, int64_t warmup, int64_t total, double min_ratio, double cycles);
  Kind kind_;
  int64_t warmup_, total_;
  double min_ratio_, cycles_;
};

}  // namespace loragrad::optim
