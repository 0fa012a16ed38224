#!/usr/bin/env bash
# Withdraw-latency benchmark of announcements (docs/benchmarks.md, "Announcements"): BGP lab
# (router BIRD + 3 replicas with BIRD, BFD 100 ms x 3) for kill -9, SIGSTOP and SIGTERM, and the
# L2 lab for kill -9 of a VIP's owner. Needs root, bird2, iputils-arping (install-deps.sh).
# ANNOUNCE_BENCH_TRIALS=N sets the trials per event (default 20); ANNOUNCE_BENCH_EVENTS picks
# BGP events (default "kill -9,SIGSTOP,SIGTERM,node freeze"); --exact NAME runs one lab only. A debug build is enough: the
# latencies are timers (BFD, gossip failure detection, the watchdog), not CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked -p shoal-node --test announce_bench -- --ignored --nocapture --test-threads 1 "$@" 2>&1 \
  | grep -oE 'RESULT.*|panicked.*|test result.*'
