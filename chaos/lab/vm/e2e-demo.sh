#!/usr/bin/env bash
# Watch connections survive the loss of a replica, on a real kernel: boots the VM lab's
# end-to-end topology (docs/e2e-lab.md), streams 120 checked connections through the VIP, kills
# a replica (kill -9 of shoal and its BIRD) and prints, live, every second: each replica's state
# (process / the router's BGP session), the mesh's view of every member, the router's next hops
# for the VIP, and the connections' counters and stalls; then the summary table.
#
#   bash chaos/lab/vm/e2e-demo.sh [PHASES]     e.g. "kill9 stop term backend" (default: kill9)
#
# Phases: kill9 stop term rolling add control-rr control-nosloppy backend keepalived.
# Needs root and scripts/install-deps.sh (qemu, Debian's kernel, bird2, keepalived). Builds the
# release binaries the guest runs (minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PHASES="${1:-kill9}"
TARGET="${CARGO_TARGET_DIR:-target}"
echo "building the release binaries (shoal, lab-flows)..."
# Two calls: built together, shoal would get the features shoal-chaos turns on (fault hooks).
cargo build --release --locked -q -p shoal-node --bin shoal
cargo build --release --locked -q -p shoal-chaos --bin lab-flows
FLOWS="$TARGET/release/lab-flows"
SHARE="$(mktemp -d "${TMPDIR:-/tmp}/shoal-e2e-demo.XXXXXX")"
mkdir -p "$SHARE/bin" "$SHARE/out"
cp "$TARGET/release/shoal" "$FLOWS" "$SHARE/bin/"
strip "$SHARE/bin/shoal" "$SHARE/bin/lab-flows" 2>/dev/null || true   # the guest loads them over 9p
cp chaos/lab/vm/e2e-rules.toml "$SHARE/rules.toml"
printf 'PHASES="%s"\nCONNS=120\nAFTER_S=10\nANNOUNCE=%s\n' "$PHASES" "${SHOAL_E2E_ANNOUNCE:-bgp}" > "$SHARE/e2e.env"
echo "share: $SHARE (logs and reports in out/); host: $(uptime)"
bash chaos/lab/vm/run.sh --share "$SHARE" --scenario chaos/lab/vm/scenarios/e2e.sh \
  --timeout 1800 --memory 1536 --kernel-args "clocksource=tsc tsc=reliable" &
LAB=$!
trap 'kill $LAB 2>/dev/null || true' INT TERM

# hh:mm:ss.mmm of a Unix time in ms.
clock() { printf '%s.%03d' "$(date -u -d "@$(($1 / 1000))" +%H:%M:%S)" $(($1 % 1000)); }

# Follow the events and the live view as the guest writes them (9p share). A live line is
# "<ms> | r1:up/Established ... | mesh: ... | rt->VIP via: 11 12 13 | flows counters".
seen_live=0; seen_events=0
show() {
  if [ -f "$SHARE/out/events.txt" ]; then
    n=$(wc -l < "$SHARE/out/events.txt")
    if [ "$n" -gt "$seen_events" ]; then
      sed -n "$((seen_events + 1)),${n}p" "$SHARE/out/events.txt" | while read -r ms rest; do
        echo ">>> $(clock "$ms")  $rest"
      done
    fi
    seen_events=$n
  fi
  if [ -f "$SHARE/out/live.log" ]; then
    n=$(wc -l < "$SHARE/out/live.log")
    if [ "$n" -gt "$seen_live" ]; then
      sed -n "$((seen_live + 1)),${n}p" "$SHARE/out/live.log" | while IFS='|' read -r ms reps mesh hops flows; do
        printf '%s  replicas (process/BGP):%s | %s\n' "$(clock "${ms// /}")" "$reps" "${hops# }"
        printf '              %s\n' "${mesh# }"
        if [ -n "${flows// /}" ]; then printf '              flows %s\n' "${flows# }"; fi
      done
    fi
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
echo "==== summary (connections per phase; new connections after each fault)"
"$FLOWS" summary --dir "$SHARE/out"
echo "lab exit $rc; host: $(uptime); everything is in $SHARE"
exit "$rc"
