#!/usr/bin/env bash
# CPU of an idle host, or of a bare bus, with N idle echo instances: the
# utime+stime of that one process from /proc/PID/stat over three windows
# of SECONDS (10 by default; past 250 instances use 20, the period of the
# host's slow monitor figures at 1,000), in % of one core (docs/benchmarks.md, "A thousand instances on
# one host"). Uses the lean release build of docs/benchmarks.md:
#
#   CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
#     cargo build --release -p muster-cli -p muster-example-echo --target-dir target/iter
#   scripts/idle-cpu.sh host 1000   # one `muster up` (its own bus) supervising them
#   scripts/idle-cpu.sh bus 1000    # a bare `muster bus`, instances started by hand
#   scripts/idle-cpu.sh host 1000 20   # windows of 20 s
#   HTTP=127.0.0.1:23999 scripts/idle-cpu.sh host 1000 20   # the host's HTTP on
#   MONITOR_EVERY=1h scripts/idle-cpu.sh host 1000 20   # the host's monitor all but off
#   BIN=target/iterbase/release scripts/idle-cpu.sh host 1000 20   # another build
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?host or bus}
n=${2:-1000}
window=${3:-10}
bin=$(realpath "${BIN:-target/iter/release}")
dir=$(mktemp -d /tmp/muster-idle-cpu.XXXXXX)
# Below the ephemeral range (32768-60999): the 3,000 connections of a
# run just ended may still hold ports there.
port=$((21000 + RANDOM % 4000))
pids=()
cleanup() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

registered() { # how many echo instances the bus lists
    local n
    n=$("$bin/muster" ls --bus "zmq://127.0.0.1:$port" 2>/dev/null | awk '$1 == "echo" { print $3 }' || true)
    echo "${n:-0}"
}

case $what in
host)
    cat >"$dir/muster.toml" <<EOF
[host]
bus = "zmq://127.0.0.1:$port"
http = "${HTTP:-off}"
monitor_every = "${MONITOR_EVERY:-1s}"

[context]
name = "idle"

[[service]]
name = "echo"
run = ["$bin/muster-example-echo", "--log-level", "warn"]
instances = $n
EOF
    (cd "$dir" && exec "$bin/muster" up muster.toml --log-level warn >"$dir/up.log" 2>&1) &
    pids+=($!)
    watched=${pids[0]}
    ;;
bus)
    "$bin/muster" bus --listen "zmq://127.0.0.1:$port" --state-dir "$dir" >"$dir/bus.log" 2>&1 &
    pids+=($!)
    watched=${pids[0]}
    until [[ -f $dir/bus.secret ]]; do sleep 0.1; done
    # 50 at a time: 1,000 at once swamp the bus (docs/benchmarks.md).
    for i in $(seq 1 "$n"); do
        MUSTER_CREDENTIAL_FILE=$dir/bus.secret "$bin/muster-example-echo" \
            --bus "zmq://127.0.0.1:$port" --log-level warn >/dev/null 2>>"$dir/echo.err" &
        pids+=($!)
        if ((i % 50 == 0)); then sleep 0.5; fi
    done
    ;;
*) echo "usage: $0 host|bus [N] [SECONDS]" >&2; exit 2 ;;
esac

for _ in $(seq 1 600); do
    (($(registered) >= n)) && break
    kill -0 "$watched" 2>/dev/null || { echo "$what exited:" >&2; tail -3 "$dir"/*.log >&2; exit 1; }
    sleep 1
done
echo "$(registered) of $n instances registered; idle for 20 s first"
sleep 20
ticks=$(getconf CLK_TCK)
for w in 1 2 3; do
    a=$(awk '{print $14 + $15}' "/proc/$watched/stat")
    sleep "$window"
    b=$(awk '{print $14 + $15}' "/proc/$watched/stat")
    awk -v d=$((b - a)) -v t="$ticks" -v w="$w" -v what="$what" -v s="$window" \
        'BEGIN { printf "%s CPU, window %d (%d s): %.1f%% of a core\n", what, w, s, 100 * d / t / s }'
done
