#!/usr/bin/env bash
# Instructions per event, publish and delivery, on a real broker, counted by
# callgrind: a figure that does not move with this machine's noise (the
# broker's own work is not counted; it runs in its own process). Builds
# `examples/perevent.rs` lean (no LTO) into target/iter, then runs it at
# EVENTS and a tenth of EVENTS, muster and the plain client's loop of
# `muster bench broker-events` (async-nats or redis), and differences the
# two counts, so set-up cancels out.
#
#   scripts/callgrind-perevent.sh nats://127.0.0.1:4222
#   scripts/callgrind-perevent.sh redis://127.0.0.1:6379/15 20000
#   BASE=abc1234 scripts/callgrind-perevent.sh URL   # also a commit, side by side
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:?usage: callgrind-perevent.sh URL [EVENTS]}
events=${2:-20000}

# shellcheck source=scripts/callgrind-lib.sh
. scripts/callgrind-lib.sh

per_event() { # BINARY SIDE -> instructions per event
    local small=$((events / 10)) a b
    a=$(collected "$1" "$url" "$2" "$small")
    b=$(collected "$1" "$url" "$2" "$events")
    echo $(((b - a) / (events - small)))
}

build_examples . target/iter perevent
muster=$(per_event target/iter/release/examples/perevent muster)
plain=$(per_event target/iter/release/examples/perevent plain)
printf '%-12s %8s instructions per event (%s)\n' "this tree" "$muster" "$url"
printf '%-12s %8s instructions per event   ratio %s\n' "plain ${url%%://*}" "$plain" \
    "$(awk -v m="$muster" -v p="$plain" 'BEGIN {printf "%.2f", m / p}')"
if [ -n "${BASE:-}" ]; then
    build_at_base "$BASE" perevent
    printf '%-12s %8s instructions per event\n' \
        "$BASE" "$(per_event target/iterbase/release/examples/perevent muster)"
fi
