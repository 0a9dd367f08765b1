// Must compile: nn/ may include core/ (the control for the probes that must fail).
#include "loragrad/nn/layers.hpp"
#include "loragrad/tensor.hpp"
