#!/usr/bin/env bash
# Watch connections survive the loss of a replica, on a real kernel: boots the VM lab's
# end-to-end topology (docs/e2e-lab.md), streams 120 checked connections through the VIP, kills
# a replica (kill -9 of shoal and its BIRD) and prints, live, every second: each replica's state
# (process / the router's BGP session), the router's next hops for the VIP, and the
# connections' counters and stalls; then the summary table.
#
#   bash chaos/lab/vm/e2e-demo.sh [PHASES]     e.g. "kill9 stop term backend" (default: kill9)
#
# Needs root and scripts/install-deps.sh (qemu, Debian's kernel, bird2, keepalived).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PHASES="${1:-kill9}"
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build --locked -q -p shoal-node --bin shoal
cargo build --locked -q -p shoal-chaos --bin lab-flows
SHARE="$(mktemp -d "${TMPDIR:-/tmp}/shoal-e2e-demo.XXXXXX")"
mkdir -p "$SHARE/bin" "$SHARE/out"
cp "$TARGET/debug/shoal" "$TARGET/debug/lab-flows" "$SHARE/bin/"
strip "$SHARE/bin/shoal" "$SHARE/bin/lab-flows" 2>/dev/null || true   # the guest loads them over 9p
# The rules the lab's tests use (one source of truth: chaos/tests/vm_e2e.rs).
awk '/^pub const RULES: &str = r#"/{on=1; next} on && /^"#;/{exit} on' chaos/tests/vm_e2e.rs > "$SHARE/rules.toml"
printf 'PHASES="%s"\nCONNS=120\nAFTER_S=10\nANNOUNCE=%s\n' "$PHASES" "${SHOAL_E2E_ANNOUNCE:-bgp}" > "$SHARE/e2e.env"
echo "share: $SHARE (logs and reports in out/)"
bash chaos/lab/vm/run.sh --share "$SHARE" --scenario chaos/lab/vm/scenarios/e2e.sh \
  --timeout 1200 --memory 1536 --kernel-args "clocksource=tsc tsc=reliable" &
LAB=$!
# Follow the live view and the events as the guest writes them (9p share).
seen_live=0; seen_events=0
show() {
  if [ -f "$SHARE/out/events.txt" ]; then
    n=$(wc -l < "$SHARE/out/events.txt")
    [ "$n" -gt "$seen_events" ] && sed -n "$((seen_events + 1)),${n}p" "$SHARE/out/events.txt" | sed 's/^[0-9]* /EVENT  /'
    seen_events=$n
  fi
  if [ -f "$SHARE/out/live.log" ]; then
    n=$(wc -l < "$SHARE/out/live.log")
    [ "$n" -gt "$seen_live" ] && sed -n "$((seen_live + 1)),${n}p" "$SHARE/out/live.log" | cut -d' ' -f2-
    seen_live=$n
  fi
  return 0
}
while kill -0 "$LAB" 2>/dev/null; do show; sleep 1; done
show
set +e
wait "$LAB"; rc=$?
set -e
echo
"$TARGET/debug/lab-flows" summary --dir "$SHARE/out"
echo "lab exit $rc; everything is in $SHARE"
exit "$rc"
