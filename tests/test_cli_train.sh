#!/bin/sh
# Training through the command line (train::Trainer): exact resume, refused
# resumes, validation and metrics.csv, --val-data, early stopping, the
# per-method default learning rates beating the unigram baseline, the
# whole LoraConfig as finetune flags (rsLoRA, init, DoRA / QLoRA / QDoRA, bf16 base,
# modules_to_save, rank / alpha patterns, named adapters), instruction data
# (JSONL, recipe-qa, generate --stop), the forgetting report, the KL to the
# base and data mixing (--mix) (~85 s).
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
head -1 "$T/base.run/metrics.csv" | grep -q '^step,train_loss,val_loss,lr,tokens_per_s,grad_norm,old_loss,kl$' ||
  fail "metrics.csv header: $(head -1 "$T/base.run/metrics.csv")"
# step 0 (validation before training), steps 1..300, validation at 60, 120, ... 300
[ "$(grep -c . "$T/base.run/metrics.csv")" -eq 302 ] || fail "metrics.csv: $(grep -c . "$T/base.run/metrics.csv") lines, expected 302"
grep -q '^0,,[0-9.]*,,,,,$' "$T/base.run/metrics.csv" || fail "metrics.csv: no step-0 validation row"
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
  [ "$(cut -d, -f1-4,6- "$T/straight_$d/metrics.csv")" = "$(cut -d, -f1-4,6- "$T/resumed_$d/metrics.csv")" ] ||
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

# ---- the whole LoraConfig on the command line, under PEFT's names (issue 9) ----
# adapter_config.json with every blank and newline removed: '"rank_pattern":{"fc_.*":16,"q_proj":4}'
flat() { tr -d ' \n' <"$1/adapter_config.json"; }
has_cfg() {  # DIR TEXT WHAT: the flattened config holds TEXT
  checks=$((checks + 1))
  flat "$1" | grep -qF -- "$2" || fail "$3: adapter_config.json lacks $2: $(flat "$1" | head -c 1500)"
}
# The safetensors header (JSON) of FILE; a float32 tensor's largest |value| (od: a little-endian host).
st_header() { dd if="$1" bs=1 skip=8 count="$(od -An -tu8 -N8 "$1" | tr -d ' ')" 2>/dev/null; }
st_max_abs() {  # FILE TENSOR
  n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  offs=$(st_header "$1" | sed -n "s/.*\"$2\":{[^}]*\"data_offsets\":\[\([0-9]*\),\([0-9]*\)\].*/\1 \2/p")
  [ -n "$offs" ] || { echo "none"; return; }
  set -- "$1" $offs
  od -An -tf4 -v -j $((8 + n + $2)) -N $(($3 - $2)) "$1" |
    awk '{ for (i = 1; i <= NF; i++) { v = $i < 0 ? -$i : $i; if (v > m) m = v } } END { printf "%g\n", m + 0 }'
}
QB=base_model.model.blocks.0.attn.q_proj
short="--base $B --domain recipes --steps 4 --batch 2 --quiet"
# the defaults, under their PEFT names
for kv in '"use_rslora":false' '"use_dora":false' '"init_lora_weights":true' '"rank_pattern":{}' '"alpha_pattern":{}' \
  '"modules_to_save":null' '"r":8' '"lora_alpha":16' '"target_modules":["q_proj","v_proj"]'; do
  has_cfg "$T/ft_lora" "$kv" "defaults"
done
grep -q '"loragrad_qlora"' "$T/ft_lora/adapter_config.json" && fail "a LoRA adapter's config says loragrad_qlora"
# --rslora: use_rslora, and the scale alpha / sqrt(r) (r 4, alpha 8: 4, not 2), also when loaded
if ok "finetune --rslora" -- "$L" finetune $short --r 4 --alpha 8 --rslora --out "$T/rs"; then
  grep -q "r 4, alpha 8, scale 4 (rsLoRA: alpha / sqrt(r))" "$T/out" || fail "--rslora: scale not 4: $(head -1 "$T/out")"
  has_cfg "$T/rs" '"use_rslora":true' "--rslora"
  ok "info of an rsLoRA adapter" -- "$L" info --base "$B" --adapter "$T/rs"
  grep -q "scale 4 (rsLoRA" "$T/out" || fail "info: rsLoRA scale: $(grep '^adapter' "$T/out")"
  ok "eval rsLoRA" -- "$L" eval --base "$B" --adapter "$T/rs" --data "$T/val.txt"
  rs_loss=$(sed -n 's/^loss \([0-9.]*\) .*/\1/p' "$T/out")
  mkdir -p "$T/rs_off" && cp "$T/rs/adapter_model.safetensors" "$T/rs_off/"
  sed 's/"use_rslora": true/"use_rslora": false/' "$T/rs/adapter_config.json" >"$T/rs_off/adapter_config.json"
  ok "eval the same weights at scale alpha / r" -- "$L" eval --base "$B" --adapter "$T/rs_off" --data "$T/val.txt"
  off_loss=$(sed -n 's/^loss \([0-9.]*\) .*/\1/p' "$T/out")
  [ -n "$rs_loss" ] && [ "$rs_loss" != "$off_loss" ] || fail "use_rslora does not change the loss ($rs_loss, $off_loss)"
fi
ok "finetune --init gaussian" -- "$L" finetune $short --init gaussian --out "$T/ig" && has_cfg "$T/ig" '"init_lora_weights":"gaussian"' "--init gaussian"
ok "finetune --init false" -- "$L" finetune $short --init false --out "$T/if" && has_cfg "$T/if" '"init_lora_weights":false' "--init false"
# PiSSA starts with B from the base's singular vectors; the default with B = 0 (one step at lr 1e-9 moves B by ~1e-9).
nolr="--base $B --domain recipes --steps 1 --batch 2 --lr 1e-9 --quiet"
if ok "finetune --init pissa" -- "$L" finetune $nolr --init pissa --r 4 --out "$T/pissa" &&
  ok "finetune --init true, the same step" -- "$L" finetune $nolr --r 4 --out "$T/std"; then
  has_cfg "$T/pissa" '"init_lora_weights":"pissa"' "--init pissa"
  bp=$(st_max_abs "$T/pissa/adapter_model.safetensors" "$QB.lora_B.weight")
  bs=$(st_max_abs "$T/std/adapter_model.safetensors" "$QB.lora_B.weight")
  awk -v p="$bp" -v s="$bs" 'BEGIN { exit !(p != "none" && s != "none" && p > 1e-3 && s < 1e-6) }' ||
    fail "PiSSA's B at step 0: max |B| $bp (default init: $bs), expected nonzero (and ~0)"
fi
# --modules-to-save: trained in full, saved with the adapter
if ok "finetune --modules-to-save lm_head,ln_f" -- "$L" finetune $short --modules-to-save lm_head,ln_f --out "$T/mts"; then
  has_cfg "$T/mts" '"modules_to_save":["lm_head","ln_f"]' "--modules-to-save"
  st_header "$T/mts/adapter_model.safetensors" | grep -q '"base_model.model.lm_head.weight":{"dtype":"F32","shape":\[256,64\]' ||
    fail "--modules-to-save: lm_head.weight not saved: $(st_header "$T/mts/adapter_model.safetensors" | head -c 600)"
  ok "info with modules_to_save" -- "$L" info --base "$B" --adapter "$T/mts"
  # q, v on 2 blocks at r 8: 4 x 8 x 128 = 4096, lm_head 16384, ln_f 128
  grep -q "^trainable: 20,608 of" "$T/out" || fail "--modules-to-save: $(grep '^trainable' "$T/out")"
fi
# --rank-pattern / --alpha-pattern: REGEX=VALUE (repeatable; a regex may hold ',') or a JSON object
if ok "finetune with rank and alpha patterns" -- "$L" finetune $short --targets all-linear --rank-pattern 'fc_.*=16' \
  --rank-pattern '[k,o]_proj=2' --alpha-pattern '{"v_proj": 32, "fc_in": 4}' --out "$T/pat"; then
  has_cfg "$T/pat" '"rank_pattern":{"[k,o]_proj":2,"fc_.*":16}' "--rank-pattern"
  has_cfg "$T/pat" '"alpha_pattern":{"fc_in":4,"v_proj":32}' "--alpha-pattern"
  has_cfg "$T/pat" '"r":8,' "--rank-pattern keeps r"
  has_cfg "$T/pat" '"target_modules":["fc_in","fc_out","k_proj","o_proj","q_proj","v_proj"]' "all-linear, expanded as PEFT does"
  grep -q "^rank_pattern '\[k,o\]_proj' = 2: 4 of 12 adapted modules" "$T/out" || fail "rank pattern matches: $(grep pattern "$T/out")"
  h=$(st_header "$T/pat/adapter_model.safetensors")
  for want in 'mlp.fc_in.lora_A.weight":{"dtype":"F32","shape":\[16,64\]' 'attn.k_proj.lora_A.weight":{"dtype":"F32","shape":\[2,64\]' \
    'attn.q_proj.lora_A.weight":{"dtype":"F32","shape":\[8,64\]'; do
    echo "$h" | grep -q "$want" || fail "rank pattern: no $want in the adapter file"
  done
  ok "eval the patterned adapter" -- "$L" eval --base "$B" --adapter "$T/pat" --data "$T/val.txt"
fi
ok "a pattern that matches nothing is reported" -- "$L" finetune $short --rank-pattern 'nothing=2' --out "$T/pat0"
grep -q "^rank_pattern 'nothing' = 2: 0 of 4 adapted modules (note: it matches none" "$T/out" || fail "unmatched pattern: $(grep pattern "$T/out")"
# QDoRA: DoRA over an NF4 base; --method dora --qlora and --method qlora --dora are the same run
if ok "finetune --dora --qlora (QDoRA)" -- "$L" finetune $short --dora --qlora --save-every 2 --out "$T/qdora"; then
  has_cfg "$T/qdora" '"use_dora":true' "QDoRA"
  has_cfg "$T/qdora" '"loragrad_qlora":true' "QDoRA"
  ok "info of a QDoRA adapter" -- "$L" info --base "$B" --adapter "$T/qdora"
  grep -q "DoRA, QLoRA (NF4 base)" "$T/out" || fail "info QDoRA: $(grep '^adapter' "$T/out")"
  ok "info --json of a QDoRA adapter" -- "$L" info --base "$B" --adapter "$T/qdora" --json
  [ "$(grep -c '"storage": "nf4"' "$T/out")" -eq 12 ] || fail "QDoRA: $(grep -c '"storage": "nf4"' "$T/out") NF4 weights, expected 12"
  [ "$(grep -c '"name": "blocks\.[01]\.attn\.[qv]_proj\.lora_magnitude_vector\.default\.weight"' "$T/out")" -eq 4 ] ||
    fail "QDoRA: expected 4 magnitude vectors: $(grep magnitude "$T/out")"
  ok "QDoRA: resume with --method qlora --dora" -- "$L" finetune $short --method qlora --dora --resume "$T/qdora/checkpoint-2" --out "$T/qdora2"
  cmp -s "$T/qdora/adapter_model.safetensors" "$T/qdora2/adapter_model.safetensors" || fail "QDoRA: the resumed adapter differs"
fi
# mixed precision: the frozen base in bf16; the adapter is an ordinary float32 one, for the float base
if ok "finetune --precision bf16" -- "$L" finetune $short --precision bf16 --save-every 2 --out "$T/bf16"; then
  grep -q "^lora: .*, frozen base in bf16$" "$T/out" || fail "--precision bf16: $(head -1 "$T/out")"
  grep -q bf16 "$T/bf16/adapter_config.json" && fail "--precision bf16: adapter_config.json names bf16"
  ok "eval a bf16-trained adapter on the float base" -- "$L" eval --base "$B" --adapter "$T/bf16" --data "$T/val.txt"
  ok "resume --precision bf16" -- "$L" finetune $short --precision bf16 --resume "$T/bf16/checkpoint-2" --out "$T/bf16b"
  cmp -s "$T/bf16/adapter_model.safetensors" "$T/bf16b/adapter_model.safetensors" || fail "bf16: the resumed adapter differs"
fi
ok "loraplus with --dora" -- "$L" finetune $short --method loraplus --dora --out "$T/lpd"
grep -q "^loraplus+dora: " "$T/out" || fail "loraplus --dora: $(head -1 "$T/out")"
# named adapters: PEFT's save_pretrained writes a non-default one into OUT/NAME/
if ok "finetune --adapter-name recipes" -- "$L" finetune $short --adapter-name recipes --save-every 2 --out "$T/named"; then
  for f in recipes/adapter_config.json recipes/adapter_model.safetensors metrics.csv checkpoint-2/recipes/adapter_config.json; do
    [ -s "$T/named/$f" ] || fail "--adapter-name: no $T/named/$f"
  done
  [ -e "$T/named/adapter_config.json" ] && fail "--adapter-name: an adapter_config.json at the top"
  err "the directory above a named adapter" 1 "named adapter 'recipes'.*--adapter .*named/recipes" -- \
    "$L" eval --base "$B" --adapter "$T/named" --data "$T/val.txt"
  ok "eval a named adapter" -- "$L" eval --base "$B" --adapter "$T/named/recipes" --data "$T/val.txt"
  ok "resume a named adapter" -- "$L" finetune $short --adapter-name recipes --resume "$T/named/checkpoint-2" --out "$T/named2"
  cmp -s "$T/named/recipes/adapter_model.safetensors" "$T/named2/recipes/adapter_model.safetensors" || fail "named: resumed adapter differs"
fi
# each setting is part of the run: a resume with another one is refused, naming it
for change in "--rslora:rslora: checkpoint false, now true" "--init gaussian:init: checkpoint \"true\", now \"gaussian\"" \
  "--modules-to-save lm_head:modules_to_save: checkpoint \[\], now \[\"lm_head\"\]" \
  "--rank-pattern q_proj=4:rank_pattern: checkpoint \[\], now \[\[\"q_proj\",4\]\]" \
  "--alpha-pattern q_proj=4:alpha_pattern: checkpoint \[\], now \[\[\"q_proj\",4.0\]\]" \
  "--adapter-name x:adapter_name: checkpoint \"default\", now \"x\"" "--dora:method: checkpoint \"lora\", now \"dora\"" \
  "--qlora:method: checkpoint \"lora\", now \"qlora\"" "--precision bf16:precision: checkpoint \"fp32\", now \"bf16\""; do
  flags=${change%%:*} want=${change#*:}
  err "resume with $flags" 1 "$want" -- "$L" finetune $common $b4 $flags --resume "$T/straight_0/checkpoint-20" --out "$T/x"
done
# bad values and contradictions: exit 2, before any work
for bad in "--init kaiming:--init must be true, gaussian, pissa or false" "--rank-pattern q_proj:expects REGEX=N" \
  "--rank-pattern q_proj=0:the rank must be an integer" "--rank-pattern q_proj=2.5:the rank must be an integer" \
  "--alpha-pattern v_proj=-1:alpha must be a positive number" "--alpha-pattern v_proj=inf:alpha must be a positive number" \
  "--rank-pattern (q=2:rank_pattern" "--rank-pattern q_proj=2 --rank-pattern q_proj=3:'q_proj' is given twice" \
  "--rank-pattern {bad:expects REGEX=N or a JSON object" \
  "--adapter-name a/b:--adapter-name must be" "--adapter-name checkpoint-3:clash" "--adapter-name=:--adapter-name must be" \
  "--method full --dora:--dora is for the adapter methods" "--method full --rslora:--rslora is for the adapter methods" \
  "--method full --init gaussian:--init is for" "--method full --modules-to-save lm_head:--modules-to-save is for" \
  "--method full --rank-pattern q_proj=2:--rank-pattern is for" "--method full --adapter-name x:--adapter-name is for" \
  "--method full --qlora:--qlora is for" "--init pissa --qlora:--init pissa needs a float base" \
  "--method qlora --init pissa:--init pissa needs a float base" "--dora=1:--dora takes no value" \
  "--method dora --loraplus-ratio 4:--loraplus-ratio is for" "--precision fp16:--precision must be fp32 or bf16" \
  "--precision bf16 --qlora:--qlora in NF4: choose one" "--method full --precision bf16:--method full trains every weight"; do
  flags=${bad%%:*} want=${bad#*:}
  err "finetune $flags" 2 "$want" -- "$L" finetune --base "$B" --domain recipes $flags --out "$T/x"
done
err "finetune: a JSON pattern value that is not a number" 2 "'v_proj': expected a number" -- \
  "$L" finetune --base "$B" --domain recipes --alpha-pattern '{"v_proj": "x"}' --out "$T/x"
[ -e "$T/x" ] && fail "a refused command left $T/x behind"

# ---- instruction data (issue 12, item 1): JSONL, prompt masking and packing, recipe-qa ----
i=0
while [ $i -lt 40 ]; do
  printf '{"prompt": "Q: What comes after %d?\\nA: ", "response": "%d.\\n", "id": %d}\n' $i $((i + 1)) $i
  i=$((i + 1))
done >"$T/sft.jsonl"
sftbase="--base $B --steps 8 --batch 4 --quiet"
sft="$sftbase --data $T/sft.jsonl"
if ok "finetune on JSONL" -- "$L" finetune $sft --save-every 4 --out "$T/sft"; then
  grep -q "^data (seq 64): train 36 examples, [0-9]* response bytes scored; validation 4 examples, [0-9]* response bytes scored; unigram baseline" "$T/out" ||
    fail "JSONL: $(grep '^data' "$T/out")"
  grep -q "^validation loss [0-9.]* before, [0-9.]* after" "$T/out" || fail "JSONL: no validation loss: $(cat "$T/out")"
fi
ok "JSONL: resume at 4" -- "$L" finetune $sft --resume "$T/sft/checkpoint-4" --out "$T/sft_resumed"
cmp -s "$T/sft/adapter_model.safetensors" "$T/sft_resumed/adapter_model.safetensors" || fail "JSONL: the resumed adapter differs"
[ "$(cut -d, -f1-4,6- "$T/sft/metrics.csv")" = "$(cut -d, -f1-4,6- "$T/sft_resumed/metrics.csv")" ] ||
  fail "JSONL: metrics.csv of the resumed run differs (apart from tokens/s)"
head -3 "$T/sft.jsonl" >"$T/sft_val.jsonl"
if ok "JSONL with --val-data JSONL and --seq 32" -- "$L" finetune $sft --seq 32 --val-data "$T/sft_val.jsonl" --out "$T/sft_v"; then
  grep -q "^data (seq 32): train 40 examples, .*; validation 3 examples" "$T/out" || fail "--val-data JSONL: $(grep '^data' "$T/out")"
fi
# A long example is truncated and counted; bad lines are one-line errors naming file:line and key.
{ cat "$T/sft.jsonl"; printf '{"prompt": "%0100d", "response": "x"}\n' 0; } >"$T/sft_long.jsonl"
ok "JSONL with an example longer than seq" -- "$L" finetune $sftbase --data "$T/sft_long.jsonl" --out "$T/sft_long"
grep -q "^data (seq 64): train 37 examples, [0-9]* response bytes scored; validation 4 examples, [0-9]* response bytes scored, 1 truncated (1 without a response byte left, skipped)" "$T/out" ||
  fail "truncation count in finetune: $(grep '^data' "$T/out")"
ok "JSONL: the truncated example is counted" -- "$L" eval --base "$B" --data "$T/sft_long.jsonl"
grep -q "^examples: 41 examples, [0-9]* response bytes scored, 1 truncated (1 without a response byte left, skipped)$" "$T/out" ||
  fail "truncation count: $(cat "$T/out")"
printf '{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n' >"$T/bad_key.jsonl"
err "JSONL: a missing key" 1 "bad_key.jsonl:2: missing key \"response\"" -- "$L" finetune $sftbase --data "$T/bad_key.jsonl" --out "$T/x"
printf '{"prompt": "a", "response": 7}\n' >"$T/bad_type.jsonl"
err "JSONL: a number" 1 "bad_type.jsonl:1: key \"response\" must be a string, got a number" -- \
  "$L" finetune $sftbase --data "$T/bad_type.jsonl" --out "$T/x"
printf '{"prompt": "a", "response": "b"}\n\n{"prompt": "a" "response": "b"}\n' >"$T/bad_json.jsonl"
err "JSONL: invalid JSON" 1 "bad_json.jsonl:3: invalid JSON" -- "$L" finetune $sftbase --data "$T/bad_json.jsonl" --out "$T/x"
: >"$T/empty.jsonl"
err "JSONL: an empty file" 1 "empty.jsonl: no examples" -- "$L" finetune $sftbase --data "$T/empty.jsonl" --out "$T/x"
if ok "eval on JSONL: the response bytes" -- "$L" eval --base "$B" --adapter "$T/sft" --data "$T/sft.jsonl" --split val; then
  grep -q "^loss [0-9.]* nats/byte over [0-9]* response bytes" "$T/out" || fail "eval JSONL: $(cat "$T/out")"
  grep -q "^split val: examples \[36, 40) of 40 (--val-fraction 0.1: the last 4 examples)$" "$T/out" || fail "eval JSONL --split val: $(cat "$T/out")"
fi

# ---- recipe-qa, the old domain's loss while training (issue 12, item 4), generate --stop ----
qa="--base $B --domain recipe-qa --steps 20 --eval-every 10 --quiet"
if ok "finetune recipe-qa --old-domain stories" -- "$L" finetune $qa --targets all-linear --old-domain stories --out "$T/qa"; then
  grep -q "^old-domain loss [0-9.]* before, [0-9.]* after: forgetting [+-][0-9.]* nats/byte$" "$T/out" ||
    fail "--old-domain: no forgetting line: $(cat "$T/out")"
  # old_loss (column 7) at step 0 and at each validation (10, 20), with the validation loss
  [ "$(awk -F, 'NR > 1 && $7 != "" { printf "%s%s", sep, $1; sep = " " }' "$T/qa/metrics.csv")" = "0 10 20" ] ||
    fail "metrics.csv old_loss rows: $(awk -F, 'NR > 1 && $7 != ""' "$T/qa/metrics.csv")"
  [ "$(awk -F, 'NR > 1 && ($7 == "") != ($3 == "")' "$T/qa/metrics.csv" | wc -l)" -eq 0 ] || fail "old_loss without val_loss"
fi
ok "--old-data FILE" -- "$L" finetune --base "$B" --domain recipe-qa --steps 2 --quiet --old-data "$T/val.txt" --out "$T/qa_file"
grep -q "^old domain: [0-9,]* bytes, its loss tracked at each validation$" "$T/out" || fail "--old-data: $(grep '^old' "$T/out")"
err "--old-data and --old-domain" 2 "not both" -- "$L" finetune $qa --old-data "$T/val.txt" --old-domain stories --out "$T/x"
err "unknown --old-domain" 2 "--old-domain must be stories, recipes, code or recipe-qa" -- "$L" finetune $qa --old-domain poems --out "$T/x"
err "unknown --domain" 2 "--domain must be stories, recipes, code or recipe-qa, got 'poems'" -- \
  "$L" finetune --base "$B" --domain poems --out "$T/x"
# generate --stop: the text ends right after the first stop bytes among the sampled ones
P='Q: Do you bake the Warm Apple Pie?
A: '
if ok "generate --stop ' '" -- "$L" generate --base "$B" --adapter "$T/qa" --prompt "$P" --temperature 0 --tokens 40 --stop ' ' --raw; then
  tail -c +"$((${#P} + 1))" "$T/out" >"$T/answer"
  [ "$(tr -cd ' ' <"$T/answer" | wc -c)" -le 1 ] || fail "--stop: more than one space sampled: '$(cat "$T/answer")'"
  if [ "$(wc -c <"$T/answer")" -lt 40 ]; then
    [ "$(tail -c 1 "$T/answer")" = " " ] || fail "--stop: cut early but not after the stop: '$(cat "$T/answer")'"
  fi
fi
err "generate: empty --stop" 2 "--stop must hold at least one byte" -- "$L" generate --base "$B" --prompt a --stop=

# ---- the forgetting report: eval --old (issue 12, item 4) ----
if ok "eval --old-domain: the forgetting report" -- "$L" eval --base "$B" --adapter "$T/qa" --domain recipe-qa --old-domain stories; then
  for want in "^loss in nats/byte  *adapter off  *adapter on  *on - off$" "^new  *[0-9.]*  *[0-9.]*  *[+-][0-9.]*$" \
    "^old  *[0-9.]*  *[0-9.]*  *[+-][0-9.]*$" "^learning   (new: off - on) [+-][0-9.]* nats/byte$" \
    "^forgetting (old: on - off) [+-][0-9.]* nats/byte$" "^old: domain stories (held-out tenth, seed 0)"; do
    grep -q "$want" "$T/out" || fail "eval --old: no line $want: $(cat "$T/out")"
  done
  # forgetting = old on - old off; learning = new off - new on (to the 4 printed decimals)
  awk '/^new / { l = $2 - $3 } /^old / { f = $3 - $2 } /^learning/ { L = $6 } /^forgetting/ { F = $6 }
       END { d1 = l - L; d2 = f - F; exit !(d1 < 2e-4 && d1 > -2e-4 && d2 < 2e-4 && d2 > -2e-4) }' "$T/out" ||
    fail "eval --old: learning / forgetting do not match the table: $(cat "$T/out")"
fi
# 'adapter off' is the base checkpoint alone: the same number as eval without the adapter
if ok "eval --old-domain --json" -- "$L" eval --base "$B" --adapter "$T/qa" --domain recipe-qa --old-domain stories --json; then
  off=$(grep '"loss_adapter_off"' "$T/out" | sed -n '2s/.*: \([0-9.e+-]*\),*$/\1/p')
  ok "eval the base alone on the old domain" -- "$L" eval --base "$B" --domain stories --json
  alone=$(sed -n 's/.*"loss": \([0-9.e+-]*\),*$/\1/p' "$T/out")
  [ -n "$off" ] && [ "$off" = "$alone" ] || fail "eval --old: adapter-off old loss '$off', the base alone '$alone'"
fi
if ok "eval --old FILE --json" -- "$L" eval --base "$B" --adapter "$T/qa" --data "$T/sft.jsonl" --old "$T/val.txt" --json; then
  for key in '"new": {' '"old": {' '"loss_adapter_on": ' '"loss_adapter_off": ' '"learning": ' '"forgetting": ' "\"data\": \"$T/val.txt\""; do
    grep -qF "$key" "$T/out" || fail "eval --old --json lacks $key: $(cat "$T/out")"
  done
fi
err "eval --old without --adapter" 2 "give --adapter DIR" -- "$L" eval --base "$B" --domain recipe-qa --old-domain stories
err "eval --old without the new data" 2 "--old needs the new domain too" -- "$L" eval --base "$B" --adapter "$T/qa" --old "$T/val.txt"

# ---- KL to the base (issue 12, item 2) ----
kl="--base $B --domain recipes --steps 6 --batch 4 --eval-every 3 --quiet"
if ok "finetune --kl-weight 0.5 --kl-domain stories" -- "$L" finetune $kl --kl-weight 0.5 --kl-domain stories --save-every 3 --out "$T/kl"; then
  grep -q "^KL to the base: weight 0.5 on domain:stories ([0-9,]* bytes)$" "$T/out" || fail "--kl-weight: no setup line: $(cat "$T/out")"
  grep -q "^step 0: KL to the base 0 nats/position$" "$T/out" || fail "--kl-weight: the KL at step 0 is not 0: $(cat "$T/out")"
  grep -q "^step 3: KL to the base [0-9.e+-]* nats/position (this step's batches)$" "$T/out" || fail "--kl-weight: no KL at step 3: $(cat "$T/out")"
  grep -q "^KL to the base 0 before, [0-9.e+-]* after, nats/position" "$T/out" || fail "--kl-weight: no before/after: $(cat "$T/out")"
  # kl (column 8): at each of the 6 steps, 0 at step 1 (measured before its update, at B = 0); not at step 0
  [ "$(awk -F, 'NR > 1 && $8 != "" { n++ } END { print n + 0 }' "$T/kl/metrics.csv")" -eq 6 ] ||
    fail "metrics.csv kl: $(cat "$T/kl/metrics.csv")"
  [ "$(awk -F, '$1 == 1 { print $8 }' "$T/kl/metrics.csv")" = "0" ] || fail "metrics.csv: step 1's KL is not 0"
  # the default KL text is stories: the same run
  ok "--kl-weight 0.5 (default domain)" -- "$L" finetune $kl --kl-weight 0.5 --out "$T/kl_default"
  cmp -s "$T/kl/adapter_model.safetensors" "$T/kl_default/adapter_model.safetensors" || fail "--kl-weight: the default KL text is not stories"
  ok "--kl-weight: resume at 3" -- "$L" finetune $kl --kl-weight 0.5 --kl-domain stories --resume "$T/kl/checkpoint-3" --out "$T/kl_resumed"
  cmp -s "$T/kl/adapter_model.safetensors" "$T/kl_resumed/adapter_model.safetensors" || fail "--kl-weight: the resumed adapter differs"
  [ "$(cut -d, -f1-4,6- "$T/kl/metrics.csv")" = "$(cut -d, -f1-4,6- "$T/kl_resumed/metrics.csv")" ] ||
    fail "--kl-weight: metrics.csv of the resumed run differs (apart from tokens/s)"
  err "--kl-weight: resume with another weight" 1 "kl_weight: checkpoint 0.5, now 0.25" -- \
    "$L" finetune $kl --kl-weight 0.25 --resume "$T/kl/checkpoint-3" --out "$T/x"
  err "--kl-weight: resume with another text" 1 'kl_data: checkpoint "domain:stories", now "domain:code"' -- \
    "$L" finetune $kl --kl-weight 0.5 --kl-domain code --resume "$T/kl/checkpoint-3" --out "$T/x"
  err "--kl-weight: resume without it" 1 "kl_weight: checkpoint 0.5, now null" -- \
    "$L" finetune $kl --resume "$T/kl/checkpoint-3" --out "$T/x"
fi
ok "--kl-weight --dora --qlora --kl-data FILE" -- "$L" finetune $kl --dora --qlora --kl-weight 1 --kl-data "$T/val.txt" --out "$T/kl_qdora"
grep -q "^step 0: KL to the base 0 nats/position$" "$T/out" || fail "QDoRA --kl-weight: the KL at step 0 is not 0: $(cat "$T/out")"
for bad in "--kl-weight -1:--kl-weight must be in \[0," "--kl-weight nan:--kl-weight expects a finite number" \
  "--kl-weight inf:--kl-weight expects a finite number" "--kl-domain stories:--kl-domain needs --kl-weight X > 0" \
  "--kl-weight 1 --kl-domain poems:--kl-domain must be stories, recipes, code or recipe-qa" \
  "--kl-weight 1 --kl-domain stories --kl-data $T/val.txt:give --kl-data FILE or --kl-domain NAME, not both" \
  "--kl-weight 1 --method full:--kl-weight needs an adapter method" \
  "--kl-weight 1 --modules-to-save lm_head:--kl-weight with --modules-to-save" \
  "--kl-weight 1 --init pissa:--kl-weight with --init pissa"; do
  # shellcheck disable=SC2086
  err "finetune ${bad%%:*}" 2 "${bad#*:}" -- "$L" finetune $kl ${bad%%:*} --out "$T/x"
done
err "--kl-data: a missing file" 1 "--kl-data .*nothing.txt: no such file" -- "$L" finetune $kl --kl-weight 1 --kl-data "$T/nothing.txt" --out "$T/x"
[ -e "$T/x" ] && fail "a refused command left $T/x behind"

# ---- data mixing (issue 12, item 3): --mix DOMAIN:FRACTION or FILE:FRACTION ----
mix="--base $B --domain recipe-qa --steps 4 --batch 4 --quiet"
if ok "finetune --mix stories:0.25" -- "$L" finetune $mix --mix stories:0.25 --save-every 2 --out "$T/mix"; then
  grep -q "^mixing 25% stories into every batch (1 of 4 rows)$" "$T/out" || fail "--mix: $(grep '^mixing' "$T/out")"
  grep -q "^data (seq 64): train 3600 examples" "$T/out" || fail "--mix: the data line is the primary's: $(grep '^data' "$T/out")"
fi
ok "--mix: resume at 2" -- "$L" finetune $mix --mix stories:0.25 --resume "$T/mix/checkpoint-2" --out "$T/mix2"
cmp -s "$T/mix/adapter_model.safetensors" "$T/mix2/adapter_model.safetensors" || fail "--mix: the resumed adapter differs"
[ "$(cut -d, -f1-4,6- "$T/mix/metrics.csv")" = "$(cut -d, -f1-4,6- "$T/mix2/metrics.csv")" ] ||
  fail "--mix: metrics.csv of the resumed run differs (apart from tokens/s)"
err "resume without the --mix" 1 'mix: checkpoint {"data":"stories","fraction":0.25}, now null' -- \
  "$L" finetune $mix --resume "$T/mix/checkpoint-2" --out "$T/x"
err "resume with another --mix" 1 'mix: checkpoint {"data":"stories","fraction":0.25}, now {"data":"code","fraction":0.25}' -- \
  "$L" finetune $mix --mix code:0.25 --resume "$T/mix/checkpoint-2" --out "$T/x"
if ok "--mix FILE:FRACTION" -- "$L" finetune $mix --mix "$T/val.txt:0.1" --out "$T/mixf"; then
  grep -q "^mixing 10% $T/val.txt into every batch (0 or 1 of 4 rows, 0.4 on average)$" "$T/out" ||
    fail "--mix FILE: $(grep '^mixing' "$T/out")"
fi
ok "pretrain --mix" -- "$L" pretrain --steps 2 --mix code:0.5 --quiet --out "$T/base_mix.safetensors"
grep -q "^mixing 50% code into every batch (4 of 8 rows)$" "$T/out" || fail "pretrain --mix: $(grep '^mixing' "$T/out")"
for bad in stories stories: :0.1 stories:1 stories:-0.1 stories:x stories:0.1x stories:nan "stories: 0.1"; do
  err "--mix '$bad'" 2 "--mix expects DOMAIN:FRACTION or FILE:FRACTION (DOMAIN stories|recipes|code|recipe-qa, FRACTION in \[0, 1)" -- \
    "$L" finetune --base "$B" --domain recipes --mix "$bad" --out "$T/x"
done
err "--mix of a missing file" 1 "--mix $T/nothing.txt: no such file" -- "$L" finetune $mix --mix "$T/nothing.txt:0.1" --out "$T/x"
[ -e "$T/x" ] && fail "a refused command left $T/x behind"

echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
