#!/usr/bin/env bash
# Instructions per call of the framework's whole call path (encode,
# dispatch, handler, reply, decode) on the in-memory transport, counted by
# callgrind: a figure that does not move with this machine's noise.
# Without and with an info-level tracing subscriber (as a service that
# logs at info). Builds `examples/percall.rs` lean (no LTO, as
# docs/benchmarks.md measures it) into target/iter.
#
#   scripts/callgrind-percall.sh            # 20,000 calls
#   scripts/callgrind-percall.sh 50000
#   BASE=abc1234 scripts/callgrind-percall.sh   # also a commit, side by side
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-20000}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt install valgrind)" >&2; exit 2; }

build() { # DIR TARGET_DIR
    (cd "$1" && CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        cargo build --quiet --release -p muster --example percall --target-dir "$2")
}

count() { # BINARY [--logs] -> instructions per call
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$out.log"
    local total
    total=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out.log")
    rm -f "$out" "$out.log"
    echo $((total / calls))
}

report() { # LABEL BINARY
    printf '%-14s no subscriber %8s   info subscriber %8s instructions/call\n' \
        "$1" "$(count "$2" "$calls")" "$(count "$2" "$calls" --logs)"
}

build . "$PWD/target/iter"
report "this tree" target/iter/release/examples/percall
if [[ -n "${BASE:-}" ]]; then
    dir=$(mktemp -d)
    git worktree add --quiet --detach "$dir" "$BASE"
    # The base gets this tree's example, so both count the same loop.
    cp crates/muster/examples/percall.rs "$dir/crates/muster/examples/percall.rs"
    build "$dir" "$PWD/target/iterbase"
    git worktree remove --force "$dir"
    report "$BASE" target/iterbase/release/examples/percall
fi
