#!/usr/bin/env bash
# RSS of one node (memory dataplane, insecure, no peers) while its rules file goes
# 1 service -> 10,000 services x 10 backends -> 1 service (docs/benchmarks.md).
#   scripts/rules-memory.sh target/debug/shoal [ADMIN_PORT]
set -u
BIN=$(realpath "$1"); PORT=${2:-19731}; ADMIN=127.0.0.1:$PORT
D=$(mktemp -d /tmp/shoal-rules-memory-$$-XXXX)
trap 'rm -rf "$D"' EXIT
python3 - "$D" <<'PY'
import sys
d = sys.argv[1]
out = []
for i in range(10000):
    out.append(f'[[service]]\nname = "svc-{i}"\nvip = "10.{(i>>16)&255}.{(i>>8)&255}.{i&255}"\nport = 80\n\n')
    for b in range(10):
        out.append(f'[[service.backend]]\naddress = "198.18.{b}.{1+i%250}"\nweight = 1\n\n')
open(f'{d}/big.toml', 'w').write(''.join(out))
open(f'{d}/small.toml', 'w').write('[[service]]\nname = "one"\nvip = "203.0.113.1"\nport = 80\n[[service.backend]]\naddress = "198.18.0.1"\n')
PY
cp $D/small.toml $D/rules.toml
$BIN run --insecure --single-node --node-id mem1 --listen 127.0.0.1:$((PORT - 1)) --admin $ADMIN --rules $D/rules.toml --dataplane memory >$D/node.log 2>&1 &
PID=$!
rss() { grep -E "VmRSS|VmHWM" /proc/$PID/status | tr -s ' ' | tr '\n' ' '; echo; }
services() { curl -s "http://$ADMIN/v1/dataplane?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["services"])' 2>/dev/null; }
wait_services() { for i in $(seq 1 600); do [ "$(services)" = "$1" ] && return 0; sleep 0.5; done; echo "timeout waiting for $1"; }
wait_services 1; echo "start (1 service): $(rss)"
cp $D/big.toml $D/rules.tmp && mv $D/rules.tmp $D/rules.toml
t0=$(date +%s.%N); wait_services 10000; t1=$(date +%s.%N)
echo "10k services applied after $(echo "$t1 - $t0" | bc) s: $(rss)"
sleep 3
cp $D/small.toml $D/rules.tmp && mv $D/rules.tmp $D/rules.toml
wait_services 1; sleep 5; echo "back to 1 service (+5 s): $(rss)"
sleep 15; echo "back to 1 service (+20 s): $(rss)"
kill $PID; wait $PID 2>/dev/null
