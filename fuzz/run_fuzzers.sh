#!/bin/sh
# Runs each libFuzzer harness for SECONDS, then reproduces every input it
# saved as a finding and prints a summary. Called by `make fuzz`:
#
#   fuzz/run_fuzzers.sh BUILD_DIR SECONDS HARNESS...
#
# Per harness, under BUILD_DIR/fuzz-out/HARNESS/:
#   corpus/      new interesting inputs (kept between runs; fuzz/corpus/HARNESS
#                is read as seeds but never written)
#   artifacts/   crash-* / timeout-* / oom-* / leak-* inputs of this run, each
#                with NAME.log: its reproduction (sanitizer report and stack)
#   fuzz.log     libFuzzer's output
# Exit status 1 if any harness saved a finding or did not run.
#
# Fork mode (-fork=1 -ignore_*=1) keeps fuzzing after a finding, so one run
# reports all it finds (a known defect would otherwise end every run within
# seconds). Findings are inputs that crash, hang (-timeout), exceed the
# memory limits, leak, trip ASan/UBSan, or let a non-loragrad::Error
# exception escape (the harness aborts).
set -u
build=$1 seconds=$2
shift 2
src=$(cd "$(dirname "$0")" && pwd)
limits="-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The harnesses' scratch dirs (the library reads files by path): in memory
# when possible (save_safetensors fsyncs), and gone afterwards, crashes or not.
export TMPDIR=$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")" loragrad-fuzz.XXXXXX)
# LLVM's OpenMP runtime registers each process in /dev/shm/__KMP_REGISTERED_LIB_<pid>_<uid>
# and leaves that file behind when the process crashes: remove the ones that
# appeared during this run and whose process is gone.
kmp_before=$(ls /dev/shm 2>/dev/null | grep '^__KMP_REGISTERED_LIB_')
cleanup() {
  rm -rf "$TMPDIR"
  for f in /dev/shm/__KMP_REGISTERED_LIB_*; do
    [ -e "$f" ] || continue
    name=${f#/dev/shm/} pid=${f#/dev/shm/__KMP_REGISTERED_LIB_}
    pid=${pid%%_*}
    printf '%s\n' "$kmp_before" | grep -qx "$name" && continue
    [ -d "/proc/$pid" ] || rm -f "$f"
  done
}
trap cleanup EXIT

status=0 summary=""
for h in "$@"; do
  bin=$build/fuzz/fuzz_$h out=$build/fuzz-out/$h
  rm -rf "$out/artifacts"
  mkdir -p "$out/corpus" "$out/artifacts"
  echo "=== fuzz_$h: $seconds s (log: $out/fuzz.log)"
  # The first corpus dir receives new inputs; the committed seeds come second.
  # Progress and findings are shown as they come; everything goes to fuzz.log.
  { nice "$bin" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 $limits \
      -max_total_time="$seconds" -dict="$src/fuzz.dict" -artifact_prefix="$out/artifacts/" \
      "$out/corpus" "$src/corpus/$h"; echo $? > "$out/rc"; } 2>&1 |
    tee "$out/fuzz.log" | grep --line-buffered -E '^#[0-9]+:|ERROR|runtime error'
  rc=$(cat "$out/rc")
  # Fork mode's progress line: "#EXECS: cov: C ft: F corp: N exec/s E oom/timeout/crash: a/b/c time: Ts ..."
  last=$(grep -E '^#[0-9]+:' "$out/fuzz.log" | tail -n 1 |
    sed -E 's/^#([0-9]+): cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+) exec\/s ([0-9]+) oom\/timeout\/crash: ([0-9/]+) time: ([0-9]+)s.*/\1 execs, cov \2, ft \3, corpus \4, \5 exec\/s, \7 s, oom\/timeout\/crash \6/')
  line="fuzz_$h: ${last:-no progress line (see $out/fuzz.log)}"
  [ -n "$last" ] || status=1
  found=0
  for a in "$out"/artifacts/*; do
    case $a in *.log|*"/*") continue ;; esac
    found=$((found + 1))
    # Reproduce once, without fork mode, for the report and stack.
    nice "$bin" $limits "$a" > "$a.log" 2>&1
    why=$(grep -m1 -E 'FUZZ FINDING|SUMMARY:|ERROR: libFuzzer' "$a.log")
    frame=$(grep -m1 -E '#[0-9]+ 0x[0-9a-f]+ in loragrad::' "$a.log" | sed 's/.* in //')
    line="$line
    $a: $why${frame:+ | first loragrad frame: $frame}"
  done
  if [ $found -gt 0 ]; then
    status=1
    line="$line
    -> $found finding(s) in $out/artifacts/ (replay one: $bin FILE)"
  elif [ $rc -ne 0 ]; then
    status=1
    line="$line
    -> libFuzzer exited with status $rc and saved no input: see $out/fuzz.log"
  fi
  summary="$summary
$line"
done
echo "=== summary (execs, coverage, findings)$summary"
exit $status
