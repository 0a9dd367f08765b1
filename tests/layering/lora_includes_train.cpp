// Must NOT compile: lora/ sits below train/ (see tests/test_layering.sh).
#include "loragrad/train/trainer.hpp"
