#!/bin/sh
# The layers are walls, not a habit:
#   core -> nn, optim, data -> lora -> train
# 1. The build: each folder is its own target whose include path holds only
#    its own headers and its dependencies'. Probe targets (tests/layering/,
#    not built by default) show it: core including an nn header and lora
#    including a train header fail with "No such file"; nn including core builds.
# 2. The sources: every #include "loragrad/..." in a folder names a header of
#    that folder or of a folder below it (this also covers headers the build
#    never compiles alone).
# usage: test_layering.sh SOURCE_DIR BUILD_DIR
SRC=$1 BUILD=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# ---- 1. the build refuses an include that points up ----
must_fail() {  # TARGET HEADER
  if cmake --build "$BUILD" --target "$1" >"$T/log" 2>&1; then
    fail "$1 built: $2 is reachable from a lower layer"
  elif ! grep -q "$2: No such file" "$T/log"; then
    fail "$1 failed, but not for the missing header $2:"; sed 's/^/    /' "$T/log" | tail -20
  fi
}
must_fail layering_probe_core_includes_nn loragrad/nn/layers.hpp
must_fail layering_probe_lora_includes_train loragrad/train/trainer.hpp
cmake --build "$BUILD" --target layering_probe_nn_includes_core >"$T/log" 2>&1 ||
  { fail "layering_probe_nn_includes_core (nn including core) does not build:"; tail -20 "$T/log"; }

# ---- 2. every include in the sources points down ----
# The folder that owns an included path: the one whose include/ holds it.
owner() {
  for f in core nn optim data lora train; do
    [ -f "$SRC/$f/include/$1" ] && { echo "$f"; return; }
  done
  # core's private headers and the generated version.hpp
  case $1 in loragrad/version.hpp) echo core ;; *) echo "?" ;; esac
}
allowed() {  # FOLDER: the folders it may include
  case $1 in
    core) echo "core" ;;
    nn | optim | data) echo "core $1" ;;
    lora) echo "core nn optim lora" ;;
    train) echo "core nn optim data lora train" ;;
  esac
}
checked=0
for folder in core nn optim data lora train; do
  ok_list=$(allowed "$folder")
  grep -rhoE '#include [<"]loragrad/[^">]+[">]' "$SRC/$folder" --include='*.hpp' --include='*.cpp' |
    sed -E 's/#include [<"]//; s/[">]$//' | sort -u >"$T/includes"
  while read -r inc; do
    checked=$((checked + 1))
    o=$(owner "$inc")
    case " $ok_list " in
      *" $o "*) ;;
      *) fail "$folder/ includes $inc (from $o/): $folder may include only: $ok_list" ;;
    esac
  done <"$T/includes"
done
[ "$checked" -gt 50 ] || fail "only $checked includes found under $SRC: wrong source dir?"

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "layering: 3 build probes, $checked distinct includes checked"
