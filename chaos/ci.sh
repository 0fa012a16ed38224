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
# `fault-injection`: the teeth run below needs SHOAL_FAULT, which only such a build reads.
cargo build --locked -p shoal-node --features fault-injection --bin shoal
cargo build --locked -p shoal-chaos --bin shoal-chaos
"$TARGET/debug/shoal-chaos" cleanup
"$TARGET/debug/shoal-chaos" run --nodes 5 --duration "$DURATION" --seed "$SEED" \
  --shoal "$TARGET/debug/shoal" --report-dir "$REPORT_DIR"

# Teeth: nodes started with a deliberate bug (they report an older applied version on resync)
# must make the harness fail with an I1 violation.
TEETH_DIR="$REPORT_DIR-teeth"
set +e
"$TARGET/debug/shoal-chaos" run --nodes 3 --duration 20s --seed 7 \
  --node-env SHOAL_FAULT=applied-goes-back \
  --shoal "$TARGET/debug/shoal" --report-dir "$TEETH_DIR" > "$TEETH_DIR.log" 2>&1
code=$?
set -e
if [ "$code" -ne 1 ] || ! grep -q '"invariant": *"I1"' "$TEETH_DIR/report.json"; then
  echo "chaos teeth: a node with SHOAL_FAULT=applied-goes-back was not caught as I1 (exit $code)" >&2
  tail -40 "$TEETH_DIR.log" >&2
  exit 1
fi
echo "chaos teeth: the faulty nodes were caught (I1, exit 1)"

# Steady loss: 20 nodes started at once, then 5% of mesh packets lost on arrival at every node
# (every link, both ways); any false death (a poll missing a member, or a node logging "member
# judged dead") fails. The hour-long run is the same command with --duration 1h (docs/chaos.md).
STEADY_DIR="$REPORT_DIR-steady"
"$TARGET/debug/shoal-chaos" steady --nodes 20 --loss-percent 5 \
  --duration "${SHOAL_STEADY_DURATION:-60s}" \
  --shoal "$TARGET/debug/shoal" --report-dir "$STEADY_DIR"

# Teeth: at 60% loss members do die; the steady run must say so (exit 1).
set +e
"$TARGET/debug/shoal-chaos" steady --nodes 10 --loss-percent 60 --duration 20s \
  --shoal "$TARGET/debug/shoal" --report-dir "$STEADY_DIR-teeth" > "$STEADY_DIR-teeth.log" 2>&1
code=$?
set -e
if [ "$code" -ne 1 ]; then
  echo "steady teeth: 60% loss did not fail the steady run (exit $code)" >&2
  tail -40 "$STEADY_DIR-teeth.log" >&2
  exit 1
fi
echo "steady teeth: deaths under 60% loss were caught (exit 1)"
