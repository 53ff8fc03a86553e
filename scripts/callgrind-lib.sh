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

# build_examples DIR TARGET_DIR EXAMPLE... -> the `muster` crate's examples
# built lean (no LTO), as docs/benchmarks.md counts them.
build_examples() {
    local dir=$1 target=$2 args=()
    shift 2
    for example in "$@"; do args+=(--example "$example"); done
    (cd "$dir" && CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        cargo build --quiet --release -p muster "${args[@]}" --target-dir "$target")
}

command -v valgrind >/dev/null || { echo "valgrind is needed (apt install valgrind)" >&2; exit 2; }
