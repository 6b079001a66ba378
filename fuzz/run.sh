#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, one after the other, and
# prints one line per target: seconds run, executions, result. Exit status 1 if any
# target found a crash, a hang or an OOM (the input is in fuzz/artifacts/<target>/).
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). New corpus
# entries go to $FUZZ_WORK/<target> (default: a fresh temporary directory), never into
# the seed corpora in fuzz/corpus/, which are only read.
#
# FUZZ_SEED=N fixes libFuzzer's random seed, so a short run (CI's) walks the same inputs
# every time and fails only on a regression, not on the luck of the draw; long runs by
# hand leave it unset and explore.
#
# Built without a sanitizer: the targets are safe Rust, and what we look for (panics,
# arithmetic overflow — the build keeps debug assertions and overflow checks —, hangs,
# unbounded memory) needs none; it doubles the executions per second.
set -uo pipefail
cd "$(dirname "$0")"

seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(command data reply config suppression_csv headers record)
fi
work=${FUZZ_WORK:-$(mktemp -d -t mailvalve-fuzz.XXXXXX)}
flags=(--sanitizer none)

cargo +nightly fuzz build "${flags[@]}" || exit 1

failed=0
printf '%-16s %8s %12s  %s\n' target seconds execs result
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "artifacts/$t"
    log="$work/$t.log"
    start=$(date +%s)
    # libFuzzer stops itself after -max_total_time; the outer timeout is a backstop.
    timeout $((seconds + 300)) cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
        >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ $rc -eq 0 ]; then
        result="ok (0 crashes, 0 hangs, 0 OOMs)"
    else
        failed=1
        result="FAILED (exit $rc): $(grep -m1 -E 'panicked at|ERROR: libFuzzer' "$log")"
        grep -E 'panicked at|assert|ERROR|Test unit written' "$log" | head -8 >&2
    fi
    printf '%-16s %8s %12s  %s\n' "$t" "$took" "${execs:-?}" "$result"
done
exit $failed
