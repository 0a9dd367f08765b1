# Helpers for the command-line test scripts (sourced; POSIX sh).
#   ok DESCRIPTION -- COMMAND...               must exit 0
#   err DESCRIPTION STATUS PATTERN -- COMMAND... must exit STATUS with one stderr line
#                                              "loragrad: ..." matching PATTERN
# Output of the last command is in $T/out and $T/err; fail() counts a failure.
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
