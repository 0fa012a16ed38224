# Replicas of the end-to-end lab (sourced by e2e.sh): start, kill, freeze, stop gracefully.
#
# Each replica r$i runs `shoal run --dataplane ipvs` in its own namespace (admin on
# 198.18.1.1$i:9100, mesh on 198.18.1.1$i:7946 with mutual TLS). Announcement:
# - ANNOUNCE=bgp: `--announce bgp`, shoal runs its own BIRD (docs/announce.md);
# - ANNOUNCE=bird: a stand-in for builds without it: a BIRD with a static VIP route, started
#   once the replica's dataplane matches the table (what shoal's gate does) and killed with it;
# - ANNOUNCE=static: nothing announced; the router gets a static multipath route (e2e.sh).

certs_up() {
  shoal certs init --out /tmp/certs --cluster lab --nodes r1,r2,r3 > out/certs.txt 2>&1
}

replica_seeds() {
  s=""
  for j in $REPLICAS; do [ "$j" = "$1" ] || s="$s${s:+,}198.18.1.1$j:7946"; done
  echo "$s"
}

replica_start() {
  i=$1
  if [ "$ANNOUNCE" = bgp ]; then
    mkdir -p /tmp/r$i-state
    {
      echo "announce = \"bgp\""
      # The emulated guest on a busy host misses 100 ms steps now and then: more slack before
      # the watchdog calls shoal frozen.
      echo "freeze_withdraw_ms = ${FREEZE_MS:-3000}"
      echo "[bgp]"
      echo "local_asn = 6500$i"
      echo "router_id = \"198.18.1.1$i\""
      echo "state_dir = \"/tmp/r$i-state\""
      echo "bfd = true"
      echo "bfd_interval_ms = $BFD_MS"
      echo "bfd_multiplier = $BFD_MULT"
      echo "hold_time_s = 9"
      echo "[[bgp.peers]]"
      echo "address = \"198.18.1.1\""
      echo "asn = 65000"
    } > /tmp/r$i.toml
    extra="--config /tmp/r$i.toml"
  else
    extra=""
  fi
  # The drain is the Kubernetes source's default: a removed TCP destination stays at weight 0
  # for 30 s, a removed UDP one goes at once (the removal phase).
  # shellcheck disable=SC2086
  /bin/ip netns exec r$i shoal run --dataplane ipvs --rules /mnt/host/rules.toml --tls-dir /tmp/certs/r$i \
    --node-id r$i --listen 198.18.1.1$i:7946 --admin 198.18.1.1$i:9100 --cluster lab --drain-s 30 \
    --seeds "$(replica_seeds $i)" $extra >> out/r$i.log 2>&1 &
  echo $! > /tmp/r$i.pid
  if [ "$ANNOUNCE" = bird ]; then
    ( standin_bird $i ) &
  fi
}

# The stand-in announcer: waits for the replica's dataplane to match, then starts BIRD.
standin_bird() {
  i=$1; n=0
  while [ $n -lt 120 ]; do
    kill -0 "$(cat /tmp/r$i.pid)" 2>/dev/null || return 0
    if nsx r$i timeout 3 wget -q -O - http://198.18.1.1$i:9100/v1/dataplane 2>/dev/null | grep -q '"matches_table":true'; then
      break
    fi
    sleep 0.5; n=$((n + 1))
  done
  cat > /tmp/bird-r$i.conf <<EOF
log stderr { info, remote, warning, error, auth, fatal, bug };
router id 198.18.1.1$i;
protocol device { scan time 10; }
protocol static vip { ipv4; route $VIP/32 blackhole; }
protocol bfd { interface "lan0" { min rx interval $BFD_MS ms; min tx interval $BFD_MS ms; multiplier $BFD_MULT; }; }
protocol bgp up {
  local 198.18.1.1$i as 6500$i; neighbor 198.18.1.1 as 65000;
  hold time 9; keepalive time 3; bfd on;
  connect delay time 1; connect retry time 1; error wait time 1, 5;
  ipv4 { import none; export where proto = "vip"; next hop self; };
}
EOF
  /bin/ip netns exec r$i bird -f -c /tmp/bird-r$i.conf -s /tmp/bird-r$i.ctl -P /tmp/bird-r$i.pid >> out/bird-r$i.log 2>&1 &
  echo $! > /tmp/bird-r$i.pidx
}

# Every process in the replica's namespace (shoal and its BIRD).
replica_pids() { ip netns pids r$1 2>/dev/null | tr '\n' ' '; }

replica_kill9() { kill -9 $(replica_pids $1) 2>/dev/null; wait_gone $1; }
replica_freeze() { kill -STOP $(replica_pids $1) 2>/dev/null; }
replica_thaw() { kill -CONT $(replica_pids $1) 2>/dev/null; }

# Graceful: SIGTERM to shoal (withdraw, drain, exit); the stand-in's BIRD gets SIGTERM too
# (BIRD then closes its sessions with a Cease: a withdrawal).
replica_term() {
  kill -TERM "$(cat /tmp/r$1.pid)" 2>/dev/null
  [ "$ANNOUNCE" = bird ] && kill -TERM "$(cat /tmp/bird-r$1.pidx 2>/dev/null)" 2>/dev/null
  wait_gone $1
}

wait_gone() {
  n=0
  while [ -n "$(replica_pids $1)" ] && [ $n -lt 60 ]; do sleep 0.5; n=$((n + 1)); done
  [ -z "$(replica_pids $1)" ] || { echo "r$1 still running after 30 s: killing" >&2; kill -9 $(replica_pids $1) 2>/dev/null; }
}

# One word per replica for the live view: shoal's process state and the router's BGP session
# state (one birdc call for all three; no `ip netns pids`, which reads every process).
replica_states() {
  sessions=$(nsx rt birdc -s /tmp/bird-rt.ctl show protocols 2>/dev/null)
  for i in $REPLICAS; do
    pid=$(cat /tmp/r$i.pid 2>/dev/null)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then p=dead
    elif grep -q '^State:.*T' /proc/$pid/status 2>/dev/null; then p=frozen
    else p=up; fi
    s=$(echo "$sessions" | awk '$1=="r'$i'" {print $6}')
    printf ' r%s:%s/%s' $i $p "${s:-?}"
  done
}
