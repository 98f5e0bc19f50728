"""Which server of a cluster runs each node of a topology: a pure function of the plan.

The rule (issue 22): a MEC server's host (its miner and executor run there), its access switch
and the UEs on that switch stay together on one server, so that a task's path from a UE to its
nearest MEC server never leaves a machine and only backhaul links cross servers::

    site group  = a data switch that is not the hub's + every host whose data link is on it
                  (cells: accI, mecI, the UEs nearest site I; tree: edgeK and its MEC servers
                  and UEs; star has no site group: s1 is the hub)
    hub         = the switch of lab0 and gw1 (cells: bh1; tree: core1; star: s1), the hosts on
                  it (gw1, lab0, cloud1) and the management bridge mgmt1: on ``cluster.hub``

Site groups go to servers by ``cluster.pin`` (a MEC server's name -> a server) first, then by
``cluster.placement``: ``"bins"`` deals them out in contiguous, evenly sized bins in server
order (Mininet's ``SwitchBinPlacer.bin``), ``"round_robin"`` one by one. What crosses servers is
reported by kind: ``backhaul`` (switch to switch: the tunnels of ``topologies/cluster.py``) and
``management`` (a remote MEC host's link to ``mgmt1``: the management network is not yet
tunnelled, step 2 of issue 22). A host's own data link never crosses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from base.errors import ConfigError
from topologies.config import ClusterConfig
from topologies.plan import MGMT_SWITCH, TopologyPlan

LOCAL = "localhost"   # the one server of a lab without a cluster


@dataclass(frozen=True)
class Link:
    """A link of the topology: its two ends, what it is, and the servers of its ends."""
    a: str
    b: str
    kind: str          # "backhaul" (switch-switch), "access" (a host's data link), "management"
    server_a: str
    server_b: str

    @property
    def crosses(self) -> bool:
        return self.server_a != self.server_b

    def __str__(self) -> str:
        where = f"{self.server_a}-{self.server_b}" if self.crosses else self.server_a
        return f"{self.a}-{self.b} ({self.kind}, {where})"


@dataclass
class Placement:
    """``server[node]`` for every host and switch; ``links`` every link with its servers."""
    server: dict[str, str] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    hub: str = LOCAL

    @property
    def crossing(self) -> list[Link]:
        return [link for link in self.links if link.crosses]

    def nodes_on(self, server: str) -> list[str]:
        return [n for n, s in self.server.items() if s == server]

    def to_dict(self) -> dict:
        servers = list(dict.fromkeys(self.server.values()))
        return {"hub": self.hub, "nodes": {s: self.nodes_on(s) for s in servers},
                "crossing": [{"a": x.a, "b": x.b, "kind": x.kind, "servers": [x.server_a, x.server_b]}
                             for x in self.crossing]}


def bins(items: list, servers: list[str]) -> dict:
    """``items`` in contiguous bins over ``servers``, sizes differing by at most one, the
    first servers taking the remainder (Mininet's ``SwitchBinPlacer.bin``)."""
    q, r = divmod(len(items), len(servers))
    tickets = [s for k, s in enumerate(servers) for _ in range(q + (1 if k < r else 0))]
    return dict(zip(items, tickets))


def place(plan: TopologyPlan, cluster: ClusterConfig) -> Placement:
    """Each node's server (see the module docstring). Without a cluster, every node is on
    ``"localhost"`` and nothing crosses. Raises :class:`ConfigError` naming ``cluster.pin``
    for a pin that names no MEC server of the plan or splits a site group."""
    servers = [s.name for s in cluster.servers] or [LOCAL]
    hub = cluster.hub_server or LOCAL
    hub_switches = {plan.nodes[n].switch for n in ("lab0", "gw1") if n in plan.nodes} | {MGMT_SWITCH}
    groups: dict[str, list[str]] = {sw: [sw] for sw in plan.switches if sw not in hub_switches}
    server = {sw: hub for sw in plan.switches if sw in hub_switches}
    for node in plan.nodes.values():
        if node.switch in groups:
            groups[node.switch].append(node.name)
        else:
            server[node.name] = hub

    mecs = {n.name for n in plan.mecs}
    unknown = sorted(set(cluster.pin) - mecs)
    if unknown:
        raise ConfigError(f"cluster.pin names {', '.join(unknown)}: not MEC servers of this "
                          f"{plan.kind} topology (mec1..mec{plan.n_mec})")
    pinned: dict[str, str] = {}
    for sw, members in groups.items():
        wanted = {cluster.pin[m] for m in members if m in cluster.pin}
        if len(wanted) > 1:
            names = ", ".join(f"{m} = {cluster.pin[m]!r}" for m in members if m in cluster.pin)
            raise ConfigError(f"cluster.pin puts the MEC servers of one site ({sw}) on different "
                              f"servers ({names}): a site's MEC servers, switch and UEs share one server")
        if wanted:
            pinned[sw] = wanted.pop()
    free = [sw for sw in groups if sw not in pinned]
    if cluster.placement == "round_robin":
        chosen = {sw: servers[k % len(servers)] for k, sw in enumerate(free)}
    else:
        chosen = bins(free, servers)
    for sw, members in groups.items():
        for m in members:
            server[m] = pinned.get(sw) or chosen[sw]

    links = [Link(x["a"], x["b"], "backhaul", server[x["a"]], server[x["b"]]) for x in plan.links]
    for node in plan.nodes.values():
        links.append(Link(node.switch, node.name, "access", server[node.switch], server[node.name]))
        if node.mgmt_ip:
            links.append(Link(MGMT_SWITCH, node.name, "management", server[MGMT_SWITCH], server[node.name]))
    assert not any(x.crosses for x in links if x.kind == "access"), "a host left its switch's server"
    return Placement(server=server, links=links, hub=hub)
