#!/usr/bin/env bash
# The short chaos schedule for CI: 5 nodes, 150 s, fixed seed, mutual TLS, in network namespaces.
# Needs root, iproute2 and nftables. Exits non-zero on any violation (and on harness failure).
# Usage: bash chaos/ci.sh [REPORT_DIR]   (seed and duration: SHOAL_CHAOS_SEED, SHOAL_CHAOS_DURATION)
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT_DIR="${1:-target/chaos-report}"
SEED="${SHOAL_CHAOS_SEED:-1}"
DURATION="${SHOAL_CHAOS_DURATION:-150s}"
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build --locked -p shoal-node --bin shoal
cargo build --locked -p shoal-chaos --bin shoal-chaos
"$TARGET/debug/shoal-chaos" cleanup
exec "$TARGET/debug/shoal-chaos" run --nodes 5 --duration "$DURATION" --seed "$SEED" \
  --shoal "$TARGET/debug/shoal" --report-dir "$REPORT_DIR"
