# (f) A full `shoal run --dataplane ipvs` node programs its rules; /v1/dataplane must match
# what ipvsadm shows, traffic must flow, drift must be repaired by the periodic resync, and a
# drain in progress must survive a restart of the node (kept in its --state-dir), and (g) a change
# arriving during a drift check must not wait for the whole read.
# Inputs (written by dataplane/tests/vm_lab.rs): bin/shoal, rules.toml, rules-one.toml.
. /mnt/host/lab/topology.sh
mkdir -p out
topology_up
for b in 1 2; do ip netns exec b$b shoal backend-init --vip 203.0.113.10 > out/f_init_b$b.txt 2>&1; done
backends_serve

cp rules.toml /tmp/rules.toml
start_node() {
  shoal run --dataplane ipvs --rules /tmp/rules.toml --insecure --node-id vm1 --single-node \
    --listen 127.0.0.1:7946 --admin 127.0.0.1:9100 --cluster lab --resync-interval-s 2 \
    --drain-s 60 --state-dir /tmp/shoal-state >> out/f_shoal.log 2>&1 &
  pid=$!
}
start_node

# wait_dataplane FILE PATTERN: reads /v1/dataplane into out/FILE until it holds PATTERN (at
# most ~90 s under TCG); prints 1 when it did, 0 when it never did.
wait_dataplane() {
  i=0
  while [ $i -lt 90 ]; do
    if timeout 5 wget -q -O out/$1 http://127.0.0.1:9100/v1/dataplane 2>/dev/null \
        && grep -q "$2" out/$1; then
      echo 1; return
    fi
    sleep 1; i=$((i + 1))
  done
  echo 0
}
# Until the node says its dataplane matches the table.
wait_match() { wait_dataplane $1 '"matches_table":true'; }

wait_match f_dataplane.json > out/f_matched
# Seen once: the first `ipvsadm -Sn` right after the node matched printed nothing (rc and stderr
# are kept to find out why); retry a few times and record how many tries it took.
tries=0
while [ $tries -lt 5 ]; do
  tries=$((tries + 1))
  ipvsadm -Sn > out/f_ipvsadm.txt 2> out/f_ipvsadm.err; echo $? >> out/f_ipvsadm.rc
  [ -s out/f_ipvsadm.txt ] && break
  sleep 1
done
echo $tries > out/f_ipvsadm_tries
timeout 5 wget -q -O out/f_dataplane.json http://127.0.0.1:9100/v1/dataplane
fetch_n 203.0.113.10 6 > out/f_fetch.txt

# Drift: delete the service behind the node's back; the resync restores it.
ipvsadm -D -t 203.0.113.10:80
sleep 1
wait_match f_dataplane_after_drift.json > out/f_repaired
ipvsadm -Sn > out/f_ipvsadm_after_drift.txt

# (h) The VIP interface deleted behind the node's back is made again with its VIPs; an
# address added by hand with a /24 is removed (a /32 delete missed it); a sysctl changed by
# hand is set again; a service whose scheduler this kernel lacks (no ip_vs_sed in the lab)
# is refused alone: the others stay programmed and the node stays ready.
ip link del shoal0
wait_match h_relinked.json > out/h_relinked
ip -o addr show dev shoal0 > out/h_addrs.txt 2>&1
ip addr add 203.0.113.99/24 dev shoal0
i=0
while ip -o addr show dev shoal0 | grep -q 203.0.113.99 && [ $i -lt 60 ]; do
  sleep 1; i=$((i + 1))
done
ip -o addr show dev shoal0 | grep -c 203.0.113.99 > out/h_hand_address_left
# An IPVS sysctl the node set at start, changed by hand: set again by a drift check.
echo 0 > /proc/sys/net/ipv4/vs/sloppy_tcp
i=0
while [ "$(cat /proc/sys/net/ipv4/vs/sloppy_tcp)" = 0 ] && [ $i -lt 60 ]; do
  sleep 1; i=$((i + 1))
done
cat /proc/sys/net/ipv4/vs/sloppy_tcp > out/h_sloppy_tcp
cp rules.toml /tmp/rules.new
printf '\n[[service]]\nname = "odd"\nvip = "203.0.113.11"\nport = 80\nscheduler = "sed"\n\n[[service.backend]]\naddress = "198.18.0.11"\n' >> /tmp/rules.new
mv /tmp/rules.new /tmp/rules.toml
i=0
until timeout 5 wget -q -O out/h_node.json http://127.0.0.1:9100/v1/node 2>/dev/null \
    && grep -q '"refused":\["tcp 203.0.113.11:80' out/h_node.json; do
  sleep 1; i=$((i + 1)); [ $i -gt 90 ] && break
done
timeout 5 wget -q -O out/h_readyz.txt http://127.0.0.1:9100/readyz; echo $? > out/h_readyz_rc
ipvsadm -Sn > out/h_ipvsadm_refused.txt
cp rules.toml /tmp/rules.new && mv /tmp/rules.new /tmp/rules.toml
wait_match h_dataplane_back.json > out/h_back

# A removed backend drains for 60 s. The node is killed 5 s into the drain and started again:
# the drain must still end when it would have (its deadline kept), not 60 s after the restart.
wait_draining() { wait_dataplane $1 '"remaining_ms"'; }
cp rules-one.toml /tmp/rules.new && mv /tmp/rules.new /tmp/rules.toml
wait_draining f_drain_before.json > out/f_drain_seen
sleep 5
kill -9 $pid
wait $pid
start_node
wait_draining f_drain_after.json > out/f_drain_resumed
ipvsadm -Sn > out/f_ipvsadm_draining.txt

# (i) IPv6 disabled on shoal0 (a common hardening) with an IPv6 service in the table: before,
# every pass failed and the node withdrew everything, IPv4 included. That service is set aside
# naming the sysctl (its IPVS entry, which goes in before its VIP, deleted), the IPv4 one stays
# and the node ready; with IPv6 back, a change to the service programs it at once.
sysctl -qw net.ipv6.conf.shoal0.disable_ipv6=1
six() {
  cp rules.toml /tmp/rules.new
  printf '\n[[service]]\nname = "six"\nvip = "2001:db8::10"\nport = 80\n\n[[service.backend]]\naddress = "2001:db8:1::31"\nweight = %s\n' $1 >> /tmp/rules.new
  mv /tmp/rules.new /tmp/rules.toml
}
six 1
i=0
until timeout 5 wget -q -O out/i_node.json http://127.0.0.1:9100/v1/node 2>/dev/null \
    && grep -q '"refused":\["tcp \[2001:db8::10\]:80' out/i_node.json; do
  sleep 1; i=$((i + 1)); [ $i -gt 90 ] && break
done
# One more pass, so that the services that went in before the VIP was refused are gone.
sleep 3
timeout 5 wget -q -O out/i_node.json http://127.0.0.1:9100/v1/node
timeout 5 wget -q -O out/i_readyz.txt http://127.0.0.1:9100/readyz; echo $? > out/i_readyz_rc
ipvsadm -Sn > out/i_ipvsadm_refused.txt
sysctl -qw net.ipv6.conf.shoal0.disable_ipv6=0
six 2
wait_dataplane i_dataplane_six.json '"matches_table":true' > out/i_six_programmed
ipvsadm -Sn > out/i_ipvsadm_six.txt
ip -o addr show dev shoal0 > out/i_addrs.txt 2>&1
cp rules.toml /tmp/rules.new && mv /tmp/rules.new /tmp/rules.toml
wait_match i_dataplane_back.json > out/i_back
# (After the drain's captures: the IPv6 service removed here drains 60 s.)

# A change during a drift check: 4,000 foreign services (kube-proxy's, say) make every resync a
# whole read of seconds under emulation, and the node reads again a second after each one.
# Each weight change must go in without waiting for a read: one that lands in a read makes it
# give way, one that finds a check due puts it off.
# The same changes are timed first without the foreign services (reads of a few ms).
ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
kill $pid
wait $pid
start_node_fast() {
  shoal run --dataplane ipvs --rules /tmp/rules.toml --insecure --node-id vm1 --single-node \
    --listen 127.0.0.1:7946 --admin 127.0.0.1:9100 --cluster lab --resync-interval-s 1 \
    --drain-s 60 --state-dir /tmp/shoal-state >> out/f_shoal.log 2>&1 &
  pid=$!
}
# wait_passes N: until the node has made N good passes (its metrics, not a dataplane read).
wait_passes() {
  i=0
  while [ $i -lt 600 ]; do
    n=$(wget -q -O - http://127.0.0.1:9100/metrics 2>/dev/null \
      | awk '/^shoal_reconciles_total\{result="ok"\}/ { print $2 }')
    [ -n "$n" ] && [ "${n%.*}" -ge "$1" ] && return
    sleep 0.1; i=$((i + 1))
  done
}
# change_weights FILE W...: each weight in turn, timed from the rules file's replacement to
# ipvsadm showing it; one line "weight ms applied" per change.
change_weights() {
  file=$1; shift
  : > out/$file
  for w in "$@"; do
    awk -v w=$w '{ print } /^address = "198.18.0.11"/ { print "weight = " w }' rules-one.toml > /tmp/rules.new
    t0=$(ms); mv /tmp/rules.new /tmp/rules.toml
    n=0; ok=1
    until ipvsadm -Ln -t 203.0.113.10:80 2>/dev/null | grep '198.18.0.11:80' | awk '{ print $4 }' | grep -qx "$w"; do
      n=$((n + 1)); [ $n -gt 1000 ] && { ok=0; break; }; sleep 0.01
    done
    echo "$w $(( $(ms) - t0 )) $ok" >> out/$file
    sleep 2
  done
}
start_node_fast
wait_passes 2
change_weights g_idle_latency_ms 2 3 4
i=0
while [ $i -lt 4000 ]; do
  echo "-A -t 10.97.$((i / 250)).$((i % 250 + 1)):80 -s rr"; i=$((i + 1))
done > /tmp/foreign.rules
ipvsadm -R < /tmp/foreign.rules
t0=$(ms); ipvsadm -Ln > /dev/null; echo $(( $(ms) - t0 )) > out/g_read_ms
# Two whole reads with the foreign services in (the first may have begun before they were).
ok=$(wget -q -O - http://127.0.0.1:9100/metrics | awk '/^shoal_reconciles_total\{result="ok"\}/ { print $2 }')
wait_passes $(( ${ok%.*} + 2 ))
change_weights g_latency_ms 5 6 7 8 9 10 11 12
wget -q -O - http://127.0.0.1:9100/metrics | grep '^shoal_reconciles_total' > out/g_reconciles.txt
kill $pid
wait $pid
echo $? > out/f_exit
exit 0
