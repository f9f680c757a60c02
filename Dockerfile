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
FROM debian:12-slim AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/meshlab
COPY pyproject.toml README.md ./
COPY meshlab ./meshlab
RUN python3 -m venv .venv \
 && .venv/bin/python -m pip install -q --upgrade pip \
 && .venv/bin/python -m pip install -q -e . \
 && .venv/bin/python -c "import meshlab"
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
