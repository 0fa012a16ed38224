#!/bin/bash
# The health runner's CPU over a node's age (docs/benchmarks.md, "Health runner CPU over a
# node's age"): three nodes on loopback (memory dataplane, --insecure), SERVICES (300) services
# x 3 TCP backends checked every INTERVAL_MS (1000) ms, one service renamed every 0.5 s, and n3
# restarted every RESTART_S seconds (SIGTERM, then the same command). Every minute it writes, for n1 and n2, the
# CPU of their `shoal-health` thread per probe finished and its wakeups per second, into
# $DIR/samples.txt.
#
#   bash bench/health-soak.sh target/release/shoal            # 15 minutes, ports 32001-32113
#   MINUTES=30 PORTS=330 DIR=/tmp/soak-b bash bench/health-soak.sh /tmp/other-build/shoal
#
# Two builds side by side: run it twice at once with other PORTS and DIR (the first run's
# backends serve both; give the second NO_BACKENDS=1).
set -u
BIN=$(realpath "${1:?usage: health-soak.sh SHOAL_BINARY}")
MINUTES=${MINUTES:-15}
RESTART_S=${RESTART_S:-120}
SERVICES=${SERVICES:-300}
INTERVAL_MS=${INTERVAL_MS:-1000}
PORTS=${PORTS:-320}
DIR=${DIR:-/tmp/shoal-health-soak}
rm -rf "$DIR" && mkdir -p "$DIR" && cd "$DIR" || exit 1
trap 'kill $(jobs -p) $(cat n*.pid 2>/dev/null) 2>/dev/null' EXIT

if [ -z "${NO_BACKENDS:-}" ]; then
  python3 - <<'PY' &
import socket, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    while True:
        c, _ = s.accept()
        c.close()
for p in (21001, 21002, 21003):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
PY
fi

# rules N: the table with service N % SERVICES renamed (a rename is a removal and an addition).
rules() {
  python3 - "$1" "$SERVICES" "$INTERVAL_MS" > rules.next <<'PY'
import sys
c, services, interval = (int(a) for a in sys.argv[1:4])
print("loopback_backends = true")
for i in range(services):
    name = f"svc-{i}-r{c}" if i == c % services else f"svc-{i}"
    print(f'[[service]]\nname = "{name}"\nvip = "203.0.113.{1 + i % 200}"\nport = {10000 + i}')
    print('scheduler = "mh"\nforwarding = "masq"')
    print(f'[service.health]\nkind = "tcp"\ninterval_ms = {interval}\ntimeout_ms = 500\nrise = 2\nfall = 2')
    for p in (21001, 21002, 21003):
        print(f'[[service.backend]]\naddress = "127.0.0.1"\nport = {p}')
    print()
PY
  mv rules.next rules.toml
}

start() {
  local i=$1 seeds=""
  for j in 1 2 3; do [ "$j" = "$i" ] || seeds="$seeds${seeds:+,}127.0.0.1:${PORTS}0$j"; done
  "$BIN" run --insecure --dataplane memory --rules "$DIR/rules.toml" --node-id "n$i" \
    --listen "127.0.0.1:${PORTS}0$i" --admin "127.0.0.1:${PORTS}1$i" --seeds "$seeds" \
    --cluster health-soak >> "n$i.log" 2>&1 &
  echo $! > "n$i.pid"
}

rules 0
for i in 1 2 3; do start "$i"; done
( c=1; while :; do sleep 0.5; rules $c; c=$((c + 1)); done ) &
if [ "$RESTART_S" -gt 0 ]; then
  ( while :; do
      sleep "$RESTART_S"; kill -TERM "$(cat n3.pid)"; sleep 3; start 3
      echo "$(date +%T) n3 restarted" >> samples.txt
    done ) &
fi

# health_thread PID: the `shoal-health` thread's "ticks wakeups" so far.
health_thread() {
  local task
  task=$(grep -l '^shoal-health$' /proc/"$1"/task/*/comm 2>/dev/null | head -1)
  [ -n "$task" ] || return 1
  task=$(dirname "$task")
  echo "$(awk '{print $14 + $15}' "$task/stat") $(awk '/^voluntary_ctxt/ {print $2}' "$task/status")"
}
probes() {
  curl -s "127.0.0.1:${PORTS}1$1/metrics" | awk '/^shoal_health_probes_total/ {s += $2} END {print int(s)}'
}
hz=$(getconf CLK_TCK)
declare -A ticks wakes done_
# Minute 0 once both health threads and admin APIs are up.
for _ in $(seq 1 60); do
  { probes 1 && probes 2 && health_thread "$(cat n1.pid)" && health_thread "$(cat n2.pid)"; } \
    > /dev/null 2>&1 && [ "$(probes 2)" -gt 0 ] && break
  sleep 1
done
for m in $(seq 0 "$MINUTES"); do
  line="$(date +%T) minute $m"
  for i in 1 2; do
    read -r t w <<< "$(health_thread "$(cat n$i.pid)")"
    p=$(probes "$i")
    if [ "$m" -gt 0 ]; then
      line="$line | n$i: $(python3 -c "d = $p - ${done_[$i]}; print(f'{d} probes, {($t - ${ticks[$i]}) * 1000 / $hz / max(d, 1):.3f} ms of CPU per probe, {($w - ${wakes[$i]}) / 60:.0f} wakeups/s')")"
    fi
    ticks[$i]=$t; wakes[$i]=$w; done_[$i]=$p
  done
  echo "$line" | tee -a samples.txt
  [ "$m" = "$MINUTES" ] || sleep 60
done
