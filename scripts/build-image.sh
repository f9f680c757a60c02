#!/usr/bin/env bash
# Builds meshlab's images with no image registry and no network inside the build (also the way
# for air-gapped clusters, docs/KUBE.md), then checks the runner image. As root, on Debian 12:
#   1. base: a bookworm minbase tarball from Debian's mmdebstrap, with the Dockerfile's
#      OS_PACKAGES, from the host's apt mirror; `podman import`ed as $BASE_IMAGE;
#   2. wheelhouse: `pip wheel` of meshlab and its dependencies into build/wheelhouse with the
#      host's Debian Python 3.11 (bookworm's, so the wheels fit the image);
#   3. build: `podman build --isolation chroot` (crun cannot run containers on every host; chroot
#      isolation needs no runtime), BASE=$BASE_IMAGE, PIP_FIND_LINKS=/tmp/wheelhouse, per target;
#   4. check: the runner image mounted (`podman image mount`, read-only) and its meshlab run
#      under chroot as the image's user, in private mount/pid/network namespaces (no network):
#      `meshlab --help` and a kube dry run of one suite, which must print kubectl lines.
# Idempotent: apt runs only for missing tools, the base tarball and its image are reused (delete
# build/base/ to remake them), pip reuses the wheels already in the wheelhouse, podman its layers.
#
# Environment: MESHLAB_IMAGE (default localhost/meshlab:dev; the other targets are tagged
# <repo>-<target>:<tag>), MESHLAB_IMAGE_TARGETS (default "tcp-echo fortio runner"),
# MESHLAB_APT_MIRROR (a mirror URI, or a sources file; default: the host's Debian sources).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "build-image.sh: $*"; }
die() { echo "build-image.sh: error: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap, podman's storage and the chroot check)"

IMAGE=${MESHLAB_IMAGE:-localhost/meshlab:dev}
TARGETS=${MESHLAB_IMAGE_TARGETS:-tcp-echo fortio runner}
BASE_IMAGE=localhost/meshlab-base:bookworm
BASE_TAR=build/base/meshlab-base-bookworm.tar
WHEELHOUSE=build/wheelhouse
CHECK_DIR=build/check
PYTHON=/usr/bin/python3  # Debian's, the same 3.11 as the image's
# The runner's user and environment, as the Dockerfile's base stage sets them.
RUN_USER=10001:10001
RUN_PATH=/opt/meshlab/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The OS packages of the Dockerfile's `os` stage: the base must hold them all (the build has no
# network for apt).
OS_PACKAGES=$(sed -n 's/^ARG OS_PACKAGES="\(.*\)"$/\1/p' Dockerfile)
[ -n "$OS_PACKAGES" ] || die "no 'ARG OS_PACKAGES=\"…\"' line in the Dockerfile"

# image_of TARGET: the tag of TARGET's image
image_of() {
  if [ "$1" = runner ]; then echo "$IMAGE"; else echo "${IMAGE%:*}-$1:${IMAGE##*:}"; fi
}

# --- tools ---------------------------------------------------------------------------------
# Host tools: mmdebstrap, podman; gcc + headers for the wheels pip must compile (NetfilterQueue).
TOOLS="mmdebstrap podman python3-pip python3-venv python3-dev gcc libc6-dev \
libnetfilter-queue-dev"
missing=""
for pkg in $TOOLS; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  log "installing apt packages:$missing"
  apt-get update -qq
  # shellcheck disable=SC2086  # a word list
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# --- 1. base -------------------------------------------------------------------------------
# Mirror arguments of mmdebstrap: MESHLAB_APT_MIRROR, else the host's Debian sources (the files
# naming bookworm; mmdebstrap pastes a file's entries into the chroot's sources).
mirrors=()
if [ -n "${MESHLAB_APT_MIRROR:-}" ]; then
  mirrors=("$MESHLAB_APT_MIRROR")
else
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
           /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -Eq '^[^#]*\bbookworm\b' "$f" && grep -Eq '^[^#]*/debian' "$f" \
      && mirrors+=("$f")
  done
  [ ${#mirrors[@]} -gt 0 ] || die "no bookworm sources in /etc/apt; set MESHLAB_APT_MIRROR"
fi

t0=$(now)
base_made=""
if [ -s "$BASE_TAR" ]; then
  log "1/4 base: reusing $BASE_TAR"
else
  log "1/4 base: mmdebstrap bookworm minbase + $OS_PACKAGES (from ${mirrors[*]})"
  mkdir -p "$(dirname "$BASE_TAR")"
  # merged-/usr by symlinks, as debian:12-slim (the usrmerge package would pull in perl); the
  # docs, man pages and locales are left out as there.
  nice -n 10 mmdebstrap --variant=minbase --format=tar --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="${OS_PACKAGES// /,}" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm "$BASE_TAR.partial" "${mirrors[@]}" >"$BASE_TAR.log" 2>&1 \
    || { tail -n 40 "$BASE_TAR.log" >&2; die "mmdebstrap failed (log: $BASE_TAR.log)"; }
  mv "$BASE_TAR.partial" "$BASE_TAR"
  base_made=1
fi
if [ -n "$base_made" ] || ! podman image exists "$BASE_IMAGE"; then
  log "1/4 base: podman import $BASE_TAR as $BASE_IMAGE"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi
time_base=$(since "$t0")

# --- 2. wheelhouse -------------------------------------------------------------------------
# meshlab, its dependencies, and pip/setuptools/wheel (the image's pip upgrade and the build
# backend of its `pip install -e .`). Wheels already there are reused (--find-links).
t0=$(now)
log "2/4 wheelhouse: pip wheel . into $WHEELHOUSE"
mkdir -p "$WHEELHOUSE"
nice -n 10 "$PYTHON" -m pip wheel -qq --disable-pip-version-check --wheel-dir "$WHEELHOUSE" \
  --find-links "$WHEELHOUSE" . pip 'setuptools>=68' wheel
# setuptools' scratch from building meshlab's wheel in the tree (stale files would go into the
# next wheel)
rm -rf build/lib build/bdist.*
# meshlab's own wheel to build/dist: the image installs meshlab from its sources (-e .), and a
# wheel remade at each run would change the wheelhouse and void the build cache of the venv.
mkdir -p build/dist
mv -f "$WHEELHOUSE"/meshlab-*.whl build/dist/
time_wheels=$(since "$t0")
log "2/4 wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels," \
  "$(du -sh "$WHEELHOUSE" | cut -f1)"

# --- 3. build ------------------------------------------------------------------------------
t0=$(now)
build_times=""
for target in $TARGETS; do
  t1=$(now)
  log "3/4 build: --target $target -> $(image_of "$target")"
  old_id=$(podman image inspect --format '{{.Id}}' "$(image_of "$target")" 2>/dev/null || true)
  # Chroot isolation shares the host's network (podman refuses --network none with it); the
  # build uses none: the apt step is skipped (the base has OS_PACKAGES) and pip has no index.
  nice -n 10 podman build --isolation chroot --pull=never \
    --build-arg BASE="$BASE_IMAGE" --build-arg PIP_FIND_LINKS=/tmp/wheelhouse \
    --target "$target" -t "$(image_of "$target")" .
  build_times="$build_times${build_times:+, }$target $(since "$t1")"
  # The image this build replaced, with its build-cache parents (not the ones still in use).
  new_id=$(podman image inspect --format '{{.Id}}' "$(image_of "$target")")
  if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true
  fi
done
time_build=$(since "$t0")

# --- 4. check ------------------------------------------------------------------------------
# The image's root is mounted read-only; the run gets a tmpfs /tmp for HOME and reports (as the
# CronJob's read-only root filesystem gets a volume), /proc of its own pid namespace, the host's
# /dev, and a network namespace with nothing in it.
t0=$(now)
podman image exists "$IMAGE" || die "no image $IMAGE (is runner in MESHLAB_IMAGE_TARGETS?)"
mkdir -p "$CHECK_DIR"
mounted=()
unmount_all() {
  local image
  for image in "${mounted[@]}"; do podman image unmount "$image" >/dev/null 2>&1 || true; done
}
trap unmount_all EXIT

# in_image IMAGE CMD: runs the shell command CMD in IMAGE, in /opt/meshlab, as the image's user
# (not in a pipeline: the mount is recorded for unmount_all)
in_image() {
  local root
  root=$(podman image mount "$1")
  mounted+=("$1")
  # shellcheck disable=SC2016  # the inner script's own parameters
  unshare --mount --pid --net --fork --mount-proc="$root/proc" -- sh -ec '
    root=$1
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mount --rbind /dev "$root/dev"
    exec chroot --userspec="$3" "$root" env -i HOME=/tmp PATH="$4" PYTHONUNBUFFERED=1 \
      PYTHONDONTWRITEBYTECODE=1 sh -c "cd /opt/meshlab && $2"
  ' in_image "$root" "$2" "$RUN_USER" "$RUN_PATH"
}

log "4/4 check: meshlab --help (in $IMAGE)"
in_image "$IMAGE" 'meshlab --help' >"$CHECK_DIR/help.out" 2>&1 \
  || { cat "$CHECK_DIR/help.out"; die "meshlab --help failed"; }
cat "$CHECK_DIR/help.out"
grep -q 'Usage: meshlab' "$CHECK_DIR/help.out" || die "meshlab --help printed no usage"

log "4/4 check: meshlab run suites/test_packet_drop.py --env kube --dry-run (in $IMAGE)"
rc=0
in_image "$IMAGE" \
  'meshlab run suites/test_packet_drop.py --env kube --dry-run --reports /tmp/reports' \
  >"$CHECK_DIR/dry-run.out" 2>&1 || rc=$?
cat "$CHECK_DIR/dry-run.out"
[ "$rc" = 0 ] || die "the dry run exited $rc"
kubectl_lines=$(grep -c '^kubectl ' "$CHECK_DIR/dry-run.out" || true)
[ "$kubectl_lines" -gt 0 ] || die "the dry run printed no kubectl line"
log "4/4 check: dry run ok, $kubectl_lines kubectl lines"

# The other targets: their entry point answers.
for target in $TARGETS; do
  case $target in
    tcp-echo) cmd='python -m meshlab.apps.tcp_echo --help' ;;
    fortio) cmd='/usr/bin/fortio version' ;;
    *) continue ;;
  esac
  log "4/4 check: $cmd (in $(image_of "$target"))"
  in_image "$(image_of "$target")" "$cmd" >"$CHECK_DIR/$target.out" 2>&1 \
    || { cat "$CHECK_DIR/$target.out"; die "$target: '$cmd' failed"; }
done
time_check=$(since "$t0")

# --- summary (also in build/check/summary.txt) ---------------------------------------------
summary() { log "$*" | tee -a "$CHECK_DIR/summary.txt"; }
: >"$CHECK_DIR/summary.txt"
summary "done. times: base $time_base, wheelhouse $time_wheels, podman build $time_build" \
  "($build_times), check $time_check"
for target in $TARGETS; do
  summary "image $(image_of "$target"): $(podman image inspect --format '{{.Size}}' \
    "$(image_of "$target")" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
done
summary "check ok"
