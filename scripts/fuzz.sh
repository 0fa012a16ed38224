#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, nightly toolchain) of every target in
# fuzz/src. CI runs the short stable replay instead (fuzz/tests/replay.rs, part of cargo test).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s, every target
#
# Needs `rustup toolchain install nightly` and cargo-fuzz (installed here from crates.io if
# missing). The corpus grows in target/fuzz-corpus/<target>/ (seeded by shoal-fuzz-seeds);
# crashes land in fuzz/libfuzzer/artifacts/<target>/: once fixed, copy the input to
# fuzz/regressions/<target>/ so the CI replay keeps checking it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
fuzz_dir=fuzz/libfuzzer
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# The fuzz project resolves the same dependency versions as the main build.
[ -f "$fuzz_dir/Cargo.lock" ] || cp Cargo.lock "$fuzz_dir/Cargo.lock"
corpus=target/fuzz-corpus
cargo run -q -p shoal-fuzz --bin shoal-fuzz-seeds -- "$corpus"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir")
fi
for t in "${targets[@]}"; do
    printf '\n==== fuzz %s for %s s\n' "$t" "$secs"
    cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$t" "$corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
done
