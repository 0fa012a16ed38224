# (k) What the Kubernetes overlays rely on, on a real kernel (dataplane/tests/vm_k8s.rs checks):
#  1. sysctls: `shoal run` started under a read-only /proc/sys (what containerd and CRI-O give an
#     unprivileged container) fails and names every sysctl it could not set; `shoal sysctls`
#     (the privileged init container) writes them; the same read-only start then succeeds.
#  2. hostNetwork next to kube-proxy (overlays bgp, l2): kube-proxy-style IPVS services and the
#     addresses on kube-ipvs0 survive Shoal's reconcile, a table change, resyncs and its cleanup.
#  3. `backend-init --pool`: backends prepared for a pool before any VIP of it exists serve a
#     VIP from that pool that is added to the table afterwards.
# Inputs (written by the test): bin/shoal, rules1.toml, rules2.toml. Every step writes out/k_*.
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
ro timeout 60 shoal run --dataplane ipvs --rules rules1.toml --insecure --node-id vm1 \
  --listen 127.0.0.1:7946 --admin 127.0.0.1:9100 --cluster lab > out/k_ro_run.log 2>&1
echo $? > out/k_ro_run.rc
ro shoal sysctls --check > out/k_check_before.txt 2>&1; echo $? > out/k_check_before.rc
shoal sysctls > out/k_sysctls.txt 2>&1; echo $? > out/k_sysctls.rc
ro shoal sysctls --check > out/k_check_after.txt 2>&1; echo $? > out/k_check_after.rc

# --- 3 (set-up). Backends accept the whole pool, before any VIP of it is in the table.
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
  --node-id vm1 --listen 127.0.0.1:7946 --admin 127.0.0.1:9100 --cluster lab \
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
exit 0
