#!/bin/sh
# Thread-count determinism through the command line: the same run with
# --threads 1 and --threads 2 writes byte-identical files, for pretraining,
# for every fine-tuning method and for instruction data (about 15 s on 2 cores).
#
#   sh tests/test_determinism.sh path/to/loragrad
#
# The model is just large enough (d_model 128, 8 x 64 tokens a step) that
# every kernel takes its parallel path: gemm, layer norm and its dgamma /
# dbeta, the reductions behind bias gradients, attention, softmax, embedding
# backward, and the global gradient norm of clipping.
set -u
L=${1:?usage: test_determinism.sh path/to/loragrad}
T=$(mktemp -d "${TMPDIR:-/tmp}/loragrad_det.XXXXXX")
trap 'rm -rf "$T"' EXIT
unset OMP_NUM_THREADS
. "$(dirname "$0")/cli_lib.sh"

# same_file DESCRIPTION A B: files A and B are byte-identical.
compared=0
same_file() {
  compared=$((compared + 1))
  if [ ! -s "$2" ] || [ ! -s "$3" ]; then
    fail "$1: $2 or $3 is missing or empty"
  elif ! cmp -s "$2" "$3"; then
    fail "$1: $(basename "$2") differs between --threads 1 and --threads 2 ($(cmp "$2" "$3" 2>&1 | head -1))"
  fi
}

# same_dir DESCRIPTION A B: directories A and B hold the same file names, and
# each file is byte-identical in both.
same_dir() {
  [ -n "$(ls "$2" 2>/dev/null)" ] || fail "$1: $2 is missing or empty"
  [ "$(ls "$2" 2>/dev/null)" = "$(ls "$3" 2>/dev/null)" ] ||
    fail "$1: different files: $(ls "$2" 2>/dev/null | tr '\n' ' ')/ $(ls "$3" 2>/dev/null | tr '\n' ' ')"
  for f in "$2"/*; do
    [ -e "$f" ] || continue
    if [ "$(basename "$f")" = metrics.csv ]; then  # every column but tokens_per_s (a timing)
      cut -d, -f1-4,6- "$f" >"$f.cut"
      cut -d, -f1-4,6- "$3/metrics.csv" >"$3/metrics.csv.cut"
      same_file "$1" "$f.cut" "$3/metrics.csv.cut"
    else
      same_file "$1" "$f" "$3/$(basename "$f")"
    fi
  done
}

small="--steps 5 --batch 8 --quiet"

# Pretraining: the --threads 1 checkpoint is also the base of the fine-tunings.
B="$T/base_t1.safetensors"
for n in 1 2; do
  ok "pretrain --threads $n" -- "$L" pretrain --domain stories $small --seq 64 --d-model 128 --layers 2 --heads 4 \
    --threads $n --out "$T/base_t$n.safetensors"
done
same_file "pretrain" "$T/base_t1.safetensors" "$T/base_t2.safetensors"
[ -s "$B" ] || { echo "no base checkpoint: giving up"; exit 1; }

# Full fine-tuning writes a checkpoint; the LoRA family an adapter directory
# (adapter_model.safetensors and adapter_config.json).
for n in 1 2; do
  ok "finetune full --threads $n" -- "$L" finetune --base "$B" --method full --domain recipes $small \
    --threads $n --out "$T/full_t$n.safetensors"
done
same_file "finetune full" "$T/full_t1.safetensors" "$T/full_t2.safetensors"

for m in lora loraplus dora qlora; do
  for n in 1 2; do
    ok "finetune $m --threads $n" -- "$L" finetune --base "$B" --method $m --targets all-linear --domain recipes \
      $small --threads $n --out "$T/${m}_t$n"
  done
  same_dir "finetune $m" "$T/${m}_t1" "$T/${m}_t2"
done

# Instruction data: packed rows, the block-diagonal mask, masked targets, micro-batches weighed by target count.
for n in 1 2; do
  ok "finetune recipe-qa --threads $n" -- "$L" finetune --base "$B" --domain recipe-qa --targets all-linear $small \
    --grad-accum 2 --threads $n --out "$T/qa_t$n"
done
same_dir "finetune recipe-qa" "$T/qa_t1" "$T/qa_t2"

echo "$compared files compared, $failures failed"
[ "$failures" -eq 0 ] && [ "$compared" -eq 17 ]  # 2 checkpoints, 5 x (weights, config, metrics)
