# End to end on a real kernel (docs/e2e-lab.md): a client, a BIRD router with ECMP + BFD, three
# Shoal replicas with real IPVS, three IPIP backends, and a keepalived VRRP pair, in one boot.
# Every phase streams checked long-lived connections through the VIP while a fault happens.
#
# Inputs (written by chaos/tests/vm_e2e.rs or chaos/lab/vm/e2e-demo.sh): bin/shoal,
# bin/lab-flows, rules.toml, e2e.env (PHASES, CONNS, AFTER_S, ANNOUNCE, BFD_MS, BFD_MULT, BENCH_S,
# LIVE_S). Outputs: out/<phase>.json (lab-flows reports), out/<phase>-probe*.json,
# out/events.txt, out/live.log (one line every LIVE_S s, default 3), out/bench-*.json, logs.
# Nothing aborts the run: each phase writes what it saw and the host decides.
# Binaries run from the guest's memory, not from the 9p share (page faults over 9p are slow).
mkdir -p /tmp/bin && cp /mnt/host/bin/* /tmp/bin/ && PATH=/tmp/bin:$PATH
. /mnt/host/lab/e2e-topology.sh
. /mnt/host/lab/e2e-replica.sh
mkdir -p out
: > out/events.txt
. /mnt/host/e2e.env
CONNS=${CONNS:-120}
# Seconds the connections keep streaming after a fault.
AFTER_S=${AFTER_S:-8}
ANNOUNCE=${ANNOUNCE:-bgp}
PHASES=${PHASES:-"kill9 stop term rolling add control-rr control-nosloppy backend removal keepalived"}

# One line a second in out/live.log. Cheap on purpose (every process started costs the
# emulated guest dearly): the mesh's view comes from one long-lived `lab-flows announce-view`
# in the router's namespace (it asks the replicas' admin APIs on the LAN).
live_loop() {
  /bin/ip netns exec rt lab-flows announce-view --admin 198.18.1.11:9100,198.18.1.12:9100,198.18.1.13:9100 \
    --out /tmp/mesh.txt --every-ms 1000 > /dev/null 2>&1 &
  echo $! > /tmp/meshview.pid
  n=0
  while :; do
    fl=$(cat out/flows.txt 2>/dev/null)
    mesh=$(cat /tmp/mesh.txt 2>/dev/null)
    echo "$(now) |$(replica_states) | mesh: ${mesh:--} | rt->$VIP via: $(router_hops)| $fl" >> out/live.log
    # What the guest spends its time on, every 10 lines.
    [ $((n % 10)) = 0 ] && { echo "== $(now)"; top -b -n 1 | head -15; } >> out/top.log
    n=$((n + 1))
    # Every line costs the emulated guest a dozen process starts (lab-flows, birdc, ip, awk);
    # asked for every 1 s, a line came every 3-5 s in a loaded guest. LIVE_S sets the pace.
    sleep "${LIVE_S:-3}"
  done
}

# flows LABEL PORT [VIP]: long-lived connections in the background. They stream until
# `flows_stop LABEL SECONDS` (at most 600 s); `flows_wait` joins them.
flows() {
  rm -f out/flows.status out/flows.txt
  /bin/ip netns exec cl lab-flows run --target ${3:-$VIP}:$2 --conns $CONNS --duration-s 600 \
    --interval-ms ${INTERVAL_MS:-250} \
    --label $1 --out out/$1.json --status out/flows.status --stop-file /tmp/stop-$1 \
    > out/$1.log 2>&1 &
  FLOWS_PID=$!
  event "$1 start"
}
# Waits until every connection of the running flows is open (at most 60 s), then 2 s more.
flows_settle() {
  n=0
  while [ $n -lt 120 ]; do
    open=$(grep -o '"open":[0-9]*' out/flows.status 2>/dev/null | cut -d: -f2)
    [ "${open:-0}" -ge "$CONNS" ] && break
    sleep 0.5; n=$((n + 1))
  done
  sleep 2
}
flows_wait() { wait $FLOWS_PID; event "$1 end"; cat out/$1.log; }
# Ends the streaming of flows $1 $2 seconds from now (the rest of a phase of unknown length).
flows_stop() { sleep $2; touch /tmp/stop-$1; }

# victim PHASE NS: the director's IPVS connection table just before its fault (the flows the
# fault moves), and the fault event with the router's next hops at that moment.
victim() {
  nsx $2 ipvsadm -Lnc > out/$1-victim-conns.txt 2>&1
  event "$1 fault $2 | hops $(router_hops)"
}

probe() {
  /bin/ip netns exec cl lab-flows probe --target $1 --interval-ms 50 --duration-s $2 --out out/$3.json > out/$3.log 2>&1 &
  PROBE_PIDS="$PROBE_PIDS $!"
}
probe_wait() { for pp in $PROBE_PIDS; do wait $pp; done; PROBE_PIDS=""; }

# ANNOUNCE=static: no BGP; once every replica's dataplane matches its table, the router gets
# a static multipath route (the backend phase does not need announcements).
replicas_ready() {
  if [ "$ANNOUNCE" = static ]; then
    for i in $REPLICAS; do
      n=0
      until nsx r$i timeout 5 wget -q -O - http://198.18.1.1$i:9100/v1/dataplane 2>/dev/null | grep -q '"matches_table":true'; do
        n=$((n + 1)); [ $n -gt 240 ] && return 1; sleep 0.5
      done
    done
    ip -n rt route replace $VIP/32 nexthop via 198.18.1.11 nexthop via 198.18.1.12 nexthop via 198.18.1.13
    return 0
  fi
  for i in $REPLICAS; do wait_hop $i 120 || return 1; done
}

phase_kill9() {
  # The flows spread over the replicas the router uses while they open: wait until it uses
  # all three (a replica that withdrew after a stall of the guest would carry none).
  for i in $REPLICAS; do wait_hop $i 60 || true; done
  flows kill9 9000; flows_settle
  victim kill9 r1; replica_kill9 1
  flows_stop kill9 $AFTER_S; flows_wait kill9
  replica_start 1; wait_hop 1 120
}

# A dying host: r1's link goes down, so its kernel forwards nothing more (kill -9 and SIGSTOP
# leave the kernel's IPVS forwarding); the router notices through BFD only. Not in the default
# phases yet (no measured run): PHASES="linkdown".
phase_linkdown() {
  flows linkdown 9000; flows_settle
  probe $VIP:9000 $((AFTER_S + 4)) linkdown-probe
  sleep 2
  victim linkdown r1; ip -n r1 link set lan0 down
  probe_wait
  flows_stop linkdown 0; flows_wait linkdown
  ip -n r1 link set lan0 up
  ip -n r1 route replace default via 198.18.1.1
  wait_hop 1 120
}

phase_stop() {
  flows stop 9000; flows_settle
  victim stop r2; replica_freeze 2
  flows_stop stop $AFTER_S; flows_wait stop
  replica_thaw 2; event "stop thawed r2"
  # A frozen replica's sessions were torn down by the router; it comes back by itself.
  wait_hop 2 120
}

phase_term() {
  flows term 9000; flows_settle
  victim term r3; replica_term 3
  flows_stop term $AFTER_S; flows_wait term
  replica_start 3; wait_hop 3 120
}

phase_rolling() {
  flows rolling 9000; flows_settle
  for i in $REPLICAS; do
    nsx r$i ipvsadm -Lnc >> out/rolling-victim-conns.txt 2>&1
    event "rolling fault r$i | hops $(router_hops)"; replica_term $i
    replica_start $i; wait_hop $i 120; event "rolling back r$i"
    sleep 2
  done
  flows_stop rolling 3
  flows_wait rolling
}

phase_add() {
  replica_term 3; wait_no_hop 3 30
  flows add 9000; flows_settle
  event "add fault r3"; replica_start 3; wait_hop 3 120; event "add announced r3"
  # The flows ECMP moved to the new replica: its connection table a few seconds later.
  sleep 4; nsx r3 ipvsadm -Lnc > out/add-victim-conns.txt 2>&1
  flows_stop add 2
  flows_wait add
}

# Controls: the same kill with the rr scheduler (port 9001), and with sloppy_tcp off.
phase_control_rr() {
  flows control-rr 9001; flows_settle
  victim control-rr r1; replica_kill9 1
  flows_stop control-rr $AFTER_S; flows_wait control-rr
  replica_start 1; wait_hop 1 120
}

phase_control_nosloppy() {
  for i in $REPLICAS; do nsx r$i sysctl -qw net.ipv4.vs.sloppy_tcp=0; done
  flows control-nosloppy 9000; flows_settle
  victim control-nosloppy r2; replica_kill9 2
  flows_stop control-nosloppy $AFTER_S; flows_wait control-nosloppy
  replica_start 2; wait_hop 2 120
  for i in $REPLICAS; do nsx r$i sysctl -qw net.ipv4.vs.sloppy_tcp=1; done
}

# Scenario 5: a backend dies under load. Port 9000 is mh with the fallback (the default now);
# port 9002 is the same service with mh_fallback = false (the old default), as a control;
# port 9003 is sh over the source port, with its fallback (the default with sh); UDP port 9053
# has 24 clients that each keep their source port (sh over it), one datagram every 200 ms.
phase_backend() {
  flows backend 9000; flows_settle
  probe $VIP:9000 $((AFTER_S + 10)) backend-probe
  probe $VIP:9002 $((AFTER_S + 10)) backend-probe-nofallback
  probe $VIP:9003 $((AFTER_S + 10)) backend-probe-sh
  /bin/ip netns exec cl lab-flows udp --target $VIP:9053 --clients 24 --interval-ms 200 \
    --duration-s $((AFTER_S + 10)) --out out/backend-udp.json > out/backend-udp.log 2>&1 &
  PROBE_PIDS="$PROBE_PIDS $!"
  # Long enough for every probe to have reached the victim before it dies.
  sleep 4
  event "backend fault b2"; kill -9 $(ip netns pids b2)
  probe_wait
  flows_stop backend 0; flows_wait backend
  backend_serve 2
  sleep 3
}

# A backend removed from the rules (its pod deleted: the endpoint goes first) while UDP
# clients that keep their source port send to it. The replicas drain removals 30 s, but a UDP
# destination is deleted at once: at weight 0 its clients would stay on it for the whole drain.
# b2 keeps serving, so a client still answered by it was never moved.
phase_removal() {
  # b2 back in the UDP service on every replica first (the backend phase killed it): clients
  # scheduled before would all be on b1 and b3, and stay there. Other source ports than the
  # backend phase's clients: IPVS still holds their entries (300 s), on b1 and b3.
  for i in $REPLICAS; do
    n=0
    until nsx r$i ipvsadm -Ln -u $VIP:9053 2>/dev/null | grep -q 198.18.1.32; do
      n=$((n + 1)); [ $n -gt 60 ] && break; sleep 0.5
    done
  done
  /bin/ip netns exec cl lab-flows udp --target $VIP:9053 --clients 24 --interval-ms 200 \
    --duration-s $((AFTER_S + 8)) --base-port 41000 --out out/removal-udp.json > out/removal-udp.log 2>&1 &
  PROBE_PIDS="$PROBE_PIDS $!"
  sleep 4
  cp /mnt/host/rules.toml /tmp/rules-before-removal.toml
  sed '/^name = "flows-udp"/,/^$/{/^\[\[service\.backend\]\]$/{N;/198\.18\.1\.32/d}}' \
    /tmp/rules-before-removal.toml > /mnt/host/rules.next
  event "removal fault b2"; mv /mnt/host/rules.next /mnt/host/rules.toml
  probe_wait
  cp /tmp/rules-before-removal.toml /mnt/host/rules.next && mv /mnt/host/rules.next /mnt/host/rules.toml
  sleep 3
}

# A service the replicas' kernels refuse (no ip_vs_sed in the lab) on a VIP of its own: every
# replica sets it aside and must not announce that VIP (announced, it drew flows to kernels with
# no service for them); the VIP beside it keeps its three next hops. The same service with a
# scheduler the kernel has is then announced by all three. Outputs out/refused-*.txt; the host
# checks them (chaos/tests/vm_e2e.rs, check_refused).
RVIP=203.0.113.11
# Waits (at most $2 s) until the router's next hops for $RVIP are $1; prints them.
wait_rvip_hops() {
  n=0
  while [ $n -lt $(($2 * 2)) ] && [ "$(hops_of $RVIP)" != "$1" ]; do sleep 0.5; n=$((n + 1)); done
  hops_of $RVIP
}
phase_refused() {
  cp /mnt/host/rules.toml /tmp/rules-before-refused.toml
  odd() {
    cat /tmp/rules-before-refused.toml
    printf '\n[[service]]\nname = "odd"\nvip = "%s"\nport = 9000\nscheduler = "%s"\n' $RVIP $1
    for b in $BACKENDS; do printf '[[service.backend]]\naddress = "198.18.1.3%s"\n' $b; done
  }
  odd sed > /mnt/host/rules.next
  event "refused fault | hops $(router_hops)"; mv /mnt/host/rules.next /mnt/host/rules.toml
  for i in $REPLICAS; do
    n=0
    until nsx rt timeout 3 wget -q -O out/refused-node-r$i.json http://198.18.1.1$i:9100/v1/node 2>/dev/null \
        && grep -q '"refused":\["tcp 203.0.113.11:9000' out/refused-node-r$i.json; do
      n=$((n + 1)); [ $n -gt 60 ] && break; sleep 1
    done
  done
  event "refused seen | hops $(router_hops)"
  # A few announce steps (250 ms each) and BGP updates after the last refusal.
  sleep 5
  hops_of $RVIP > out/refused-hops-refused.txt
  router_hops > out/refused-hops-vip.txt
  for i in $REPLICAS; do
    nsx rt timeout 3 wget -q -O out/refused-announce-r$i.json http://198.18.1.1$i:9100/v1/node 2>/dev/null
  done
  odd mh > /mnt/host/rules.next; mv /mnt/host/rules.next /mnt/host/rules.toml
  wait_rvip_hops "11 12 13 " 60 > out/refused-hops-programmed.txt
  event "refused programmed | $(cat out/refused-hops-programmed.txt)"
  # Back to the rules before (the added service drains 30 s, its VIP announced meanwhile).
  cp /tmp/rules-before-refused.toml /mnt/host/rules.next && mv /mnt/host/rules.next /mnt/host/rules.toml
}

phase_keepalived() {
  for k in 1 2; do
    prio=$((200 - k * 50))
    cat > /tmp/keepalived-k$k.conf <<EOF
global_defs { router_id k$k }
vrrp_instance VI {
  state BACKUP
  interface lan0
  virtual_router_id 51
  priority $prio
  advert_int 1
  virtual_ipaddress { $KVIP/32 dev lan0 }
}
virtual_server $KVIP 9000 {
  delay_loop 1
  lb_algo rr
  lb_kind TUN
  protocol TCP
$(for b in $BACKENDS; do printf '  real_server 198.18.1.3%s 9000 { weight 1\n    TCP_CHECK { connect_timeout 1 }\n  }\n' $b; done)
}
EOF
    /bin/ip netns exec k$k keepalived -n -l -D -f /tmp/keepalived-k$k.conf -p /tmp/ka-k$k.pid \
      -r /tmp/ka-k$k-vrrp.pid -c /tmp/ka-k$k-chk.pid > out/keepalived-k$k.log 2>&1 &
    echo $! > /tmp/ka-k$k.main
  done
  # Wait for the master (k1) to hold the VIP and for traffic to flow.
  n=0
  while [ $n -lt 120 ] && ! ip -n k1 addr show dev lan0 | grep -q "$KVIP"; do sleep 0.5; n=$((n + 1)); done
  sleep 3
  ipvsadm_k1=$(nsx k1 ipvsadm -Ln 2>&1); echo "$ipvsadm_k1" > out/keepalived-k1-ipvs.txt
  flows keepalived 9000 $KVIP; flows_settle
  probe $KVIP:9000 $((AFTER_S + 4)) keepalived-probe
  sleep 2
  # The master's death: keepalived killed and the node's link gone (a pod or host dying).
  victim keepalived k1
  kill -9 $(ip netns pids k1) 2>/dev/null
  ip -n k1 link set lan0 down
  probe_wait
  flows_stop keepalived 0; flows_wait keepalived
  kill $(ip netns pids k2) 2>/dev/null
}

# Data path figures (BENCH_S > 0): the same small HTTP requests through one replica in tunnel
# mode (8080), NAT mode (8081), and straight to a backend, keep-alive and not. The other
# replicas are stopped so the router sends everything through r1.
phase_bench() {
  for i in $BACKENDS; do
    /bin/ip netns exec b$i lab-flows http-serve --listen 0.0.0.0:8080 >> out/http-b$i.log 2>&1 &
    /bin/ip netns exec b$i lab-flows http-serve --listen 0.0.0.0:8081 >> out/http-b$i.log 2>&1 &
    # NAT (masq) replies must return through the replica: the NAT service's replies (source
    # port 8081) go to r1; tunnel (from the VIP) and direct replies still go to the router.
    ip -n b$i route add default via 198.18.1.11 table 81
    ip -n b$i rule add ipproto 6 sport 8081 lookup 81   # 6 = TCP (no /etc/protocols here)
  done
  replica_term 2; replica_term 3
  nsx r1 sysctl -qw net.ipv4.ip_forward=1
  sleep 3
  for mode in ka close; do
    flag=""; [ $mode = close ] && flag=--close
    for t in tun:$VIP:8080 nat:$VIP:8081 direct:198.18.1.31:8080; do
      name=${t%%:*}; target=${t#*:}
      event "bench $name-$mode"
      nsx cl lab-flows http-load --target $target --conns 8 --duration-s $BENCH_S $flag \
        --label $name-$mode --out out/bench-$name-$mode.json >> out/bench.log 2>&1
    done
  done
  nsx r1 ipvsadm -Ln --stats > out/bench-ipvs-stats.txt 2>&1
}

topology_up
router_bird_up
backends_up
certs_up
for i in $REPLICAS; do replica_start $i; done
live_loop &
LIVE=$!
if replicas_ready; then
  event "ready"
  for p in $PHASES; do
    case $p in
      kill9) phase_kill9 ;; linkdown) phase_linkdown ;; stop) phase_stop ;; term) phase_term ;; rolling) phase_rolling ;;
      add) phase_add ;; control-rr) phase_control_rr ;; control-nosloppy) phase_control_nosloppy ;;
      backend) phase_backend ;; removal) phase_removal ;; refused) phase_refused ;;
      keepalived) phase_keepalived ;;
      bench) phase_bench ;;
      *) echo "unknown phase $p" ;;
    esac
    event "phase $p done | $(router_hops)"
  done
else
  event "not ready"
  nsx rt birdc -s /tmp/bird-rt.ctl show protocols all > out/bird-rt-protocols.txt 2>&1
fi
for i in $REPLICAS; do nsx r$i ipvsadm -Ln > out/ipvs-r$i.txt 2>&1; done
kill $LIVE $(cat /tmp/meshview.pid) 2>/dev/null
for i in $REPLICAS; do kill -TERM $(replica_pids $i) 2>/dev/null; done
sleep 1
exit 0
