# Front door. `make demo` and `make test` work on a fresh Debian 12 machine as
# root: they install what is missing, configure Release, build, then run.
BUILD    ?= build
JOBS     ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release
DEBS     := cmake g++ make pkgconf libxtensor-dev libxsimd-dev libboost-test-dev nlohmann-json3-dev
# Optional peers for the benchmarks, installed by `make bench`: OpenBLAS (for
# gemm_bench, and its OpenMP build, PyTorch's best BLAS here) and PyTorch.
BENCH_DEBS := libopenblas-dev libopenblas0-openmp python3-torch
# QUICK=1: one short round of each benchmark (a look, not the spec's protocol).
QUICK ?=

.PHONY: all deps build test demo bench bench-deps sanitize clean

all: build

# Install the Debian packages that are missing (needs root; skipped when all present).
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	./$(BUILD)/examples/demo

bench-deps:
	@missing=""; for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The reference workload, loragrad against PyTorch alternating (S and M, LoRA,
# 1 and 2 threads; bench/run_workload.py), then the GEMM alone.
bench: bench-deps build
	/usr/bin/python3 bench/run_workload.py --loragrad ./$(BUILD)/cli/loragrad \
	  --out $(BUILD)/bench_workload.json $(if $(QUICK),--quick)
	./$(BUILD)/bench/gemm_bench $(if $(QUICK),--quick)

# AddressSanitizer + UndefinedBehaviorSanitizer build of the whole suite.
sanitize: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLORAGRAD_SANITIZE=ON
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD) build-asan

# libFuzzer harnesses (fuzz/README.md): clang 14 builds the whole library with
# ASan + UBSan + coverage into $(FUZZ_BUILD), then each harness runs
# FUZZ_SECONDS; non-zero exit on any finding. `make test` replays the corpus
# with the normal build.
FUZZ_DEBS      := clang-14 libclang-rt-14-dev
FUZZ_BUILD     ?= build-fuzz
FUZZ_SECONDS   ?= 60
FUZZ_HARNESSES := safetensors adapter_config adapter_dir instruction_jsonl

.PHONY: fuzz fuzz-deps fuzz-build

fuzz-deps: deps
	@missing=""; for p in $(FUZZ_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

fuzz-build: fuzz-deps
	CC=clang-14 CXX=clang++-14 cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLORAGRAD_FUZZ=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_HARNESSES))

fuzz: fuzz-build
	fuzz/run_fuzzers.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_HARNESSES)
