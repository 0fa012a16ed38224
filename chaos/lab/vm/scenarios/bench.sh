# Benchmark: program N services x M destinations from empty, change one destination, remove
# everything; then the same content through `ipvsadm -R`, in the same boot; then a change during
# a drift check (out/give-way.json). Inputs:
# bin/ipvs-lab, bench.env (N=, M=, REPS=, SCHED=, SETTLE_S=). Output: out/bench.json.
# With bin/ipvs-lab-before (an older build, BEFORE_REPS= runs) that one runs first, in the same
# boot, into out/bench-before.json; the current build starts SETTLE_S later (IPVS trash list).
mkdir -p out
. /mnt/host/bench.env
ip() { /bin/ip "$@"; }
# Destinations must be routable (else EINVAL): one dummy link holds 198.18.0.0/15.
ip link add lab0 type dummy
ip link set lab0 up
ip addr add 198.18.0.254/15 dev lab0
if [ -x bin/ipvs-lab-before ]; then
  bin/ipvs-lab-before bench --services "$N" --dests "$M" --reps "${BEFORE_REPS:-1}" --settle-s "${SETTLE_S:-130}" --scheduler "${SCHED:-mh}" > out/bench-before.json 2> out/bench-before.err
  echo $? > out/bench-before.rc
  sleep "${SETTLE_S:-130}"
fi
ipvs-lab bench --services "$N" --dests "$M" --reps "$REPS" --settle-s "${SETTLE_S:-130}" --scheduler "${SCHED:-mh}" > out/bench.json 2> out/bench.err
echo $? > out/bench.rc
# A change during a drift check, at the same size (a fresh load after the trash-list pause).
sleep "${SETTLE_S:-130}"
ipvs-lab give-way --services "$N" --dests "$M" > out/give-way.json 2> out/give-way.err
echo $? > out/give-way.rc
exit 0
