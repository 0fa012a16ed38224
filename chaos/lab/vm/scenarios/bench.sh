# Benchmark: program N services x M destinations from empty, change one destination, remove
# everything; then the same content through `ipvsadm -R`, in the same boot. Inputs:
# bin/ipvs-lab, bench.env (N=, M=, REPS=, SCHED=, SETTLE_S=). Output: out/bench.json.
mkdir -p out
. /mnt/host/bench.env
ip() { /bin/ip "$@"; }
# Destinations must be routable (else EINVAL): one dummy link holds 198.18.0.0/15.
ip link add lab0 type dummy
ip link set lab0 up
ip addr add 198.18.0.254/15 dev lab0
ipvs-lab bench --services "$N" --dests "$M" --reps "$REPS" --settle-s "${SETTLE_S:-130}" --scheduler "${SCHED:-mh}" > out/bench.json 2> out/bench.err
echo $? > out/bench.rc
exit 0
