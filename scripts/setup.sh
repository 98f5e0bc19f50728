#!/usr/bin/env bash
# One-command set-up of the lab on Debian 12, as root. Idempotent: every step checks
# whether its result is already there (stamp files hold a hash of the step's inputs).
# Used unchanged by `make setup`, `.ci/run` and the Vagrant provisioner.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS="$ROOT/.tools"          # geth, node_modules, stamps: project-local, git-ignored
VENV="$ROOT/.venv"
STAMPS="$TOOLS/stamps"
GETH_VERSION=1.11.6
mkdir -p "$STAMPS" "$TOOLS/bin"

APT_PACKAGES=(
  mininet openvswitch-switch iproute2 ethtool iperf3 iputils-ping net-tools
  docker.io mmdebstrap cgroup-tools psmisc procps
  python3-venv python3-dev build-essential git curl ca-certificates
)

step_no=0
step() {   # step NAME FUNCTION: run, time and report one step; name the failure in one line
  local name=$1 fn=$2 t0 rc
  step_no=$((step_no + 1))
  t0=$(date +%s.%N)
  printf '[setup %d] %s ...\n' "$step_no" "$name"
  set +e
  ( set -e; "$fn" ) > "$TOOLS/step-$fn.log" 2>&1
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    tail -n 25 "$TOOLS/step-$fn.log" | sed 's/^/    | /'
    printf '[setup %d] FAILED: %s (exit %d). Full log: %s\n' "$step_no" "$name" $rc "$TOOLS/step-$fn.log"
    exit $rc
  fi
  grep -h '^SETUP:' "$TOOLS/step-$fn.log" | sed "s/^SETUP:/    /" || true
  printf "[setup %d] ok   %s (%s s)\n" "$step_no" "$name" "$(awk -v a="$t0" -v b="$(date +%s.%N)" "BEGIN{printf \"%.1f\", b-a}")"
}

inputs_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }   # fresh NAME HASH
mark()  { echo "$2" > "$STAMPS/$1"; }

# --- 1. Debian packages ------------------------------------------------------------
apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  command -v node >/dev/null || missing+=(nodejs npm)
  if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then missing+=(golang-go); fi
  if [ ${#missing[@]} -eq 0 ]; then echo "SETUP:all ${#APT_PACKAGES[@]} packages present"; return; fi
  echo "SETUP:installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # docker.io's service must not be started by dpkg in CI containers without systemd
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# --- 2. Services: Open vSwitch and dockerd -------------------------------------------
services() {
  if ! ovs-vsctl --timeout=2 show >/dev/null 2>&1; then
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random 2>&1 | grep -v ulimit || true
    ovs-vsctl --timeout=10 show >/dev/null
    echo "SETUP:started Open vSwitch $(ovs-vsctl --version | head -1 | awk '{print $NF}')"
  else
    echo "SETUP:Open vSwitch already running"
  fi
  if ! /usr/bin/docker info >/dev/null 2>&1; then
    # A dockerd killed with its session leaves pid files that block a new one.
    pkill -x dockerd 2>/dev/null || true; pkill -x containerd 2>/dev/null || true; sleep 0.5
    rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
    nohup /usr/sbin/dockerd --iptables=false --ip-masq=false --bridge=none >/var/log/testbed-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do /usr/bin/docker info >/dev/null 2>&1 && break; sleep 0.5; done
    /usr/bin/docker info >/dev/null
    echo "SETUP:started dockerd (log /var/log/testbed-dockerd.log)"
  else
    echo "SETUP:dockerd already running"
  fi
}

# --- 3. Python venv from Debian's interpreter ----------------------------------------
python_venv() {
  local h; h=$(inputs_hash requirements.lock pyproject.toml)
  if [ -x "$VENV/bin/python" ] && fresh venv "$h"; then echo "SETUP:venv up to date"; return; fi
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r requirements.lock
  "$VENV/bin/pip" install -q --no-deps -e .
  "$VENV/bin/pip" check
  mark venv "$h"
  echo "SETUP:venv $("$VENV/bin/python" -V) with $("$VENV/bin/pip" list 2>/dev/null | wc -l) packages"
}

# --- 4. solc and anvil, pinned through npm ------------------------------------------
node_tools() {
  local h; h=$(inputs_hash package.json package-lock.json)
  if [ -d node_modules/solc ] && fresh npm "$h"; then echo "SETUP:npm tools up to date"; return; fi
  npm ci --no-audit --no-fund
  mark npm "$h"
  echo "SETUP:solc $(node_modules/.bin/solcjs --version), anvil $(node_modules/.bin/anvil --version | head -1)"
}

# --- 5. geth v1.11.6 (last release that seals ethash PoW) ----------------------------
geth_build() {
  if [ -x "$TOOLS/bin/geth" ] && "$TOOLS/bin/geth" version 2>/dev/null | grep -q "^Version: $GETH_VERSION"; then
    echo "SETUP:geth $GETH_VERSION present"; return
  fi
  local go=go; command -v go >/dev/null || go=/usr/local/go/bin/go
  local gominor; gominor=$("$go" env GOVERSION | sed -E 's/go1\.([0-9]+).*/\1/')
  local ldflags=""
  # Go >= 1.23 refuses fjl/memsize's linkname to runtime.stopTheWorld; geth's --pprof
  # (the only user of memsize) is never enabled by this project.
  [ "$gominor" -ge 23 ] && ldflags="-checklinkname=0"
  GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod "$go" install -ldflags="$ldflags" \
    "github.com/ethereum/go-ethereum/cmd/geth@v$GETH_VERSION"
  "$TOOLS/bin/geth" version | grep -q "^Version: $GETH_VERSION"
  echo "SETUP:built geth $GETH_VERSION with $("$go" env GOVERSION)"
}

# --- 6. Docker images, built offline from Debian packages -----------------------------
docker_images() {
  "$VENV/bin/python" -m testbed.images build
}

step "Debian packages" apt_packages
step "services (Open vSwitch, dockerd)" services
step "Python venv (.venv)" python_venv
step "solc + anvil (npm ci)" node_tools
step "geth v$GETH_VERSION (go install)" geth_build
step "Docker images" docker_images
echo "[setup] done. Check the platform with: make doctor"
