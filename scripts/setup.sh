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
# sidecar's uid 1337 can run it); gcc + libnetfilter-queue-dev: the NetfilterQueue bindings
# (built by pip) of the network-delay fault's userspace netem, for kernels without sch_netem.
# dnsmasq-base: the lab's cluster DNS (meshlab/envs/local/kube_dns.py; the binary only, no
# host service); dnsutils: dig, for looking at the lab's DNS by hand; kmod: modprobe (below).
APT_PACKAGES="iproute2 iptables conntrack procps psmisc util-linux curl ca-certificates \
python3 python3-venv python3-dev chromium gcc libc6-dev libnetfilter-queue-dev \
dnsmasq-base dnsutils kmod"

# missing_of LIST: the packages of LIST that are not installed yet (space-separated)
missing_of() {
  local pkg out=""
  for pkg in $1; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || out="$out $pkg"
  done
  echo "$out"
}
apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing="$(missing_of "$APT_PACKAGES")"
if [ -n "$missing" ]; then
  echo "setup.sh: installing apt packages:$missing"
  apt_install $missing
fi

# br_netfilter: the lab's node netns set net.bridge.bridge-nf-call-iptables (kube-proxy's NAT
# of bridged pod traffic), which exists only once the module is loaded; a stock Debian kernel
# ships it as a module nothing loads by itself (some kernels have it built in). Loading a
# module changes no network namespace's configuration. `meshlab doctor` checks the rest.
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  echo "setup.sh: loading br_netfilter"
  modprobe br_netfilter || echo "setup.sh: warning: modprobe br_netfilter failed; meshlab up" \
    "will refuse to build a lab (see: .venv/bin/meshlab doctor)" >&2
fi

# Packages whose Debian install would start a host service, which the lab never wants:
# nginx (the peer L7 proxy and app of benchmarks/sidecar.py, run from a temp config inside lab
# namespaces), wrk (its closed-loop load), openssh-server (the sshd that the SSH NodeDriver
# test runs inside a lab node netns), prometheus (the lab's own server, started by
# meshlab.envs.local.prometheus inside the lab's cluster netns with a config under the lab's
# state dir; prometheus-node-exporter is only a Recommends, not installed). A temporary
# policy-rc.d (exit 101) stops the install from starting them, and the services are disabled
# so a reboot does not start them either.
BENCH_PACKAGES="nginx wrk openssh-server prometheus"
missing="$(missing_of "$BENCH_PACKAGES")"
if [ -n "$missing" ]; then
  echo "setup.sh: installing apt packages (services not started):$missing"
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt_install $missing
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx ssh prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  fi
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
# Byte-compile meshlab: with PYTHONDONTWRITEBYTECODE set, every sidecar would otherwise compile
# its modules at start, which costs CPU and leaves ~0.5 MB more resident memory per process.
# compileall only rewrites what changed; Python checks source mtimes, so stale files are harmless.
"$VENV/bin/python" -m compileall -q meshlab >/dev/null
echo "setup.sh: ready ($("$VENV/bin/python" --version), meshlab $("$VENV/bin/python" -c 'import meshlab; print(meshlab.__version__)'))"
