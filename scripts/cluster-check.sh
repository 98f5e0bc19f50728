#!/usr/bin/env bash
# A cluster on one machine (issue 22: the network layer, hash budgets through each server's agent):
# two Debian 12 containers as two servers, run from this machine as the orchestrator.
#
# One image is built offline (mmdebstrap, like the project's base image: topologies/images.py's
# packages + openssh-server, openvswitch-switch, mininet, iproute2, ethtool, net-tools) and
# imported. Two capability-granted containers (as scripts/bare-debian-check.sh runs its one) join
# a private, internal Docker network; each gets a throw-away root ssh key, sshd (PermitTunnel for
# the ssh fallback) and Open vSwitch (ovs-ctl; the userspace datapath, no kernel module). The
# repository and its .venv are bind-mounted read-only at the same paths: the image's
# /usr/bin/python3 is the interpreter the .venv was made from, so the project's Python runs
# there as here (checked and printed; the network layer itself runs only shell commands there).
#
# Then, per link kind (--link, default "vxlan ssh"), from this machine:
#     python -m testbed cluster-check --set cluster.servers=[a, b] --set cluster.controller_address=<this
#         machine on the Docker network> --set cluster.link=KIND ...
# (testbed/experiments/cluster_check.py): the pre-start check, the os-ken controller on this
# machine's address, a switch and a host on each server joined by the tunnel, the switches'
# time to connect, ping both ways, teardown; then the budgets stage (a miner stand-in, a Python
# busy loop, in the lab's cgroups on each server, the agent started over ssh, 20 slots of hash
# levels put in force by the controller's BudgetApplier); what it all left on each server ->
# results/cluster-check/<stamp>-<kind>/cluster-check.json.
#
# Everything is removed at the end, on success, error or Ctrl-C: containers, network, image
# (unless --keep-image), key. Run it alone on a shared machine: flock /tmp/lab.lock make cluster-check
#
# Usage (as root, Docker engine running, i.e. after `make setup`):
#   bash scripts/cluster-check.sh [--keep-image] [--link "vxlan ssh"] [--logs DIR] [--check-args "ARGS"]
# (--check-args: more arguments for `python -m testbed cluster-check`, e.g. "--budget-slots 0
# --no-lab-network" for the network layer alone)
# Exit code: 0 when every check of every link kind holds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(readlink -f "$ROOT/.venv")
PY="$ROOT/.venv/bin/python"
IMAGE=mec-testbed/cluster-check:bookworm
UE_IMAGE=$("$PY" -c 'from topologies.images import UE_IMAGE; print(UE_IMAGE)')
STAMP=$(date +%Y%m%d-%H%M%S)
NAME=mec-cluster-check-$STAMP
KEEP_IMAGE=0 LINKS="vxlan ssh" LOGS=/tmp/mec-cluster-check.$STAMP CHECK_ARGS=""
EXTRA=(openssh-server openvswitch-switch mininet mount iptables docker.io)   # iproute2, ethtool, net-tools, python3: the base's
# Capabilities as scripts/bare-debian-check.sh gives them (this machine's root lacks CAP_SYS_RESOURCE,
# so --privileged cannot start; where it can, it is used).
PRIVILEGED=(--cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
            --security-opt apparmor=unconfined --security-opt systempaths=unconfined
            --device-cgroup-rule 'a *:* rwm' --device /dev/net/tun)
(( (16#$(awk '/^CapBnd/ {print $2}' /proc/self/status) >> 24) & 1 )) && PRIVILEGED=(--privileged)

while [ $# -gt 0 ]; do
  case $1 in
    --keep-image) KEEP_IMAGE=1; shift ;;
    --link) LINKS=$2; shift 2 ;;
    --logs) LOGS=$(realpath -m "$2"); shift 2 ;;
    --check-args) CHECK_ARGS=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "run as root (privileged containers, Mininet)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers on this machine: run \`make setup\` first" >&2; exit 2; }
command -v mmdebstrap >/dev/null || { echo "mmdebstrap missing: run \`make setup\` first" >&2; exit 2; }
docker image inspect "$UE_IMAGE" >/dev/null 2>&1 || { echo "no $UE_IMAGE image here: run \`make setup\` first" >&2; exit 2; }
mkdir -p "$LOGS"
WORK=$(mktemp -d /tmp/mec-cluster-check-work.XXXXXX)   # the key and known_hosts: the same path in the containers
SHARED=$(mktemp -d /tmp/mec-cluster-check-shared.XXXXXX)   # cluster.shared_dir: here and in both servers (NFS's role)
chmod 0711 "$SHARED"   # the MEC hosts' own uids pass through it to their run files
T_START=$(date +%s)
log() { printf '[cluster-check %s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOGS/check.log"; }
since() { echo $(( $(date +%s) - $1 )); }

cleanup() {
  local rc=$? s
  set +e
  for s in a b; do docker rm -f -v "$NAME-$s" >/dev/null 2>&1; done
  docker network rm "$NAME" >/dev/null 2>&1
  [ "$KEEP_IMAGE" = 1 ] || docker rmi "$IMAGE" >/dev/null 2>&1
  rm -rf "$WORK" "$SHARED"
  left=$(docker ps -a --filter "name=$NAME" --format '{{.Names}}'; docker network ls --filter "name=$NAME" --format '{{.Name}}')
  [ -z "$left" ] && log "removed: containers, network$([ "$KEEP_IMAGE" = 1 ] || echo ', image'), key" \
                 || log "NOT removed: $left"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_image() {
  local t pkgs; t=$(date +%s)
  if [ "$KEEP_IMAGE" = 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then log "image $IMAGE: reused"; return; fi
  pkgs=$("$PY" -c 'from topologies.images import BASE_PACKAGES; print(",".join(BASE_PACKAGES))'),$(IFS=,; echo "${EXTRA[*]}")
  log "mmdebstrap --variant=apt --include=$pkgs bookworm ..."
  mmdebstrap --variant=apt --quiet --aptopt='APT::Install-Recommends "false"' --include="$pkgs" bookworm "$WORK/rootfs.tar" >"$LOGS/mmdebstrap.log" 2>&1 \
    || { tail -n 20 "$LOGS/mmdebstrap.log"; log "FAILED: mmdebstrap"; exit 1; }
  docker import --change 'CMD ["/bin/bash"]' "$WORK/rootfs.tar" "$IMAGE" >/dev/null
  rm -f "$WORK/rootfs.tar"
  log "image $IMAGE: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MiB", $1/2^20}') in $(since "$t") s"
}

start_servers() {
  local t s mounts; t=$(date +%s)
  docker network create --internal "$NAME" >/dev/null
  GATEWAY=$(docker network inspect --format '{{(index .IPAM.Config 0).Gateway}}' "$NAME")
  ssh-keygen -q -t ed25519 -N '' -C "$NAME" -f "$WORK/id"
  mounts=(-v "$ROOT:$ROOT:ro" -v "$SHARED:$SHARED:rw")
  case "$VENV" in "$ROOT"/*) ;; *) mounts+=(-v "$VENV:$VENV:ro") ;; esac
  for s in a b; do
    # /var/lib/docker: the server's own Docker engine's storage, a volume (overlay2 on ext4), removed with -v
    docker run -d --name "$NAME-$s" --hostname "$s" --network "$NAME" --init "${PRIVILEGED[@]}" \
      "${mounts[@]}" -v /var/lib/docker "$IMAGE" sleep infinity >/dev/null
    # /sys and the cgroup mounts come read-only without --privileged: /sys for the network, the
    # cgroup mounts (v1 here; the container's own group is their root) for the budgets stage's
    # mec-lab/<run> groups and the server's Docker engine (a bind mount: remount,bind,rw; plain
    # remount,rw is "busy")
    docker exec "$NAME-$s" sh -c 'mount -o remount,rw /sys &&
      for m in $(awk '"'"'$3 == "cgroup" || $3 == "cgroup2" {print $2}'"'"' /proc/mounts); do
        mount -o remount,bind,rw "$m" || exit 1; done'
    docker exec "$NAME-$s" mkdir -p /root/.ssh /run/sshd "$WORK"
    docker cp "$WORK/id.pub" "$NAME-$s:/root/.ssh/authorized_keys"
    docker cp "$WORK/id" "$NAME-$s:$WORK/id"   # the ssh fallback's tunnels start on a server
    docker exec "$NAME-$s" sh -c 'chmod 600 /root/.ssh/authorized_keys && ssh-keygen -A >/dev/null &&
      printf "PermitRootLogin prohibit-password\nPermitTunnel yes\nUseDNS no\n" > /etc/ssh/sshd_config.d/cluster.conf &&
      /usr/sbin/sshd' >>"$LOGS/servers.log" 2>&1
    # ovsdb by ovs-ctl; ovs-vswitchd by hand: ovs-ctl would first insert the kernel module, and
    # refuse when that fails (no openvswitch module; the userspace datapath needs none)
    docker exec "$NAME-$s" sh -c '/usr/share/openvswitch/scripts/ovs-ctl --no-ovs-vswitchd start --system-id=random 2>&1 | grep -v ulimit;
      ovs-vswitchd unix:/var/run/openvswitch/db.sock --pidfile --detach --no-chdir --log-file &&
      ovs-vsctl --timeout=5 show >/dev/null && ovs-appctl --timeout=5 -t ovs-vswitchd version' >>"$LOGS/servers.log" 2>&1 \
      || { tail -n 20 "$LOGS/servers.log"; log "FAILED: Open vSwitch did not start on server $s"; exit 1; }
    # the server's Docker engine (as make setup starts this machine's), then the UE image from this machine's
    docker exec "$NAME-$s" sh -c 'nohup dockerd --iptables=false --ip-masq=false --bridge=none >/var/log/dockerd.log 2>&1 &
      for i in $(seq 1 100); do docker info >/dev/null 2>&1 && exit 0; sleep 0.2; done; tail -n 20 /var/log/dockerd.log; exit 1' \
      >>"$LOGS/servers.log" 2>&1 || { tail -n 20 "$LOGS/servers.log"; log "FAILED: dockerd did not start on server $s"; exit 1; }
    docker save "$UE_IMAGE" | docker exec -i "$NAME-$s" docker load >>"$LOGS/servers.log" 2>&1 \
      || { tail -n 20 "$LOGS/servers.log"; log "FAILED: loading $UE_IMAGE on server $s"; exit 1; }
    eval "IP_$s=$(docker inspect --format "{{(index .NetworkSettings.Networks \"$NAME\").IPAddress}}" "$NAME-$s")"
  done
  log "servers a ($IP_a) and b ($IP_b) up with sshd, Open vSwitch, a Docker engine and $UE_IMAGE in $(since "$t") s; this machine is $GATEWAY there"
  log "the project's Python there: $(docker exec "$NAME-a" "$PY" -c 'import sys, mininet, os_ken; print(sys.version.split()[0], "at", sys.executable, "imports mininet and os_ken")' 2>&1 | tail -n 1)"
}

run_check() {   # run_check KIND
  local rc out="$ROOT/results/cluster-check/$STAMP-$1"
  log "cluster-check over $1 links ..."
  set +e
  local once=""   # the live lab (two runs of a few minutes) with the first link kind only
  [ "$1" = "${LINKS%% *}" ] || once="--no-live-lab"
  # shellcheck disable=SC2086 # CHECK_ARGS, once: words
  "$PY" -m testbed cluster-check --out "$out" $CHECK_ARGS $once \
    --set "cluster.servers=[{name='a', address='$IP_a'}, {name='b', address='$IP_b'}]" \
    --set "cluster.controller_address='$GATEWAY'" --set "cluster.link='$1'" \
    --set "cluster.ssh_key='$WORK/id'" --set "cluster.known_hosts='$WORK/known_hosts'" \
    --set "cluster.shared_dir='$SHARED'" 2>&1 | tee "$LOGS/check-$1.log"
  rc=${PIPESTATUS[0]}
  set -e
  log "cluster-check over $1 links exited $rc ($out/cluster-check.json)"
  return $rc
}

log "logs in $LOGS"
build_image
start_servers
RC=0
for kind in $LINKS; do run_check "$kind" || RC=1; done
log "total $(since "$T_START") s; RESULT: $([ $RC = 0 ] && echo ok || echo FAILED)"
exit $RC
