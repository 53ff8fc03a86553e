#!/usr/bin/env bash
# Instructions per call of the framework's whole call path (encode,
# dispatch, handler, reply, decode) on the in-memory transport, counted by
# callgrind: a figure that does not move with this machine's noise.
# Without and with an info-level tracing subscriber (as a service that
# logs at info). Builds `examples/percall.rs` lean (no LTO, as
# docs/benchmarks.md measures it) into target/iter.
#
# Then the whole call over the embedded ZeroMQ bus (`examples/percall_zmq.rs`:
# caller, instance and bus in one process, sockets, header and body), beside
# raw DEALER-ROUTER round trips of the same payload: each counted at two call
# counts and differenced, so set-up cancels out; the ratio is CPU per call
# against the raw wire. Once one call at a time, once with 100 in flight
# (muster: 100 tasks calling; raw: one DEALER keeping 100 requests out), the
# topology of `muster bench rpc-pipelined`.
#
#   scripts/callgrind-percall.sh            # 20,000 calls
#   scripts/callgrind-percall.sh 50000
#   BASE=abc1234 scripts/callgrind-percall.sh   # also a commit, side by side
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-20000}

# shellcheck source=scripts/callgrind-lib.sh
. scripts/callgrind-lib.sh

count() { # BINARY [--logs] -> instructions per call
    echo $(($(collected "$@") / calls))
}

over_zmq() { # BINARY SIDE IN_FLIGHT -> instructions per call, set-up differenced away
    local small=$((calls / 10)) a b
    a=$(collected "$1" "$2" "$small" "$3")
    b=$(collected "$1" "$2" "$calls" "$3")
    echo $(((b - a) / (calls - small)))
}

report() { # LABEL BINARY
    printf '%-14s no subscriber %8s   info subscriber %8s instructions/call\n' \
        "$1" "$(count "$2" "$calls")" "$(count "$2" "$calls" --logs)"
    local muster raw in_flight
    for in_flight in 1 100; do
        muster=$(over_zmq "$2_zmq" muster "$in_flight")
        raw=$(over_zmq "$2_zmq" raw "$in_flight")
        printf '%-14s over ZeroMQ, %3s in flight: muster %8s   raw DEALER-ROUTER %8s instructions/call   ratio %s\n' \
            "" "$in_flight" "$muster" "$raw" "$(awk -v m="$muster" -v r="$raw" 'BEGIN {printf "%.2f", m / r}')"
    done
}

build_examples . "$PWD/target/iter" percall percall_zmq
report "this tree" target/iter/release/examples/percall
if [[ -n "${BASE:-}" ]]; then
    dir=$(mktemp -d)
    git worktree add --quiet --detach "$dir" "$BASE"
    # The base gets this tree's example, so both count the same loop.
    cp crates/muster/examples/percall.rs crates/muster/examples/percall_zmq.rs "$dir/crates/muster/examples/"
    # A base without muster::Allocator counts with the system allocator.
    grep -q 'MiMalloc as Allocator' "$dir/crates/muster/src/lib.rs" ||
        sed -i '/^\/\/\/ The allocator muster/,/^static ALLOC/d' "$dir/crates/muster/examples/percall_zmq.rs"
    grep -q '^omq-tokio' "$dir/crates/muster/Cargo.toml" ||
        sed -i '/^\[dev-dependencies\]/a omq-tokio = { workspace = true }' "$dir/crates/muster/Cargo.toml"
    build_examples "$dir" "$PWD/target/iterbase" percall percall_zmq
    git worktree remove --force "$dir"
    report "$BASE" target/iterbase/release/examples/percall
fi
