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

# build_at_base COMMIT EXAMPLE -> EXAMPLE built at COMMIT into target/iterbase,
# with this tree's copy of the example, so that both count the same work.
build_at_base() {
    local dir
    dir=$(mktemp -d)
    git worktree add --quiet --detach "$dir" "$1"
    cp "crates/muster/examples/$2.rs" "$dir/crates/muster/examples/$2.rs"
    build_examples "$dir" "$PWD/target/iterbase" "$2"
    git worktree remove --force "$dir"
}

command -v valgrind >/dev/null || { echo "valgrind is needed (apt install valgrind)" >&2; exit 2; }
