#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS each (default 600), one after
# the other, and says which (if any) found a crash. Needs the nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#
#   scripts/fuzz.sh          # 10 minutes each
#   scripts/fuzz.sh 60 header jsonrpc
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-600}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
failed=()
for t in "${targets[@]}"; do
    echo "== $t: ${seconds}s"
    # 2 GB: a decoder that allocates past its bounds fails here.
    if ! cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | tee "/tmp/muster-fuzz-$t.log" | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|Done)"; then
        :
    fi
    if grep -qE "^(==[0-9]+==ERROR|SUMMARY: libFuzzer|thread '.*' panicked)" "/tmp/muster-fuzz-$t.log"; then
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "crashes in: ${failed[*]} (artifacts in fuzz/artifacts/)"
    exit 1
fi
echo "no crash in ${targets[*]} (${seconds}s each)"
