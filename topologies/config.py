"""Configuration of the emulated network: :class:`TopologyConfig` (the ``[topology]`` table: what
the network is) and :class:`NetworkConfig` (the ``[network]`` table: how it is emulated).

The numbers of MEC servers M and of UEs U are *not* here: they are the paper's
``model.n_servers`` and ``model.n_users``, and the placement seed is the scenario's ``seed``;
the lab passes all three to :func:`topologies.build_topo`. Everything else that shapes the
network is here::

    [topology]
    kind = "cells"            # smoke | star | cells | tree
    area_m = 500              # the paper's 500 m x 500 m area
    radio_bandwidth_mhz = 20

Rates are Mbit/s, shaped with htb (``None`` = the link is not shaped). Delays are one-way
milliseconds and need the ``netem`` qdisc: where the machine has none, they are not emulated
and the topology's plan says so in its ``notes`` (no run is refused for it).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from base.errors import is_int, is_number, require

KINDS = ("smoke", "star", "cells", "tree")
SITE_LAYOUTS = ("random", "grid")
MAX_RATE_MBIT = 10_000.0


def _rate(field: str, value, optional: bool = True) -> None:
    ok = (value is None and optional) or (is_number(value) and 0 < value <= MAX_RATE_MBIT)
    require(ok, f"topology.{field}", f"{'unset or ' if optional else ''}in (0, {MAX_RATE_MBIT:g}] Mbit/s",
            value)


@dataclass(kw_only=True)
class TopologyConfig:
    """What the emulated network looks like (the counts M, U and the seed come from elsewhere).

    - ``star``: one access switch with every UE and MEC server (UE links at ``ue_bw_mbit``);
    - ``cells``: the paper's area; each UE on the access switch of its nearest MEC site, its
      link rate from its distance by the radio model (:mod:`topologies.radio`), sites joined by
      a backhaul switch;
    - ``tree``: a core switch, ``tree_edges`` edge switches with the MEC servers and UEs
      spread over them, and a far cloud server behind a thin, long link;
    - ``smoke``: the toolchain check (two plain hosts and one UE container on one switch).
    """
    kind: str = "smoke"
    ue_containers: bool = True            # UEs as Docker containers (False: plain Mininet hosts)
    ue_bw_mbit: float | None = 50.0       # star, tree, smoke: every UE access link, Mbit/s
    mec_bw_mbit: float | None = None      # MEC server access links, Mbit/s (None: unshaped)
    backhaul_bw_mbit: float | None = 1000.0   # cells: site-backhaul links; tree: edge-core links
    backhaul_delay_ms: float = 0.0        # one-way, those same links (needs netem)
    # cells: placement in a square area, seeded by the scenario's seed
    area_m: float = 500.0                 # side of the square, metres
    site_layout: str = "random"           # MEC sites uniform at random, or on a near-square grid
    # cells: the radio model (topologies.radio): 3GPP TR 38.901 UMi-Street Canyon path loss
    # and the Shannon rate over the carrier bandwidth, capped by a highest spectral efficiency
    radio_carrier_ghz: float = 3.5        # f_c, GHz (38.901 UMi is valid for 0.5-100 GHz)
    radio_bandwidth_mhz: float = 20.0     # B, MHz
    radio_tx_power_dbm: float = 23.0      # UE transmit power (3GPP power class 3), dBm
    radio_noise_figure_db: float = 7.0    # receiver noise figure at the site, dB
    radio_bs_height_m: float = 10.0       # h_BS (38.901 UMi: 10 m)
    radio_ue_height_m: float = 1.5        # h_UT, metres
    radio_los: bool = False               # True: LOS path loss; False: NLOS (max of LOS, NLOS)
    radio_max_spectral_eff: float = 7.4   # bit/s/Hz, the rate's cap (256-QAM, 38.214 Tab 5.1.3.1-2)
    radio_min_rate_mbit: float = 1.0      # floor: a UE at the cell edge still gets this, Mbit/s
    # tree
    tree_edges: int = 2                   # edge switches under the core switch
    cloud_bw_mbit: float = 20.0           # the far cloud server's link, Mbit/s
    cloud_delay_ms: float = 20.0          # ... one-way (needs netem)

    def __post_init__(self):
        require(self.kind in KINDS, "topology.kind", f"one of {', '.join(KINDS)}", self.kind)
        require(isinstance(self.ue_containers, bool), "topology.ue_containers", "true or false",
                self.ue_containers)
        for name in ("ue_bw_mbit", "mec_bw_mbit", "backhaul_bw_mbit"):
            _rate(name, getattr(self, name))
        _rate("cloud_bw_mbit", self.cloud_bw_mbit, optional=False)
        for name in ("backhaul_delay_ms", "cloud_delay_ms"):
            v = getattr(self, name)
            require(is_number(v) and 0 <= v <= 10_000, f"topology.{name}", "in [0, 10000] ms", v)
        require(is_number(self.area_m) and 10 <= self.area_m <= 100_000, "topology.area_m",
                "in [10, 100000] m", self.area_m)
        require(self.site_layout in SITE_LAYOUTS, "topology.site_layout",
                f"one of {', '.join(SITE_LAYOUTS)}", self.site_layout)
        require(is_number(self.radio_carrier_ghz) and 0.5 <= self.radio_carrier_ghz <= 100,
                "topology.radio_carrier_ghz", "in [0.5, 100] GHz (3GPP TR 38.901)", self.radio_carrier_ghz)
        require(is_number(self.radio_bandwidth_mhz) and 0 < self.radio_bandwidth_mhz <= 400,
                "topology.radio_bandwidth_mhz", "in (0, 400] MHz", self.radio_bandwidth_mhz)
        require(is_number(self.radio_tx_power_dbm) and -40 <= self.radio_tx_power_dbm <= 50,
                "topology.radio_tx_power_dbm", "in [-40, 50] dBm", self.radio_tx_power_dbm)
        require(is_number(self.radio_noise_figure_db) and 0 <= self.radio_noise_figure_db <= 30,
                "topology.radio_noise_figure_db", "in [0, 30] dB", self.radio_noise_figure_db)
        require(is_number(self.radio_bs_height_m) and 1.5 < self.radio_bs_height_m <= 100,
                "topology.radio_bs_height_m", "in (1.5, 100] m", self.radio_bs_height_m)
        require(is_number(self.radio_ue_height_m) and 1 <= self.radio_ue_height_m
                < self.radio_bs_height_m, "topology.radio_ue_height_m",
                "in [1, radio_bs_height_m) m", self.radio_ue_height_m)
        require(isinstance(self.radio_los, bool), "topology.radio_los", "true or false", self.radio_los)
        require(is_number(self.radio_max_spectral_eff) and 0 < self.radio_max_spectral_eff <= 30,
                "topology.radio_max_spectral_eff", "in (0, 30] bit/s/Hz", self.radio_max_spectral_eff)
        _rate("radio_min_rate_mbit", self.radio_min_rate_mbit, optional=False)
        cap = self.radio_max_spectral_eff * self.radio_bandwidth_mhz
        require(self.radio_min_rate_mbit <= min(cap, MAX_RATE_MBIT), "topology.radio_min_rate_mbit",
                f"<= the radio cap radio_max_spectral_eff x radio_bandwidth_mhz = {cap:g} Mbit/s",
                self.radio_min_rate_mbit)
        require(is_int(self.tree_edges) and 1 <= self.tree_edges <= 64, "topology.tree_edges",
                "an integer in [1, 64]", self.tree_edges)


@dataclass(kw_only=True)
class NetworkConfig:
    """The emulated network (Mininet + Open vSwitch + os-ken)."""
    datapath: str = "auto"              # "auto" (from `testbed doctor`), "kernel" or "user"
    link_bw_mbit: float | None = 50.0   # per access link, Mbit/s (htb); None = unshaped
    link_delay_ms: float | None = None  # one-way per link (needs netem; refused without it)
    controller_ip: str = "127.0.0.1"
    controller_port: int = 6653         # OpenFlow 1.3
    ping_count: int = 5
    iperf_seconds: float = 3.0

    def __post_init__(self):
        require(self.datapath in ("auto", "kernel", "user"), "network.datapath",
                "auto, kernel or user", self.datapath)
        require(self.link_bw_mbit is None or (is_number(self.link_bw_mbit) and 0 < self.link_bw_mbit <= 10_000),
                "network.link_bw_mbit", "in (0, 10000] Mbit/s", self.link_bw_mbit)
        require(self.link_delay_ms is None or (is_number(self.link_delay_ms) and self.link_delay_ms >= 0),
                "network.link_delay_ms", ">= 0", self.link_delay_ms)
        require(is_int(self.controller_port) and 1 <= self.controller_port <= 65535,
                "network.controller_port", "a TCP port", self.controller_port)
        require(is_int(self.ping_count) and self.ping_count >= 1, "network.ping_count", ">= 1",
                self.ping_count)
        require(is_number(self.iperf_seconds) and self.iperf_seconds > 0, "network.iperf_seconds",
                "> 0", self.iperf_seconds)


LINK_KINDS = ("vxlan", "ssh")
PLACEMENTS = ("bins", "round_robin")


@dataclass(kw_only=True)
class ServerSpec:
    """One server of a cluster: how the orchestrator reaches it over ssh (as root: Mininet's
    nodes create namespaces, veths and bridges there). ``address`` is also the underlay
    address the VXLAN tunnels use; ``"localhost"`` is the orchestrator's own machine (no ssh)."""
    name: str
    address: str
    user: str = "root"
    port: int = 22

    def check(self, where: str) -> None:
        require(isinstance(self.name, str) and self.name.replace("-", "").replace("_", "").isalnum(),
                f"{where}.name", "a name of letters, digits, '-' or '_'", self.name)
        require(isinstance(self.address, str) and self.address.strip() != "" and " " not in self.address,
                f"{where}.address", "a host name or an IP address", self.address)
        require(isinstance(self.user, str) and self.user.strip() != "", f"{where}.user", "a user name",
                self.user)
        require(is_int(self.port) and 1 <= self.port <= 65535, f"{where}.port", "a TCP port", self.port)


@dataclass(kw_only=True)
class ClusterConfig:
    """The ``[cluster]`` table: one emulated network across several servers (Mininet's cluster
    edition, ``topologies/cluster.py``; docs/cluster.md). No servers (the default) is one
    machine, everything as before::

        [cluster]
        controller_address = "192.168.50.1"   # the os-ken controller, routable from every server
        link = "vxlan"                        # links between servers: "vxlan" or "ssh" (TUN)
        placement = "bins"                    # MEC sites over the servers: "bins" or "round_robin"
        [[cluster.servers]]
        name = "a"
        address = "192.168.50.11"
        [[cluster.servers]]
        name = "b"
        address = "192.168.50.12"
        port = 2222

    Placement (:func:`topologies.placement.place`): each MEC server's host, its access switch
    and the UEs on that switch stay on one server; the hub (backhaul/core switch, ``gw1``,
    ``lab0``, the management bridge) is on ``hub``; only backhaul links cross servers.
    """
    servers: tuple = ()                 # ServerSpec each (a TOML array of tables)
    controller_address: str = ""        # IPv4 of the controller, reachable from every server
    link: str = "vxlan"                 # cross-server links: "vxlan" (UDP, kernel) or "ssh" (TUN)
    placement: str = "bins"             # sites in contiguous bins per server, or dealt round robin
    hub: str = ""                       # server of the hub switches, gw1 and lab0; "" = the first
    pin: dict = field(default_factory=dict)   # MEC server -> server name, before the placement rule
    vxlan_port: int = 4789              # UDP port of the VXLAN tunnels (IANA's)
    vni_base: int = 4200                # the first link's VXLAN network identifier; one per link
    underlay_mtu: int = 1500            # MTU of the servers' network; tunnel MTU = this - 50
    ssh_key: str = ""                   # private key for ssh; "" = ssh's default
    known_hosts: str = ""               # known_hosts file; "" = ssh's default
    max_clock_skew_s: float = 1.0       # refuse a server whose clock is further off than this
    agent_port: int = 7717              # TCP port of each server's budget agent (nodes/server_agent.py)
    shared_dir: str = ""                # a folder shared by every server at the same path (NFS): run data

    def __post_init__(self):
        c = "cluster"
        require(isinstance(self.servers, (list, tuple)), f"{c}.servers",
                "an array of tables [[cluster.servers]]", self.servers)
        specs = []
        for k, s in enumerate(self.servers):
            where = f"{c}.servers[{k}]"
            if isinstance(s, dict):
                unknown = sorted(set(s) - {"name", "address", "user", "port"})
                require(not unknown and "name" in s and "address" in s, where,
                        "a table with name, address and optionally user, port", s)
                s = ServerSpec(**s)
            require(isinstance(s, ServerSpec), where, "a table with name and address", s)
            s.check(where)
            specs.append(s)
        self.servers = tuple(specs)
        names = [s.name for s in specs]
        require(len(set(names)) == len(names), f"{c}.servers", "servers with different names", names)
        require(self.link in LINK_KINDS, f"{c}.link", f"one of {', '.join(LINK_KINDS)}", self.link)
        require(self.placement in PLACEMENTS, f"{c}.placement", f"one of {', '.join(PLACEMENTS)}",
                self.placement)
        require(isinstance(self.hub, str) and (self.hub == "" or self.hub in names), f"{c}.hub",
                f"\"\" or a server's name ({', '.join(names) or 'no servers'})", self.hub)
        require(isinstance(self.pin, dict) and all(isinstance(v, str) and v in names for v in self.pin.values()),
                f"{c}.pin", f"a table of MEC server = server name ({', '.join(names) or 'no servers'})",
                self.pin)
        require(is_int(self.vxlan_port) and 1 <= self.vxlan_port <= 65535, f"{c}.vxlan_port", "a UDP port",
                self.vxlan_port)
        require(is_int(self.vni_base) and 1 <= self.vni_base < 2 ** 24 - 65536, f"{c}.vni_base",
                "an integer in [1, 2^24 - 65536) (24-bit VNIs, one per link)", self.vni_base)
        require(is_int(self.underlay_mtu) and 1280 <= self.underlay_mtu <= 65535, f"{c}.underlay_mtu",
                "an integer in [1280, 65535]", self.underlay_mtu)
        require(is_int(self.agent_port) and 1 <= self.agent_port <= 65535, f"{c}.agent_port", "a TCP port",
                self.agent_port)
        require(isinstance(self.shared_dir, str) and (self.shared_dir == "" or self.shared_dir.startswith("/")),
                f"{c}.shared_dir", "\"\" or an absolute path (the same on every server)", self.shared_dir)
        for name in ("ssh_key", "known_hosts"):
            require(isinstance(getattr(self, name), str), f"{c}.{name}", "a path or \"\"", getattr(self, name))
        require(is_number(self.max_clock_skew_s) and 0 < self.max_clock_skew_s <= 60, f"{c}.max_clock_skew_s",
                "in (0, 60] s", self.max_clock_skew_s)
        if specs:
            require(_routable_ipv4(self.controller_address), f"{c}.controller_address",
                    "an IPv4 address the servers can reach (not loopback, not unset) when servers are listed",
                    self.controller_address)

    @property
    def enabled(self) -> bool:
        """More than this machine: servers are listed."""
        return bool(self.servers)

    @property
    def hub_server(self) -> str:
        return self.hub or (self.servers[0].name if self.servers else "")

    def server(self, name: str) -> ServerSpec:
        return next(s for s in self.servers if s.name == name)


def _routable_ipv4(text) -> bool:
    try:
        ip = ipaddress.IPv4Address(text)
    except (ValueError, TypeError):
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast)
