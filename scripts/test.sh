#!/usr/bin/env bash
# The whole test suite. Assumes scripts/install-deps.sh ran (.ci/run does both).
set -euo pipefail
cd "$(dirname "$0")/.."
section() { printf '\n==== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

section "cargo test (unit, property, multi-process, VM lab)"
cargo test --workspace --locked

section "manifests"
VENV="${SHOAL_VENV:-$HOME/.cache/shoal/venv}"
PATH="$VENV/bin:$PATH" bash manifests/validate.sh

section "chaos: short fixed-seed schedule in network namespaces"
bash chaos/ci.sh target/chaos-report
