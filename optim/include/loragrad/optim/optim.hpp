#pragma once
// Everything in optim/: optimizers, LR schedules, gradient clipping.
#include "loragrad/optim/adamw.hpp"
#include "loragrad/optim/clip_grad.hpp"
#include "loragrad/optim/lr_schedule.hpp"
#include "loragrad/optim/optimizer.hpp"
#include "loragrad/optim/sgd.hpp"
