#!/usr/bin/env bash
# Shoal VM lab: boot Debian's kernel under qemu (TCG) with a tiny initramfs, run one scenario
# script from a shared folder, hand back its result and logs. Installs nothing; says what is
# missing. See chaos/lab/vm/README.md.
#
#   run.sh --share DIR --scenario FILE [--timeout SECONDS] [--memory MB] [--kernel-args "..."]
#
# DIR is mounted in the guest at /mnt/host (9p) and is the working directory of the scenario.
# The guest writes DIR/scenario.log (stdout+stderr), DIR/result (exit code); qemu's console
# goes to DIR/console.log. Exit code: the scenario's; 77 = prerequisites missing; 70 = no result
# (boot failure or timeout).
set -euo pipefail

KVER="${SHOAL_VM_KERNEL:-6.1.0-56-amd64}"
INSTALL="apt-get install -y --no-install-recommends qemu-system-x86 linux-image-$KVER busybox-static ipvsadm kmod iproute2 cpio"
SHARE=""
SCENARIO=""
TIMEOUT_S=600
MEMORY_MB=1024
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

while [ $# -gt 0 ]; do
  case "$1" in
    --share) SHARE="$2"; shift 2 ;;
    --scenario) SCENARIO="$2"; shift 2 ;;
    --timeout) TIMEOUT_S="$2"; shift 2 ;;
    --memory) MEMORY_MB="$2"; shift 2 ;;
    --kernel-args) KERNEL_ARGS="$2"; shift 2 ;;
    --check) CHECK_ONLY=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=("qemu-system-x86_64 (package qemu-system-x86)")
[ -r "/boot/vmlinuz-$KVER" ] || missing+=("/boot/vmlinuz-$KVER (package linux-image-$KVER)")
[ -d "/lib/modules/$KVER" ] || missing+=("/lib/modules/$KVER (package linux-image-$KVER)")
BUSYBOX="$(command -v busybox || true)"
if [ -z "$BUSYBOX" ] || ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
  [ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked' && BUSYBOX=/bin/busybox || missing+=("static busybox (package busybox-static)")
fi
for tool in ipvsadm ip modprobe gzip; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "VM lab prerequisites missing: ${missing[*]}" >&2
  echo "install with: $INSTALL" >&2
  exit 77
fi
if [ "${CHECK_ONLY:-0}" = 1 ]; then echo "VM lab prerequisites present (kernel $KVER)"; exit 0; fi
[ -n "$SHARE" ] && [ -d "$SHARE" ] || { echo "--share DIR (an existing folder) is required" >&2; exit 2; }
[ -n "$SCENARIO" ] && [ -r "$SCENARIO" ] || { echo "--scenario FILE is required" >&2; exit 2; }

MODULES="ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_mh nf_conntrack ipip tunnel4 ip_tunnel veth bridge dummy virtio_pci 9pnet_virtio 9p"
KEY="$( (echo "$KVER $MODULES"; cat "$0"; command -v bird birdc keepalived setpriv) | sha256sum | cut -c1-16)"
CACHE="${SHOAL_VM_CACHE:-${TMPDIR:-/tmp}/shoal-vm-cache}/$KVER-$KEY"
INITRD="$CACHE/initramfs.cpio.gz"

build_initramfs() {
  local root="$CACHE/root"
  rm -rf "$root"; mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt/host,lib/modules,var,root,www}
  cp "$BUSYBOX" "$root/bin/busybox"
  for applet in $("$BUSYBOX" --list); do
    case "$applet" in busybox|ip|modprobe|insmod) continue ;; esac
    ln -sf busybox "$root/bin/$applet"
  done
  # iproute2's ip (busybox's lacks netns) and ipvsadm, with their libraries; libgcc_s for Rust.
  # BIRD and keepalived (the end-to-end scenarios: chaos/lab/vm/scenarios/e2e.sh) when present.
  local bins=("$(command -v ip)" "$(command -v ipvsadm)")
  # util-linux's setpriv: shoal starts BIRD through `setpriv --pdeathsig`, which busybox's lacks.
  for opt in bird birdc keepalived setpriv; do
    command -v "$opt" >/dev/null && bins+=("$(command -v "$opt")")
  done
  for bin in "${bins[@]}"; do
    rm -f "$root/bin/$(basename "$bin")"   # a busybox applet link of the same name
    cp "$bin" "$root/bin/"
    for lib in $(ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
      mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
    done
  done
  for lib in /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libm.so.6; do
    [ -e "$lib" ] && { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
  done
  mkdir -p "$root/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
  local order="$root/lib/modules/order"; : > "$order"
  for m in $MODULES; do
    modprobe -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$root/lib/modules/"; basename "$ko" >> "$order"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  echo 'root:x:0:' > "$root/etc/group"
  cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mkdir -p /run/netns /var/run; ln -s /run /var/run 2>/dev/null
for ko in $(cat /lib/modules/order); do
  case "$ko" in *.xz) xz -dc /lib/modules/$ko > /tmp/m.ko && insmod /tmp/m.ko ;; *) insmod /lib/modules/$ko ;; esac
done
ip link set lo up
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt/host || { echo "SHOAL-LAB: 9p mount failed"; poweroff -f; }
cd /mnt/host
echo "SHOAL-LAB: scenario start"
PATH=/mnt/host/bin:/bin:/sbin sh /mnt/host/scenario.sh > /mnt/host/scenario.log 2>&1
rc=$?
echo "$rc" > /mnt/host/result
sync
echo "SHOAL-LAB: scenario exit $rc"
poweroff -f
INIT
  chmod +x "$root/init"
  local cpio=(cpio -o -H newc --quiet)
  command -v cpio >/dev/null || cpio=("$BUSYBOX" cpio -o -H newc)
  (cd "$root" && find . | "${cpio[@]}" | gzip -1) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$root"
}

mkdir -p "$CACHE"
if [ ! -s "$INITRD" ]; then
  echo "building initramfs in $CACHE" >&2
  build_initramfs
fi

cp "$SCENARIO" "$SHARE/scenario.sh"
# Helpers next to the scenario (topology.sh, ...) travel along as lab/.
mkdir -p "$SHARE/lab"; cp "$(dirname "$SCENARIO")"/*.sh "$SHARE/lab/" 2>/dev/null || true
rm -f "$SHARE/result" "$SHARE/scenario.log" "$SHARE/console.log"
# no_timer_check: under a loaded host TCG is slow enough to fail the IO-APIC timer check (panic).
echo "booting $KVER (TCG) for $(basename "$SCENARIO"), timeout ${TIMEOUT_S}s" >&2
set +e
# tb-size: TCG's translated-code cache (MB). When it fills, qemu throws every translation away
# and the whole guest stalls while it retranslates: with several Rust processes (the end-to-end
# lab) 64 MB filled within seconds and every replica's loop stalled at once.
# The emulator runs in a session of its own (setsid: its own scheduler autogroup) whose weight is
# raised (SHOAL_VM_AUTOGROUP_NICE, default -10; ignored without the privilege): the guest's timing
# tests (health bounds, takeovers) measure the guest, and on a shared host another session's build
# or CPU-bound loop would otherwise take half the cores the guest's clock runs on. `nice` alone
# would not shield it: across sessions the scheduler weighs groups, not processes.
timeout "$TIMEOUT_S" setsid sh -c 'echo "$0" > /proc/self/autogroup 2>/dev/null || true; exec "$@"' \
  "${SHOAL_VM_AUTOGROUP_NICE:--10}" \
  qemu-system-x86_64 -accel tcg,tb-size=${SHOAL_VM_TB_MB:-512} -cpu max -m "$MEMORY_MB" -smp 2 \
  -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
  -kernel "/boot/vmlinuz-$KVER" -initrd "$INITRD" \
  -append "console=ttyS0 quiet panic=-1 loglevel=3 no_timer_check ${KERNEL_ARGS:-}" \
  -virtfs "local,path=$SHARE,mount_tag=host0,security_model=none" \
  < /dev/null > "$SHARE/console.log" 2>&1
qemu_rc=$?
set -e
if [ ! -s "$SHARE/result" ]; then
  echo "VM produced no result (qemu exit $qemu_rc; 124 = timeout). Console:" >&2
  tail -n 30 "$SHARE/console.log" >&2
  exit 70
fi
rc="$(cat "$SHARE/result")"
echo "scenario exit $rc" >&2
exit "$rc"
