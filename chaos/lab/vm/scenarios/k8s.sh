# (k) What the Kubernetes overlays rely on, on a real kernel (dataplane/tests/vm_k8s.rs checks):
#  1. sysctls: `shoal run` started under a read-only /proc/sys (what containerd and CRI-O give an
#     unprivileged container) fails and names every sysctl it could not set; `shoal sysctls`
#     (the privileged init container) writes them; the same read-only start then succeeds.
#  2. hostNetwork next to kube-proxy (overlays bgp, l2): kube-proxy-style IPVS services and the
#     addresses on kube-ipvs0 survive Shoal's reconcile, a table change, resyncs and its cleanup.
#  3. `backend-init --pool`: backends prepared for a pool before any VIP of it exists serve a
#     VIP from that pool that is added to the table afterwards.
#  4. Draining (issue #13 item 6), through the Kubernetes source with its default drain (30 s):
#     long-lived connections to two backends; one backend's endpoint turns terminating (serving,
#     not ready) while the other is ready; the connections open on it keep working and finish
#     within the drain, new connections go to the other backend only, and after the drain the
#     destination is deleted and the connections still open on it are cut.
# Inputs (written by the test): bin/shoal, bin/lab-flows, bin/fake-apiserver, rules1.toml,
# rules2.toml, k8s/*.json (the API objects of step 4). Every step writes out/k_*.
# Binaries run from the guest's memory, not from the 9p share (page faults over 9p are slow).
mkdir -p /tmp/bin && cp /mnt/host/bin/* /tmp/bin/ && PATH=/tmp/bin:$PATH
. /mnt/host/lab/topology.sh
mkdir -p out
topology_up

# A read-only /proc/sys in a private mount namespace, as a container runtime sets it up.
# `unshare` execs sh, which execs the command: the command keeps unshare's pid, so `$!` of a
# backgrounded `unshare -m sh -c "$RO" ro CMD &` is CMD's own pid (a shell function would not be).
RO='mount --make-rprivate / 2>/dev/null; mount -o bind /proc/sys /proc/sys &&
  mount -o remount,bind,ro /proc/sys && exec "$@"'
ro() { unshare -m sh -c "$RO" ro "$@"; }

# --- kube-proxy (IPVS mode) as it leaves the node: ClusterIPs on kube-ipvs0 (a dummy that it
# keeps down), one IPVS service per ClusterIP port and per NodePort, all masquerading.
ip link add kube-ipvs0 type dummy
ip addr add 198.19.0.1/32 dev kube-ipvs0
ip addr add 198.19.0.10/32 dev kube-ipvs0
ipvsadm -A -t 198.19.0.1:443 -s rr && ipvsadm -a -t 198.19.0.1:443 -r 198.18.0.11:6443 -m
ipvsadm -A -u 198.19.0.10:53 -s rr && ipvsadm -a -u 198.19.0.10:53 -r 198.18.0.12:53 -m
ipvsadm -A -t 198.18.0.1:30080 -s rr && ipvsadm -a -t 198.18.0.1:30080 -r 198.18.0.11:80 -m
kube_state() {
  { ipvsadm -Sn | grep -v '203\.0\.113\.'; ip -o addr show dev kube-ipvs0 | awk '{print $4}'; } > "out/$1"
}
kube_state k_kube_before.txt

# --- 1. sysctls. Make two of the three differ from what shoal needs.
sysctl -qw net.ipv4.vs.sloppy_tcp=0 net.ipv4.vs.expire_nodest_conn=0 net.ipv4.vs.conn_reuse_mode=1
ro timeout 60 shoal run --dataplane ipvs --rules rules1.toml --insecure --node-id vm1 --single-node \
  --listen 127.0.0.1:7946 --admin 127.0.0.1:9100 --cluster lab > out/k_ro_run.log 2>&1
echo $? > out/k_ro_run.rc
ro shoal sysctls --check > out/k_check_before.txt 2>&1; echo $? > out/k_check_before.rc
shoal sysctls > out/k_sysctls.txt 2>&1; echo $? > out/k_sysctls.rc
ro shoal sysctls --check > out/k_check_after.txt 2>&1; echo $? > out/k_check_after.rc

# --- 3 (set-up). First what must be refused before anything changes: a pool that would make
# every address local (its default route included), one holding the backend's own address,
# a multicast VIP. Then backends accept the whole pool, before any VIP of it is in the table.
n=0
for bad in "--pool 0.0.0.0/0" "--pool 198.18.0.0/24" "--vip 224.0.0.1"; do
  n=$((n + 1))
  ip netns exec b1 shoal backend-init $bad > out/k_refused$n.txt 2>&1; echo $? >> out/k_refused$n.txt
done
{ ip -n b1 route show table local type local; ip -n b1 addr show dev tunl0; } > out/k_refused_state.txt 2>&1
for b in 1 2; do
  ip netns exec b$b shoal backend-init --pool 203.0.113.0/24 > out/k_init_b$b.txt 2>&1
  echo $? > out/k_init_b$b.rc
  ip netns exec b$b shoal backend-init --pool 203.0.113.0/24 > out/k_init_again_b$b.txt 2>&1
  ip netns exec b$b ip route show table local type local > out/k_routes_b$b.txt
done
backends_serve

# The node, started unprivileged-style (read-only /proc/sys): the sysctls are already set.
cp rules1.toml rules.toml
unshare -m sh -c "$RO" ro shoal run --dataplane ipvs --rules rules.toml --insecure \
  --node-id vm1 --single-node --listen 127.0.0.1:7946 --admin 127.0.0.1:9100 --cluster lab \
  --resync-interval-s 2 --cleanup-on-exit > out/k_shoal.log 2>&1 &
pid=$!

# Wait until /v1/dataplane matches the table and shows $2 (at most ~90 s under TCG).
wait_match() {
  i=0
  while [ $i -lt 90 ]; do
    if timeout 5 wget -q -O "out/$1" http://127.0.0.1:9100/v1/dataplane 2>/dev/null \
        && grep -q '"matches_table":true' "out/$1" && grep -q "$2" "out/$1"; then
      echo 1; return
    fi
    sleep 1; i=$((i + 1))
  done
  echo 0
}
wait_match k_dp1.json '203.0.113.10' > out/k_matched1
fetch_n 203.0.113.10 4 > out/k_fetch10.txt
kube_state k_kube_running.txt

# --- 3. A VIP of the pool that did not exist when the backends started.
cp rules2.toml rules.toml.tmp && mv rules.toml.tmp rules.toml
wait_match k_dp2.json '203.0.113.77' > out/k_matched2
fetch_n 203.0.113.77 6 > out/k_fetch77.txt
ipvsadm -Sn > out/k_ipvsadm_running.txt
# Two resync passes (every 2 s) later, kube-proxy's state is still whole.
sleep 5
kube_state k_kube_resynced.txt

# --- 2 (end). Cleanup on exit removes Shoal's services and VIPs, nothing else.
kill $pid
wait $pid
echo $? > out/k_exit
kube_state k_kube_after.txt
ipvsadm -Sn > out/k_ipvsadm_after.txt
ip -o addr show dev shoal0 > out/k_shoal0_after.txt 2>&1

# --- 4. Draining a terminating endpoint. Backends b1 (A) and b2 (B) run lab-flows' echo server
# on port 7000 (greets "shoal-flows bN"); the Service web/flows asks for 203.0.113.20.
VIP=203.0.113.20
A='-r 198.18.0.11:7000'
for b in 1 2; do
  ip netns exec b$b lab-flows serve --listen 0.0.0.0:7000 --name b$b > out/k_serve_b$b.log 2>&1 &
done
ipvs_now() { ipvsadm -Sn > "out/k_drain_ipvs_$1.txt" 2>&1; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# A's state in IPVS (up, 0 = weight 0, gone) every 0.25 s with the guest's uptime: the drain's
# timing comes from here (a `lab-flows now` stamp costs a process start of seconds under load).
sample_a() {
  while :; do
    t=$(uptime_s); l=$(ipvsadm -Sn | grep -- "$A ")
    case "$l" in *"-w 0 "*|*"-w 0") st=0 ;; "") st=gone ;; *) st=up ;; esac
    echo "$t $st" >> out/k_drain_samples.txt
    sleep 0.25
  done
}
# Waits (at most $2 s) until `ipvsadm -Sn` shows ($1 = has) or stops showing ($1 = not) $3.
wait_ipvs() {
  i=0
  while [ $i -lt $(($2 * 4)) ]; do
    if ipvsadm -Sn | grep -q -- "$3"; then [ "$1" = has ] && return 0
    else [ "$1" = not ] && return 0; fi
    sleep 0.25; i=$((i + 1))
  done
  return 1
}
# Hands an object to the fake API server and waits until it applied it (at most 20 s).
api_apply() {
  cp "k8s/$1" "ctl/$1.tmp" && mv "ctl/$1.tmp" "ctl/$1"
  i=0
  while [ ! -e "ctl/$1.done" ] && [ $i -lt 80 ]; do sleep 0.25; i=$((i + 1)); done
  [ -e "ctl/$1.done" ]
}
mkdir -p ctl
fake-apiserver kubeconfig ctl > out/k_api.log 2>&1 &
api=$!
for f in 1-pool.json 2-service.json 3-slice-ready.json; do
  api_apply $f || echo "$f not applied" >> out/k_drain_errors.txt
done
# The kube client loads the system's CA certificates even for a plain-HTTP server and the guest
# has none (the image installs ca-certificates): any CA will do.
shoal certs init --out /tmp/lab-ca --cluster lab --nodes vm1 > /dev/null 2>&1
# Default drain of the Kubernetes source: no --drain-s.
SSL_CERT_FILE=/tmp/lab-ca/ca.pem shoal run --dataplane ipvs --source kubernetes --kubeconfig kubeconfig --insecure --node-id vm1 --single-node \
  --listen 127.0.0.1:7946 --admin 127.0.0.1:9100 --cluster lab --cleanup-on-exit \
  > out/k_drain_shoal.log 2>&1 &
pid=$!
wait_ipvs has 120 "$A .*-w 1" && wait_ipvs has 10 '-r 198.18.0.12:7000 .*-w 1' \
  || echo "both destinations never programmed" >> out/k_drain_errors.txt
ipvs_now before
# The flows' reports use Unix ms; the samples, uptime: one reading of each, side by side.
c0=$(uptime_s); now=$(lab-flows now); c1=$(uptime_s)
echo "$c0 $now $c1" > out/k_drain_clock
sample_a &
sampler=$!
# Two sets of 16 long-lived connections: "finish" stops streaming (and closes cleanly) in the
# middle of the drain; "outlast" keeps streaming past its end.
for set in finish outlast; do
  ip netns exec cl lab-flows run --target $VIP:7000 --conns 16 --duration-s 300 \
    --interval-ms 200 --spread-ms 2000 --drain-s 10 --label $set --out out/k_flows_$set.json \
    --status out/k_status_$set.json --stop-file /tmp/stop-$set > out/k_flows_$set.log 2>&1 &
  eval "flows_$set=\$!"
done
i=0
while [ $i -lt 120 ]; do
  open=0
  for set in finish outlast; do
    n=$(grep -o '"open":[0-9]*' out/k_status_$set.json 2>/dev/null | cut -d: -f2)
    open=$((open + ${n:-0}))
  done
  [ $open -ge 32 ] && break
  sleep 0.5; i=$((i + 1))
done
sleep 2
ipvsadm -Lnc > out/k_drain_conns_before.txt 2>&1
# A turns terminating: serving, not ready; B stays ready.
api_apply 4-slice-terminating.json || echo "terminating slice not applied" >> out/k_drain_errors.txt
wait_ipvs has 60 "$A .*-w 0" || echo "A never reached weight 0" >> out/k_drain_errors.txt
ipvs_now weight0
# New connections while A drains; the "finish" connections stop streaming (and close) now, at
# the start of the drain, and must be done long before its end.
ip netns exec cl lab-flows probe --target $VIP:7000 --interval-ms 250 --duration-s 5 \
  --out out/k_drain_probe.json > out/k_drain_probe.log 2>&1 &
probe=$!
touch /tmp/stop-finish
wait $flows_finish
wait $probe
ipvsadm -Lnc > out/k_drain_conns_during.txt 2>&1
# The drain ends: A is deleted (default 30 s after weight 0; allow 120 s under emulation).
wait_ipvs not 120 "$A " || echo "A never deleted" >> out/k_drain_errors.txt
ipvs_now removed
sleep 5
touch /tmp/stop-outlast
wait $flows_outlast
kill $sampler
kill $pid
wait $pid
echo $? > out/k_drain_exit
kill $api
exit 0
