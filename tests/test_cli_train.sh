#!/bin/sh
# Training through the command line (train::Trainer): exact resume, refused
# resumes, validation and metrics.csv, --val-data, early stopping, and the
# per-method default learning rates beating the unigram baseline (~40 s).
#
#   sh tests/test_cli_train.sh path/to/loragrad
set -u
L=${1:?usage: test_cli_train.sh path/to/loragrad}
T=$(mktemp -d "${TMPDIR:-/tmp}/loragrad_train.XXXXXX")
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
. "$(dirname "$0")/cli_lib.sh"

# the validation loss of a finetune/pretrain log: "validation loss X before, Y after ..."
val_after() { sed -n 's/^validation loss [0-9.]* before, \([0-9.]*\) after.*/\1/p' "$1"; }
unigram() { sed -n 's/.*; unigram \([0-9.]*\) nats\/byte$/\1/p' "$1"; }
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && b != "" && a + 0 < b + 0) }'; }

# ---- a base model: 300 steps on stories ----
B="$T/base.safetensors"
ok "pretrain" -- "$L" pretrain --steps 300 --quiet --out "$B"
[ -s "$T/base.run/metrics.csv" ] || fail "pretrain wrote no $T/base.run/metrics.csv"
head -1 "$T/base.run/metrics.csv" | grep -q '^step,train_loss,val_loss,lr,tokens_per_s,grad_norm$' ||
  fail "metrics.csv header: $(head -1 "$T/base.run/metrics.csv")"
# step 0 (validation before training), steps 1..300, validation at 60, 120, ... 300
[ "$(grep -c . "$T/base.run/metrics.csv")" -eq 302 ] || fail "metrics.csv: $(grep -c . "$T/base.run/metrics.csv") lines, expected 302"
grep -q '^0,,[0-9.]*,,,$' "$T/base.run/metrics.csv" || fail "metrics.csv: no step-0 validation row"
[ "$(awk -F, 'NR > 2 && $3 != ""' "$T/base.run/metrics.csv" | wc -l)" -eq 5 ] || fail "metrics.csv: expected 5 validation rows"

# ---- each method's default learning rate reaches a useful model: below the unigram baseline ----
for m in full lora loraplus dora qlora; do
  out="$T/ft_$m"
  [ $m = full ] && out="$T/ft_full.safetensors"
  if ok "finetune $m at its default lr" -- "$L" finetune --base "$B" --method $m --domain recipes --quiet --out "$out"; then
    v=$(val_after "$T/out") u=$(unigram "$T/out")
    below "$v" "$u" || fail "finetune $m: validation loss $v does not beat the unigram baseline $u"
  fi
done

# ---- exact resume: 20 + 20 steps write the bytes of 40 steps straight ----
common="--base $B --domain recipes --steps 40 --quiet"
b4="--batch 4"
for d in 0 0.1; do
  ok "lora dropout $d: 40 steps, checkpoint every 20" -- "$L" finetune $common $b4 --dropout $d --save-every 20 --out "$T/straight_$d"
  for f in adapter_config.json adapter_model.safetensors optimizer.safetensors trainer_state.json metrics.csv; do
    [ -s "$T/straight_$d/checkpoint-20/$f" ] || fail "checkpoint-20 lacks $f"
  done
  ok "lora dropout $d: resume at 20" -- "$L" finetune $common $b4 --dropout $d --resume "$T/straight_$d/checkpoint-20" --out "$T/resumed_$d"
  cmp -s "$T/straight_$d/adapter_model.safetensors" "$T/resumed_$d/adapter_model.safetensors" ||
    fail "dropout $d: the resumed adapter differs from the straight run's"
  [ "$(cut -d, -f1-4,6 "$T/straight_$d/metrics.csv")" = "$(cut -d, -f1-4,6 "$T/resumed_$d/metrics.csv")" ] ||
    fail "dropout $d: metrics.csv of the resumed run differs (apart from tokens/s)"
done
ok "full: 40 steps" -- "$L" finetune $common $b4 --method full --save-every 20 --out "$T/full40.safetensors"
ok "full: resume at 20" -- "$L" finetune $common $b4 --method full --resume "$T/full40.run/checkpoint-20" --out "$T/full20.safetensors"
cmp -s "$T/full40.safetensors" "$T/full20.safetensors" || fail "full fine-tuning: resumed checkpoint differs"
ok "another base" -- "$L" pretrain --steps 2 --seed 5 --quiet --out "$T/base_other.safetensors"
ok "pretrain: resume" -- "$L" pretrain --steps 300 --quiet --save-every 150 --out "$T/base2.safetensors"
ok "pretrain: resume at 150" -- "$L" pretrain --steps 300 --quiet --resume "$T/base2.run/checkpoint-150" --out "$T/base3.safetensors"
cmp -s "$T/base2.safetensors" "$T/base3.safetensors" || fail "pretraining: resumed checkpoint differs"
cmp -s "$B" "$T/base2.safetensors" || fail "pretraining with checkpoints differs from pretraining without"

# ---- a resume that could not continue the run is refused, naming what changed ----
err "resume with another r" 1 "another run.*r: checkpoint 8, now 4" -- \
  "$L" finetune $common $b4 --r 4 --resume "$T/straight_0/checkpoint-20" --out "$T/x"
err "resume with another batch" 1 "batch: checkpoint 4, now 8" -- \
  "$L" finetune $common --batch 8 --resume "$T/straight_0/checkpoint-20" --out "$T/x"
err "resume with another method" 1 "method: checkpoint \"lora\", now \"dora\"" -- \
  "$L" finetune $common $b4 --method dora --resume "$T/straight_0/checkpoint-20" --out "$T/x"
err "resume from no checkpoint" 1 "--resume .*nothing: no such directory" -- "$L" finetune $common $b4 --resume "$T/nothing" --out "$T/x"

# ---- --val-data, --grad-accum, early stopping, flags ----
i=0
while [ $i -lt 60 ]; do echo "Whisk two eggs with a cup of flour and a pinch of salt. Step $i."; i=$((i + 1)); done >"$T/val.txt"
if ok "--val-data" -- "$L" finetune --base "$B" --domain recipes --steps 10 --quiet --val-data "$T/val.txt" --out "$T/vd"; then
  grep -q "^text: .* $(wc -c <"$T/val.txt") validation bytes" "$T/out" || fail "--val-data: $(grep '^text' "$T/out")"
fi
ok "--grad-accum 2" -- "$L" finetune --base "$B" --domain recipes --steps 5 --batch 2 --grad-accum 2 --quiet --out "$T/acc"
if ok "--early-stop 1 with a constant huge lr" -- "$L" finetune --base "$B" --domain recipes --steps 60 --eval-every 5 \
  --early-stop 1 --lr 3 --schedule constant --quiet --out "$T/es"; then
  grep -q "^stopped early at step" "$T/out" || fail "--early-stop: the run did not stop early"
fi
err "bad --schedule" 2 "--schedule must be" -- "$L" finetune --base "$B" --domain recipes --schedule step --out "$T/x"
err "--val-data with --val-fraction" 2 "not both" -- \
  "$L" finetune --base "$B" --domain recipes --val-data "$T/val.txt" --val-fraction 0.2 --out "$T/x"
err "--warmup beyond --steps" 2 "--warmup must be in" -- "$L" finetune --base "$B" --domain recipes --steps 5 --warmup 9 --out "$T/x"
[ -e "$T/x" ] && fail "a refused command left $T/x behind"

# ---- provenance: the adapter names its base, and another base gets a warning ----
grep -q "\"base_model_name_or_path\": \"$B\"" "$T/ft_lora/adapter_config.json" || fail "adapter_config.json lacks base_model_name_or_path"
grep -q '"task_type": "CAUSAL_LM"' "$T/ft_lora/adapter_config.json" || fail "adapter_config.json lacks task_type"
grep -q '"loragrad_base_fingerprint": "fnv1a64:[0-9a-f]\{16\}"' "$T/ft_lora/adapter_config.json" || fail "no base fingerprint"
if ok "eval on the adapter's own base" -- "$L" eval --base "$B" --adapter "$T/ft_lora" --data "$T/val.txt"; then
  [ -s "$T/err" ] && fail "a warning on the adapter's own base: $(cat "$T/err")"
fi
if ok "eval on another base" -- "$L" eval --base "$T/base_other.safetensors" --adapter "$T/ft_lora" --data "$T/val.txt"; then
  grep -q "^loragrad: warning: adapter .*ft_lora was trained on base .*base.safetensors (fnv1a64:.*), not on .*base_other.safetensors" \
    "$T/err" || fail "no warning naming both bases: $(cat "$T/err")"
fi

# ---- QLoRA keeps every block linear in NF4, whatever the targets ----
if ok "info of a qlora adapter (targets q_proj, v_proj)" -- "$L" info --base "$B" --adapter "$T/ft_qlora" --json; then
  [ "$(grep -c '"storage": "nf4"' "$T/out")" -eq 12 ] || fail "qlora: $(grep -c '"storage": "nf4"' "$T/out") NF4 weights, expected 12 (2 blocks x 6 linears)"
fi

echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
