#!/bin/sh
# loragrad as a library a user installs: `cmake --install` into a temporary
# prefix, then the README's program (examples/installed/main.cpp, which the
# README shows verbatim) is built against that install tree twice, through
# find_package(loragrad) and through pkg-config, and run.
# usage: test_install.sh SOURCE_DIR BUILD_DIR CXX
SRC=$1 BUILD=$2 CXX=$3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
P="$T/prefix"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
run() {  # DESCRIPTION COMMAND...: must exit 0; output kept in $T/log
  desc=$1
  shift
  if ! "$@" >"$T/log" 2>&1; then
    fail "$desc: exit $? from: $*"
    tail -30 "$T/log" | sed 's/^/    /'
    return 1
  fi
}

# ---- the README shows exactly the program that is built here ----
awk '/^<!-- installed-example: main.cpp -->$/ { on = 1; next } on && /^```cpp$/ { next }
     on && /^```$/ { exit } on { print }' "$SRC/README.md" >"$T/readme_main.cpp"
cmp -s "$T/readme_main.cpp" "$SRC/examples/installed/main.cpp" ||
  fail "README's program differs from examples/installed/main.cpp: $(diff "$T/readme_main.cpp" "$SRC/examples/installed/main.cpp" | head -5)"

# ---- install ----
run "cmake --install" cmake --install "$BUILD" --prefix "$P" || { echo "$failures failure(s)"; exit 1; }
for f in include/loragrad/loragrad.hpp include/loragrad/tensor.hpp include/loragrad/version.hpp \
         include/loragrad/nn/layers.hpp include/loragrad/lora/lora_linear.hpp include/loragrad/train/trainer.hpp \
         lib/cmake/loragrad/loragradConfig.cmake lib/cmake/loragrad/loragradConfigVersion.cmake \
         lib/pkgconfig/loragrad.pc bin/loragrad; do
  [ -e "$P/$f" ] || fail "not installed: $f"
done
ls "$P"/lib/libloragrad_core.* >/dev/null 2>&1 || fail "not installed: lib/libloragrad_core.*"
# Private parts stay private: no test, example or internal header in the tree.
[ -z "$(find "$P" -name 'gemm_pack.hpp' -o -name 'args.hpp' -o -name 'test_*')" ] ||
  fail "installed something private: $(find "$P" -name 'gemm_pack.hpp' -o -name 'args.hpp' -o -name 'test_*')"
"$P/bin/loragrad" --version >"$T/log" 2>&1 && grep -q '^loragrad ' "$T/log" || fail "installed bin/loragrad --version"

# ---- 1. find_package(loragrad) ----
if run "configure the example with find_package" cmake -S "$SRC/examples/installed" -B "$T/cm" \
     -DCMAKE_PREFIX_PATH="$P" -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_BUILD_TYPE=Release &&
   run "build the example (find_package)" cmake --build "$T/cm" &&
   run "run the example (find_package)" "$T/cm/lora_on_a_linear"; then
  grep -q '^gradcheck: ok$' "$T/log" || fail "find_package build: no 'gradcheck: ok' in: $(cat "$T/log")"
  cp "$T/log" "$T/out_cmake"
  # The user's flags are the user's: no -march=native or -W flags come with the package.
  if grep -rq -- '-march=native\|-Wall' "$T/cm/CMakeFiles/lora_on_a_linear.dir/flags.make"; then
    fail "loragrad::loragrad passes its own flags on: $(cat "$T/cm/CMakeFiles/lora_on_a_linear.dir/flags.make")"
  fi
fi

# ---- 2. pkg-config ----
export PKG_CONFIG_PATH="$P/lib/pkgconfig"
if flags=$(pkg-config --cflags --libs loragrad 2>"$T/log"); then
  # shellcheck disable=SC2086 # the flags are words
  if run "build the example (pkg-config: $flags)" "$CXX" -O2 -o "$T/pc_example" "$SRC/examples/installed/main.cpp" $flags &&
     run "run the example (pkg-config)" env LD_LIBRARY_PATH="$P/lib" "$T/pc_example"; then  # a shared build's libraries
    grep -q '^gradcheck: ok$' "$T/log" || fail "pkg-config build: no 'gradcheck: ok' in: $(cat "$T/log")"
    [ ! -f "$T/out_cmake" ] || cmp -s "$T/log" "$T/out_cmake" || fail "the two builds print different numbers"
  fi
else
  fail "pkg-config --cflags --libs loragrad: $(cat "$T/log")"
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
cat "$T/log"; cat "$T/out_cmake"
echo "install: find_package and pkg-config builds of the README's program run"
