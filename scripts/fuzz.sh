#!/usr/bin/env bash
# Coverage-guided fuzzing of what WDML reads from outside, with cargo-fuzz (libFuzzer):
#   frames    the peer service's validation and decoding of a stream of frames
#   idx       the IDX dataset loader (gzipped or not)
#   cifar     the CIFAR-10/100 binary batch loader
#   npy       the NumPy .npy/.npz loader
#   csv       the CSV table loader
#   scenario  the scenario parser and its --set overrides
# Each target runs for FUZZ_SECONDS (default 30: six targets in the three minutes three
# had) from the seed corpus in fuzz/corpus/<target>
# (new inputs go to a scratch directory, not into the repository); a crash fails the
# script and leaves the input in fuzz/artifacts/<target>/.
#
# Runs on the stable toolchain: no sanitizer (`-s none`; safe Rust has no memory errors
# for one to find), libFuzzer's coverage instrumentation only. Needs cargo-fuzz:
#   cargo install cargo-fuzz --locked
# Prints one line per target: `fuzz: <target>: <runs> runs in <s> s, <crashes> crashes`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}"
TARGETS=(frames idx cifar npy csv scenario)
cargo fuzz build -s none 2>&1 | tail -1
failed=0
for target in "${TARGETS[@]}"; do
    scratch="$(mktemp -d)"
    log="$(mktemp)"
    set +e
    cargo fuzz run -s none "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
    if [ "$status" -eq 0 ]; then
        echo "fuzz: $target: $runs runs in $SECONDS_PER_TARGET s, 0 crashes"
    else
        failed=1
        echo "fuzz: $target: CRASH after $runs runs (input in fuzz/artifacts/$target/):"
        grep -E -A20 "panicked|ERROR: libFuzzer|SUMMARY" "$log" | head -40
    fi
    rm -rf "$scratch" "$log"
done
exit "$failed"
