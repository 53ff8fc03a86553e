#!/usr/bin/env bash
# Instructions per queue job in the consuming process, on a real broker,
# counted by callgrind: a figure that does not move with this machine's
# noise (the broker's own work is not counted; it runs in its own process).
# Builds `examples/perjob.rs` lean (no LTO) into target/iter, then runs it
# four times: enqueue only and enqueue-then-consume, each at JOBS and a
# tenth of JOBS. The consume runs less the enqueue runs, differenced between
# the two counts, is what one job costs the consumer at PREFETCH.
# Then the same for the plain client's loop of `muster bench queue` (redis or
# async-nats) on the same jobs.
#
#   scripts/callgrind-perjob.sh redis://127.0.0.1:6379/15
#   scripts/callgrind-perjob.sh nats://127.0.0.1:4222 5000 100
#   BASE=abc1234 scripts/callgrind-perjob.sh URL   # also a commit, side by side
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:?usage: callgrind-perjob.sh URL [JOBS] [PREFETCH]}
jobs=${2:-20000}
prefetch=${3:-100}

# shellcheck source=scripts/callgrind-lib.sh
. scripts/callgrind-lib.sh

per_job() { # BINARY [SIDE] -> instructions per consumed job
    local small=$((jobs / 10)) side=${2:-consume} e1 e2 c1 c2
    e1=$(collected "$1" "$url" enqueue "$small" "$prefetch")
    e2=$(collected "$1" "$url" enqueue "$jobs" "$prefetch")
    c1=$(collected "$1" "$url" "$side" "$small" "$prefetch")
    c2=$(collected "$1" "$url" "$side" "$jobs" "$prefetch")
    echo $((((c2 - e2) - (c1 - e1)) / (jobs - small)))
}

build_examples . target/iter perjob
printf '%-12s %8s instructions per job consumed (%s, prefetch %s)\n' \
    "this tree" "$(per_job target/iter/release/examples/perjob)" "$url" "$prefetch"
printf '%-12s %8s instructions per job consumed\n' \
    "plain ${url%%://*}" "$(per_job target/iter/release/examples/perjob plain)"
if [ -n "${BASE:-}" ]; then
    build_at_base "$BASE" perjob
    printf '%-12s %8s instructions per job consumed\n' \
        "$BASE" "$(per_job target/iterbase/release/examples/perjob)"
fi
