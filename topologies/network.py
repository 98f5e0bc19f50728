"""The emulated network: one Mininet emulation plus the os-ken controller that drives it.

:class:`EmulatedNetwork` owns both and tears both down on success, error and Ctrl-C. It
picks the Open vSwitch datapath from the platform probe (kernel if the module exists, else
userspace ``netdev``) and refuses, with a clear message, what the machine cannot emulate
(link delay without ``netem``) instead of failing deep inside Mininet.

The switch and link classes a topology names are in :mod:`topologies.links`.

A root-namespace host (``addHost(name, inNamespace=False)``, the lab's ``lab0``) is supported:
its interfaces get the same offload settings, it never forwards between them, and on an
interface that is not on the management network it accepts only packets for that interface's
own address (so a UE cannot reach the root namespace's other addresses, or the management
network, through it). Every other host with a management interface stops forwarding and drops
packets for the management network that arrive on its data interfaces (a UE may add routes:
it has ``NET_ADMIN`` in its container). With the userspace datapath the root namespace's own
stack is also kept off every switch port (see :meth:`EmulatedNetwork._root_stack_off_switch_ports`):
otherwise it answers ARP and routes packets on them, bypassing the switches.

:func:`probe_reachability` pings many pairs at once (Mininet's ``pingAll`` is pairwise-serial).
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import RemoteController
from mininet.topo import Topo
from mininet.util import ensureRoot, rlimitTestAndSet, sysctlTestAndSet

from base.errors import ConfigError
from base.processes import ManagedProcess
from topologies import cluster as cl
from topologies.config import ClusterConfig, NetworkConfig
from topologies.docker_host import DockerHost, remove_leftover_containers
from topologies.links import DataSwitch, ShapedLink
from topologies.placement import place
from topologies.platform import PlatformReport, detect

ROOT = Path(__file__).resolve().parent.parent
IPTABLES_TAG = "mec-testbed"   # comment on the root-namespace rules this module adds
OWNER_KEY = "mec-testbed-owner"   # external-id on each OVS bridge a run builds: the run's pid


class _Pending:
    """Stands in a Mininet host list for a container host still being created."""

    def __init__(self, future):
        self.future = future


class ListeningController(RemoteController):
    """The os-ken controller, already started and checked listening by :class:`EmulatedNetwork`.
    Mininet's own check (``telnet`` to the port) reads the controller's binary OpenFlow HELLO
    as UTF-8 text and fails at random on its transaction id, so it is skipped."""

    def checkListening(self):
        pass


#: What Mininet's ``fixLimits()`` (mininet.util) raises, in its order and to its values.
RLIMITS = (("RLIMIT_NPROC", 8192), ("RLIMIT_NOFILE", 16384))
SYSCTLS = (("fs.file-max", 10000), ("net.core.wmem_max", 16777216), ("net.core.rmem_max", 16777216),
           ("net.ipv4.tcp_rmem", "10240 87380 16777216"), ("net.ipv4.tcp_wmem", "10240 87380 16777216"),
           ("net.core.netdev_max_backlog", 5000), ("net.ipv4.neigh.default.gc_thresh1", 4096),
           ("net.ipv4.neigh.default.gc_thresh2", 8192), ("net.ipv4.neigh.default.gc_thresh3", 16384),
           ("net.ipv4.route.max_size", 32768), ("kernel.pty.max", 20000))


def raise_limits() -> dict[str, list[str]]:
    """Mininet's once-per-process resource limits, raised one at a time: ``{"absent": [...],
    "refused": [...]}`` name what was not. Mininet's own ``fixLimits()`` stops at the first sysctl
    it cannot write and prints ``*** Error setting resource limits``: in a container's network
    namespace ``net.core.netdev_max_backlog``, the neighbour table's ``gc_thresh1-3`` and
    ``net.ipv4.route.max_size`` do not exist (the kernel has them only in the host's initial
    namespace, where the host's values stand), so it gave up there and left ``kernel.pty.max``
    as it was. Like Mininet, a limit is only raised, never lowered."""
    left: dict[str, list[str]] = {"absent": [], "refused": []}
    for name, limit in RLIMITS:
        try:
            rlimitTestAndSet(getattr(resource, name), limit)
        except (OSError, ValueError):
            left["refused"].append(name)
    for name, limit in SYSCTLS:
        try:
            sysctlTestAndSet(name, limit)
        except FileNotFoundError:
            left["absent"].append(name)
        except OSError:
            left["refused"].append(name)
    return left


def init_mininet() -> None:
    """What ``Mininet.init()`` does once per process (root, the limits), with the limits from
    :func:`raise_limits`; a limit that could not be raised is named on stderr, as a note: the
    network works without it."""
    if Mininet.inited:
        return
    ensureRoot()
    left = raise_limits()
    if left["absent"]:
        print(f"note: {', '.join(left['absent'])} not in this network namespace (a container's?): "
              "the host's values stand", file=sys.stderr, flush=True)
    if left["refused"]:
        print(f"note: could not raise {', '.join(left['refused'])} (the network works, "
              "Mininet may be slower with many nodes)", file=sys.stderr, flush=True)
    Mininet.inited = True


class _LabMininet(Mininet):
    """Mininet whose every switch (data and management) uses the datapath the lab chose, and
    which creates container hosts concurrently (Mininet would wait ~0.3 s for each in turn)."""

    container_starts = 6    # containers created at once (the Docker engine shares the cores)

    def __init__(self, *args, datapath: str, cluster=None, placement=None, **kwargs):
        self.lab_datapath = datapath
        self._pool: ThreadPoolExecutor | None = None
        # on a cluster (issue 22): each node on the server the placement gives it
        self.cluster, self.placement = cluster, placement
        self.cross = cl.link_class(cluster) if cluster is not None else None   # VNIs from cluster.vni_base
        init_mininet()                  # before Mininet's own init(), which then has nothing to do
        super().__init__(*args, **kwargs)

    def _placed(self, name: str, cls, params: dict):
        """``cls`` and ``params`` of node ``name`` where the placement puts it: a node on
        another server becomes Mininet's remote node there (:func:`topologies.cluster.remote_class`)."""
        if self.placement is None:
            return cls, params
        spec = self.cluster.server(self.placement.server[name])
        if cl.is_local(spec):
            return cls, params
        return cl.remote_class(cls), {**params, "server": spec.name, "serverIP": spec.address,
                                      "ssh": cl.ssh_argv(spec, self.cluster)}

    def addSwitch(self, name, cls=None, **params):
        params["datapath"] = self.lab_datapath
        cls, params = self._placed(name, cls or self.switch, params)
        return super().addSwitch(name, cls=cls, **params)

    def addHost(self, name, cls=None, **params):
        cls, params = self._placed(name, cls or self.host, params)
        if self._pool is not None and isinstance(cls, type) and issubclass(cls, DockerHost):
            # Mininet still computes the host's defaults (IP, MAC) in topology order.
            pool, real = self._pool, cls
            return super().addHost(name, cls=lambda n, **p: _Pending(pool.submit(real, n, **p)), **params)
        return super().addHost(name, cls=cls, **params)

    def addLink(self, *args, **kwargs):
        self._resolve_pending()   # links need the hosts: every container is up by now
        if self.cluster is not None:   # a tunnel where the ends are on two servers; one MTU
            kwargs["cls"] = cl.lab_link_class(self.cross, kwargs.get("cls") or self.link)
        return super().addLink(*args, **kwargs)

    def buildFromTopo(self, topo=None):
        with ThreadPoolExecutor(max_workers=self.container_starts) as pool:
            self._pool = pool
            try:
                super().buildFromTopo(topo)
            finally:
                self._pool = None
                self._resolve_pending(raise_error=sys.exc_info()[0] is None)

    def _resolve_pending(self, raise_error: bool = True) -> None:
        """Put each created container host in place of its stand-in; drop the failed ones
        (after the others are registered, so stop() removes them) and raise the first error."""
        errors = []
        for k, h in enumerate(list(self.hosts)):
            if isinstance(h, _Pending):
                try:
                    real = h.future.result()
                    self.hosts[k] = real
                    self.nameToNode[real.name] = real
                except BaseException as e:   # noqa: BLE001 - re-raised below
                    errors.append(e)
        if errors:
            self.hosts[:] = [h for h in self.hosts if not isinstance(h, _Pending)]
            for name in [n for n, h in self.nameToNode.items() if isinstance(h, _Pending)]:
                del self.nameToNode[name]
            if raise_error:
                raise errors[0]

    def stop(self):
        # Mininet deletes each link with two commands through the nodes' shells and removes
        # containers one by one (~0.2 s each). Delete every veth pair at once from its
        # root-namespace end on this machine, stop the rest as Mininet does (a tunnel between
        # servers has two ends to delete, a link on another server its own shells), remove the
        # containers concurrently.
        def here(link) -> bool:
            return not getattr(link, "tunnel", None) and any(
                not i.node.inNamespace and not getattr(i.node, "isRemote", False) for i in (link.intf1, link.intf2))
        ends = [i.name for link in self.links if here(link) for i in (link.intf1, link.intf2)
                if i is not None and not i.node.inNamespace]
        ends = list(dict.fromkeys(n for n in ends if n != "lo"))
        if ends:
            subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"link del {n}\n" for n in ends),
                           capture_output=True, text=True)
            self.links = [link for link in self.links if not here(link)]
        dockers = [h for h in self.hosts if isinstance(h, DockerHost)]
        every = self.hosts
        self.hosts = [h for h in every if not isinstance(h, DockerHost)]
        try:
            super().stop()
        finally:
            self.hosts = every
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda h: h.terminate(), dockers))


# --------------------------------------------------------------------------- reachability

@dataclass
class Reachability:
    """Outcome of :func:`probe_reachability`.

    ``failed``: (source, target) pairs that never answered; ``first_round_failed``: how many
    pairs missed their first echo request (a learning switch floods and learns on the first
    packets, so this counts pairs that needed a retry, not lost traffic).
    """
    pairs: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    first_round_failed: int = 0
    rounds: int = 0
    seconds: float = 0.0

    @property
    def loss_pct(self) -> float:
        return round(100.0 * len(self.failed) / self.pairs, 2) if self.pairs else 0.0

    def to_dict(self, max_failed: int = 20) -> dict:
        return {"pairs": self.pairs, "failed": len(self.failed), "loss_pct": self.loss_pct,
                "first_round_failed": self.first_round_failed, "rounds": self.rounds,
                "seconds": round(self.seconds, 2),
                "failed_pairs": [f"{s}->{t}" for s, t in self.failed[:max_failed]]}


_PING_SUMMARY = re.compile(r"--- (\S+) ping statistics ---\s+\d+ packets transmitted, (\d+) received")


def probe_reachability(sources, targets: dict[str, str] | None = None, *, timeout_s: float = 2.0,
                       attempts: int = 3, in_flight: int = 64) -> Reachability:
    """Ping every target from every source host, all sources at once (Mininet's ``pingAll``
    is pairwise-serial: minutes past ~60 hosts).

    Each round sends one echo request per pair still unanswered, with at most ``in_flight``
    pings running over all sources (they share the machine's cores and the controller, which
    sees every first packet); a pair counts as reachable if any of its ``attempts`` requests
    is answered within ``timeout_s``.

    ``sources``: Mininet hosts. ``targets``: label -> IP address; default every source's
    default (data) address, labelled by host name (a host does not probe itself).
    """
    t0 = time.monotonic()
    sources = list(sources)
    if targets is None:
        targets = {h.name: h.IP() for h in sources}
    wait = max(1, math.ceil(timeout_s))
    todo = {h.name: {ip: label for label, ip in targets.items() if label != h.name} for h in sources}
    pairs = sum(len(t) for t in todo.values())
    first_failed, rounds = 0, 0
    for rounds in range(1, attempts + 1):
        active = [h for h in sources if todo[h.name]]
        if not active:
            rounds -= 1
            break
        per_source = max(1, in_flight // len(active))
        for h in active:
            h.sendCmd(f"printf '%s\\n' {' '.join(todo[h.name])} | "
                      f"xargs -P {per_source} -n 1 ping -n -q -c 1 -W {wait} 2>&1")
        for h in active:
            answered = {ip for ip, got in _PING_SUMMARY.findall(h.waitOutput()) if int(got) > 0}
            todo[h.name] = {ip: label for ip, label in todo[h.name].items() if ip not in answered}
        if rounds == 1:
            first_failed = sum(len(t) for t in todo.values())
    failed = [(src, label) for src, left in todo.items() for label in left.values()]
    return Reachability(pairs=pairs, failed=failed, first_round_failed=first_failed,
                        rounds=rounds, seconds=time.monotonic() - t0)


def _run_on_hosts(hosts_cmds: list[tuple[object, str]]) -> dict[str, str]:
    """Send one command line to each host at once, then collect every output."""
    for host, cmd in hosts_cmds:
        host.sendCmd(cmd)
    return {host.name: host.waitOutput() for host, _ in hosts_cmds}


# --------------------------------------------------------------------------- the owner

class EmulatedNetwork:
    """``with EmulatedNetwork(topo, cfg, log_dir) as net:`` gives a started ``Mininet``.

    ``topo`` may carry a ``plan`` (``topologies.plan.TopologyPlan``): its notes (what is not
    emulated here) join :attr:`notes`, and its management network (``plan.mgmt_net``) is
    isolated from the data network as described in the module docstring.
    """

    def __init__(self, topo: Topo, cfg: NetworkConfig, log_dir: Path,
                 platform: PlatformReport | None = None, controller_apps: list[str] | None = None,
                 controller_args: list[str] | None = None, cluster: ClusterConfig | None = None):
        self.topo, self.cfg, self.log_dir = topo, cfg, Path(log_dir)
        self.controller_args = list(controller_args or [])   # e.g. the lab app's --lab-config
        self.platform = platform or detect()
        self.apps = controller_apps or ["controller.l2_switch"]
        self.datapath = self._choose_datapath()
        self.notes: list[str] = []
        self.controller: ManagedProcess | None = None
        self.controller_group = None       # a CpuQuota the controller runs in (the lab's control plane), or None
        self.net: Mininet | None = None
        self.plan = getattr(topo, "plan", None)
        self._root_rules: list[list] = []   # [table, spec] of iptables rules added in the root ns
        self._remote_rules: list[list] = []   # [server, table, spec]: the same on a cluster's servers
        self.timings: dict[str, float] = {}   # seconds per bring-up step (controller_s, build_s, ...)
        self._names_ours = False   # this topology's bridge/interface/container names are free for us
        # on a cluster (issue 22, docs/cluster.md): each node on its server (topologies.placement),
        # the controller on an address every server reaches, tunnels between servers
        self.cluster = cluster if cluster is not None and cluster.servers else None
        self.placement = None
        self.controller_ip = cfg.controller_ip
        if self.cluster is not None:
            self._plan_cluster()

    def _plan_cluster(self) -> None:
        """The placement of the topology's nodes; refused (:class:`ConfigError`) when the hub
        (``lab0``'s switch and the management bridge) is not this machine or the topology has
        no plan."""
        if self.plan is None:
            raise ConfigError("a network on a cluster needs a lab topology (with a plan), not "
                              f"{type(self.topo).__name__}")
        self.placement = place(self.plan, self.cluster)
        specs = {s.name: s for s in self.cluster.servers}
        hub = specs.get(self.placement.hub)
        if hub is None or not cl.is_local(hub):
            raise ConfigError(f"cluster.hub = {self.placement.hub!r}: the hub (the backhaul switch, gw1, lab0 and "
                              "the management bridge) must be this machine, a server whose address is "
                              "\"localhost\" (lab0 is the orchestrator's own root namespace)")
        self.controller_ip = self.cluster.controller_address

    def servers_of_switches(self) -> dict[str, list[str]]:
        """Remote server name -> the topology's switches placed there (empty on one machine)."""
        out: dict[str, list[str]] = {}
        if self.placement is None:
            return out
        specs = {s.name: s for s in self.cluster.servers}
        for sw in self.topo.switches():
            spec = specs[self.placement.server[sw]]
            if not cl.is_local(spec):
                out.setdefault(spec.name, []).append(sw)
        return out

    def _choose_datapath(self) -> str:
        want, kernel_ok = self.cfg.datapath, self.platform.ovs_datapath == "kernel"
        if want == "kernel" and not kernel_ok:
            raise ConfigError("network.datapath = 'kernel' but this machine has no openvswitch "
                              "kernel module (see `testbed doctor`); use 'auto' or 'user'")
        return "kernel" if want == "kernel" or (want == "auto" and kernel_ok) else "user"

    def start(self) -> Mininet:
        if self.cfg.link_delay_ms and not self.platform.netem:
            raise ConfigError("network.link_delay_ms is set but this kernel has no netem qdisc: "
                              "link delay cannot be emulated here (see `testbed doctor`)")
        if self.cfg.link_bw_mbit and not self.platform.htb:
            raise ConfigError("network.link_bw_mbit is set but htb is unavailable: bandwidth "
                              "cannot be shaped here (see `testbed doctor`)")
        if self.plan is not None and not self.platform.htb and (
                any(n.link_bw_mbit for n in self.plan.nodes.values())
                or any(link["bw_mbit"] for link in self.plan.links)):
            raise ConfigError(f"the '{self.plan.kind}' topology shapes link rates but htb is "
                              "unavailable here: bandwidth cannot be shaped (see `testbed doctor`)")
        setLogLevel("warning")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._clear_dead_run()
        self._names_ours = True
        t = time.monotonic()
        self.controller = ManagedProcess(
            "os-ken controller",
            [sys.executable, "-m", "controller", "--listen", self.controller_ip,
             "--port", str(self.cfg.controller_port), *sum((["--app", a] for a in self.apps), []),
             *self.controller_args],
            self.log_dir / "controller.log", cwd=ROOT).start()
        self.controller.wait_for_port(self.controller_ip, self.cfg.controller_port)
        t = self._lap("controller_s", t)
        self.net = _LabMininet(topo=self.topo, switch=DataSwitch, link=ShapedLink, controller=None,
                               autoSetMacs=True, build=False, waitConnected=False,
                               datapath=self.datapath, cluster=self.cluster, placement=self.placement)
        self.net.addController(ListeningController("c0", ip=self.controller_ip,
                                                port=self.cfg.controller_port))
        self.net.build()
        t = self._lap("build_s", t)       # hosts (containers included) and links
        self.net.start()
        for sw in self.net.switches:
            argv = ["ovs-vsctl", "--timeout=5", "br-set-external-id", sw.name, OWNER_KEY, str(os.getpid())]
            if getattr(sw, "isRemote", False):
                sw.cmd(" ".join(argv))
            else:
                subprocess.run(argv, capture_output=True)
        t = self._lap("switches_s", t)
        if self.datapath == "user":
            self._root_stack_off_switch_ports()
            self._checksum_offload_off()
            self.notes.append("userspace OVS datapath (netdev); TX checksum offload off on hosts")
        if not self.cfg.link_delay_ms:
            self.notes.append("no link delay emulated (link_delay_ms unset)")
        if self.plan is not None:
            self.notes += [n for n in self.plan.notes if n not in self.notes]
            if getattr(self.plan, "mgmt_net", None):
                self._isolate_management(ipaddress.ip_network(self.plan.mgmt_net))
        t = self._lap("configure_s", t)   # offload, isolation
        self.wait_connected()
        self._lap("connect_s", t)
        return self.net

    def _lap(self, what: str, since: float) -> float:
        now = time.monotonic()
        self.timings[what] = round(now - since, 2)
        return now

    # -- host interfaces -------------------------------------------------------------------

    @staticmethod
    def _host_intfs(host) -> list:
        return [i for i in host.intfList() if i.name != "lo"]

    def _checksum_offload_off(self) -> None:
        """``ethtool -K <intf> tx off`` on every host interface (root-namespace hosts too)."""
        jobs = [(h, "; ".join(f"ethtool -K {i.name} tx off >/dev/null" for i in self._host_intfs(h)))
                for h in self.net.hosts if self._host_intfs(h)]
        _run_on_hosts(jobs)

    def _root_rule(self, table: str, spec: list[str]) -> None:
        """Add a tagged iptables rule in the root namespace (once); stop() removes it."""
        spec = [*spec, "-m", "comment", "--comment", IPTABLES_TAG]
        if subprocess.run(["iptables", "-w", "-t", table, "-C", *spec], capture_output=True).returncode:
            subprocess.run(["iptables", "-w", "-t", table, "-I", *spec], check=True, capture_output=True)
        self._root_rules.append([table, spec])

    def _remote_rule(self, sw, table: str, spec: list[str]) -> None:
        """:meth:`_root_rule` on the root namespace of remote switch ``sw``'s server."""
        spec = [*spec, "-m", "comment", "--comment", IPTABLES_TAG]
        line = " ".join(spec)
        out = sw.cmd(f"iptables -w -t {table} -C {line} 2>/dev/null || iptables -w -t {table} -I {line}")
        if out.strip():
            raise RuntimeError(f"server {sw.server}: iptables -t {table} {line} failed: {out.strip()}")
        self._remote_rules.append([sw.server, table, spec])

    def _remove_remote_rules(self) -> list[str]:
        """Remove the rules :meth:`_remote_rule` added, one ssh per server; the failures."""
        by_server: dict[str, list[str]] = {}
        for server, table, spec in self._remote_rules:
            line = " ".join(spec)
            by_server.setdefault(server, []).append(f"while iptables -w -t {table} -D {line} 2>/dev/null; do :; done")
        errors = []
        for server, lines in by_server.items():
            r = cl.run_on(self.cluster.server(server), self.cluster, "\n".join(lines) + "\ntrue")
            if r.returncode:
                errors.append(f"server {server}: removing the lab's iptables rules failed: {r.stderr.strip()}")
        self._remote_rules = []
        return errors

    @staticmethod
    def _sysctl(settings: list[str]) -> None:
        for k in range(0, len(settings), 200):
            subprocess.run(["sysctl", "-q", "-w", *settings[k:k + 200]], check=True, capture_output=True)

    def _root_stack_off_switch_ports(self) -> None:
        """With the userspace datapath a switch port is a plain veth in the root namespace:
        OVS reads it through a packet socket, but the root namespace's own stack also sees
        every packet, answers ARP for its addresses there and routes what it gets. Without
        this, a UE's packets for lab0 go into the root namespace through the UE's own switch
        port (bypassing the switch) and can be forwarded anywhere, management network
        included. The stack is kept off every port: no ARP replies, no IPv6, no forwarding,
        and IPv4 dropped before routing (raw PREROUTING); OVS still gets every packet."""
        settings = []
        remote: dict[str, list] = {}    # server -> [a switch there (its shell), settings]
        for sw in self.net.switches:
            mine = []
            for i in sw.intfList():
                if i.name != "lo":
                    mine += [f"net.ipv4.conf.{i.name}.arp_ignore=8",
                             f"net.ipv4.conf.{i.name}.forwarding=0",
                             f"net.ipv6.conf.{i.name}.disable_ipv6=1"]
            spec = ["PREROUTING", "-i", f"{sw.name}-eth+", "-j", "DROP"]
            if getattr(sw, "isRemote", False):
                remote.setdefault(sw.server, [sw, []])[1].extend(mine)
                self._remote_rule(sw, "raw", spec)
            else:
                settings += mine
                self._root_rule("raw", spec)
        self._sysctl(settings)
        for sw, these in remote.values():
            for k in range(0, len(these), 200):
                out = sw.cmd("sysctl -q -w " + " ".join(these[k:k + 200]))
                if out.strip():
                    raise RuntimeError(f"server {sw.server}: keeping its root namespace off the switch ports "
                                       f"failed: {out.strip()}")

    def _isolate_management(self, mgmt: ipaddress.IPv4Network) -> None:
        """Keep data-network traffic off the management network (see the module docstring)."""
        jobs = []
        for h in self.net.hosts:
            intfs = self._host_intfs(h)
            on_mgmt = [i for i in intfs if i.IP() and ipaddress.ip_address(i.IP()) in mgmt]
            if h.inNamespace and not on_mgmt:
                continue
            data = [i for i in intfs if i not in on_mgmt]
            if h.inNamespace:
                cmds = ["sysctl -qw net.ipv4.ip_forward=0"]
                cmds += [f"iptables -w -A INPUT -i {i.name} -d {mgmt} -j DROP" for i in data]
                jobs.append((h, " && ".join(cmds)))
            else:
                # The root namespace: per-interface settings (they go with the interface),
                # and on a data interface only packets for that interface's own address.
                self._sysctl([f"net.ipv4.conf.{i.name}.{k}={v}" for i in intfs
                              for k, v in (("forwarding", 0), ("arp_ignore", 1))])
                for i in data:
                    self._root_rule("filter", ["INPUT", "-i", i.name, "!", "-d", i.IP(), "-j", "DROP"])
        for name, out in _run_on_hosts(jobs).items():
            if out.strip():
                raise RuntimeError(f"isolating the management network on {name} failed: {out.strip()}")

    # -- controller connection -------------------------------------------------------------

    def _controlled_switches(self) -> list[str]:
        return [s.name for s in self.net.switches if getattr(s, "failMode", "secure") != "standalone"]

    @staticmethod
    def _ovsdb(table: str, columns: str, run=None) -> list[list]:
        """Rows of an ovsdb ``table`` on this machine, or through ``run`` (a remote switch's
        ``cmd``: its server's ovsdb, in its shell there)."""
        argv = ["ovs-vsctl", "--timeout=5", "--format=json", f"--columns={columns}", "list", table]
        out = run(" ".join(argv)) if run else subprocess.run(argv, capture_output=True, text=True).stdout
        try:
            return json.loads(out)["data"]
        except (ValueError, KeyError):
            return []

    def connection_state(self) -> dict[str, str]:
        """Each controlled switch: ``connected``, ``not connected`` or ``no bridge`` (on a
        cluster, each server's switches from that server's ovsdb)."""
        runs = {None: None}   # server -> how to reach its ovsdb (None: here)
        for sw in self.net.switches:
            if getattr(sw, "isRemote", False):
                runs.setdefault(sw.server, sw.cmd)
        bridges = {}
        for run in runs.values():
            connected = {row[0][1] for row in self._ovsdb("Controller", "_uuid,is_connected", run)
                         if row[1] is True}
            for name, ctl in self._ovsdb("Bridge", "name,controller", run):
                uuids = [ctl[1]] if ctl[0] == "uuid" else [u[1] for u in ctl[1]]
                bridges[name] = any(u in connected for u in uuids)
        return {s: ("no bridge" if s not in bridges else "connected" if bridges[s] else "not connected")
                for s in self._controlled_switches()}

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until every controlled switch is connected to the controller; else raise
        ``TimeoutError`` naming the switches that are and are not (bridge missing or not)."""
        names = self._controlled_switches()
        timeout = timeout or 20.0 + 0.5 * len(names)
        deadline = time.monotonic() + timeout
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            state = self.connection_state()
            if all(v == "connected" for v in state.values()):
                return
            time.sleep(0.2)
        good = [s for s, v in state.items() if v == "connected"]
        bad = [f"{s} ({v})" for s, v in state.items() if v != "connected"]
        hint = (" A missing bridge means its ovs-vsctl start command failed (see Mininet's "
                "output above)." if any(v == "no bridge" for v in state.values()) else "")
        raise TimeoutError(
            f"{len(bad)} of {len(names)} switches did not connect to the controller at "
            f"{self.controller_ip}:{self.cfg.controller_port} within {timeout:.0f} s: "
            f"not connected: {', '.join(bad)}; connected: {', '.join(good) or 'none'}.{hint}\n"
            f"controller log ({self.controller.log_path}):\n{self.controller.log_tail()}")

    def restart_controller(self, timeout: float = 30.0) -> float:
        """Fault injection and recovery: stop the controller (SIGKILL) and start it again with
        the same apps; wait until every switch is connected. Returns the gap in seconds."""
        t0 = time.monotonic()
        old = self.controller
        old.kill()
        self.controller = ManagedProcess(old.name, old.argv, old.log_path, cwd=old.cwd).start()
        if self.controller_group is not None:
            self.controller_group.attach(self.controller.pid)
        self.controller.wait_for_port(self.controller_ip, self.cfg.controller_port)
        self.wait_connected(timeout)
        return time.monotonic() - t0

    # -- a run that died ---------------------------------------------------------------------

    def _clear_dead_run(self) -> None:
        """This topology's OVS bridges and root-namespace interfaces left by a testbed run that
        died (SIGKILL, a crash: its pid, the bridges' ``mec-testbed-owner``, is gone) are removed
        before anything is built, so the next run starts clean. A bridge of a live run, or one
        the testbed did not build, is refused with the command that frees it, never touched."""
        for sw in self.topo.switches():
            if subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", sw], capture_output=True).returncode:
                continue
            owner = subprocess.run(["ovs-vsctl", "--timeout=5", "br-get-external-id", sw, OWNER_KEY],
                                   capture_output=True, text=True).stdout.strip()
            if not owner.isdigit():
                raise RuntimeError(f"an OVS bridge named {sw} exists and was not built by a testbed run: "
                                   f"remove it (ovs-vsctl del-br {sw}) or pick another topology")
            if int(owner) != os.getpid() and psutil.pid_exists(int(owner)):
                raise RuntimeError(f"OVS bridge {sw} belongs to a running testbed run (pid {owner}): "
                                   "stop that run first (or `make clean` if it is hung)")
            print(f"removing OVS bridge {sw} left by an earlier run (pid {owner}, gone)", file=sys.stderr, flush=True)
            subprocess.run(["ovs-vsctl", "--timeout=5", "--if-exists", "del-br", sw], capture_output=True)
        for server, switches in self.servers_of_switches().items():
            self._clear_dead_bridges_on(server, switches)
        for name in self._root_interfaces():
            print(f"removing interface {name} left by an earlier run", file=sys.stderr, flush=True)
            subprocess.run(["ip", "link", "del", name], capture_output=True)

    def _clear_dead_bridges_on(self, server: str, switches: list[str]) -> None:
        """:meth:`_clear_dead_run` for the bridges of this topology placed on a remote server:
        the owner recorded on them is the orchestrator's pid (this machine's)."""
        spec = self.cluster.server(server)
        script = "".join(f"ovs-vsctl --timeout=5 br-exists {b} && echo \"{b} $(ovs-vsctl --timeout=5 "
                         f"br-get-external-id {b} {OWNER_KEY})\"\n" for b in switches) + "true"
        r = cl.run_on(spec, self.cluster, script)
        if r.returncode:
            raise cl.ClusterError(f"server {server}: listing its OVS bridges failed: {r.stderr.strip()}")
        gone = []
        for line in r.stdout.splitlines():
            sw, _, owner = line.strip().partition(" ")
            if not owner.isdigit():
                raise RuntimeError(f"an OVS bridge named {sw} exists on server {server} and was not built by a "
                                   f"testbed run: remove it there (ovs-vsctl del-br {sw}) or pick another topology")
            if int(owner) != os.getpid() and psutil.pid_exists(int(owner)):
                raise RuntimeError(f"OVS bridge {sw} on server {server} belongs to a running testbed run "
                                   f"(pid {owner} here): stop that run first")
            print(f"removing OVS bridge {sw} on server {server} left by an earlier run (pid {owner}, gone)",
                  file=sys.stderr, flush=True)
            gone.append(sw)
        if gone:
            cl.run_on(spec, self.cluster, "".join(f"ovs-vsctl --timeout=5 --if-exists del-br {b}\n" for b in gone))

    def _root_interfaces(self) -> list[str]:
        """The root-namespace interfaces this topology's root hosts (``lab0``) own, by name."""
        roots = [h for h in self.topo.hosts() if self.topo.nodeInfo(h).get("inNamespace", True) is False]
        if not roots:
            return []
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
        return [n for n in names if any(n.startswith(f"{h}-eth") for h in roots)]

    # -- teardown --------------------------------------------------------------------------

    def stop(self) -> None:
        """Tear everything down; safe to call twice and after a failed start."""
        try:
            if self.net is not None:
                self.net.stop()
                # RemoteController.stop() is a no-op in Mininet 2.3: its shell would outlive us.
                for c in self.net.controllers:
                    c.terminate()
        finally:
            self.net = None
            if self.controller is not None:
                self.controller.stop()
            for table, spec in self._root_rules:
                while subprocess.run(["iptables", "-w", "-t", table, "-D", *spec],
                                     capture_output=True).returncode == 0:
                    pass
            self._root_rules = []
            errors = self._remove_remote_rules() if self._remote_rules else []
            if not self._names_ours:     # refused before building: the names are another run's
                return
            # Whatever a crashed start left behind: this topology's containers, bridges and
            # root-namespace interfaces (not those of another run on the same machine).
            remove_leftover_containers(self.topo.hosts())
            remote = self.servers_of_switches()
            for sw in self.topo.switches():
                if not any(sw in v for v in remote.values()):
                    subprocess.run(["ovs-vsctl", "--if-exists", "del-br", sw], capture_output=True)
            for server, switches in remote.items():
                r = cl.run_on(self.cluster.server(server), self.cluster,
                              "".join(f"ovs-vsctl --timeout=5 --if-exists del-br {b}\n" for b in switches))
                if r.returncode:
                    errors.append(f"server {server}: removing its OVS bridges failed: {r.stderr.strip()}")
            self._remove_root_interfaces()
            if errors:
                raise cl.ClusterError("; ".join(errors))

    def _remove_root_interfaces(self) -> None:
        for name in self._root_interfaces():
            subprocess.run(["ip", "link", "del", name], capture_output=True)

    def __enter__(self) -> Mininet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
