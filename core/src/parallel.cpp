// See parallel.hpp: prefer passive OpenMP waiting for whole programs.
#include "loragrad/parallel.hpp"

#include <unistd.h>

#include <cstdlib>

namespace loragrad {

void prefer_passive_openmp_threads(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

}  // namespace loragrad
