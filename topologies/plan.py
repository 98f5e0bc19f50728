"""The lab's contract with every topology: node names, addresses, roles, and the plan as data.

Names and addresses (the lab builds the live run on exactly these)::

    node      role    data network 10.0.0.0/16        management network 10.254.0.0/16
    mec<i>    mec     10.0.1.<i>        (i <= 254)     10.254.1.<i>
    ue<j>     ue      10.0.2.<j> (j <= 254), then 10.0.3.<j-254>     -
    gw1       gw      10.0.0.2                         10.254.0.2
    lab0      lab     10.0.0.254                       10.254.0.254   (root namespace)
    cloud1    cloud   10.0.4.1                         -              (tree only)

``mec*`` and ``gw1`` are plain Mininet hosts; ``ue*`` are Docker container hosts
(``topologies.docker_host.DockerHost``, always node 2 of their link, switch first; plain hosts if
``TopologyConfig.ue_containers`` is false); ``lab0`` is a root-namespace host
(``inNamespace=False``): the orchestrator and the controller's HTTP API, which live in the root
namespace, are reached through it. Data switches are OpenFlow 1.3 switches driven by the
os-ken controller; the management network is one standalone bridge ``mgmt1`` with no
controller, carrying only ``mec*``, ``gw1`` and ``lab0`` (never a UE). Each host's data
interface is ``<name>-eth0`` (its default interface), the management one ``<name>-eth1``.

Every topology's :class:`LabTopo` exposes :class:`TopologyPlan` as ``topo.plan``, so the lab
reads roles, addresses, sites, positions and link rates without Mininet internals.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mininet.topo import Topo

from topologies.docker_host import DockerHost
from base.errors import ConfigError, is_int, require
from topologies.links import ManagementBridge, ShapedLink
from topologies.config import TopologyConfig

DATA_NET, DATA_PREFIX = "10.0.0.0/16", 16
MGMT_NET, MGMT_PREFIX = "10.254.0.0/16", 16
GW_IP, GW_MGMT_IP = "10.0.0.2", "10.254.0.2"
LAB_IP, LAB_MGMT_IP = "10.0.0.254", "10.254.0.254"
CLOUD_IP = "10.0.4.1"
MAX_MEC, MAX_UES = 254, 508
MGMT_SWITCH = "mgmt1"
MGMT_DPID = 0xFFFF


def mec_ip(i: int) -> str:
    return f"10.0.1.{i}"


def mec_mgmt_ip(i: int) -> str:
    return f"10.254.1.{i}"


def ue_ip(j: int) -> str:
    """ue1..ue254 -> 10.0.2.j, ue255..ue508 -> 10.0.3.(j-254)."""
    return f"10.0.{2 + (j - 1) // 254}.{(j - 1) % 254 + 1}"


def check_counts(n_mec: int, n_ues: int) -> None:
    """M and U are the model's; the address plan holds at most 254 MEC servers and 508 UEs."""
    require(is_int(n_mec) and 1 <= n_mec <= MAX_MEC, "model.n_servers",
            f"an integer in [1, {MAX_MEC}] for the topology's address plan", n_mec)
    require(is_int(n_ues) and 1 <= n_ues <= MAX_UES, "model.n_users",
            f"an integer in [1, {MAX_UES}] for the topology's address plan", n_ues)


@dataclass(frozen=True)
class NodePlan:
    """One host: what the lab needs to know about it."""
    name: str
    role: str                       # "mec" | "ue" | "gw" | "lab" | "cloud" | "host"
    data_ip: str                    # address on the data network (no prefix length)
    mgmt_ip: str | None             # address on the management network, None if not on it
    switch: str                     # the data switch its data interface hangs on
    site: int | None = None         # cells: its MEC site (= MEC index); tree: its edge switch
    position_m: tuple[float, float] | None = None   # cells: (x, y) in the area, metres
    distance_m: float | None = None  # cells UEs: horizontal distance to its site, metres
    link_bw_mbit: float | None = None   # shaped rate of its data link (None: unshaped)
    link_delay_ms: float | None = None  # one-way delay applied to its data link (None: none)
    container: bool = False         # a Docker container host


@dataclass(frozen=True)
class SwitchPlan:
    name: str
    role: str                       # "access" | "backhaul" | "core" | "edge" | "mgmt"
    dpid: int                       # OpenFlow datapath id
    controlled: bool                # False only for the standalone management bridge
    site: int | None = None


@dataclass
class TopologyPlan:
    """The whole plan; ``nodes`` and ``switches`` keep insertion order."""
    kind: str
    seed: int
    n_mec: int
    n_ues: int
    data_net: str = DATA_NET
    mgmt_net: str | None = MGMT_NET
    nodes: dict[str, NodePlan] = field(default_factory=dict)
    switches: dict[str, SwitchPlan] = field(default_factory=dict)
    links: list[dict] = field(default_factory=list)   # switch-switch and shaped host links
    radio: dict | None = None       # cells: the radio model and its parameters
    notes: list[str] = field(default_factory=list)    # what is not emulated on this machine

    def role(self, role: str) -> list[NodePlan]:
        return [n for n in self.nodes.values() if n.role == role]

    @property
    def mecs(self) -> list[NodePlan]:
        return self.role("mec")

    @property
    def ues(self) -> list[NodePlan]:
        return self.role("ue")

    def data_ip(self, name: str) -> str:
        return self.nodes[name].data_ip

    def mgmt_ip(self, name: str) -> str | None:
        return self.nodes[name].mgmt_ip

    def to_dict(self) -> dict:
        return asdict(self)


class LabTopo(Topo):
    """Base of the lab's topologies: the contract's nodes, addresses and management network.

    ``LabTopo(mec=M, ues=U, seed=0, cfg=None, datapath="user", netem=False)``; subclasses
    implement :meth:`layout`. ``datapath`` is used only by ``mn --custom`` for the management
    bridge (the lab's ``EmulatedNetwork`` sets every switch's datapath itself); ``netem`` says
    whether delays can be emulated (``topologies.platform.detect().netem``); without it, links
    keep their rates and the plan's notes say which delays were left out.
    """
    kind = "lab"

    def build(self, mec: int = 2, ues: int = 3, seed: int = 0, cfg: TopologyConfig | None = None,
              datapath: str = "user", netem: bool = False):
        check_counts(mec, ues)
        if datapath not in ("user", "kernel"):
            raise ConfigError(f"datapath must be user or kernel, got {datapath!r}")
        self.cfg = cfg or TopologyConfig(kind=self.kind)
        self.netem = bool(netem)
        self.datapath = datapath
        self.plan = TopologyPlan(kind=self.kind, seed=seed, n_mec=mec, n_ues=ues)
        self._next_dpid = 1
        self._skipped_delays: dict[str, list[float]] = {}
        self.addSwitch(MGMT_SWITCH, cls=ManagementBridge, dpid=f"{MGMT_DPID:016x}", datapath=datapath)
        self.plan.switches[MGMT_SWITCH] = SwitchPlan(MGMT_SWITCH, "mgmt", MGMT_DPID, controlled=False)
        self.layout(mec, ues, seed)
        for what, ms in self._skipped_delays.items():
            unit, k = ("us", 1000) if max(ms) < 0.1 else ("ms", 1)
            lo, hi = min(ms) * k, max(ms) * k
            span = f"{lo:.3g} {unit}" if lo == hi else f"{lo:.3g}-{hi:.3g} {unit}"
            self.plan.notes.append(f"{what}: one-way delay of {span} NOT emulated (no netem qdisc "
                                   f"on this machine); their rates are shaped (htb)")

    def layout(self, n_mec: int, n_ues: int, seed: int) -> None:
        raise NotImplementedError

    # -- helpers for layout() --------------------------------------------------------------

    def data_switch(self, name: str, role: str, site: int | None = None) -> str:
        dpid = self._next_dpid
        self._next_dpid += 1
        self.addSwitch(name, dpid=f"{dpid:016x}")
        self.plan.switches[name] = SwitchPlan(name, role, dpid, controlled=True, site=site)
        return name

    def _link_opts(self, what: str, bw: float | None, delay_ms: float | None) -> dict:
        """Link parameters: the rate always, the delay only where netem exists."""
        opts: dict = {"cls": ShapedLink}
        if bw is not None:
            opts["bw"] = bw
        if delay_ms:
            if self.netem:
                opts["delay"] = f"{delay_ms * 1000:.3f}us"
            else:
                self._skipped_delays.setdefault(what, []).append(delay_ms)
        return opts

    def trunk(self, a: str, b: str, bw: float | None, delay_ms: float = 0.0, what: str = "backhaul links") -> None:
        """A switch-to-switch link."""
        self.addLink(a, b, **self._link_opts(what, bw, delay_ms))
        self.plan.links.append({"a": a, "b": b, "bw_mbit": bw,
                                "delay_ms": delay_ms if (delay_ms and self.netem) else None})

    def _host(self, switch: str, plan: NodePlan, delay_ms: float | None, what: str, **host_opts) -> None:
        name = plan.name
        self.addHost(name, ip=f"{plan.data_ip}/{DATA_PREFIX}", **host_opts)
        # Data link first: port 0 (<name>-eth0) is the host's default interface.
        self.addLink(switch, name, **self._link_opts(what, plan.link_bw_mbit, delay_ms))
        if plan.mgmt_ip:
            self.addLink(MGMT_SWITCH, name, cls=ShapedLink,
                         params2={"ip": f"{plan.mgmt_ip}/{MGMT_PREFIX}"})
        applied = delay_ms if (delay_ms and self.netem) else None
        self.plan.nodes[name] = NodePlan(**{**asdict(plan), "link_delay_ms": applied})

    def add_mec(self, i: int, switch: str, site: int | None = None,
                position_m: tuple[float, float] | None = None) -> None:
        self._host(switch, NodePlan(f"mec{i}", "mec", mec_ip(i), mec_mgmt_ip(i), switch, site=site,
                                    position_m=position_m, link_bw_mbit=self.cfg.mec_bw_mbit),
                   None, "MEC server links")

    def add_ue(self, j: int, switch: str, bw: float | None, delay_ms: float | None = None,
               site: int | None = None, position_m=None, distance_m=None) -> None:
        container = self.cfg.ue_containers
        self._host(switch, NodePlan(f"ue{j}", "ue", ue_ip(j), None, switch, site=site,
                                    position_m=position_m, distance_m=distance_m,
                                    link_bw_mbit=bw, container=container),
                   delay_ms, "UE links", **({"cls": DockerHost} if container else {}))

    def add_gateway_and_lab(self, switch: str) -> None:
        """``gw1`` (the chain's RPC gateway) and ``lab0`` (root namespace) on ``switch``."""
        self._host(switch, NodePlan("gw1", "gw", GW_IP, GW_MGMT_IP, switch), None, "gateway link")
        self._host(switch, NodePlan("lab0", "lab", LAB_IP, LAB_MGMT_IP, switch), None, "lab link",
                   inNamespace=False)

    def add_cloud(self, switch: str, bw: float, delay_ms: float) -> None:
        self._host(switch, NodePlan("cloud1", "cloud", CLOUD_IP, None, switch, link_bw_mbit=bw),
                   delay_ms, "cloud link")
