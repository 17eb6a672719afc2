#!/usr/bin/env bash
# Installs what the multi-region testbed needs, from Debian's packages. Idempotent: packages
# already present are left alone and apt is not even called. Needs root.
#   wireguard-go     userspace WireGuard (this kernel has no WireGuard module)
#   wireguard-tools  `wg` (keys, peer configuration)
#   nftables         `nft` (region cut/heal in the router namespaces)
#   iproute2         `ip` (namespaces, veths, bridges, routes)
#   iputils-ping     `ping` (reachability, RTT and loss figures)
#   util-linux       `setsid` (detached daemons)
# --no-install-recommends: wireguard-tools would otherwise pull in a kernel image.
set -euo pipefail
packages=(wireguard-go wireguard-tools nftables iproute2 iputils-ping util-linux)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "testbed: all packages present (${packages[*]})"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "testbed: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "testbed: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
