# meshlab as container images, installed the way scripts/setup.sh installs it (Debian's Python,
# a venv, `pip install -e .` so the package finds manifests/ and suites/ beside it), without
# the local lab's tools (iptables, conntrack, chromium, …): on a cluster the lab is real pods.
#
#   docker build -t REGISTRY/meshlab:TAG .                            # the nightly runner
#   docker build --target tcp-echo -t REGISTRY/meshlab-tcp-echo:TAG .  # overlay tcp-echo's app
#   docker build --target fortio -t REGISTRY/meshlab-fortio:TAG .      # meshlab's fortio-compatible
#                                                                     # server (keepalive-race)
# The runner is the last stage, so a plain build gives it. Map the lab's meshlab-only images to
# the pushed ones with the kube settings' image_map (docs/KUBE.md).
#
# Offline / air-gapped builds (no image registry, no network in the build): two build args.
#   BASE=<local image> that already holds OS_PACKAGES below (the apt step is then skipped), and
#   PIP_FIND_LINKS=/tmp/wheelhouse: pip installs from build/wheelhouse only (--no-index).
# scripts/build-image.sh does it all: the base from Debian's mmdebstrap (`podman import`), the
# wheelhouse from `pip wheel` on a bookworm host, `podman build --isolation chroot`, and a check
# of the image (docs/KUBE.md):
#
#   podman build --build-arg BASE=localhost/meshlab-base:bookworm \
#                --build-arg PIP_FIND_LINKS=/tmp/wheelhouse -t meshlab:TAG .
ARG BASE=debian:12-slim

# Debian's Python and what the installed packages load at run time (libnetfilter-queue1: the
# NetfilterQueue bindings; passwd: useradd below).
FROM ${BASE} AS os
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
ARG OS_PACKAGES="python3 python3-venv ca-certificates passwd libnetfilter-queue1"
RUN dpkg -s $OS_PACKAGES >/dev/null 2>&1 \
 || { apt-get update \
      && apt-get install -y --no-install-recommends $OS_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; }

# The venv, in a stage of its own: compilers and wheels stay out of the images.
FROM os AS venv
# Empty: pip installs from PyPI, where NetfilterQueue has no wheel, so a compiler is installed
# for it. /tmp/wheelhouse: pip installs only from build/wheelhouse, copied there (pip reads the
# PIP_FIND_LINKS variable itself). The glob copies build/wheelhouse when there is one, and only
# README.md otherwise, so that a registry build needs no build/ folder.
ARG PIP_FIND_LINKS=
COPY README.md build/wheelhous[e] /tmp/wheelhouse/
RUN [ -n "$PIP_FIND_LINKS" ] || { apt-get update \
      && apt-get install -y --no-install-recommends \
           gcc libc6-dev python3-dev libnetfilter-queue-dev \
      && rm -rf /var/lib/apt/lists/*; }
WORKDIR /opt/meshlab
COPY pyproject.toml README.md ./
COPY meshlab ./meshlab
RUN python3 -m venv .venv \
 && .venv/bin/python -m pip install -q ${PIP_FIND_LINKS:+--no-index} --upgrade pip \
 && .venv/bin/python -m pip install -q ${PIP_FIND_LINKS:+--no-index} -e . \
 && .venv/bin/python -c "import meshlab, netfilterqueue" \
 && .venv/bin/python -m compileall -q meshlab

FROM os AS base
COPY --from=venv /opt/meshlab /opt/meshlab
WORKDIR /opt/meshlab
COPY manifests ./manifests
COPY suites ./suites
ENV PATH=/opt/meshlab/.venv/bin:$PATH
# Not uid 1337: Istio's capture rules exempt the proxy's uid, an app must not share it.
RUN groupadd --gid 10001 meshlab && useradd --uid 10001 --gid 10001 --no-create-home meshlab
USER 10001:10001

# Overlay tcp-echo's upstream: the manifest gives only args (--port 9000).
FROM base AS tcp-echo
ENTRYPOINT ["/opt/meshlab/.venv/bin/python", "-m", "meshlab.apps.tcp_echo"]

# meshlab's fortio-compatible server at fortio's path (the manifests run /usr/bin/fortio), for
# the meshlab-only flags such as keepalive-race's -meshlab-idle-race.
FROM base AS fortio
USER root
RUN printf '#!/bin/sh\nexec /opt/meshlab/.venv/bin/python -m meshlab.apps.fortio "$@"\n' \
      > /usr/bin/fortio \
 && chmod 755 /usr/bin/fortio
USER 10001:10001
ENTRYPOINT ["/usr/bin/fortio"]
CMD ["server"]

# The nightly runner (manifests/nightly/cronjob.yaml): meshlab run suites/ --env kube …
FROM base AS runner
ENTRYPOINT ["meshlab"]
CMD ["--help"]
