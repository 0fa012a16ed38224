#!/usr/bin/env bash
# Estimates what the Dockerfile's runtime stage adds to debian:bookworm-slim, without docker
# (not available on the development machines): the stripped `shoal` binary, built and stripped
# exactly as the Dockerfile does, plus the Debian packages it installs with their dependency
# closure, minus what the slim image already has (Priority: required, which is what its
# minbase bootstrap installs). Sizes are Debian's Installed-Size fields (KiB) and the binary's
# bytes on disk.
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

# The dependency closure (Depends and PreDepends only: --no-install-recommends).
mapfile -t closure < <(apt-cache depends --recurse --no-recommends --no-suggests \
  --no-conflicts --no-breaks --no-replaces --no-enhances "${PKGS[@]}" 2>/dev/null |
  grep -v '^ ' | grep -v '^<' | sort -u)
total=0
added=()
for p in "${closure[@]}"; do
  prio="$(apt-cache show --no-all-versions "$p" 2>/dev/null | awk -F': ' '/^Priority:/ {print $2; exit}')"
  [ "$prio" = required ] && continue
  kib="$(apt-cache show --no-all-versions "$p" 2>/dev/null | awk -F': ' '/^Installed-Size:/ {print $2; exit}')"
  [ -n "$kib" ] || continue
  added+=("$p:${kib}K")
  total=$((total + kib))
done
echo "packages added to bookworm-slim (${#added[@]}): ${added[*]}"
echo "packages installed size:  $(mib $((total * 1024)))"
echo "image adds in total:      $(mib $((total * 1024 + $(size "$tmp/shoal"))))  (on top of debian:bookworm-slim)"
