# Shared lab topology, sourced by scenarios (busybox sh in the guest).
#
#   client ns "cl" 198.18.0.100 --+
#   backend ns "b1" 198.18.0.11 --+-- bridge br0 (in ns "br") --+-- LB = root ns, lb0 198.18.0.1
#   backend ns "b2" 198.18.0.12 --+                                VIPs on shoal0 (dummy)
#
# The client routes 203.0.113.0/24 via the LB; backends answer the client directly.

# busybox sh runs its own applets before PATH; its `ip` has no netns, so call iproute2's.
ip() { /bin/ip "$@"; }

topology_up() {
  sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  for ns in br cl b1 b2; do ip netns add $ns; ip -n $ns link set lo up; done
  ip -n br link add br0 type bridge
  ip -n br link set br0 up
  ip link add lb0 type veth peer name p-lb netns br
  ip -n cl link add eth0 type veth peer name p-cl netns br
  ip -n b1 link add eth0 type veth peer name p-b1 netns br
  ip -n b2 link add eth0 type veth peer name p-b2 netns br
  for p in p-lb p-cl p-b1 p-b2; do ip -n br link set $p master br0 up; done
  ip addr add 198.18.0.1/24 dev lb0; ip link set lb0 up
  ip -n cl addr add 198.18.0.100/24 dev eth0; ip -n cl link set eth0 up
  ip -n cl route add 203.0.113.0/24 via 198.18.0.1
  ip netns exec cl sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0
  for b in 1 2; do
    ip -n b$b addr add 198.18.0.1$b/24 dev eth0; ip -n b$b link set eth0 up
    mkdir -p /tmp/www-b$b; echo "backend-b$b" > /tmp/www-b$b/index.html
  done
}

# Start an HTTP server in each backend namespace (busybox httpd forks into the background).
backends_serve() {
  for b in 1 2; do ip netns exec b$b httpd -p 80 -h /tmp/www-b$b; done
}

# n fetches of http://$1/ from the client; one answer (or "FAIL") per line.
fetch_n() {
  i=0
  while [ $i -lt "$2" ]; do
    out=$(ip netns exec cl timeout 5 wget -q -O - "http://$1/" 2>/dev/null) || out=FAIL
    echo "$out"
    i=$((i + 1))
  done
}
