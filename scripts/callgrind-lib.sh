# Sourced by scripts/callgrind-*.sh.

# collected BINARY ARGS... -> the instructions callgrind counted over the
# whole run.
collected() {
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$out.log"
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out.log"
    rm -f "$out" "$out.log"
}
