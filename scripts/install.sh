#!/usr/bin/env bash
# Installs what meshnet and its tests need on a Debian machine, as root: the system tools the lab
# and tests drive, and a virtual environment in .venv with meshnet and its dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(iproute2 nftables iputils-ping iperf3 bind9-dnsutils util-linux procps tmux tcpdump netcat-openbsd
          docker.io busybox-static containernetworking-plugins conntrack)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
