// Must NOT compile: core/ is the lowest layer and nn/'s headers are not on its
// include path (tests/test_layering.sh builds this as a target linked to
// loragrad_core only and expects "No such file").
#include "loragrad/nn/layers.hpp"
