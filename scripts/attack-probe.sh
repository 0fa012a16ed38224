#!/usr/bin/env bash
# The attack re-probe of issue #15 against the RELEASE binary, as an outside checker would run
# it: real `shoal` processes on loopback (impostor with a lower id and another node's
# certificate, duplicate id, a node whose seeds never answer, an empty rules file, huge
# duration flags, /dev/zero as rules and config file, 10k x 10 parse, admin API token /
# slowloris / idle / connection cap / paging, key modes and certificate validity, validation
# findings). A file caught half-written is node/src/source/static_file.rs's unit test (a
# writer's pauses cannot be bounded on a busy machine). The suites are
# node/tests/attack_probe.rs, node/tests/hardening.rs and node/tests/dataplane_api.rs (the
# admin API's paging); CI runs them on the debug binary as part of `cargo test`. The handshake flood is gossip/tests/attacks.rs; with FLOOD=1 this script
# also runs the flood bench in release (200 half-open Initials/s, a new member joins).
#
#   scripts/attack-probe.sh            # builds target/release/shoal if missing
#   SHOAL_BIN=/path/to/shoal scripts/attack-probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
bin="${SHOAL_BIN:-$PWD/target/release/shoal}"
if [ ! -x "$bin" ]; then
    cargo build --release --locked -p shoal-node --bin shoal
fi
echo "probing $bin ($("$bin" --version 2>/dev/null || echo unknown version))"
SHOAL_BIN="$bin" cargo test --locked -p shoal-node --test attack_probe --test hardening --test dataplane_api -- \
    --test-threads=1 --nocapture 2>&1 | grep -E '^(test |shoal check|identity mismatches|test result)|panicked'
if [ "${FLOOD:-0}" = 1 ]; then
    cargo run -q --release --locked -p shoal-gossip --example flood-bench -- 200 5
fi
