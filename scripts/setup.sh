#!/usr/bin/env bash
# One-command set-up of the lab on Debian 12, as root. Idempotent: every step checks
# whether its result is already there (stamp files hold a hash of the step's inputs).
# Used unchanged by `make setup`, `.ci/run` and the Vagrant provisioner.
# Every step ends by running what it installed (`--version` and the like): a step whose tool
# does not run fails, names the tool and shows its log, instead of printing ok.
# Checked on a bare Debian 12 (node 18 / npm 9 / Go 1.19) by scripts/bare-debian-check.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS="$ROOT/.tools"          # geth, anvil, stamps, step logs: project-local, git-ignored
VENV="$ROOT/.venv"
STAMPS="$TOOLS/stamps"
GETH_VERSION=1.11.6
GO_MIN_MINOR=19               # go-ethereum v1.11.6's go.mod says go 1.19 (Debian 12 has 1.19.8)
NODE_MIN_MAJOR=18             # Debian 12's nodejs; solcjs runs on it (anvil is native, see step 4)
SOLCJS="$ROOT/node_modules/.bin/solcjs"
ANVIL="$TOOLS/bin/anvil"      # the native anvil binary, whatever node and npm the machine has
mkdir -p "$STAMPS" "$TOOLS/bin"

APT_PACKAGES=(
  mininet openvswitch-switch iproute2 ethtool iperf3 iputils-ping net-tools
  docker.io mmdebstrap cgroup-tools psmisc procps
  openssh-client               # the cluster's servers are reached over ssh (topologies/cluster.py, docs/cluster.md)
  python3-venv python3-dev build-essential git curl ca-certificates
  chromium                     # headless, for the live view's test (tests/test_live_view.py)
)

step_no=0
step() {   # step NAME FUNCTION: run, time and report one step; name the failure in one line
  local name=$1 fn=$2 t0 rc why
  step_no=$((step_no + 1))
  t0=$(date +%s.%N)
  printf '[setup %d] %s ...\n' "$step_no" "$name"
  set +e
  ( set -e; "$fn" ) > "$TOOLS/step-$fn.log" 2>&1
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    tail -n 25 "$TOOLS/step-$fn.log" | sed 's/^/    | /'
    why=$(grep -h '^FAIL:' "$TOOLS/step-$fn.log" | tail -n 1 | sed 's/^FAIL://')
    printf '[setup %d] FAILED: %s%s (exit %d). Full log: %s\n' "$step_no" "$name" \
      "${why:+: $why}" $rc "$TOOLS/step-$fn.log"
    exit $rc
  fi
  grep -h '^SETUP:' "$TOOLS/step-$fn.log" | sed "s/^SETUP:/    /" || true
  printf "[setup %d] ok   %s (%s s)\n" "$step_no" "$name" "$(awk -v a="$t0" -v b="$(date +%s.%N)" "BEGIN{printf \"%.1f\", b-a}")"
}

inputs_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }   # fresh NAME HASH
mark()  { echo "$2" > "$STAMPS/$1"; }

# runs TOOL CMD...: run CMD; its output goes to $RUN_OUT. If it fails, print its output and
# a FAIL line naming TOOL (step() repeats that line in its FAILED message) and return 1.
RUN_OUT=""
runs() {
  local tool=$1 rc=0; shift
  RUN_OUT=$("$@" 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    printf '%s\n' "$RUN_OUT" | tail -n 15
    echo "FAIL:$tool does not run: \`$*\` exited $rc"
    return 1
  fi
}
# first_match REGEX: capture group 1 of REGEX's first match in $RUN_OUT (extended regex, per line)
first_match() { printf '%s\n' "$RUN_OUT" | grep -m1 -oE -- "$1" | sed -E "s/$1/\\1/" || true; }
fail() { echo "FAIL:$*"; return 1; }

go_bin() { if command -v go >/dev/null; then echo go; else echo /usr/local/go/bin/go; fi; }

# --- 1. Debian packages ------------------------------------------------------------
apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then missing+=(golang-go); fi
  if [ ${#missing[@]} -eq 0 ]; then
    echo "SETUP:all ${#APT_PACKAGES[@]} packages present"
  else
    echo "SETUP:installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # docker.io's service must not be started by dpkg in CI containers without systemd
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # What later steps and the tests run, each run once.
  # Debian's Mininet (the venv's PyPI mininet has an `mn` too, earlier on make's PATH)
  runs Mininet /usr/bin/mn --version;              local mn=$RUN_OUT
  runs mnexec test -x /usr/bin/mnexec
  runs "Open vSwitch" ovs-vsctl --version;        local ovs; ovs=$(first_match '\(Open vSwitch\) ([0-9.]+)')
  runs ovs-vswitchd ovs-vswitchd --version
  runs dockerd dockerd --version;                 local dk; dk=$(first_match 'version ([^ ,]+)')
  runs "docker client" docker --version
  runs mmdebstrap mmdebstrap --version
  runs iproute2 ip -V
  runs ethtool ethtool --version
  runs iperf3 iperf3 --version
  runs ping ping -V
  runs ifconfig ifconfig --version
  runs "Python venv" /usr/bin/python3 -c 'import venv, ensurepip, sys; print(sys.version.split()[0])'; local py=$RUN_OUT
  runs gcc gcc --version
  runs Chromium /usr/bin/chromium --version;       local chr; chr=$(first_match '(Chromium [0-9.]+)')
  runs node node --version;                        local node=$RUN_OUT
  runs npm npm --version;                          local npm=$RUN_OUT
  local go; go=$(go_bin)
  runs go "$go" version;                          local gov; gov=$(first_match '(go1\.[0-9.]+)')
  local nmaj=${node#v}; nmaj=${nmaj%%.*}
  [ "$nmaj" -ge $NODE_MIN_MAJOR ] 2>/dev/null || fail "node $node is too old: solcjs needs node >= $NODE_MIN_MAJOR"
  local gmin=${gov#go1.}; gmin=${gmin%%.*}
  [ "$gmin" -ge $GO_MIN_MINOR ] 2>/dev/null || fail "$gov is too old: geth v$GETH_VERSION needs go >= 1.$GO_MIN_MINOR"
  echo "SETUP:Python $py, node $node, npm $npm, $gov, Open vSwitch $ovs, Docker $dk, Mininet $mn, $chr"
}

# --- 2. Services: Open vSwitch and dockerd -------------------------------------------
services() {
  if ! ovs-vsctl --timeout=2 show >/dev/null 2>&1; then
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random 2>&1 | grep -v ulimit || true
    if ! runs "Open vSwitch" ovs-vsctl --timeout=10 show; then
      tail -n 10 /var/log/openvswitch/ovs-vswitchd.log /var/log/openvswitch/ovsdb-server.log 2>/dev/null || true
      fail "Open vSwitch did not start (ovs-vsctl show fails)"
    fi
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
    if ! runs dockerd /usr/bin/docker info; then
      echo "--- /var/log/testbed-dockerd.log:"; tail -n 15 /var/log/testbed-dockerd.log || true
      fail "dockerd did not start (docker info fails; log /var/log/testbed-dockerd.log)"
    fi
    echo "SETUP:started dockerd (log /var/log/testbed-dockerd.log)"
  else
    echo "SETUP:dockerd already running"
  fi
  # Both answer now, whichever branch ran.
  runs "Open vSwitch" ovs-vsctl --timeout=5 show
  runs dockerd /usr/bin/docker info --format '{{.ServerVersion}} {{.Driver}}'
  echo "SETUP:Docker engine $RUN_OUT"
}

# --- 3. Python venv from Debian's interpreter ----------------------------------------
VENV_IMPORTS="import torch, web3, os_ken, mininet, docker, gymnasium"
python_venv() {
  local h; h=$(inputs_hash requirements.lock pyproject.toml)
  if [ -x "$VENV/bin/python" ] && fresh venv "$h"; then
    echo "SETUP:venv up to date"
  else
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -r requirements.lock
    "$VENV/bin/pip" install -q --no-deps -e .
    "$VENV/bin/pip" check
    mark venv "$h"
    echo "SETUP:venv $("$VENV/bin/python" -V) with $("$VENV/bin/pip" list 2>/dev/null | wc -l) packages"
  fi
  # The parts the lab imports, loaded for real (a stamp says nothing of a broken venv).
  runs "Python venv (.venv)" "$VENV/bin/python" -c "$VENV_IMPORTS; print(torch.__version__)"
  echo "SETUP:imports torch $RUN_OUT, web3, os_ken, mininet, docker, gymnasium"
}

# --- 4. solc and anvil, pinned by package-lock.json ---------------------------------
# solcjs is JavaScript: `npm ci` installs it (node_modules/.bin/solcjs) on any node >= 18.
# anvil is a native binary that npm ships in a per-platform package
# (@foundry-rs/anvil-linux-amd64) declaring `engines: node >=20`: npm 9 on Debian 12's node 18
# skips it, silently. So the binary is taken from that package's tarball (`npm pack` does not
# look at `engines`), checked against the integrity package-lock.json pins, and installed as
# .tools/bin/anvil: the same binary on node 18 / npm 9 and node 20 / npm 11.
lock_field() {   # lock_field PACKAGE FIELD: a field of node_modules/PACKAGE in package-lock.json
  node -e 'const p = require(process.argv[1]).packages["node_modules/" + process.argv[2]];
           if (!p || !p[process.argv[3]]) process.exit(3); console.log(p[process.argv[3]])' \
    "$ROOT/package-lock.json" "$1" "$2"
}
anvil_package() {
  case "$(uname -m)" in
    x86_64) echo @foundry-rs/anvil-linux-amd64 ;;
    aarch64|arm64) echo @foundry-rs/anvil-linux-arm64 ;;
    *) return 1 ;;
  esac
}
solc_runs() {   # solcjs answers with the pinned version
  local want; want=$(lock_field solc version) || { fail "package-lock.json pins no solc"; return 1; }
  runs solcjs "$SOLCJS" --version || return 1
  [[ "$RUN_OUT" == "$want+"* ]] || fail "solcjs is '$RUN_OUT' (\`$SOLCJS --version\`), package-lock.json pins $want"
}
anvil_runs() {   # .tools/bin/anvil answers with the pinned version
  local want=$1
  runs anvil "$ANVIL" --version || return 1
  local got; got=$(first_match 'anvil Version: ([^ -]+)')
  [ "$got" = "$want" ] || fail "anvil is '${got:-?}' (\`$ANVIL --version\`), package-lock.json pins $want"
}
install_anvil() {   # install_anvil PACKAGE VERSION INTEGRITY
  local pkg=$1 ver=$2 want=$3 tmp tgz got
  rm -rf "$TOOLS"/anvil-pack.*
  tmp=$(mktemp -d "$TOOLS/anvil-pack.XXXXXX")
  (cd "$tmp" && npm pack --no-audit --no-fund "$pkg@$ver") || fail "npm pack $pkg@$ver failed"
  tgz=$(ls "$tmp"/*.tgz 2>/dev/null | head -n 1)
  [ -n "$tgz" ] || fail "npm pack $pkg@$ver made no tarball"
  got=$(node -e 'const c = require("crypto"), fs = require("fs");
                 console.log("sha512-" + c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "$tgz")
  [ "$got" = "$want" ] || fail "anvil tarball $pkg@$ver has integrity $got, package-lock.json pins $want"
  tar -xzf "$tgz" -C "$tmp"
  [ -f "$tmp/package/bin/anvil" ] || fail "$pkg@$ver has no bin/anvil"
  install -m 0755 "$tmp/package/bin/anvil" "$ANVIL.new"
  mv -f "$ANVIL.new" "$ANVIL"
  rm -rf "$tmp"
}
node_tools() {
  local h pkg ver integrity
  h=$(inputs_hash package.json package-lock.json)
  if [ -d node_modules/solc ] && fresh npm "$h" && solc_runs >/dev/null; then
    echo "SETUP:npm packages up to date"
  else
    npm ci --no-audit --no-fund
    solc_runs
    mark npm "$h"
  fi
  local solc=$RUN_OUT
  pkg=$(anvil_package) || fail "anvil: no Linux build of anvil for $(uname -m)"
  ver=$(lock_field "$pkg" version) || fail "package-lock.json pins no $pkg"
  integrity=$(lock_field "$pkg" integrity) || fail "package-lock.json has no integrity for $pkg"
  if [ -x "$ANVIL" ] && fresh anvil "$integrity" && anvil_runs "$ver" >/dev/null; then
    echo "SETUP:anvil $ver up to date"
  else
    install_anvil "$pkg" "$ver" "$integrity"
    anvil_runs "$ver"
    mark anvil "$integrity"
    echo "SETUP:installed $ANVIL from $pkg@$ver (integrity checked against package-lock.json)"
  fi
  echo "SETUP:solc $solc, $(first_match '(anvil Version: [^ ]+)')"
}

# --- 5. geth v1.11.6 (last release that seals ethash PoW) ----------------------------
geth_runs() {
  runs geth "$TOOLS/bin/geth" version || return 1
  local got; got=$(first_match '^Version: ([^ ]+)')
  [ "$got" = "$GETH_VERSION-stable" ] || fail "geth is '${got:-?}' (\`$TOOLS/bin/geth version\`), want $GETH_VERSION-stable"
}
geth_build() {
  if [ -x "$TOOLS/bin/geth" ] && geth_runs >/dev/null; then
    echo "SETUP:geth $GETH_VERSION present"; return
  fi
  local go; go=$(go_bin)
  local gominor; gominor=$("$go" env GOVERSION | sed -E 's/go1\.([0-9]+).*/\1/')
  local ldflags=""
  # Go >= 1.23 refuses fjl/memsize's linkname to runtime.stopTheWorld; geth's --pprof
  # (the only user of memsize) is never enabled by this project.
  [ "$gominor" -ge 23 ] && ldflags="-checklinkname=0"
  GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod "$go" install -ldflags="$ldflags" \
    "github.com/ethereum/go-ethereum/cmd/geth@v$GETH_VERSION"
  geth_runs
  echo "SETUP:built geth $GETH_VERSION with $("$go" env GOVERSION)"
}

# --- 6. Docker images, built offline from Debian packages -----------------------------
docker_images() {
  # The lab's one command line (build-images); the check below catches a no-op.
  "$VENV/bin/python" -m testbed build-images
  # Each image the testbed runs is in the engine now.
  runs "Docker images" "$VENV/bin/python" -c 'from topologies import images; print(images.BASE_IMAGE, images.UE_IMAGE)'
  local img
  for img in $RUN_OUT; do
    runs "Docker image $img" /usr/bin/docker image inspect --format '{{.Id}}' "$img" \
      || fail "Docker image $img missing after the build"
  done
}

step "Debian packages" apt_packages
step "services (Open vSwitch, dockerd)" services
step "Python venv (.venv)" python_venv
step "solc + anvil (npm ci, npm pack)" node_tools
step "geth v$GETH_VERSION (go install)" geth_build
step "Docker images" docker_images
echo "[setup] done. Check the platform with: make doctor"
