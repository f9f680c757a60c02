#!/usr/bin/env bash
# The flakiness check of issue #17: the README's test command N times in a row (default 3) on a
# fresh clone of HEAD while `stress-ng --cpu 1` keeps one of the machine's cores busy.
#
#   bash scripts/ci-under-stress.sh [RUNS] [LOG_DIR]
#
# Each run gets its own fresh clone (setup included, as CI does it); the logs go to
# LOG_DIR/run-<i>.log (default /tmp/meshlab-stress) and a summary line per run is printed and
# appended to LOG_DIR/summary.txt. Stops at the first failing run (exit 1). Installs stress-ng
# with apt when it is missing (the lab itself does not need it).
set -euo pipefail

RUNS="${1:-3}"
LOG_DIR="${2:-/tmp/meshlab-stress}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEST_CMD='bash scripts/setup.sh && .venv/bin/lint-imports && .venv/bin/pytest tests suites --durations=25'

if ! grep -qF "$TEST_CMD" "$REPO/README.md"; then
    echo "ci-under-stress: the README's test command is no longer: $TEST_CMD" >&2
    exit 2
fi
if ! command -v stress-ng >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q stress-ng >/dev/null
fi
mkdir -p "$LOG_DIR"
stress-ng --cpu 1 --timeout 0 --quiet &
STRESS=$!
trap 'kill "$STRESS" 2>/dev/null || true' EXIT

for i in $(seq 1 "$RUNS"); do
    clone="$(mktemp -d /tmp/meshlab-stress-clone.XXXXXX)"
    chmod 755 "$clone"  # mktemp makes it 0700: the sidecars (uid 1337) run from its venv
    git clone -q "$REPO" "$clone"
    start=$(date +%s)
    rc=0
    (cd "$clone" && CI=true bash -c "$TEST_CMD") > "$LOG_DIR/run-$i.log" 2>&1 || rc=$?
    took=$(( $(date +%s) - start ))
    line="run $i/$RUNS: $(git -C "$clone" rev-parse --short HEAD) rc=$rc ${took}s: $(
        grep -E '^=+ .*(passed|failed).* in ' "$LOG_DIR/run-$i.log" | tail -1 | tr -d '=')"
    echo "$line" | tee -a "$LOG_DIR/summary.txt"
    rm -rf "$clone"
    if [ "$rc" -ne 0 ]; then
        exit 1
    fi
done
