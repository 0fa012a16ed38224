# Benchmark (docs/benchmarks.md, "Paging the dataplane read-back"): `GET /v1/dataplane` at
# 10,000 IPVS services x 10 destinations, 10 pages of 1,000, three rounds, each page its own
# whole read (offset only) against one read kept for its pages (`snapshot=new`, then the id).
# Input: bin/shoal (a release build). Results in out/result.txt (times from /proc/uptime).
mkdir -p out
awk 'BEGIN { for (s = 0; s < 10000; s++) {
  printf "[[service]]\nname = \"s%d\"\nvip = \"203.0.113.%d\"\nport = %d\n", s, s % 250 + 1, int(s / 250) + 1
  for (b = 0; b < 10; b++) printf "[[service.backend]]\naddress = \"198.18.%d.%d\"\n", b, s % 250 + 1
} }' > /tmp/big.toml
ip link add lb0 type dummy; ip link set lb0 up; ip addr add 198.18.0.1/15 dev lb0
shoal run --dataplane ipvs --rules /tmp/big.toml --insecure --node-id vm1 --single-node \
  --listen 127.0.0.1:7946 --admin 127.0.0.1:9100 --cluster lab --resync-interval-s 3600 \
  > out/shoal.log 2>&1 &
now() { cut -d' ' -f1 /proc/uptime; }
t0=$(now)
until timeout 60 wget -q -O out/first.json 'http://127.0.0.1:9100/v1/dataplane?limit=1' \
    && grep -q '"matches_table":true,"total":{"services":10000' out/first.json; do sleep 2; done
echo "programmed and matching after $(now) - $t0 s" | tee -a out/result.txt
# Pages go to the guest's own memory, not the 9p share (writing 4 MB there is slow).
get() { timeout 120 wget -q -O /tmp/page.json "http://127.0.0.1:9100/v1/dataplane?$1"; }
next_of() { tail -c 40 /tmp/page.json | sed -n 's/.*"next_offset":\([0-9]*\).*/\1/p'; }
# What the client's own work costs here (wget's write, tail, sed under emulation).
get "limit=1000"
ls -l /tmp/page.json >> out/result.txt
t0=$(now); for i in 1 2 3 4 5 6 7 8 9; do cat /tmp/page.json > /tmp/copy.json; off=$(next_of); done
echo "client side alone, 9 times: from $t0 to $(now)" | tee -a out/result.txt
for round in 1 2 3; do
  # Each page names only its offset, so each is a whole read.
  t0=$(now); off=0; pages=0
  while [ -n "$off" ]; do get "offset=$off&limit=1000"; pages=$((pages+1)); off=$(next_of); done
  echo "round $round: offset only: $pages pages, from $t0 to $(now)" | tee -a out/result.txt
  # One read, kept, then its pages.
  t0=$(now); get "limit=1000&snapshot=new"; pages=1
  id=$(head -c 80 /tmp/page.json | sed -n 's/.*"snapshot":"\([0-9a-f]*\)".*/\1/p'); off=$(next_of)
  t1=$(now)
  while [ -n "$off" ]; do get "snapshot=$id&offset=$off&limit=1000"; pages=$((pages+1)); off=$(next_of); done
  echo "round $round: first page (the read) until $t1" | tee -a out/result.txt
  echo "round $round: snapshot $id: $pages pages, from $t0 to $(now)" | tee -a out/result.txt
done
[ -n "$id" ]
