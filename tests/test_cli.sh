#!/bin/sh
# The loragrad command line, end to end and on bad input (fast: a few seconds).
#
#   sh tests/test_cli.sh path/to/loragrad
#
# Checks: every subcommand's --help exits 0; --version; each usage or runtime
# error exits with the expected status and prints exactly one line on stderr,
# starting with "loragrad: " and holding a hint (usage errors, exit 2, class by
# class for every subcommand: unknown flag, missing value, wrong type, out of
# range, empty path, mutually exclusive flags); a tiny pretrain -> finetune
# (LoRA, on a text file) -> info (table and --json, which must agree) ->
# generate (terminal-safe and --raw) -> eval (and eval --split) -> merge run
# works (QLoRA / QDoRA: float32 merge, and --requantize); an existing output
# is not overwritten without --force.
set -u
L=${1:?usage: test_cli.sh path/to/loragrad}
T=$(mktemp -d "${TMPDIR:-/tmp}/loragrad_cli.XXXXXX")
trap 'rm -rf "$T"' EXIT
export OMP_NUM_THREADS=1
. "$(dirname "$0")/cli_lib.sh"

# ---- --help ----
ok "loragrad --help" -- "$L" --help
for c in pretrain finetune generate info eval merge gradcheck bench; do
  if ok "$c --help" -- "$L" $c --help; then
    grep -q "usage: loragrad $c" "$T/out" || fail "$c --help: no usage line"
  fi
done

# ---- --version ----
for v in --version version; do
  if ok "loragrad $v" -- "$L" $v; then
    head -1 "$T/out" | grep -q '^loragrad [0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*$' &&
      sed -n 2p "$T/out" | grep -Eq '^kernels: (avx512f|avx2\+fma|avx2|sse2)$' &&
      sed -n 3p "$T/out" | grep -Eq '^bf16 kernel: (amx|avx512_bf16|fp32)$' && [ "$(wc -l <"$T/out")" -eq 3 ] ||
      fail "loragrad $v: expected 'loragrad X.Y.Z', 'kernels: ISA', 'bf16 kernel: NAME', got: $(cat "$T/out")"
  fi
done
# The bf16 kernel can be forced (fp32 runs everywhere); an unknown one is an error, before any output.
if ok "LORAGRAD_BF16_KERNEL=fp32 loragrad --version" -- env LORAGRAD_BF16_KERNEL=fp32 "$L" --version; then
  sed -n 3p "$T/out" | grep -qx 'bf16 kernel: fp32' || fail "LORAGRAD_BF16_KERNEL=fp32: got: $(cat "$T/out")"
fi
err "LORAGRAD_BF16_KERNEL unknown" 1 "LORAGRAD_BF16_KERNEL: unknown bf16 kernel 'avx9000'" -- \
  env LORAGRAD_BF16_KERNEL=avx9000 "$L" --version
[ -s "$T/out" ] && fail "LORAGRAD_BF16_KERNEL unknown: printed to stdout: $(cat "$T/out")"
# As on a CPU without them: the default falls back to fp32, and forcing one is an error that says why.
if ok "LORAGRAD_BF16_DISABLE=amx,avx512_bf16 loragrad --version" -- \
  env LORAGRAD_BF16_DISABLE=amx,avx512_bf16 "$L" --version; then
  sed -n 3p "$T/out" | grep -qx 'bf16 kernel: fp32' || fail "LORAGRAD_BF16_DISABLE: got: $(cat "$T/out")"
fi
err "LORAGRAD_BF16_KERNEL=amx without AMX" 1 "bf16 kernel 'amx' cannot run here: disabled by LORAGRAD_BF16_DISABLE" -- \
  env LORAGRAD_BF16_DISABLE=amx LORAGRAD_BF16_KERNEL=amx "$L" --version

# info --json against info's table. $1: what, $2: the table, $3: the JSON.
# The JSON is dumped with an indent of 2: top-level keys at 2 spaces, each
# parameter's keys (and the adapter config's) at 6.
json_num() { sed -n "s/^  \"$1\": \([0-9]*\),\{0,1\}\$/\1/p" "$2"; }
check_info_json() {
  desc=$1 table=$2 js=$3
  checks=$((checks + 1))
  if [ "$(head -n 1 "$js")" != "{" ] || [ "$(tail -n 1 "$js")" != "}" ]; then
    fail "$desc: not one JSON object: $(head -c 300 "$js")"
    return 1
  fi
  total=$(json_num total_params "$js")
  trainable=$(json_num trainable_params "$js")
  bytes=$(json_num total_bytes "$js")
  t_trainable=$(sed -n 's/^trainable[^:]*: \([0-9,]*\) of \([0-9,]*\) parameters.*/\1/p' "$table" | tr -d ,)
  t_total=$(sed -n 's/^trainable[^:]*: \([0-9,]*\) of \([0-9,]*\) parameters.*/\2/p' "$table" | tr -d ,)
  [ -n "$total" ] && [ "$total" = "$t_total" ] ||
    fail "$desc: JSON total_params '$total', the table says '$t_total' parameters"
  [ -n "$trainable" ] && [ "$trainable" = "$t_trainable" ] ||
    fail "$desc: JSON trainable_params '$trainable', the table says '$t_trainable'"
  # The per-parameter entries add up to the totals.
  sums=$(awk '/^      "numel": /  { n = $2 + 0; sn += n }
              /^      "bytes": /  { sb += $2 + 0 }
              /^      "trainable": true/ { tn += n }
              END { print sn + 0, sb + 0, tn + 0 }' "$js")
  [ "$sums" = "$total $bytes $trainable" ] ||
    fail "$desc: parameters sum to (numel bytes trainable) $sums, totals are $total $bytes $trainable"
  # The table's bytes (its "total" row, or "base weights" without an adapter), as format_bytes prints them.
  want=$(awk -v b="$bytes" 'BEGIN { split("B KiB MiB GiB", u, " "); i = 1
                                   while (b >= 1024 && i < 4) { b /= 1024; i++ }
                                   if (i == 1) printf "%d B", b; else if (b < 9.995) printf "%.2f %s", b, u[i]; else if (b < 99.95) printf "%.1f %s", b, u[i]; else printf "%.0f %s", b, u[i] }')
  row="total"
  grep -q '^total ' "$table" || row="base weights"
  grep -q "^$row  *[0-9,]*   $want\$" "$table" ||
    fail "$desc: JSON total_bytes $bytes ($want), the table's $row row: $(grep "^$row" "$table")"
}

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
texts_line=$(grep '^text: ' "$T/out")  # "text: N training bytes, M validation bytes; ..."
[ -s "$T/ad/adapter_config.json" ] && [ -s "$T/ad/adapter_model.safetensors" ] || fail "finetune wrote no adapter in $T/ad"
if ok "info" -- "$L" info --base "$B" --adapter "$T/ad"; then
  grep -q "trainable: 256 of" "$T/out" || fail "info: expected 256 trainable parameters (2 modules x r 4 x (16 + 16)): $(cat "$T/out")"
  cp "$T/out" "$T/info.txt"
fi
if ok "info --json" -- "$L" info --base "$B" --adapter "$T/ad" --json; then
  cp "$T/out" "$T/info.json"
  check_info_json "info --json (LoRA)" "$T/info.txt" "$T/info.json"
  [ "$(json_num trainable_params "$T/info.json")" = 256 ] && [ "$(json_num trainable_bytes "$T/info.json")" = 1024 ] ||
    fail "info --json: expected 256 trainable float32 parameters, 1024 bytes: $(grep trainable "$T/info.json")"
  grep -q '^      "r": 4,$' "$T/info.json" && grep -q '^      "lora_alpha": 8,$' "$T/info.json" &&
    grep -q '^      "peft_type": "LORA",$' "$T/info.json" || fail "info --json: no adapter config with r 4, alpha 8"
  grep -q '^    "d_model": 16,$' "$T/info.json" || fail "info --json: no model hyper-parameters"
  [ "$(grep -c '^      "storage": "f32",$' "$T/info.json")" -eq "$(grep -c '^      "name": ' "$T/info.json")" ] ||
    fail "info --json: every parameter of a LoRA model should be stored as f32"
fi
if ok "info (no adapter)" -- "$L" info --base "$B"; then
  cp "$T/out" "$T/info.txt"
  if ok "info --json (no adapter)" -- "$L" info --base "$B" --json; then
    check_info_json "info --json (no adapter)" "$T/info.txt" "$T/out"
    grep -q '^  "adapter": null,$' "$T/out" || fail "info --json without --adapter: expected \"adapter\": null"
  fi
fi
if ok "generate" -- "$L" generate --base "$B" --adapter "$T/ad" --prompt "The " --tokens 20 --temperature 0; then
  grep -q "^The " "$T/out" || fail "generate: the output does not start with the prompt: $(cat "$T/out")"
fi
# An escape byte and an invalid UTF-8 byte in the prompt: replaced by '?' unless --raw.
P=$(printf 'a\033b\377')
if ok "generate --raw" -- "$L" generate --base "$B" --prompt "$P" --tokens 30 --temperature 1 --top-k 0 --raw; then
  cp "$T/out" "$T/raw.bin"
  [ "$(wc -c <"$T/raw.bin")" -eq 34 ] || fail "generate --raw: expected 4 + 30 bytes and no newline, got $(wc -c <"$T/raw.bin")"
  [ "$(head -c 4 "$T/raw.bin" | od -An -tx1 | tr -d ' \n')" = "611b62ff" ] ||
    fail "generate --raw: the prompt is not echoed byte for byte: $(head -c 4 "$T/raw.bin" | od -An -c)"
fi
if ok "generate, terminal-safe" -- "$L" generate --base "$B" --prompt "$P" --tokens 30 --temperature 1 --top-k 0; then
  [ "$(head -c 4 "$T/out")" = "a?b?" ] || fail "generate: the prompt's escape bytes are not replaced: $(od -An -c "$T/out")"
  LC_ALL=C grep -q "$(printf '[\033\377]')" "$T/out" && fail "generate: raw control or invalid bytes printed: $(od -An -c "$T/out")"
  # The same bytes as --raw, each unsafe one replaced, plus a newline.
  { LC_ALL=C tr '\000-\010\013-\037\177-\377' '?' <"$T/raw.bin"; echo; } >"$T/raw_made_safe"
  cmp -s "$T/raw_made_safe" "$T/out" || fail "generate and generate --raw differ beyond the replaced bytes"
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

# ---- eval --split: exactly the bytes finetune trained on (train) and validated on (val) ----
loss_of() { sed -n 's/^loss \([0-9.]*\) .*/\1/p' "$T/out"; }
size=$(wc -c <"$T/text.txt")
nval=$(echo "$texts_line" | sed -n 's/^text: [0-9]* training bytes, \([0-9]*\) validation bytes.*/\1/p')
ntrain=$((size - ${nval:-0}))
head -c "$ntrain" "$T/text.txt" >"$T/part_train.txt"
tail -c "${nval:-0}" "$T/text.txt" >"$T/part_val.txt"
for s in train val; do
  if ok "eval --split $s" -- "$L" eval --base "$B" --adapter "$T/ad" --data "$T/text.txt" --split $s; then
    got=$(loss_of)
    if [ $s = val ]; then
      grep -q "^split val: bytes \[$ntrain, $size) of $size (--val-fraction 0.1: the last $nval bytes)$" "$T/out" ||
        fail "eval --split val: not finetune's $nval validation bytes: $(grep '^split' "$T/out")"
    fi
    ok "eval the $s bytes as a file" -- "$L" eval --base "$B" --adapter "$T/ad" --data "$T/part_$s.txt"
    [ -n "$got" ] && [ "$got" = "$(loss_of)" ] || fail "eval --split $s: loss $got, the same bytes in a file: $(loss_of)"
  fi
done
ok "eval --split all" -- "$L" eval --base "$B" --adapter "$T/ad" --data "$T/text.txt" --split all
[ "$(loss_of)" = "${adapted:-x}" ] || fail "eval --split all: $(loss_of), without --split: ${adapted:-?}"
n20=$(awk -v n="$size" 'BEGIN { printf "%d", int(n * 0.2) }')
if ok "eval --split val --val-fraction 0.2" -- "$L" eval --base "$B" --data "$T/text.txt" --split val --val-fraction 0.2; then
  grep -q "the last $n20 bytes)$" "$T/out" || fail "--val-fraction 0.2: expected the last $n20 bytes: $(grep '^split' "$T/out")"
fi
err "eval: --split val of nothing" 1 "--split val of .* holds 0 bytes" -- \
  "$L" eval --base "$B" --data "$T/text.txt" --split val --val-fraction 0

# ---- merging a QLoRA (and QDoRA) adapter: float32 by default, NF4 again with --requantize ----
diff_of() { sed -n 's/^max |logit difference| to base + adapter: \([-+.e0-9]*\) .*/\1/p' "$T/out"; }
ok "finetune --dora --qlora" -- "$L" finetune --base "$B" --dora --qlora --targets all-linear --data "$T/text.txt" $tiny --out "$T/ad_qdora"
for m in qlora qdora; do
  ok "eval $m" -- "$L" eval --base "$B" --adapter "$T/ad_$m" --data "$T/text.txt"
  unmerged=$(loss_of)
  if ok "merge $m (float32)" -- "$L" merge --base "$B" --adapter "$T/ad_$m" --out "$T/mf_$m.safetensors"; then
    grep -q "^merged 6 layers into float32 weights" "$T/out" || fail "merge $m: $(head -1 "$T/out")"
    grep -q "^requantisation error" "$T/out" && fail "merge $m: a requantisation without --requantize"
    float_diff=$(diff_of)
    awk -v d="${float_diff:-x}" 'BEGIN { exit !(d != "x" && d + 0 < 1e-4) }' || fail "merge $m: logit difference '$float_diff'"
  fi
  ok "eval merged $m" -- "$L" eval --base "$T/mf_$m.safetensors" --data "$T/text.txt"
  awk -v a="${unmerged:-x}" -v m="$(loss_of)" 'BEGIN { d = a - m; if (d < 0) d = -d; exit !(a != "x" && m != "" && d < 2e-5) }' ||
    fail "merge $m: merged loss $(loss_of), base + adapter $unmerged"
  if ok "merge $m --requantize" -- "$L" merge --base "$B" --adapter "$T/ad_$m" --out "$T/mq_$m.safetensors" --requantize; then
    rq=$(sed -n 's/^requantisation error: .* = \([-+.e0-9]*\) over the merged weights$/\1/p' "$T/out")
    awk -v e="${rq:-0}" -v d="$(diff_of)" -v f="${float_diff:-1}" 'BEGIN { exit !(e > 0 && d > f) }' ||
      fail "merge $m --requantize: requantisation error '$rq', logit difference $(diff_of) (float32: $float_diff)"
  fi
done
err "merge --requantize of a float adapter" 2 "--requantize is for a QLoRA adapter" -- \
  "$L" merge --base "$B" --adapter "$T/ad" --requantize --out "$T/new"
if ok "info qlora" -- "$L" info --base "$B" --adapter "$T/ad_qlora"; then
  grep -q "NF4" "$T/out" || fail "info: a QLoRA adapter's base is not reported as NF4: $(cat "$T/out")"
  cp "$T/out" "$T/info.txt"
  if ok "info qlora --json" -- "$L" info --base "$B" --adapter "$T/ad_qlora" --json; then
    check_info_json "info --json (QLoRA)" "$T/info.txt" "$T/out"
    # all-linear on 1 block: q, k, v, o, fc_in, fc_out hold NF4 weights: 4 bits + scales, under 5 bits each.
    [ "$(grep -c '^      "storage": "nf4",$' "$T/out")" -eq 6 ] || fail "info --json: expected 6 NF4 weights"
    nf4_params=$(json_num nf4_params "$T/out") nf4_bytes=$(json_num nf4_bytes "$T/out")
    [ "${nf4_params:-0}" -eq 3072 ] && [ "$((nf4_bytes * 8))" -lt "$((nf4_params * 5))" ] ||
      fail "info --json: NF4 weights: $nf4_params weights in $nf4_bytes bytes"
    grep -q '^      "loragrad_qlora": true,$' "$T/out" || fail "info --json: the adapter config does not say QLoRA"
  fi
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

# Each class of mistake, in every subcommand: exit 2, one line.
for c in pretrain finetune generate info eval merge gradcheck bench version; do
  err "$c: unknown flag" 2 "$c: unknown flag '--bogus'" -- "$L" $c --bogus
  err "$c: a word that is not a flag" 2 "$c: unexpected argument 'extra'" -- "$L" $c extra
  err "$c: a single-dash flag" 2 "$c: unexpected argument '-h'" -- "$L" $c -h
  err "$c: a value given to --help" 2 "$c: --help takes no value" -- "$L" $c --help=1
done
# missing value (at the end, and before another flag)
err "pretrain: missing value" 2 "pretrain: --out expects a value" -- "$L" pretrain --out
err "finetune: missing value" 2 "finetune: --base expects a value" -- "$L" finetune --base --data "$T/text.txt"
err "generate: missing value" 2 "generate: --prompt expects a value" -- "$L" generate --base "$B" --prompt
err "info: missing value" 2 "info: --adapter expects a value" -- "$L" info --base "$B" --adapter --json
err "eval: missing value" 2 "eval: --data expects a value" -- "$L" eval --base "$B" --data
err "merge: missing value" 2 "merge: --out expects a value" -- "$L" merge --base "$B" --adapter "$T/ad" --out
err "gradcheck: missing value" 2 "gradcheck: --seed expects a value" -- "$L" gradcheck --seed
# wrong type
err "pretrain: --lr not a number" 2 "pretrain: --lr expects a finite number" -- "$L" pretrain --lr fast --out "$T/new"
err "pretrain: --lr nan" 2 "pretrain: --lr expects a finite number" -- "$L" pretrain --lr nan --out "$T/new"
err "finetune: --alpha inf" 2 "finetune: --alpha expects a finite number" -- "$L" finetune $F --alpha inf
err "finetune: --r 2.5" 2 "finetune: --r expects an integer, got '2.5'" -- "$L" finetune $F --r 2.5
err "generate: --temperature not a number" 2 "generate: --temperature expects a finite number" -- \
  "$L" generate --base "$B" --prompt a --temperature hot
err "generate: --tokens 1x" 2 "generate: --tokens expects an integer" -- "$L" generate --base "$B" --prompt a --tokens 1x
err "eval: --threads empty" 2 "eval: --threads expects an integer, got ''" -- "$L" eval --base "$B" --data "$T/text.txt" --threads=
err "gradcheck: --seed x" 2 "gradcheck: --seed expects an integer" -- "$L" gradcheck --seed x
err "info: --json takes no value" 2 "info: --json takes no value" -- "$L" info --base "$B" --json=yes
err "generate: --raw takes no value" 2 "generate: --raw takes no value" -- "$L" generate --base "$B" --prompt a --raw=1
# out of range
err "pretrain: --batch 0" 2 "pretrain: --batch must be in" -- "$L" pretrain --batch 0 --out "$T/new"
err "pretrain: --lr 0" 2 "pretrain: --lr must be positive" -- "$L" pretrain --lr 0 --out "$T/new"
err "pretrain: --lr that underflows to 0" 2 "pretrain: --lr must be positive" -- "$L" pretrain --lr 1e-400 --out "$T/new"
err "pretrain: --steps beyond int64" 2 "pretrain: --steps must be in" -- "$L" pretrain --steps 99999999999999999999 --out "$T/new"
err "finetune: --threads 5000" 2 "finetune: --threads must be in" -- "$L" finetune $F --threads 5000
err "generate: --tokens 0" 2 "generate: --tokens must be in" -- "$L" generate --base "$B" --prompt a --tokens 0
err "generate: --top-k -1" 2 "generate: --top-k must be in" -- "$L" generate --base "$B" --prompt a --top-k -1
err "generate: --temperature -1" 2 "generate: --temperature must be in" -- "$L" generate --base "$B" --prompt a --temperature -1
err "eval: --threads -1" 2 "eval: --threads must be in" -- "$L" eval --base "$B" --data "$T/text.txt" --threads -1
err "gradcheck: --seed -1" 2 "gradcheck: --seed must be in" -- "$L" gradcheck --seed -1
# an empty path
err "pretrain: --out ''" 2 "pretrain: --out expects a path" -- "$L" pretrain --out ""
err "finetune: --base ''" 2 "finetune: --base expects a path" -- "$L" finetune --base "" --data "$T/text.txt" --out "$T/new"
err "finetune: --data ''" 2 "finetune: --data expects a path" -- "$L" finetune --base "$B" --data "" --out "$T/new"
err "generate: --adapter ''" 2 "generate: --adapter expects a path" -- "$L" generate --base "$B" --adapter "" --prompt a
err "info: --base ''" 2 "info: --base expects a path" -- "$L" info --base ""
err "eval: --dump-logits ''" 2 "eval: --dump-logits expects a path" -- "$L" eval --base "$B" --dump-logits "" --tokens a
err "merge: --out=" 2 "merge: --out expects a path" -- "$L" merge --base "$B" --adapter "$T/ad" --out=
# mutually exclusive, or needed together
err "pretrain: --data and --domain" 2 "pretrain: give --data FILE or --domain NAME, not both" -- \
  "$L" pretrain --data "$T/text.txt" --domain code --out "$T/new"
err "finetune: --data and --domain" 2 "finetune: give --data FILE or --domain NAME, not both" -- "$L" finetune $F --domain code
err "eval: --tokens without --dump-logits" 2 "eval: --dump-logits OUT and --tokens TEXT go together" -- \
  "$L" eval --base "$B" --tokens hi
err "eval: unknown --split" 2 "eval: --split must be train, val or all" -- "$L" eval --base "$B" --data "$T/text.txt" --split test
err "eval: --val-fraction with --split all" 2 "eval: --val-fraction is for --split train or val" -- \
  "$L" eval --base "$B" --data "$T/text.txt" --val-fraction 0.2
err "eval: --val-fraction 0.6" 2 "eval: --val-fraction must be in" -- "$L" eval --base "$B" --data "$T/text.txt" --split val --val-fraction 0.6
err "eval: --split without --data" 2 "eval: --split is for --data" -- "$L" eval --base "$B" --split val --dump-logits "$T/new" --tokens a
err "eval: an empty --tokens" 2 "eval: --tokens must hold at least one byte" -- \
  "$L" eval --base "$B" --data "$T/text.txt" --dump-logits "$T/new" --tokens ""
# the command itself
err "no command" 2 "give a command" -- "$L"
err "a flag before the command" 2 "unknown flag '--bogus' before the command" -- "$L" --bogus
err "--help with an argument" 2 "unexpected argument" -- "$L" --help pretrain

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

# Output that cannot be written is an error, not a silent exit 0.
if [ -w /dev/full ]; then
  checks=$((checks + 1))
  "$L" info --base "$B" --json >/dev/full 2>"$T/err"
  [ $? -eq 1 ] && grep -q "^loragrad: info: cannot write to standard output" "$T/err" ||
    fail "info --json > /dev/full: expected exit 1 and one line: $(cat "$T/err")"
fi
# A checkpoint path that is not UTF-8 still gives valid JSON (U+FFFD in its place).
cp "$B" "$T/b$(printf '\377').safetensors"
if ok "info --json, a path that is not UTF-8" -- "$L" info --base "$T/b$(printf '\377').safetensors" --json; then
  grep -q "^  \"checkpoint\": \".*b$(printf '\357\277\275').safetensors\",\$" "$T/out" ||
    fail "info --json: the checkpoint path is not UTF-8 with U+FFFD: $(grep checkpoint "$T/out")"
fi

[ -e "$T/new" ] && fail "a failed command left $T/new behind"

echo "$checks checks, $failures failed"
[ "$failures" -eq 0 ]
