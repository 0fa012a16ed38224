# The end-to-end topology (sourced by e2e.sh; busybox sh in the guest). docs/e2e-lab.md draws it.
#
#   cl 198.18.0.2 --cl0-- rt 198.18.0.1 (BIRD: ECMP, BFD)
#                         rt lan0 198.18.1.1 --+-- bridge br0 (ns "br")
#   replicas r1..r3 198.18.1.11-13 (shoal + BIRD)  --+
#   keepalived pair k1, k2 198.18.1.21-22            --+
#   backends b1..b3 198.18.1.31-33 (lab-flows serve) --+
#
# VIP 203.0.113.10 (Shoal) is routed by BGP to the replicas; VIP 203.0.113.20 (keepalived) is
# on-link on lan0 and held by the VRRP master. Backends answer the client through the router.

ip() { /bin/ip "$@"; }
VIP=203.0.113.10
KVIP=203.0.113.20
REPLICAS="1 2 3"
# BFD: 100 ms x 3 on real hardware; the emulated guest on a busy host needs slack.
BFD_MS=${BFD_MS:-200}
BFD_MULT=${BFD_MULT:-5}
BACKENDS="1 2 3"

# Commands started in the background use /bin/ip directly: a shell function run with & is a
# subshell, and $! would be its pid, not the program's (signals would miss the program).
nsx() { ns=$1; shift; ip netns exec "$ns" "$@"; }
now() { lab-flows now; }
event() { echo "$(now) $*" >> out/events.txt; echo "== $(now) $*"; }

topology_up() {
  sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  for ns in br cl rt r1 r2 r3 k1 k2 b1 b2 b3; do
    ip netns add $ns
    ip -n $ns link set lo up
    nsx $ns sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  done
  ip -n br link add br0 type bridge
  ip -n br link set br0 up
  ip -n cl link add cl0 type veth peer name cl0 netns rt
  ip -n cl addr add 198.18.0.2/24 dev cl0; ip -n cl link set cl0 up
  ip -n cl route add default via 198.18.0.1
  nsx cl sysctl -qw net.ipv4.tcp_tw_reuse=1
  ip -n rt addr add 198.18.0.1/24 dev cl0; ip -n rt link set cl0 up
  lan_join rt 198.18.1.1
  nsx rt sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=3 \
    net.ipv4.fib_multipath_hash_fields=0x0037
  # A fixed seed where the kernel has it (6.11+); Debian 6.1 keys the hash once per boot.
  nsx rt sysctl -qw net.ipv4.fib_multipath_hash_seed=0x5eed 2>/dev/null || true
  for i in $REPLICAS; do lan_join r$i 198.18.1.1$i; done
  for i in 1 2; do lan_join k$i 198.18.1.2$i; done
  for i in $BACKENDS; do lan_join b$i 198.18.1.3$i; done
  # keepalived's VIP is on-link: the router ARPs for it and the VRRP master answers.
  ip -n rt route add $KVIP/32 dev lan0
}

lan_join() {
  ns=$1; addr=$2
  ip -n $ns link add lan0 type veth peer name p-$ns netns br
  ip -n br link set p-$ns master br0 up
  ip -n $ns addr add $addr/24 dev lan0
  ip -n $ns link set lan0 up
  nsx $ns sysctl -qw net.ipv4.conf.lan0.rp_filter=0
  [ "$ns" = rt ] || ip -n $ns route add default via 198.18.1.1
}

router_bird_up() {
  {
    echo "log stderr { info, remote, warning, error, auth, fatal, bug };"
    echo "router id 198.18.1.1;"
    echo "protocol device { scan time 10; }"
    echo "protocol kernel { ipv4 { import none; export all; }; merge paths yes; }"
    echo "protocol bfd { interface \"lan0\" { min rx interval $BFD_MS ms; min tx interval $BFD_MS ms; multiplier $BFD_MULT; }; }"
    for i in $REPLICAS; do
      echo "protocol bgp r$i {"
      echo "  local 198.18.1.1 as 65000; neighbor 198.18.1.1$i as 6500$i;"
      echo "  hold time 9; keepalive time 3; bfd on;"
      echo "  connect delay time 1; connect retry time 1; error wait time 1, 5;"
      echo "  ipv4 { import all; export none; };"
      echo "}"
    done
  } > /tmp/bird-rt.conf
  /bin/ip netns exec rt bird -f -c /tmp/bird-rt.conf -s /tmp/bird-rt.ctl -P /tmp/bird-rt.pid > out/bird-rt.log 2>&1 &
}

# Next hops of the Shoal VIP on the router, e.g. "11 12 13" (last octets), "-" when none.
router_hops() { hops_of $VIP; }
# The same for any address the router routes to the replicas.
hops_of() {
  h=$(ip -n rt route show $1 2>/dev/null | grep -o 'via 198\.18\.1\.1[0-9]' | sed 's/via 198\.18\.1\.//' | sort | tr '\n' ' ')
  echo "${h:--}"
}

# Waits (at most $2 s, default 60) until the router routes the VIP through replica $1.
wait_hop() {
  n=0
  while [ $n -lt $((${2:-60} * 2)) ]; do
    router_hops | grep -q "1$1" && return 0
    sleep 0.5; n=$((n + 1))
  done
  echo "replica r$1 not a next hop after ${2:-60} s" >&2
  return 1
}

# Waits until replica $1 is no longer a next hop.
wait_no_hop() {
  n=0
  while [ $n -lt $((${2:-60} * 2)) ]; do
    router_hops | grep -q "1$1" || return 0
    sleep 0.5; n=$((n + 1))
  done
  return 1
}

backends_up() {
  for i in $BACKENDS; do
    nsx b$i shoal backend-init --vip $VIP,$KVIP > out/backend-init-b$i.txt 2>&1
    backend_serve $i
  done
}

backend_serve() {
  /bin/ip netns exec b$1 lab-flows serve --name b$1 --listen 0.0.0.0:9000 --listen 0.0.0.0:9001 \
    --listen 0.0.0.0:9002 --listen 0.0.0.0:9003 --udp-listen $VIP:9053 >> out/serve-b$1.log 2>&1 &
  echo $! > /tmp/serve-b$1.pid
}
