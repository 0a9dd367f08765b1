#!/bin/sh
# The loragrad command line, end to end and on bad input (fast: a few seconds).
#
#   sh tests/test_cli.sh path/to/loragrad
#
# Checks: every subcommand's --help exits 0; each usage or runtime error exits
# with the expected status and prints exactly one line on stderr, starting
# with "loragrad: " and holding a hint; a tiny pretrain -> finetune (LoRA, on
# a text file) -> info -> generate -> eval -> merge run works; an existing
# output is not overwritten without --force.
set -u
L=${1:?usage: test_cli.sh path/to/loragrad}
T=$(mktemp -d "${TMPDIR:-/tmp}/loragrad_cli.XXXXXX")
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
failures=0
checks=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# ok DESCRIPTION -- COMMAND...: must exit 0.
ok() {
  desc=$1
  shift 2
  checks=$((checks + 1))
  "$@" >"$T/out" 2>"$T/err"
  status=$?
  if [ "$status" -ne 0 ]; then
    fail "$desc: exit $status from: $*"
    sed 's/^/    /' "$T/err"
    return 1
  fi
  return 0
}

# err DESCRIPTION STATUS PATTERN -- COMMAND...: must exit with STATUS and print
# one line on stderr that starts with "loragrad: " and matches PATTERN.
err() {
  desc=$1 want=$2 pattern=$3
  shift 4
  checks=$((checks + 1))
  "$@" >"$T/out" 2>"$T/err"
  got=$?
  lines=$(wc -l <"$T/err")
  if [ "$got" -ne "$want" ]; then
    fail "$desc: exit $got, expected $want, from: $*"
    sed 's/^/    /' "$T/err"
  elif [ "$lines" -ne 1 ]; then
    fail "$desc: $lines lines on stderr, expected 1"
    sed 's/^/    /' "$T/err"
  elif ! grep -q '^loragrad: ' "$T/err"; then
    fail "$desc: stderr does not start with 'loragrad: ': $(cat "$T/err")"
  elif ! grep -q -- "$pattern" "$T/err"; then
    fail "$desc: stderr lacks '$pattern': $(cat "$T/err")"
  fi
}

# ---- --help ----
ok "loragrad --help" -- "$L" --help
for c in pretrain finetune generate info eval merge gradcheck; do
  if ok "$c --help" -- "$L" $c --help; then
    grep -q "usage: loragrad $c" "$T/out" || fail "$c --help: no usage line"
  fi
done

# ---- a tiny end-to-end run ----
B="$T/base.safetensors"
tiny="--steps 3 --batch 2 --seq 16 --quiet --threads 1"
i=0
while [ $i -lt 40 ]; do
  echo "The quick brown fox jumps over the lazy dog, and the dog sleeps on. $i"
  i=$((i + 1))
done >"$T/text.txt"

ok "pretrain" -- "$L" pretrain --domain code $tiny --d-model 16 --layers 1 --heads 2 --out "$B"
[ -s "$B" ] || fail "pretrain wrote no checkpoint at $B"
ok "finetune lora" -- "$L" finetune --base "$B" --method lora --r 4 --alpha 8 --data "$T/text.txt" $tiny --out "$T/ad"
[ -s "$T/ad/adapter_config.json" ] && [ -s "$T/ad/adapter_model.safetensors" ] || fail "finetune wrote no adapter in $T/ad"
if ok "info" -- "$L" info --base "$B" --adapter "$T/ad"; then
  grep -q "trainable: 256 of" "$T/out" || fail "info: expected 256 trainable parameters (2 modules x r 4 x (16 + 16)): $(cat "$T/out")"
fi
if ok "generate" -- "$L" generate --base "$B" --adapter "$T/ad" --prompt "The " --tokens 20 --temperature 0; then
  grep -q "^The " "$T/out" || fail "generate: the output does not start with the prompt: $(cat "$T/out")"
fi
if ok "eval" -- "$L" eval --base "$B" --adapter "$T/ad" --data "$T/text.txt"; then
  grep -q "nats/byte" "$T/out" || fail "eval: no loss printed: $(cat "$T/out")"
  adapted=$(sed -n 's/^loss \([0-9.]*\) .*/\1/p' "$T/out")
fi
ok "eval --dump-logits" -- "$L" eval --base "$B" --dump-logits "$T/logits.safetensors" --tokens "hello"
[ -s "$T/logits.safetensors" ] || fail "eval --dump-logits wrote nothing"
ok "merge" -- "$L" merge --base "$B" --adapter "$T/ad" --out "$T/merged.safetensors"
if ok "eval merged" -- "$L" eval --base "$T/merged.safetensors" --data "$T/text.txt"; then
  merged=$(sed -n 's/^loss \([0-9.]*\) .*/\1/p' "$T/out")
  # printed with 6 decimals: merging changes the float32 rounding only
  awk -v a="${adapted:-x}" -v m="${merged:-y}" 'BEGIN { d = a - m; if (d < 0) d = -d; exit !(a != "" && d < 2e-5) }' ||
    fail "merged checkpoint loss $merged differs from base + adapter loss $adapted"
fi
ok "gradcheck" -- "$L" gradcheck
for m in loraplus dora qlora; do
  ok "finetune $m" -- "$L" finetune --base "$B" --method $m --targets all-linear --data "$T/text.txt" $tiny --out "$T/ad_$m"
  ok "merge $m" -- "$L" merge --base "$B" --adapter "$T/ad_$m" --out "$T/merged_$m.safetensors"
done
if ok "info qlora" -- "$L" info --base "$B" --adapter "$T/ad_qlora"; then
  grep -q "NF4" "$T/out" || fail "info: a QLoRA adapter's base is not reported as NF4: $(cat "$T/out")"
fi
ok "finetune full" -- "$L" finetune --base "$B" --method full --data "$T/text.txt" $tiny --out "$T/full.safetensors"
ok "generate from the fully fine-tuned checkpoint" -- "$L" generate --base "$T/full.safetensors" --prompt "a" --tokens 5

# ---- nothing is overwritten without --force ----
before=$(cksum <"$T/ad/adapter_model.safetensors" 2>/dev/null)
err "finetune onto an existing adapter" 1 "already exists.*--force" -- \
  "$L" finetune --base "$B" --data "$T/text.txt" $tiny --out "$T/ad"
[ "$(cksum <"$T/ad/adapter_model.safetensors" 2>/dev/null)" = "$before" ] || fail "the existing adapter was modified"
err "pretrain onto an existing checkpoint" 1 "already exists" -- "$L" pretrain $tiny --d-model 16 --out "$B"
err "merge onto an existing checkpoint" 1 "already exists" -- \
  "$L" merge --base "$B" --adapter "$T/ad" --out "$T/merged.safetensors"
err "dump logits onto an existing file" 1 "already exists" -- \
  "$L" eval --base "$B" --dump-logits "$T/logits.safetensors" --tokens "hi"
ok "finetune --force replaces" -- "$L" finetune --base "$B" --data "$T/text.txt" $tiny --seed 1 --out "$T/ad" --force

# ---- usage errors: exit 2 ----
F="--base $B --data $T/text.txt --out $T/new"
err "unknown command" 2 "unknown command 'frob'" -- "$L" frob
err "unknown flag" 2 "unknown flag '--bogus'" -- "$L" pretrain --bogus
err "missing value at the end" 2 "--steps expects a value" -- "$L" pretrain --steps
err "missing value before a flag" 2 "--r expects a value" -- "$L" finetune --r --quiet
err "not an integer" 2 "--steps expects an integer" -- "$L" finetune $F --steps ten
err "steps <= 0" 2 "--steps must be in" -- "$L" finetune $F --steps 0
err "r <= 0" 2 "--r must be in" -- "$L" finetune $F --r 0
err "dropout 1" 2 "--dropout must be in \[0, 1)" -- "$L" finetune $F --dropout 1
err "dropout < 0" 2 "--dropout must be in" -- "$L" finetune $F --dropout -0.1
err "unknown method" 2 "unknown --method 'foo'" -- "$L" finetune $F --method foo
err "missing --base" 2 "--base CKPT is required" -- "$L" finetune --data "$T/text.txt" --out "$T/new"
err "missing --out" 2 "--out .* is required" -- "$L" pretrain $tiny
err "no text to train on" 2 "--data FILE or --domain" -- "$L" finetune --base "$B" --out "$T/new"
err "unknown domain" 2 "--domain must be" -- "$L" pretrain --domain poems --out "$T/new"
err "heads do not divide d-model" 2 "must divide --d-model" -- "$L" pretrain --d-model 10 --heads 3 --out "$T/new"
err "seq beyond the block size" 2 "exceeds the checkpoint's block size" -- "$L" finetune $F --seq 64
err "tokens beyond the block size" 2 "more than the block size" -- \
  "$L" eval --base "$B" --dump-logits "$T/new" --tokens "this text is longer than sixteen bytes"
err "dump logits without tokens" 2 "go together" -- "$L" eval --base "$B" --dump-logits "$T/new"
err "empty prompt" 2 "--prompt" -- "$L" generate --base "$B" --prompt ""
err "merge without adapter" 2 "--adapter DIR is required" -- "$L" merge --base "$B" --out "$T/new"
err "flag given twice" 2 "given twice" -- "$L" finetune $F --r 2 --r 3

# ---- runtime errors: exit 1 ----
err "missing checkpoint" 1 "no such file" -- "$L" info --base "$T/none.safetensors"
err "missing data file" 1 "no such file" -- "$L" finetune --base "$B" --data "$T/none.txt" --out "$T/new"
err "missing adapter" 1 "no such directory" -- "$L" generate --base "$B" --adapter "$T/none" --prompt a
err "not a checkpoint" 1 "text.txt" -- "$L" eval --base "$T/text.txt" --data "$T/text.txt"
err "unknown target module" 1 "matched no module" -- "$L" finetune $F $tiny --targets nothere
ok "a wider model" -- "$L" pretrain --steps 1 --batch 2 --seq 16 --d-model 32 --layers 1 --heads 2 --quiet --out "$T/wide.safetensors"
err "adapter of another shape" 1 "wrong shape" -- "$L" eval --base "$T/wide.safetensors" --adapter "$T/ad" --data "$T/text.txt"

# ---- hostile files and places (issue 8): one line, exit 1, nothing written ----
deep=$(printf '%20000s' '' | tr ' ' '(')q_proj$(printf '%20000s' '' | tr ' ' ')')
mkdir -p "$T/deep"
cp "$T/ad/adapter_model.safetensors" "$T/deep/"
printf '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "%s"}' "$deep" >"$T/deep/adapter_config.json"
err "target regex nested 20,000 deep" 1 "target_modules regex.*longer than" -- "$L" info --base "$B" --adapter "$T/deep"
cp -r "$T/ad" "$T/alpha"
sed 's/"lora_alpha": [0-9.]*/"lora_alpha": 1e400/' "$T/ad/adapter_config.json" >"$T/alpha/adapter_config.json"
err "lora_alpha 1e400" 1 "adapter_config.json: invalid JSON at key 'lora_alpha'" -- "$L" info --base "$B" --adapter "$T/alpha"
sed 's/"lora_alpha": [0-9.]*/"lora_alpha": 1e308/' "$T/ad/adapter_config.json" >"$T/alpha/adapter_config.json"
err "lora_alpha 1e308 gives no loss nan with exit 0" 1 "the loss is .*nan.*not finite" -- \
  "$L" eval --base "$B" --adapter "$T/alpha" --data "$T/text.txt"
bad=$(printf 'q_proj\377\033[2J')
sed "s/\"q_proj\"/\"$bad\"/" "$T/ad/adapter_config.json" >"$T/alpha/adapter_config.json"
err "invalid UTF-8 is escaped" 1 'invalid JSON.*\\x' -- "$L" info --base "$B" --adapter "$T/alpha"
LC_ALL=C grep -q "$(printf '[\033\377]')" "$T/err" && fail "raw control or invalid bytes echoed: $(cat "$T/err")"
rm -f "$T/alpha/adapter_config.json" && mkdir "$T/alpha/adapter_config.json"
err "adapter_config.json is a directory" 1 "adapter_config.json is a directory" -- "$L" info --base "$B" --adapter "$T/alpha"
cp -r "$T/ad" "$T/ad.tmp.4242"
err "a killed writer's leftover is not loaded" 1 "interrupted write" -- "$L" info --base "$B" --adapter "$T/ad.tmp.4242"
err "--out in an unwritable place, before training" 1 "--out /proc/nowhere/ad: cannot create" -- \
  "$L" finetune --base "$B" --data "$T/text.txt" $tiny --out /proc/nowhere/ad
[ -s "$T/out" ] && fail "finetune printed before refusing --out: $(cat "$T/out")"
err "--out under a file" 1 "text.txt: Not a directory" -- "$L" pretrain $tiny --out "$T/text.txt/b.safetensors"

[ -e "$T/new" ] && fail "a failed command left $T/new behind"

echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
