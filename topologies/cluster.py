"""One emulated network across several servers: the parts (issue 22, step 1).

Built on Mininet's cluster edition (``mininet/examples/cluster.py``): a node on another server
is Mininet's ``RemoteMixin`` (its shell runs there over ssh, so ``cmd``, ``popen`` and every
link command work unchanged), a switch there is a ``RemoteOVSSwitch`` (started in per-server
batches), and a link between servers is a tunnel. What is ours:

- :class:`ClusterHost`, :class:`ClusterSwitch`: Mininet's remote nodes reached as the lab's
  servers say (``[cluster]``: user, port, key, known hosts) and run as root there: Mininet's own
  wrap every command in ``sudo`` on both sides and register ``mn -c`` on every server as their
  clean-up, which would remove every other Mininet network there;
- :class:`VxlanLink`: a link between servers as a VXLAN tunnel, in the style of Mininet's
  ``RemoteGRELink`` (GRE is missing from some kernels, this machine kind's included; VXLAN is
  built in): on each end ``ip link add <intf> type vxlan id <VNI> remote <other> local <own>
  dstport 4789``, one VNI per link, MTU = underlay MTU - 50 (the outer Ethernet, IPv4, UDP and
  VXLAN headers) on the tunnel and on every interface of the servers' links, so a full-sized
  frame of a host is never dropped at the tunnel (:func:`vxlan_commands`);
- :class:`SshLink`: the fallback, Mininet's ``RemoteSSHLink`` (an ssh Ethernet tunnel between
  two TAP devices, ``ssh -o Tunnel=Ethernet -w N:N``; needs TUN on both servers and
  ``PermitTunnel yes``) with a TAP number per link instead of Mininet's one ``tap9``;
- :func:`check_servers`: refuses a start, naming the server and what is missing: unreachable
  over ssh, a tool missing (``ovs-vsctl``, ``mnexec``, ``ip``, ``docker`` where UE containers run),
  Open vSwitch not answering, no TUN device (ssh links), a clock off by more than
  ``cluster.max_clock_skew_s``, no calibration of its own or one measured on another CPU or
  core count (:mod:`base.machine`);
- :func:`snapshot`/:func:`leaks`: what a run left on a server (network namespaces, veth, VXLAN
  and TAP interfaces, OVS bridges, Mininet shells, budgets agents, the lab's cgroups), compared
  before and after.

The budgets agent and the lab's cgroups on a server are :mod:`topologies.remote`'s. Not yet
here (issue 22, step 2): the lab's miners, executors and UE containers on remote servers, the
management network across servers, the mapping per server (each server's own calibration is
read and checked here).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from mininet.examples.cluster import RemoteLink, RemoteMixin, RemoteOVSSwitch
from mininet.link import Link
from mininet.node import Host, OVSBridge, OVSSwitch
from mininet.util import quietRun

from base import machine
from topologies.config import ClusterConfig, ServerSpec
from topologies.docker_host import (CODE_DIRS, CONTAINER_LABEL, NAME_PREFIX, OWNER_LABEL, ROOT as REPO, ContainerNode,
                                    DockerHost, container_binds, dead_runs_container)
from topologies.images import UE_IMAGE

VXLAN_OVERHEAD = 50   # bytes: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
NETWORK_TOOLS = ("ovs-vsctl", "mnexec", "ip", "iptables")   # what a server's switches, hosts and links need
CONTAINER_TOOLS = ("docker",)                   # ... and where UE containers run


class ClusterError(RuntimeError):
    """A server of the cluster cannot take part; the message names it and what is missing."""


# ---------------------------------------------------------------------------- reaching a server


def ssh_argv(spec: ServerSpec, cluster: ClusterConfig, *, connect_timeout_s: int = 5) -> list[str]:
    """``ssh ... user@address`` for ``spec``, never asking for a password (BatchMode)."""
    argv = ["ssh", "-q", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout_s}",
            "-o", "ServerAliveInterval=5", "-p", str(spec.port)]
    if cluster.ssh_key:
        argv += ["-i", cluster.ssh_key, "-o", "IdentitiesOnly=yes"]
    if cluster.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={cluster.known_hosts}", "-o", "StrictHostKeyChecking=accept-new"]
    return argv + [f"{spec.user}@{spec.address}"]


def is_local(spec: ServerSpec) -> bool:
    return spec.address in ("localhost", "127.0.0.1")


def run_on(spec: ServerSpec, cluster: ClusterConfig, script: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess:
    """Run a shell ``script`` as ``spec.user`` on the server (here, for ``localhost``)."""
    argv = ["bash", "-c", script] if is_local(spec) else [*ssh_argv(spec, cluster), "bash -c " + shlex.quote(script)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 255, "", f"no answer within {timeout_s:g} s")


# ---------------------------------------------------------------------------- the pre-start check


@dataclass
class ServerCheck:
    """What :func:`check_servers` found on one server."""
    server: str
    problems: list[str] = field(default_factory=list)
    clock_offset_s: float | None = None     # server clock - ours, at the middle of the round trip
    rtt_s: float | None = None
    machine: dict = field(default_factory=dict)      # the server's facts (base.machine.facts)
    calibration: dict | None = None                  # its own calibration file, when asked for

    @property
    def ok(self) -> bool:
        return not self.problems


def _probe_script(tools: tuple[str, ...], tun: bool, calibration: str | None = None) -> str:
    lines = [f"command -v {shlex.quote(t)} >/dev/null 2>&1 || echo 'missing {t}'" for t in tools]
    lines.append(machine.PROBE)
    if calibration:
        path = shlex.quote(calibration)
        lines.append(f"if [ -f {path} ]; then printf 'calibration '; tr -d '\\n' < {path}; echo; "
                     f"else echo 'problem no calibration at {calibration} (run `make calibrate` there)'; fi")
    if "docker" in tools:
        lines.append("command -v docker >/dev/null 2>&1 && { docker info >/dev/null 2>&1 "
                     "|| echo 'problem the Docker engine does not answer (start dockerd)'; }")
    if "ovs-vsctl" in tools:
        lines.append("command -v ovs-vsctl >/dev/null 2>&1 && { ovs-vsctl --timeout=3 show >/dev/null 2>&1 "
                     "|| echo 'problem Open vSwitch does not answer (ovs-ctl start)'; "
                     "ovs-appctl --timeout=3 -t ovs-vswitchd version >/dev/null 2>&1 "
                     "|| echo 'problem ovs-vswitchd does not run (switches would never forward)'; }")
    if tun:
        lines.append("[ -c /dev/net/tun ] || echo 'problem no TUN device /dev/net/tun (needed by ssh links)'")
    lines.append("echo clock $(date +%s.%N)")
    return "\n".join(lines)


def judge(server: str, rc: int, out: str, err: str, t_sent: float, t_back: float,
          max_skew_s: float) -> ServerCheck:
    """A server's probe output, read: ``missing TOOL`` and ``problem TEXT`` lines, its clock
    (``clock <epoch seconds>``) against ours at the middle of the round trip."""
    check = ServerCheck(server)
    clock = re.search(r"^clock (\d+\.\d+)$", out, re.M)
    if rc != 0 or clock is None:
        why = (err or out).strip().splitlines()
        check.problems.append(f"unreachable over ssh (exit {rc}{': ' + why[-1] if why else ''})")
        return check
    check.problems += [f"{m} missing" for m in re.findall(r"^missing (\S+)$", out, re.M)]
    check.problems += re.findall(r"^problem (.+)$", out, re.M)
    check.machine = machine.parse_probe(out)
    cal = re.search(r"^calibration (.+)$", out, re.M)
    if cal:
        try:
            check.calibration = json.loads(cal.group(1))
            why = machine.stale(check.calibration.get("machine", {}), check.machine)
        except (ValueError, AttributeError) as e:
            why = f"unreadable ({e}): run `make calibrate` there"
        if why:
            check.problems.append(f"stale calibration: {why}")
    check.rtt_s = t_back - t_sent
    check.clock_offset_s = float(clock.group(1)) - (t_sent + t_back) / 2
    # the server read its clock somewhere inside the round trip (ssh's handshake included):
    # refused only when even the nearest possible reading is off by more than max_skew_s
    if abs(check.clock_offset_s) - check.rtt_s / 2 > max_skew_s:
        check.problems.append(f"clock off by {check.clock_offset_s:+.2f} s (more than {max_skew_s:g} s: "
                              "run chrony or another NTP client on every server)")
    return check


def check_servers(cluster: ClusterConfig, *, containers: bool = True, timeout_s: float = 15.0,
                  raise_error: bool = True, calibration: str | None = None) -> dict[str, ServerCheck]:
    """Probe every server of ``cluster`` at once (ssh, the tools, Open vSwitch, TUN for ssh
    links, the clock, the machine's facts). Raises :class:`ClusterError` naming each refused
    server and why, unless ``raise_error`` is false. ``containers``: UE containers run there
    (``docker`` needed). ``calibration``: the calibration file's absolute path, the same on
    every server (the repository is at the same path): each server must have its own, measured
    on its own CPU and cores (:func:`base.machine.stale`); it is returned in the check."""
    tools = NETWORK_TOOLS + (CONTAINER_TOOLS if containers else ())
    script = _probe_script(tools, tun=cluster.link == "ssh", calibration=calibration)
    argvs = {s.name: (["bash", "-c", script] if is_local(s) else [*ssh_argv(s, cluster), script])
             for s in cluster.servers}
    started = {}
    for name, argv in argvs.items():
        started[name] = (time.time(), subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE, text=True))
    checks = {}
    for name, (t0, proc) in started.items():
        try:
            out, err = proc.communicate(timeout=max(0.1, t0 + timeout_s - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err = f"no answer within {timeout_s:g} s"
        checks[name] = judge(name, proc.returncode if proc.returncode is not None else 255, out, err,
                             t0, time.time(), cluster.max_clock_skew_s)
    bad = [c for c in checks.values() if not c.ok]
    if bad and raise_error:
        raise ClusterError("refused to start: " + "; ".join(f"server {c.server}: {', '.join(c.problems)}"
                                                            for c in bad))
    return checks


# ---------------------------------------------------------------------------- remote nodes


class ClusterNode(RemoteMixin):
    """Mininet's ``RemoteMixin`` reached with the lab's ssh command and run as root (no sudo,
    no ``mn -c`` registered as the clean-up of the server).

    ``server``: the server's name; ``serverIP``: its address; ``ssh``: :func:`ssh_argv`'s
    command (``None`` or ``server="localhost"``: a local node)."""

    def __init__(self, name, server="localhost", serverIP=None, ssh=None, user="root", **kwargs):
        self.server = server or "localhost"
        self.serverIP = serverIP or ("127.0.0.1" if self.server == "localhost" else self.findServerIP(self.server))
        self.user = user
        self.controlPath, self.splitInit = False, False
        self.isRemote = bool(ssh) and self.server != "localhost"
        # -tt: the node's shell wants a terminal (Mininet's sshbase has it as well)
        self.sshcmd = [*ssh[:-1], "-tt", ssh[-1]] if self.isRemote else []
        self.dest = ssh[-1] if self.isRemote else None
        self.shell, self.pid = None, None
        if isinstance(self, RemoteOVSSwitch):
            kwargs.setdefault("batch", True)
        super(RemoteMixin, self).__init__(name, **kwargs)   # past RemoteMixin's __init__: Node's

    def _popen(self, cmd, sudo=True, tt=True, **params):
        """Run ``cmd`` on the node's server (as root already: ``sudo`` is ignored)."""
        if isinstance(cmd, str):
            cmd = cmd.split()
        if self.isRemote:
            ssh = self.sshcmd if tt else [a for a in self.sshcmd if a != "-tt"]
            cmd = [*ssh, *cmd]
        params.update(preexec_fn=_own_group_default_hangup)
        return super(RemoteMixin, self)._popen(cmd, **params)

    def terminate(self):
        """Mininet ends a node's shell with SIGHUP and then waits for it: for a remote node that
        is its ssh client, which waits for its server; give it 3 s, then SIGKILL (sshd then
        hangs up the shell there), so a teardown never hangs on one server."""
        if self.isRemote and self.shell is not None and self.shell.poll() is None:
            for sig in (signal.SIGHUP, signal.SIGKILL):
                try:
                    os.killpg(self.shell.pid, sig)
                    self.shell.wait(timeout=3)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        super().terminate()


    def rcmd(self, *cmd, **opts):
        """Run a command on the node's server, root namespace; its output (stdout and stderr)
        as text. Mininet's own concatenates bytes to text (PyPI's mininet 2.3.0.dev6), and asks
        for a terminal (``-tt``), which adds carriage returns: a one-shot command needs none."""
        opts.setdefault("tt", False)
        out, _ = self.rpopen(*cmd, **opts).communicate()
        return out.decode(errors="replace") if isinstance(out, bytes) else out


class ClusterHost(ClusterNode, Host):
    """A Mininet host on a server of the cluster."""


class ClusterDockerHost(ContainerNode, ClusterNode, Host):
    """:class:`topologies.docker_host.DockerHost` on a server of the cluster: the container is made
    by that server's own Docker engine (the ``docker`` command over ssh, the same options: no
    network, no ``NET_ADMIN``/``NET_RAW``, the repository's code read-only at its own path, which
    is the same on every server, the testbed's labels with the orchestrator's pid as owner), and
    the node's shell joins its namespaces there (``mnexec -a <pid>`` over ssh)."""

    def __init__(self, name, image=None, cpu_quota=None, mem_limit=None, pids_limit=None, volumes=None,
                 code=CODE_DIRS, server="localhost", serverIP=None, ssh=None, **params):
        self.image = image or UE_IMAGE
        self.cname = NAME_PREFIX + name
        self.docker_ssh, self.docker_server = list(ssh), server
        out = self._docker(f"docker inspect --format '{{{{json .Config.Labels}}}}' {self.cname} 2>/dev/null || true")
        if out.strip() and dead_runs_container(self.cname, json.loads(out.strip()) or {}, f" on server {server}"):
            self._docker(f"docker rm -f {self.cname} >/dev/null")
        argv = ["docker", "run", "-d", "--name", self.cname, "--hostname", name, "--network", "none",
                "--label", f"{CONTAINER_LABEL}=1", "--label", f"{OWNER_LABEL}={os.getpid()}",
                "--cap-drop", "NET_ADMIN", "--cap-drop", "NET_RAW", "--init", "-w", str(REPO)]
        for src, b in container_binds(code, volumes).items():
            argv += ["-v", f"{src}:{b['bind']}:{b['mode']}"]
        argv += [*(["--memory", mem_limit] if mem_limit else []), *(["--pids-limit", str(pids_limit)] if pids_limit else []),
                 *(["--cpus", f"{cpu_quota:g}"] if cpu_quota else []), self.image, "sleep", "infinity"]
        out = self._docker(" ".join(shlex.quote(a) for a in argv) + f" >/dev/null && docker inspect --format "
                           f"'{{{{.State.Pid}}}}' {self.cname}")
        pid = out.strip().splitlines()[-1] if out.strip() else ""
        if not pid.isdigit() or int(pid) <= 0:
            self._remove_container()
            raise ClusterError(f"server {server}: the container for host {name} did not start: {out.strip()}")
        self.container_pid = int(pid)
        try:
            super().__init__(name, server=server, serverIP=serverIP, ssh=ssh, inNamespace=True, **params)
        except BaseException:
            self._remove_container()
            raise

    def _docker(self, script: str) -> str:
        r = subprocess.run([*self.docker_ssh, script], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        if r.returncode:
            raise ClusterError(f"server {self.docker_server}: {script.split(' >')[0][:120]} failed: "
                               f"{(r.stderr or r.stdout).strip()}")
        return r.stdout

    def startShell(self, mnopts=None):
        # join the container's network and mount namespaces (-a) there, not new ones (-n)
        self.inNamespace = False
        try:
            Host.startShell(self, mnopts=f"-ca{self.container_pid}")
        finally:
            self.inNamespace = True
        self.sendCmd("echo $$")
        self.finishInit()

    def _remove_container(self):
        try:
            self._docker(f"docker rm -f {self.cname} >/dev/null 2>&1 || true")
        except (ClusterError, subprocess.TimeoutExpired) as e:
            print(f"could not remove container {self.cname} on server {self.docker_server}: {e}", file=sys.stderr)


class ClusterSwitch(ClusterNode, RemoteOVSSwitch):
    """An OpenFlow 1.3 Open vSwitch bridge on a server of the cluster, started with the other
    switches of its server in one batch (Mininet's ``RemoteOVSSwitch``)."""

    def __init__(self, name, protocols="OpenFlow13", **params):
        super().__init__(name, protocols=protocols, **params)


def _own_group_default_hangup() -> None:
    """In a node's ssh client before exec: its own process group (Mininet's ``_ignoreSignal``:
    Ctrl-C at the orchestrator does not reach it) and SIGHUP's default action back: ssh keeps an
    ignored SIGHUP ignored (an orchestrator under ``nohup``), and Mininet ends a node's shell
    with SIGHUP."""
    os.setpgrp()
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


# ---------------------------------------------------------------------------- links


def vxlan_commands(intf: str, vni: int, local: str, remote: str, *, port: int = 4789,
                   mtu: int = 1450, mac: str | None = None) -> list[str]:
    """The ``ip`` commands that make one end of a VXLAN link: ``intf`` sends to ``remote``
    (the other end's server) from ``local`` (this server's address), UDP ``port``, network
    identifier ``vni``, ``mtu`` = underlay MTU - :data:`VXLAN_OVERHEAD`."""
    return [f"ip link add {intf} type vxlan id {vni} remote {remote} local {local} dstport {port}",
            f"ip link set {intf} mtu {mtu}" + (f" address {mac}" if mac else ""),
            f"ip link set {intf} up"]


def _local_address(node, remote_ip: str) -> str:
    """This node's server's address towards ``remote_ip`` (a local node's serverIP is 127.0.0.1)."""
    if _remote(node):
        return node.serverIP
    out = quietRun(f"ip route get {remote_ip}")
    return out.split(" src ")[1].split()[0]


def _remote(node) -> bool:
    """A node on another server (a plain Mininet node is on this machine)."""
    return getattr(node, "isRemote", False)


def _rcmd(node, cmd) -> str:
    """``cmd`` in the root namespace of ``node``'s server: over ssh for a remote node, here for
    a plain Mininet node (the lab's nodes on the orchestrator keep their own classes)."""
    if hasattr(node, "rcmd"):
        return node.rcmd(cmd)
    return quietRun(cmd if isinstance(cmd, str) else " ".join(cmd))


def _move_intf(intf: str, node) -> bool:
    """Move ``intf`` from the root namespace of ``node``'s server into ``node``'s namespace."""
    out = _rcmd(node, f"ip link set {intf} netns {node.pid}")
    if out.strip():
        raise ClusterError(f"server {getattr(node, 'server', 'localhost')}: moving {intf} into {node.name} "
                           f"failed: {out.strip()}")
    return True


class _ClusterLink(RemoteLink):
    """Common to both tunnels: the cluster's settings, and the MTU of a link inside a server
    lowered to the tunnel's, as Mininet's ``RemoteGRELink`` does."""

    mtu = 1500 - VXLAN_OVERHEAD

    def makeIntfPair(self, intfname1, intfname2, addr1=None, addr2=None, node1=None, node2=None,
                     deleteIntfs=True):
        node1 = self.node1 if node1 is None else node1
        node2 = self.node2 if node2 is None else node2
        if getattr(node1, "server", "localhost") != getattr(node2, "server", "localhost"):
            self.tunnel = self.makeTunnel(node1, node2, intfname1, intfname2, addr1, addr2)
            return self.tunnel
        Link.makeIntfPair(intfname1, intfname2, addr1, addr2, node1, node2, deleteIntfs=deleteIntfs)
        for node, intf in ((node1, intfname1), (node2, intfname2)):
            node.cmd(f"ip link set dev {intf} mtu {self.mtu}")
        return None

    @staticmethod
    def _fail(node, what: str, output: str) -> ClusterError:
        return ClusterError(f"server {getattr(node, 'server', 'localhost')}: {what} for {node.name} failed: "
                            f"{output.strip()}")

    @staticmethod
    def moveIntf(intf, node):
        return _move_intf(str(intf), node)


class VxlanLink(_ClusterLink):
    """A link whose ends are on two servers, as a VXLAN tunnel (see the module docstring).
    Configure once per network with :meth:`configure` (port, first VNI, underlay MTU)."""

    port = 4789
    _vnis = itertools.count(4200)

    @classmethod
    def configure(cls, cluster: ClusterConfig) -> None:
        cls.port = cluster.vxlan_port
        cls.mtu = cluster.underlay_mtu - VXLAN_OVERHEAD
        cls._vnis = itertools.count(cluster.vni_base)

    def stop(self):
        if self.tunnel:
            self.intf1.delete()
            self.intf2.delete()
        else:
            Link.stop(self)
        self.tunnel = None

    def makeTunnel(self, node1, node2, intfname1, intfname2, addr1=None, addr2=None):
        self.vni = next(self._vnis)
        ip2 = node2.serverIP if _remote(node2) else None
        ip1 = node1.serverIP if _remote(node1) else None
        ip1 = ip1 or _local_address(node1, ip2)
        ip2 = ip2 or _local_address(node2, ip1)
        made = []   # ends made so far: removed again if the other end fails
        try:
            for node, intf, mac, local, remote in ((node1, intfname1, addr1, ip1, ip2),
                                                   (node2, intfname2, addr2, ip2, ip1)):
                _rcmd(node, f"ip link del {intf}")   # a name left by a crashed run
                script = " && ".join(vxlan_commands(intf, self.vni, local, remote, port=self.port,
                                                    mtu=self.mtu, mac=mac))
                if not hasattr(node, "rcmd"):
                    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
                    out = out.stdout + out.stderr
                else:
                    out = node.rcmd(["sh", "-c", shlex.quote(script)] if _remote(node) else ["sh", "-c", script])
                if out.strip():
                    raise self._fail(node, f"VXLAN {intf} (VNI {self.vni})", out)
                made.append((node, intf, False))
                if node.inNamespace:
                    self.moveIntf(intf, node)
                    made[-1] = (node, intf, True)
        except BaseException:
            for node, intf, moved in made:
                node.cmd(f"ip link del {intf}") if moved else _rcmd(node, f"ip link del {intf}")
            raise
        return True


class SshLink(_ClusterLink):
    """A link whose ends are on two servers, as an ssh Ethernet tunnel (Mininet's
    ``RemoteSSHLink``, the fallback where VXLAN is blocked): TAP devices on both servers, one
    ``ssh -o Tunnel=Ethernet -w N:N`` from ``node1``'s server to ``node2``'s, owned by the link
    and ended with it. A TAP number per link (Mininet hard-wires ``tap9``, one tunnel only)."""

    ssh_of: dict[str, list[str]] = {}   # server name -> ssh_argv, set by configure()
    _taps = itertools.count(90)

    @classmethod
    def configure(cls, cluster: ClusterConfig) -> None:
        cls.mtu = cluster.underlay_mtu - VXLAN_OVERHEAD   # the same budget as VXLAN: one MTU for all
        cls.ssh_of = {s.name: ssh_argv(s, cluster) for s in cluster.servers}

    def makeTunnel(self, node1, node2, intfname1, intfname2, addr1=None, addr2=None):
        if not _remote(node2):   # the ssh client runs on node1's server, towards node2's
            return self.makeTunnel(node2, node1, intfname2, intfname1, addr2, addr1)
        n = next(self._taps)
        tap = f"tap{n}"
        for node in (node1, node2):
            out = _rcmd(node, f"ip tuntap add dev {tap} mode tap")
            if out.strip():
                raise self._fail(node, f"TAP {tap}", out)
        ssh = self.ssh_of[node2.server]   # -q: no notice may come before the "@"
        cmd = [*ssh[:-1], "-n", "-o", "Tunnel=Ethernet", "-w", f"{n}:{n}", ssh[-1], "echo @"]
        self.cmd = cmd
        if hasattr(node1, "rpopen"):
            tunnel = node1.rpopen(cmd, sudo=False)
        else:   # a plain node of this machine: the ssh client runs here
            tunnel = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ch = tunnel.stdout.read(1).decode(errors="replace")
        if ch != "@":
            tunnel.kill()
            raise self._fail(node1, f"ssh tunnel to server {node2.server}",
                             ch + tunnel.stdout.read().decode(errors="replace"))
        for node, intf, mac in ((node1, intfname1, addr1), (node2, intfname2, addr2)):
            if node.inNamespace and not self.moveIntf(tap, node):
                raise self._fail(node, f"moving {tap}", "")
            out = node.cmd(f"ip link set {tap} down && ip link set {tap} name {intf} mtu {self.mtu}" + (f" address {mac}" if mac else "")
                           + f" && ip link set {intf} up")
            if out.strip():
                raise self._fail(node, f"renaming {tap} to {intf}", out)
        return tunnel


def link_class(cluster: ClusterConfig):
    """The cross-server link class of ``cluster.link``, configured for this cluster."""
    cls = {"vxlan": VxlanLink, "ssh": SshLink}[cluster.link]
    cls.configure(cluster)
    return cls


def lab_link_class(cross, base):
    """A topology's link class ``base`` (the lab's ``ShapedLink``: htb rates) on a cluster: a
    tunnel of ``cross`` (:func:`link_class`, configured once per network: it numbers the VNIs)
    where its ends are on two servers, a veth pair otherwise, and the tunnel's MTU on every
    link, so one MTU holds across the whole network (a full frame from a host on a veth never
    meets a smaller tunnel)."""
    key = (cross, base)
    if key not in _LAB_LINKS:
        def __init__(self, node1, node2, **kwargs):
            self.node1, self.node2, self.tunnel, self.cmd = node1, node2, None, None
            base.__init__(self, node1, node2, **kwargs)   # base's own interfaces (htb), our makeIntfPair
        _LAB_LINKS[key] = type(f"{cross.__name__}{base.__name__}", (cross, base), {"__init__": __init__})
    return _LAB_LINKS[key]


_LAB_LINKS: dict = {}


def remote_class(cls):
    """The class of a node of class ``cls`` placed on another server: Mininet's remote node
    (:class:`ClusterNode`) over it. A data switch becomes a :class:`ClusterSwitch` (started in
    per-server batches); a standalone bridge, a root-namespace host and a container host are
    refused (the hub, ``lab0``'s switch and the management bridge, stays on the orchestrator);
    a container host is made by that server's Docker engine: :class:`ClusterDockerHost`)."""
    if issubclass(cls, OVSBridge):
        raise ClusterError(f"a standalone bridge ({cls.__name__}) on another server is not supported: "
                           "keep the hub (cluster.hub) on this machine")
    if issubclass(cls, OVSSwitch):
        return ClusterSwitch
    if issubclass(cls, DockerHost):
        return ClusterDockerHost
    if cls is Host:
        return ClusterHost
    raise ClusterError(f"a {cls.__name__} node on another server is not supported yet")


# ---------------------------------------------------------------------------- what a run leaves


SNAPSHOT_SCRIPT = r"""
root=$(readlink /proc/1/ns/net)
for p in /proc/[0-9]*; do n=$(readlink $p/ns/net 2>/dev/null) && [ "$n" != "$root" ] && echo "netns $n"; done | sort -u
for t in veth vxlan tun; do ip -o link show type $t 2>/dev/null | awk -v t=$t '{sub(/@.*/, "", $2); sub(/:$/, "", $2); print t, $2}'; done
ovs-vsctl --timeout=5 list-br 2>/dev/null | sed 's/^/bridge /'
pgrep -a -f '^(bash --norc --noediting -is mininet:|mnexec )' | sed 's/^/process /'
pgrep -a -f 'Tunnel=Ethernet' | sed 's/^/process /'
pgrep -a -f 'nodes[.]server_agent' | sed 's/^/process /'
pgrep -a -x geth | sed 's/^/process /'
command -v docker >/dev/null && docker ps -a --filter label=mec-testbed --format '{{.Names}}' 2>/dev/null | sed 's/^/container /'
for d in /sys/fs/cgroup/cpu /sys/fs/cgroup; do for t in mec-chain mec-lab; do
  [ -d $d/$t ] && find $d/$t -type d | sed "s|^$d/|cgroup |"; done; done
true
"""


def snapshot(spec: ServerSpec, cluster: ClusterConfig) -> dict[str, set[str]]:
    """What a run could leave on a server: network namespaces of running processes, veth,
    VXLAN and TAP interfaces, OVS bridges, Mininet shells, ssh tunnels, geth, budgets agents
    (:mod:`topologies.remote`) and the lab's cgroups (``mec-lab``, ``mec-chain``)."""
    r = run_on(spec, cluster, SNAPSHOT_SCRIPT)
    if r.returncode:
        raise ClusterError(f"server {spec.name}: listing what runs there failed: {r.stderr.strip()}")
    kinds: dict[str, set[str]] = {"netns": set(), "veth": set(), "vxlan": set(), "tun": set(),
                                  "bridge": set(), "process": set(), "cgroup": set(), "container": set()}
    for line in r.stdout.splitlines():
        kind, _, what = line.partition(" ")
        if kind in kinds and what:
            kinds[kind].add(what.strip())
    kinds["process"] = {p for p in kinds["process"] if "pgrep" not in p}
    return kinds


def leaks(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    """What is in ``after`` and not in ``before``, by kind (empty: clean)."""
    return {k: sorted(v - before.get(k, set())) for k, v in after.items() if v - before.get(k, set())}
