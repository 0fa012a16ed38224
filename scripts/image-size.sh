#!/usr/bin/env bash
# Estimates what the Dockerfile's runtime stage adds to debian:bookworm-slim, without docker
# (not available on the development machines): the stripped `shoal` binary, built and stripped
# exactly as the Dockerfile does, plus the Debian packages it installs with their dependency
# as apt would resolve them on a minbase system (what the slim image is built from). Sizes are
# Debian's Installed-Size fields (KiB, uncompressed on disk) and the binary's bytes on disk.
#   scripts/image-size.sh            # builds the release binary first (minutes on 2 cores)
#   SHOAL_RELEASE_BIN=target/release/shoal scripts/image-size.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(ca-certificates bird2 iputils-arping)   # keep in step with the Dockerfile

bin="${SHOAL_RELEASE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked -p shoal-node --bin shoal
  bin=target/release/shoal
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
objcopy --only-keep-debug "$bin" "$tmp/shoal.debug"
objcopy --strip-all --add-gnu-debuglink="$tmp/shoal.debug" "$bin" "$tmp/shoal"
size() { stat -c %s "$1"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "release binary as built:  $(mib "$(size "$bin")")  ($bin)"
echo "shipped (stripped):       $(mib "$(size "$tmp/shoal")")"
echo "symbols (shoal.debug):    $(mib "$(size "$tmp/shoal.debug")")  (separate artifact)"

# What apt would add to a minbase system (what debian:bookworm-slim is built from): simulate
# installing every Priority: required / Essential package plus apt on an empty system, take
# that as the base, then simulate the Dockerfile's install on top of it. Nothing is installed:
# `apt-get -s` with a private status file. Needs current package lists (apt-get update).
work="$tmp/apt"; mkdir -p "$work"; : > "$work/empty"
apt-cache dumpavail > "$work/avail"
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
names = set()
for stanza in open(f"{work}/avail").read().split("\n\n"):
    f = dict(l.split(":", 1) for l in stanza.splitlines() if l and not l.startswith(" ") and ":" in l)
    f = {k: v.strip() for k, v in f.items()}
    if f.get("Priority") == "required" or f.get("Essential") == "yes":
        names.add(f["Package"])
open(f"{work}/required", "w").write("\n".join(sorted(names | {"apt"})))
PY
simulate() { # status-file, packages... -> the packages apt would install
  local status="$1"; shift
  apt-get install -s --no-install-recommends -o Dir::State::status="$status" "$@" 2>/dev/null |
    awk '/^Inst / {print $2}'
}
mapfile -t base < <(simulate "$work/empty" $(cat "$work/required") | sort -u)
python3 - "$work" "${base[@]}" <<'PY'
import sys
work, base = sys.argv[1], set(sys.argv[2:])
out, seen = [], set()
for stanza in open(f"{work}/avail").read().split("\n\n"):
    name = next((l.split(":", 1)[1].strip() for l in stanza.splitlines() if l.startswith("Package:")), None)
    if name in base and name not in seen:
        seen.add(name)
        out.append(stanza.strip() + "\nStatus: install ok installed\n")
open(f"{work}/status", "w").write("\n".join(out))
PY
mapfile -t added < <(simulate "$work/status" "${PKGS[@]}")
total=0
listed=()
for p in "${added[@]}"; do
  kib="$(apt-cache show --no-all-versions "$p" | awk -F': ' '/^Installed-Size:/ {print $2; exit}')"
  listed+=("$p:${kib}K")
  total=$((total + kib))
done
echo "minbase approximation:    ${#base[@]} packages"
echo "packages added (${#added[@]}): ${listed[*]}"
echo "packages installed size:  $(mib $((total * 1024)))"
echo "image adds in total:      $(mib $((total * 1024 + $(size "$tmp/shoal"))))  (on top of debian:bookworm-slim)"
