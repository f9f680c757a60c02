#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine, as root: system packages + a venv with meshlab.
# Re-running it is cheap: apt runs only for missing packages, pip only when pyproject changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (the lab creates network namespaces and iptables rules)" >&2
  exit 2
fi

# iproute2: ip netns/veth/bridge; iptables (nft backend) + conntrack: capture, Service NAT,
# faults; procps: sysctl; util-linux: setpriv/nsenter; curl: sidecar admin calls in pods;
# chromium: report screenshot test; python3-venv: the venv below (Debian's python, so the
# sidecar's uid 1337 can run it).
APT_PACKAGES="iproute2 iptables conntrack procps psmisc util-linux curl ca-certificates \
python3 python3-venv python3-dev chromium"

missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "setup.sh: installing apt packages:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv "$VENV"
fi
stamp="$VENV/.meshlab-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  touch "$stamp"
fi
echo "setup.sh: ready ($("$VENV/bin/python" --version), meshlab $("$VENV/bin/python" -c 'import meshlab; print(meshlab.__version__)'))"
