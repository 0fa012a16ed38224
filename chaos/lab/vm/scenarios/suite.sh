# The dataplane suite, run in one boot: (a) program a table, (b) tunnel traffic, (c) minimal
# changes, (d) drift repair, (e) foreign services untouched, (g) the drift check, (h) a flush
# never takes a foreign service unless the table is declared Shoal's, (i) a drift check gives
# way to a change, plus draining and backend-init.
# Inputs (written by dataplane/tests/vm_lab.rs): bin/ipvs-lab, t_a.json, t_c.json,
# t_drain.json, t_drain_svc.json, t_empty.json. Every step writes its outputs to out/; nothing aborts the suite.
. /mnt/host/lab/topology.sh
mkdir -p out
step() { name=$1; shift; "$@" > out/$name.out 2> out/$name.err; echo $? > out/$name.rc; }

topology_up
step init_b1 ip netns exec b1 ipvs-lab backend-init 203.0.113.10,203.0.113.20
step init_b1_again ip netns exec b1 ipvs-lab backend-init 203.0.113.10,203.0.113.20
step init_b2 ip netns exec b2 ipvs-lab backend-init 203.0.113.10,203.0.113.20
ip netns exec b1 sysctl net.ipv4.conf.all.rp_filter net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce > out/b1_sysctl.txt
ip -n b1 -o addr show dev tunl0 > out/b1_tunl0.txt

# (e) a foreign service, as kube-proxy or an operator would leave it.
ipvsadm -A -t 10.96.0.1:80 -s rr
ipvsadm -a -t 10.96.0.1:80 -r 198.18.0.11:80 -m -w 1
ipvsadm -Sn | grep 10.96.0.1 > out/foreign_before.txt

# (a) program the table; an independent reader (ipvsadm) says what the kernel holds.
step a_apply ipvs-lab apply t_a.json
ipvsadm -Sn > out/a_ipvsadm.txt
ip -o addr show dev shoal0 > out/a_shoal0.txt
for k in sloppy_tcp expire_nodest_conn conn_reuse_mode; do echo "$k=$(cat /proc/sys/net/ipv4/vs/$k)"; done > out/a_sysctl.txt
step a_again ipvs-lab apply t_a.json

# (b) HTTP through the VIP in tunnel mode; replies must bypass the LB.
backends_serve
sleep 1
fetch_n 203.0.113.10 12 > out/b_fetch.txt
sleep 5   # the IPVS estimator refreshes counters every 2 s
ipvsadm -Ln --stats -t 203.0.113.10:80 > out/b_stats.txt
step b_dump ipvs-lab dump

# (c) one weight change, one backend removal, one service addition.
step c_apply ipvs-lab apply t_c.json
ipvsadm -Sn > out/c_ipvsadm.txt

# (d) drift: delete a service behind Shoal's back; the next pass restores it.
ipvsadm -D -t 203.0.113.20:8080
step d_apply ipvs-lab apply t_c.json
ipvsadm -Sn > out/d_ipvsadm.txt

# Draining: a removed backend goes to weight 0 first, then is deleted.
step drain_apply ipvs-lab apply t_drain.json --drain-ms 1500 --settle
ipvsadm -Sn > out/drain_ipvsadm.txt
# Removed services drain too: weight 0 on every destination, their VIP (203.0.113.20, both of
# its services removed) kept, all deleted after the drain. Then they are put back.
step drain_svc_apply ipvs-lab apply t_drain_svc.json --drain-ms 1500 --settle
ipvsadm -Sn > out/drain_svc_ipvsadm.txt
step drain_svc_back ipvs-lab apply t_drain.json

# (g) the drift check: a reconciler that keeps the kernel's state in memory sends nothing for
# drift it cannot see, and repairs it at its next full read (every 3 s here).
ipvs-lab watch t_drain.json --stop-file out/g_stop --drift-check-ms 3000 --interval-ms 200 --timeout-ms 240000 > out/g_watch.out 2> out/g_watch.err &
g_pid=$!
for i in $(seq 1 600); do grep -q '"ready"' out/g_watch.out 2>/dev/null && break; sleep 0.2; done
ipvsadm -Sn | sort > out/g_before.txt
ipvsadm -e -t 203.0.113.10:80 -r 198.18.0.11:80 -i -w 9
ipvsadm -D -t 203.0.113.20:8080
ipvsadm -A -t 203.0.113.10:9999 -s rr
ipvsadm -Sn | sort > out/g_drifted.txt
echo "drifted at $(wc -l < out/g_watch.out) passes" > out/g_marks.txt
for i in $(seq 1 600); do ipvsadm -Sn | sort | cmp -s - out/g_before.txt && break; sleep 0.2; done
sleep 1
touch out/g_stop
wait $g_pid; echo $? > out/g_watch.rc
ipvsadm -Sn | sort > out/g_ipvsadm.txt

# (e) remove everything Shoal owns: the foreign service stays as it was.
step e_apply ipvs-lab apply t_empty.json
ipvsadm -Sn > out/e_ipvsadm.txt
ipvsadm -Sn | grep 10.96.0.1 > out/foreign_after.txt
ip -o addr show dev shoal0 scope global > out/e_shoal0.txt

# (h) a foreign service created after the last full read, then Shoal's table emptied by a
# pass on the kept view. Shared table (the default): the list before the flush sees it, and
# it survives. Table declared Shoal's alone (--exclusive): the bare flush takes it too.
ipvsadm -D -t 10.96.0.1:80   # (e) is recorded; from here the late service is the only foreign one
h_run() { # name, late service, extra watch flags
  name=$1; late=$2; shift 2
  ipvs-lab watch t_a.json --then t_empty.json --switch-file out/${name}_switch --stop-file out/${name}_stop --drift-check-ms 600000 --interval-ms 200 --timeout-ms 240000 "$@" > out/${name}_watch.out 2> out/${name}_watch.err &
  h_pid=$!
  for i in $(seq 1 600); do grep -q '"ready"' out/${name}_watch.out 2>/dev/null && break; sleep 0.2; done
  ipvsadm -A -t "$late" -s rr
  ipvsadm -a -t "$late" -r 198.18.0.11:80 -m -w 1
  touch out/${name}_switch
  for i in $(seq 1 600); do grep -q '"second_table":true' out/${name}_watch.out && break; sleep 0.2; done
  touch out/${name}_stop
  wait $h_pid; echo $? > out/${name}_watch.rc
  ipvsadm -Sn > out/${name}_ipvsadm.txt
}
h_run h_shared 10.96.0.2:80
ipvsadm -C
h_run h_exclusive 10.96.0.3:80 --exclusive

# (i) a change during a drift check: the check gives way, the change goes in on the kept view.
ipvsadm -C
step i_give_way ipvs-lab give-way --services 2000 --dests 4
exit 0
