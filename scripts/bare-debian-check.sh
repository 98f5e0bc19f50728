#!/usr/bin/env bash
# The lab VM's path, checked on this machine: what `vagrant up` does, short of the kernel.
#
# A bare Debian 12 root file system (`mmdebstrap --variant=apt --include=mount bookworm`:
# essential packages, apt and mount, less than the debian/bookworm64 box has, and none of
# make, git, curl, python3-venv, golang, nodejs) is imported as an image and run as a
# privileged container (cgroups, dockerd and Open vSwitch run inside it, in its own
# namespaces) with a copy of the working tree at /vagrant (`git ls-files`: tracked and
# untracked-not-ignored files; no .git, .venv, .tools, node_modules, results). Inside, as the
# Vagrantfile's provisioner does:
#
#     apt-get update && apt-get install -y make && make setup      (with an uplink)
#     make doctor; make test                                         (without one)
#
# The container has its own network namespace from the start. Its uplink to the package
# registries during the set-up is slirp4netns (user-mode NAT, run from a throw-away helper
# container of the same bare image): nothing is added to the host's network, and no dockerd
# or OVS of the check ever runs in the host's namespaces. The uplink is removed before the
# tests, which then reach nothing but their own loopback and emulated hosts.
#
# This machine's TLS egress goes through a CA of the workplace: its certificates
# (/usr/local/share/ca-certificates/*.crt) and the variables that point tools at the system
# bundle (PIP_CERT, NODE_EXTRA_CA_CERTS, ...) are passed in; a real Vagrant box needs neither.
#
# The container is one CFS group with the weight of one process: on a loaded machine its
# tests get a small share of the CPU, and the geth timing tests can stall. Run it on a quiet
# machine (or with --cpu-lock where the machine's users take that lock).
#
# Everything is removed at the end (container, its volume, helper, image unless --keep-image);
# only the logs stay, in the directory printed at the start.
#
# Usage (as root, with the host's Docker engine running, i.e. after `make setup`):
#   bash scripts/bare-debian-check.sh [options]
#     --cache DIR        keep apt, pip, npm and Go downloads and build cache in DIR between runs
#                        (the first run with an empty DIR is still a fresh run)
#     --cpu-lock FILE    hold `flock FILE` during the set-up and the tests (shared machines)
#     --keep-image       keep (and reuse) the bare Debian image
#     --keep-container   leave the container running at the end (for a look inside, or
#                        --reuse; remove it with `docker rm -f -v NAME`)
#     --reuse NAME       a container kept by an earlier run: copy the working tree into it
#                        again, `make setup` (with the uplink), `make doctor`, `make test`
#     --logs DIR         where the logs go (default /tmp/mec-bare-debian-check.<time>)
# Exit code: 0 when the set-up succeeded and every test failure is one of the named
# exceptions below (what needs the host's kernel), 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=mec-testbed/bare-debian-check:bookworm
STAMP=$(date +%Y%m%d-%H%M%S)
NAME=mec-bare-debian-check-$STAMP
CACHE="" CPU_LOCK="" KEEP_IMAGE=0 KEEP_CONTAINER=0 REUSE="" LOGS=/tmp/mec-bare-debian-check.$STAMP
MIRRORS=(   # what the debian/bookworm64 box has in sources.list
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
# `docker run --privileged` cannot start here: this machine's root lacks CAP_SYS_RESOURCE and
# --privileged asks for every capability. So the container gets what --privileged gives, one by
# one: every other capability, no seccomp/AppArmor filter, /proc unmasked, every device allowed
# (and /dev/net/tun for OVS's and slirp's taps); /sys and its cgroup mounts are remounted
# read-write inside it (its own sysfs, and its own cgroup subtree).
PRIVILEGED=(--cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
            --security-opt apparmor=unconfined --security-opt systempaths=unconfined
            --device-cgroup-rule 'a *:* rwm' --device /dev/net/tun)
(( (16#$(awk '/^CapBnd/ {print $2}' /proc/self/status) >> 24) & 1 )) && PRIVILEGED=(--privileged)
# The workplace's TLS egress settings, passed in where the host has them (see above).
CA_VARS=(PIP_CERT NODE_EXTRA_CA_CERTS SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO PIP_DEFAULT_TIMEOUT)

# What cannot pass in a container, by the text of the failure (an extended regex matched
# against the failure's message and traceback) -> why; pairs of entries. Any other failure fails
# the check. Empty since the lab raises Mininet's resource limits one at a time
# (topologies.network.raise_limits): Mininet's own fixLimits() gave up with "*** Error setting
# resource limits" in the container's network namespace, where net.core.netdev_max_backlog,
# the neighbour table's gc_thresh1-3 and net.ipv4.route.max_size do not exist.
EXCEPTIONS=()

while [ $# -gt 0 ]; do
  case $1 in
    --cache) CACHE=$(realpath -m "$2"); shift 2 ;;
    --cpu-lock) CPU_LOCK=$2; shift 2 ;;
    --keep-image) KEEP_IMAGE=1; shift ;;
    --keep-container) KEEP_CONTAINER=1; shift ;;
    --reuse) REUSE=$2; NAME=$2; KEEP_CONTAINER=1; shift 2 ;;
    --logs) LOGS=$(realpath -m "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
HELPER=$NAME-uplink

[ "$(id -u)" -eq 0 ] || { echo "run as root (it runs a privileged container)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers on this machine: run \`make setup\` first" >&2; exit 2; }
command -v mmdebstrap >/dev/null || { echo "mmdebstrap missing: run \`make setup\` first" >&2; exit 2; }
if [ -n "$REUSE" ] && [ "$(docker inspect --format '{{.State.Running}}' "$REUSE" 2>/dev/null)" != true ]; then
  echo "no running container $REUSE to reuse" >&2; exit 2
fi
mkdir -p "$LOGS"
WORK=$(mktemp -d /tmp/mec-bare-debian-check-work.XXXXXX)
T_START=$(date +%s)
T_ROOTFS=0

log() { printf '[bare-debian %s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOGS/check.log"; }
since() { echo $(( $(date +%s) - $1 )); }
LOCK_WAIT=0
locked() {   # locked CMD...: run CMD holding $CPU_LOCK if given; the wait adds to LOCK_WAIT (s)
  [ -n "$CPU_LOCK" ] || { "$@"; return; }
  local t; t=$(date +%s)
  flock -n "$CPU_LOCK" true || log "waiting for $CPU_LOCK (held by another job) ..."
  flock "$CPU_LOCK" bash -c 'date +%s > "$0"; exec "$@"' "$WORK/locked_at" "$@"
  local rc=$?
  LOCK_WAIT=$(( LOCK_WAIT + $(cat "$WORK/locked_at" 2>/dev/null || echo "$t") - t ))
  return $rc
}
ENV_ARGS=()
for v in "${CA_VARS[@]}"; do [ -n "${!v:-}" ] && ENV_ARGS+=(-e "$v=${!v}"); done
in_box() { docker exec -w /vagrant "${ENV_ARGS[@]}" "$NAME" "$@"; }   # in_box CMD...: run in the container

cleanup() {
  local rc=$?
  set +e
  docker rm -f "$HELPER" >/dev/null 2>&1
  if [ "$KEEP_CONTAINER" = 1 ] && docker inspect "$NAME" >/dev/null 2>&1; then
    log "container $NAME kept (again: --reuse $NAME; remove: docker rm -f -v $NAME)"
  else
    docker rm -f -v "$NAME" >/dev/null 2>&1
  fi
  if [ "$KEEP_IMAGE" != 1 ] && [ "$KEEP_CONTAINER" != 1 ]; then docker rmi "$IMAGE" >/dev/null 2>&1; fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_image() {   # the bare Debian 12 image
  local t; t=$(date +%s)
  if [ "$KEEP_IMAGE" = 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "image $IMAGE: reused"; return
  fi
  # mount: priority "required", on every Debian box; the apt variant leaves it out.
  log "mmdebstrap --variant=apt --include=mount bookworm ..."
  mmdebstrap --variant=apt --include=mount --quiet bookworm "$WORK/rootfs.tar" "${MIRRORS[@]}" >"$LOGS/mmdebstrap.log" 2>&1 \
    || { tail -n 20 "$LOGS/mmdebstrap.log"; log "FAILED: mmdebstrap"; exit 1; }
  docker import --change 'CMD ["/bin/bash"]' "$WORK/rootfs.tar" "$IMAGE" >/dev/null
  rm -f "$WORK/rootfs.tar"
  T_ROOTFS=$(since "$t")
  log "image $IMAGE: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MiB", $1/2^20}') in ${T_ROOTFS} s"
}

start_container() {
  local mounts=(-v /var/lib/docker)   # the inner engine's storage: a volume (overlay2 on ext4), removed with -v
  if [ -n "$CACHE" ]; then
    mkdir -p "$CACHE"/{apt,pip,npm,go-mod,go-build}
    mounts+=(-v "$CACHE/apt:/var/cache/apt/archives" -v "$CACHE/pip:/root/.cache/pip" -v "$CACHE/npm:/root/.npm"
             -v "$CACHE/go-mod:/root/go/pkg/mod" -v "$CACHE/go-build:/root/.cache/go-build")
  fi
  docker create --name "$NAME" --hostname mec-lab "${PRIVILEGED[@]}" --init --network none \
    "${mounts[@]}" "$IMAGE" sleep infinity >/dev/null
  docker start "$NAME" >/dev/null
  docker exec "$NAME" sh -c 'mount -o remount,rw /sys &&
    for m in $(awk "\$3 == \"cgroup\" || \$3 == \"cgroup2\" {print \$2}" /proc/mounts); do mount -o remount,bind,rw "$m"; done'
  docker exec "$NAME" mkdir -p /vagrant /usr/local/share/ca-certificates
  local crt
  for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$crt" ] && docker cp "$crt" "$NAME:/usr/local/share/ca-certificates/"
  done
  log "container $NAME started"
}

copy_tree() {   # the working tree as it is now: tracked and untracked-not-ignored files that exist
  if [ -n "$REUSE" ]; then   # what the set-up made stays; files gone from the tree go here too
    docker exec "$NAME" find /vagrant -mindepth 1 -maxdepth 1 ! -name .venv ! -name .tools \
      ! -name node_modules ! -name results ! -name '*.egg-info' -exec rm -rf {} +
  fi
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard --deduplicate \
     | while IFS= read -r -d '' f; do { [ -e "$f" ] || [ -L "$f" ]; } && printf '%s\0' "$f"; done \
     | tar --null -T - -cf "$WORK/tree.tar")
  docker cp - "$NAME:/vagrant" < "$WORK/tree.tar"
  log "working tree copied to $NAME:/vagrant ($(tar -tf "$WORK/tree.tar" | wc -l) files)"
}

uplink_up() {   # slirp4netns into the container's network namespace, from a helper container
  local pid; pid=$(docker inspect --format '{{.State.Pid}}' "$NAME")
  docker rm -f "$HELPER" >/dev/null 2>&1 || true
  docker run -d --name "$HELPER" --network host --pid host "${PRIVILEGED[@]}" "$IMAGE" bash -c "
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slirp4netns >/dev/null &&
    exec slirp4netns --configure --mtu=65520 --disable-host-loopback $pid tap0" >/dev/null
  for _ in $(seq 1 240); do
    docker exec "$NAME" test -e /sys/class/net/tap0 && { log "uplink up (slirp4netns)"; return 0; }
    docker inspect --format '{{.State.Running}}' "$HELPER" | grep -q true || break
    sleep 0.5
  done
  docker logs "$HELPER" 2>&1 | tail -n 20
  log "FAILED: no uplink (slirp4netns) for the container"; exit 1
}
uplink_down() {
  docker rm -f "$HELPER" >/dev/null 2>&1 || true
  for _ in $(seq 1 20); do
    docker exec "$NAME" test -e /sys/class/net/tap0 || { log "uplink removed"; return 0; }
    sleep 0.5
  done
  log "FAILED: the container's uplink did not go away"; exit 1
}

run_setup() {   # as the Vagrant provisioner does (make is there already when reused)
  local t rc w0=$LOCK_WAIT; t=$(date +%s)
  if [ -n "$REUSE" ]; then log "set-up: make setup ..."
  else log "set-up: apt-get update && apt-get install -y make && make setup ..."; fi
  set +e
  locked docker exec -w /vagrant "${ENV_ARGS[@]}" "$NAME" bash -c '
    set -e
    t0=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    if ! command -v make >/dev/null; then
      apt-get update -q && apt-get install -y -q make
      echo "[bare-debian] make installed ($(( $(date +%s) - t0 )) s)"
    fi
    make setup' >"$LOGS/setup.log" 2>&1
  rc=$?
  set -e
  T_SETUP=$(( $(since "$t") - (LOCK_WAIT - w0) ))
  grep -E '^(\[(setup|bare-debian)|    )' "$LOGS/setup.log" | grep -vE '\.\.\.$' | tee -a "$LOGS/check.log" || true
  if [ $rc -ne 0 ]; then
    tail -n 30 "$LOGS/setup.log"
    log "FAILED: make setup exited $rc after ${T_SETUP} s (log $LOGS/setup.log)"
    exit 1
  fi
  log "set-up done in ${T_SETUP} s"
}

run_tests() {
  local t w0=$LOCK_WAIT; t=$(date +%s)
  set +e
  in_box make doctor >"$LOGS/doctor.log" 2>&1
  DOCTOR_RC=$?
  set -e
  log "make doctor exited $DOCTOR_RC:"
  grep -vE '^(bash scripts/setup.sh|\[setup|    |\.venv/bin/python)' "$LOGS/doctor.log" | sed 's/^/    /' | tee -a "$LOGS/check.log" || true
  log "make test ..."
  set +e
  locked docker exec -w /vagrant "${ENV_ARGS[@]}" -e PYTEST_ADDOPTS="--junitxml=/tmp/junit.xml" "$NAME" \
    sh -c 'rm -f /tmp/junit.xml; make test' >"$LOGS/test.log" 2>&1
  TEST_RC=$?
  set -e
  T_TEST=$(( $(since "$t") - (LOCK_WAIT - w0) ))
  docker cp "$NAME:/tmp/junit.xml" "$LOGS/junit.xml" >/dev/null 2>&1 || true
  grep -E '^\[setup [0-9]+\] (ok|FAILED)' "$LOGS/test.log" | sed 's/^/    again: /' | tee -a "$LOGS/check.log" || true
}

summary() {   # counts, the named exceptions, the unexpected failures; exit status of the check
  local exc="$WORK/exceptions.tsv" i rc
  : > "$exc"
  for ((i = 0; i < ${#EXCEPTIONS[@]}; i += 2)); do printf '%s\t%s\n' "${EXCEPTIONS[i]}" "${EXCEPTIONS[i+1]}" >> "$exc"; done
  set +e
  python3 - "$LOGS/junit.xml" "$exc" "$LOGS/test.log" <<'EOF' | tee -a "$LOGS/check.log"
import re, sys, xml.etree.ElementTree as ET
junit, exc_file, test_log = sys.argv[1:4]
exceptions = [l.rstrip("\n").split("\t", 1) for l in open(exc_file) if l.strip()]
try:
    root = ET.parse(junit).getroot()
except (OSError, ET.ParseError) as e:
    print(f"no test report ({e}); last lines of {test_log}:")
    print("".join(open(test_log, errors="replace").readlines()[-30:]))
    sys.exit(1)
counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
bad, named = [], {}
for tc in root.iter("testcase"):
    parts = tc.get("classname", "").split(".")
    cls = [parts.pop()] if parts and parts[-1][:1].isupper() else []
    nid = "::".join(["/".join(parts) + ".py", *cls, tc.get("name", "")])
    el = next((c for c in tc if c.tag in ("failure", "error", "skipped")), None)
    if el is None:
        counts["passed"] += 1; continue
    if el.tag == "skipped":
        counts["skipped"] += 1; continue
    counts["failed" if el.tag == "failure" else "error"] += 1
    text = (el.get("message") or "") + "\n" + (el.text or "")
    first = next((l.strip() for l in (el.get("message") or "").splitlines() if l.strip()), "")[:160]
    why = next((w for rx, w in exceptions if re.search(rx, text)), None)
    if why:
        named.setdefault(why, []).append(nid)
    else:
        bad.append((nid, el.tag, first))
print(f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped")
for why, nids in named.items():
    print(f"  needs the host's kernel ({len(nids)}): " + ", ".join(nids) + f"\n      because: {why}")
for nid, kind, first in bad:
    print(f"  UNEXPECTED {kind}: {nid}\n      {first}")
sys.exit(1 if bad else 0)
EOF
  rc=${PIPESTATUS[0]}
  set -e
  log "times: bare image ${T_ROOTFS} s, set-up ${T_SETUP} s, doctor + make test ${T_TEST} s (make test exit $TEST_RC), total $(since "$T_START") s${CPU_LOCK:+ (of which ${LOCK_WAIT} s waiting for $CPU_LOCK, not counted in the set-up and test times)}"
  log "make doctor exit $DOCTOR_RC; logs in $LOGS"
  if [ "$rc" -eq 0 ]; then
    log "RESULT: ok (the set-up works on a bare Debian 12; test failures, if any, are the named exceptions)"; exit 0
  fi
  log "RESULT: FAILED (see the unexpected failures above)"; exit 1
}

log "logs in $LOGS"
if [ -z "$REUSE" ]; then build_image; start_container; fi
copy_tree
uplink_up
run_setup
uplink_down
run_tests
summary
