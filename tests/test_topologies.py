"""The lab's topologies (star, cells, tree) on the real emulated network, and their plans.

Network tests need root, Open vSwitch and Docker, and run under the lab's lock
(``flock /tmp/lab-net.lock``). Each brings a topology up at small size (2 MEC servers, 3 UE
containers) unless it needs more.
"""
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mininet.link import TCLink
from mininet.topo import Topo

from topologies.config import NetworkConfig
from topologies.docker_host import DockerHost
from base.errors import ConfigError
from topologies.links import ShapedLink, htb_quantum
from topologies.network import EmulatedNetwork, probe_reachability
from topologies.platform import detect
from testbed.smoke import iperf_mbit
from topologies import TopologyConfig, build_topo
from topologies.plan import MGMT_SWITCH, ue_ip
from topologies.radio import RadioModel
from topologies.star import StarTopo

ROOT = Path(__file__).resolve().parent.parent
PORT = 16653   # not the default, so a lab controller already running is not disturbed
KINDS = ("star", "cells", "tree")


class _NoNetem:
    """A platform without netem or the kernel datapath, as on this project's machines."""
    ovs_datapath, netem, htb = "user", False, True


@pytest.fixture(scope="module")
def platform():
    return detect()


@pytest.fixture
def mininet_log():
    """Every line Mininet logs during the test (it prints tc's complaints as ``*** Error``)."""
    from mininet.log import lg

    class Collect(logging.Handler):
        def emit(self, record):
            lines.extend(record.getMessage().splitlines())

    lines: list[str] = []
    handler = Collect()
    lg.addHandler(handler)
    yield lines
    lg.removeHandler(handler)


def _emulate(topo, tmp_path, platform):
    return EmulatedNetwork(topo, NetworkConfig(controller_port=PORT, link_bw_mbit=None), tmp_path, platform)


def _mgmt_targets(plan) -> dict[str, str]:
    return {f"{n.name}@mgmt": n.mgmt_ip for n in plan.nodes.values() if n.mgmt_ip}


# --------------------------------------------------------------------------- plans (no network)

@pytest.mark.parametrize("kind", KINDS)
def test_plan_follows_the_lab_contract(kind):
    topo = build_topo(TopologyConfig(kind=kind), 3, 4, 7, _NoNetem())
    plan = topo.plan
    assert [n.name for n in plan.mecs] == ["mec1", "mec2", "mec3"]
    assert [n.name for n in plan.ues] == ["ue1", "ue2", "ue3", "ue4"]
    assert plan.nodes["mec2"].data_ip == "10.0.1.2" and plan.nodes["mec2"].mgmt_ip == "10.254.1.2"
    assert plan.nodes["ue4"].data_ip == "10.0.2.4" and plan.nodes["ue4"].mgmt_ip is None
    assert (plan.nodes["gw1"].data_ip, plan.nodes["gw1"].mgmt_ip) == ("10.0.0.2", "10.254.0.2")
    assert (plan.nodes["lab0"].data_ip, plan.nodes["lab0"].mgmt_ip) == ("10.0.0.254", "10.254.0.254")
    assert topo.nodeInfo("lab0")["inNamespace"] is False
    assert all(topo.nodeInfo(u.name)["cls"] is DockerHost for u in plan.ues)
    assert "cls" not in topo.nodeInfo("mec1") and "cls" not in topo.nodeInfo("gw1")
    # The management bridge carries mec*, gw1, lab0 and nothing else; it has no controller.
    on_mgmt = sorted(n for a, b in topo.links() for n in (a, b) if MGMT_SWITCH in (a, b) and n != MGMT_SWITCH)
    assert on_mgmt == ["gw1", "lab0", "mec1", "mec2", "mec3"]
    assert not plan.switches[MGMT_SWITCH].controlled
    # Container hosts are node 2 of their link (switch first), data link = port 0 = eth0.
    for a, b, info in topo.links(withInfo=True):
        if b.startswith("ue"):
            assert a in plan.switches and info["port2"] == 0
    dpids = [s.dpid for s in plan.switches.values()]
    assert len(set(dpids)) == len(dpids)
    if kind == "tree":
        assert plan.nodes["cloud1"].data_ip == "10.0.4.1" and plan.nodes["cloud1"].link_bw_mbit == 20.0
        assert any("cloud link" in n and "NOT emulated" in n for n in plan.notes)


def test_cells_plan_places_each_ue_on_its_nearest_site():
    cfg = TopologyConfig(kind="cells")
    plan = build_topo(cfg, 4, 30, 3, _NoNetem()).plan
    model = RadioModel.from_config(cfg)
    sites = {m.site: m.position_m for m in plan.mecs}
    for ue in plan.ues:
        nearest = min(sites, key=lambda s: math.dist(ue.position_m, sites[s]))
        assert ue.site == nearest and ue.switch == f"acc{nearest}"
        assert 0 <= ue.position_m[0] <= 500 and 0 <= ue.position_m[1] <= 500
        assert ue.link_bw_mbit == pytest.approx(model.rate_mbit(ue.distance_m), abs=0.01)
    # seeded: same seed, same plan; another seed, another placement
    assert build_topo(cfg, 4, 30, 3, _NoNetem()).plan.to_dict() == plan.to_dict()
    assert build_topo(cfg, 4, 30, 4, _NoNetem()).plan.ues[0].position_m != plan.ues[0].position_m
    assert any("UE links" in n and "NOT emulated" in n for n in plan.notes)
    with_netem = build_topo(cfg, 4, 30, 3, type("P", (), {"ovs_datapath": "user", "netem": True})()).plan
    assert not with_netem.notes and all(u.link_delay_ms > 0 for u in with_netem.ues)


def test_radio_model_values():
    m = RadioModel()
    # Hand-computed at 100 m (NLOS > LOS here): d3D = sqrt(100^2 + 8.5^2) = 100.36 m,
    # PL = 35.3 log10(100.36) + 22.4 + 21.3 log10(3.5) = 70.66 + 22.4 + 11.59 = 104.65 dB;
    # noise = -174 + 73.01 + 7 = -93.99 dBm; SNR = 23 - 104.65 + 93.99 = 12.34 dB;
    # rate = 20 MHz x log2(1 + 10^1.234) = 83.7 Mbit/s.
    assert m.path_loss_db(100) == pytest.approx(104.65, abs=0.02)
    assert m.rate_mbit(100) == pytest.approx(83.7, abs=0.2)
    rates = [m.rate_mbit(d) for d in range(10, 1000, 5)]
    assert all(a >= b for a, b in zip(rates, rates[1:])), "rate must not grow with distance"
    assert rates[0] == pytest.approx(7.4 * 20) and rates[-1] == pytest.approx(1.0)
    assert RadioModel(los=True).rate_mbit(200) > m.rate_mbit(200)


def test_topology_config_refuses_bad_values():
    for bad, field in ((dict(kind="ring"), "topology.kind"), (dict(area_m=-5), "topology.area_m"),
                       (dict(ue_bw_mbit=0), "topology.ue_bw_mbit"),
                       (dict(radio_min_rate_mbit=500), "topology.radio_min_rate_mbit"),
                       (dict(tree_edges=0), "topology.tree_edges"),
                       (dict(site_layout="hex"), "topology.site_layout")):
        with pytest.raises(ConfigError, match=field):
            TopologyConfig(**bad)
    with pytest.raises(ConfigError, match="model.n_users"):
        build_topo(TopologyConfig(kind="star"), 2, 509, 0, _NoNetem())
    assert (ue_ip(254), ue_ip(255), ue_ip(508)) == ("10.0.2.254", "10.0.3.1", "10.0.3.254")
    assert htb_quantum(50) == 200_000 and htb_quantum(1) == 12_500 and htb_quantum(0.01) == 1514


# --------------------------------------------------------------------------- on the network

@pytest.mark.network
@pytest.mark.docker
@pytest.mark.parametrize("kind", KINDS)
def test_topology_up_reachable_and_isolated(kind, network_ready, no_leftovers, tmp_path, platform,
                                            mininet_log):
    topo = build_topo(TopologyConfig(kind=kind), 2, 3, 0, platform)
    plan = topo.plan
    emu = _emulate(topo, tmp_path, platform)
    with emu as net:
        # every host reaches every other on the data network
        reach = probe_reachability(net.hosts)
        assert reach.pairs == len(plan.nodes) * (len(plan.nodes) - 1)
        assert reach.failed == [], reach.to_dict()
        # mec*, gw1 and lab0 reach every management address
        mgmt = _mgmt_targets(plan)
        inside = probe_reachability([net.get(n.name) for n in plan.nodes.values() if n.mgmt_ip], mgmt)
        assert inside.failed == [], inside.to_dict()
        # UEs reach none: not directly, and not through any host that is on both networks
        ue = net.get("ue1")
        for via in (None, "10.0.1.1", "10.0.0.2", "10.0.0.254"):
            if via:
                ue.cmd(f"ip route replace 10.254.0.0/16 via {via}")
            out = probe_reachability([ue], mgmt, timeout_s=1, attempts=1)
            assert len(out.failed) == len(mgmt), f"ue1 reached the management network via {via}: {out.to_dict()}"
        # the data switches have the controller and are connected; the management bridge has none
        state = subprocess.run(["ovs-vsctl", "get-controller", MGMT_SWITCH], capture_output=True, text=True)
        assert state.returncode == 0 and state.stdout.strip() == ""
        fail_mode = subprocess.run(["ovs-vsctl", "get-fail-mode", MGMT_SWITCH], capture_output=True, text=True)
        assert fail_mode.stdout.strip() == "standalone"
        data_switches = [s for s, p in plan.switches.items() if p.controlled]
        assert emu.connection_state() == {s: "connected" for s in data_switches}
        # TX checksum offload off on every host interface, the root namespace's included
        for h in net.hosts:
            for intf in h.intfList():
                if intf.name != "lo":
                    assert "tx-checksumming: off" in h.cmd(f"ethtool -k {intf.name}"), intf.name
        # TCP works to and from the root-namespace host through the switches
        assert iperf_mbit(ue, net.get("lab0"), 1) > 5
    assert not [line for line in mininet_log if "*** Error" in line]
    leftovers = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout + \
        subprocess.run(["iptables", "-t", "raw", "-S"], capture_output=True, text=True).stdout
    assert "mec-testbed" not in leftovers


@pytest.mark.network
@pytest.mark.docker
def test_isolation_check_detects_a_leak(network_ready, no_leftovers, tmp_path, platform):
    # The probe of the test above can fail: undo the isolation on mec1 and ue1 gets through.
    topo = build_topo(TopologyConfig(kind="star", ue_containers=False), 2, 1, 0, platform)
    with _emulate(topo, tmp_path, platform) as net:
        mec1, ue1 = net.get("mec1", "ue1")
        mgmt = _mgmt_targets(topo.plan)
        ue1.cmd("ip route replace 10.254.0.0/16 via 10.0.1.1")
        assert len(probe_reachability([ue1], mgmt, timeout_s=1, attempts=1).failed) == len(mgmt)
        mec1.cmd("iptables -F INPUT; sysctl -qw net.ipv4.ip_forward=1")
        assert probe_reachability([ue1], mgmt).failed == []


@pytest.mark.network
@pytest.mark.docker
def test_cells_ue_rates_follow_the_radio_model(network_ready, no_leftovers, tmp_path, platform):
    cfg = TopologyConfig(kind="cells")
    # A seed with a near UE below the rate cap (so the model, not the cap, sets it) and a far one.
    for seed in range(100):
        plan = build_topo(cfg, 2, 3, seed, platform).plan
        near = max(plan.ues, key=lambda u: u.link_bw_mbit)
        far = min(plan.ues, key=lambda u: u.link_bw_mbit)
        if 60 < near.link_bw_mbit < 0.95 * RadioModel.from_config(cfg).max_rate_mbit and far.link_bw_mbit < 15:
            break
    else:
        pytest.fail("no seed in 0..99 gives a near and a far UE")
    topo = build_topo(cfg, 2, 3, seed, platform)
    with _emulate(topo, tmp_path, platform) as net:
        measured = {}
        for ue in (near, far):
            server = net.get(f"mec{ue.site}")
            measured[ue.name] = iperf_mbit(net.get(ue.name), server, 3)
    for ue in (near, far):
        got = measured[ue.name]
        assert 0.75 * ue.link_bw_mbit < got < 1.05 * ue.link_bw_mbit, \
            f"{ue.name} at {ue.distance_m} m: model {ue.link_bw_mbit} Mbit/s, measured {got:.1f}"


class _TwoHosts(Topo):
    def build(self, link_cls=ShapedLink, **link):
        s1 = self.addSwitch("s1")
        for h in ("h1", "h2"):
            self.addLink(s1, self.addHost(h), cls=link_cls, **link)


@pytest.mark.network
@pytest.mark.docker
def test_shaped_links_print_no_error_but_a_bad_tc_command_is_reported(network_ready, no_leftovers,
                                                                      tmp_path, platform, mininet_log):
    # Mininet's own TCLink: the kernel corrects htb's quantum and says so, Mininet prints it.
    with _emulate(_TwoHosts(link_cls=TCLink, bw=50), tmp_path, platform):
        pass
    assert [line for line in mininet_log if "*** Error" in line and "quantum" in line], mininet_log
    mininet_log.clear()
    with _emulate(_TwoHosts(bw=50), tmp_path, platform) as net:
        assert net.get("s1") is not None
    assert not [line for line in mininet_log if "*** Error" in line], mininet_log
    # A genuinely bad tc command (netem refuses this delay, and so does tc without netem).
    with _emulate(_TwoHosts(bw=50, delay="bogus"), tmp_path, platform):
        pass
    errors = [line for line in mininet_log if "*** Error" in line]
    assert errors and not [line for line in errors if "quantum" in line], errors


@pytest.mark.network
@pytest.mark.docker
def test_one_switch_with_more_than_54_ports_comes_up(network_ready, no_leftovers, tmp_path, platform):
    topo = build_topo(TopologyConfig(kind="star", ue_containers=False), 2, 60, 0, platform)
    emu = _emulate(topo, tmp_path, platform)
    with emu as net:
        ports = subprocess.run(["ovs-vsctl", "list-ports", "s1"], capture_output=True, text=True).stdout.split()
        assert len(ports) == 64
        assert emu.connection_state() == {"s1": "connected"}
        reach = probe_reachability(net.hosts)
        assert reach.pairs == 64 * 63 and reach.failed == [], reach.to_dict()


@pytest.mark.network
@pytest.mark.docker
def test_connection_error_names_switches_and_missing_bridges(network_ready, no_leftovers, tmp_path, platform):
    topo = build_topo(TopologyConfig(kind="cells", ue_containers=False), 2, 1, 0, platform)
    emu = _emulate(topo, tmp_path, platform)
    with emu:
        subprocess.run(["ovs-vsctl", "del-br", "acc2"], check=True)
        with pytest.raises(TimeoutError) as e:
            emu.wait_connected(timeout=1)
    msg = str(e.value)
    assert "not connected: acc2 (no bridge); connected: acc1, bh1" in msg, msg


@pytest.mark.network
@pytest.mark.docker
def test_teardown_after_error_leaves_nothing(network_ready, no_leftovers, tmp_path, platform):
    topo = build_topo(TopologyConfig(kind="cells"), 2, 3, 0, platform)
    with pytest.raises(RuntimeError, match="boom"):
        with _emulate(topo, tmp_path, platform):
            raise RuntimeError("boom")
    assert subprocess.run(["ip", "link", "show", "lab0-eth0"], capture_output=True).returncode != 0


class _BadContainer(StarTopo):
    """Fails half-way through building: after some containers exist, before any link."""
    def layout(self, n_mec, n_ues, seed):
        super().layout(n_mec, n_ues, seed)
        self.addLink("s1", self.addHost("ue99", cls=DockerHost, mem_limit="not-a-size"))


@pytest.mark.network
@pytest.mark.docker
def test_failed_bringup_leaves_nothing(network_ready, no_leftovers, tmp_path, platform):
    import docker
    with pytest.raises(docker.errors.DockerException):
        with _emulate(_BadContainer(mec=1, ues=2), tmp_path, platform):
            pass


@pytest.mark.network
@pytest.mark.docker
def test_mn_custom_command(network_ready, no_leftovers, tmp_path):
    # The command the README documents, with the controller on the test port.
    from base.processes import ManagedProcess
    ctl = ManagedProcess("controller", [sys.executable, "-m", "controller", "--port", str(PORT)],
                         tmp_path / "controller.log", cwd=ROOT).start()
    try:
        ctl.wait_for_port("127.0.0.1", PORT)
        out = subprocess.run([str(Path(sys.executable).parent / "mn"), "--custom", "topologies/tree.py",
                              "--topo", "tree,mec=2,ues=3", "--switch", "ovs,datapath=user",
                              "--controller", f"remote,ip=127.0.0.1,port={PORT}", "--test", "pingall"],
                             capture_output=True, text=True, timeout=240, cwd=ROOT)
    finally:
        ctl.stop()
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "*** Results: 0% dropped (56/56 received)" in text, text[-3000:]
    errors = [line for line in text.splitlines() if "*** Error" in line]
    if not Path("/proc/sys/net/core/netdev_max_backlog").exists():
        # A container's network namespace (make bare-debian-check): Mininet's own mn cannot raise the
        # limits only the host's namespace has and says so; the lab's networks raise theirs one at
        # a time and print no error there (test_the_labs_limits_in_a_containers_network_namespace).
        errors = [line for line in errors if not line.startswith("*** Error setting resource limits")]
    assert not errors, text[-3000:]


LIMITS_CHILD = """
import sys
from mininet.net import Mininet
if sys.argv[1] == "lab":
    from topologies.network import init_mininet
    init_mininet()
Mininet(topo=None, build=False, controller=None)
"""


@pytest.mark.machine
def test_the_labs_limits_in_a_containers_network_namespace(no_leftovers):
    # In a network namespace of its own (as in a container: make bare-debian-check) Mininet's
    # fixLimits() stops at the first sysctl only the host's namespace has and prints an error; the
    # lab's set-up goes on past it, prints no error and names the absent sysctls, and only those,
    # in a note.
    ns = f"mec-limits-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        runs = {how: subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", LIMITS_CHILD, how],
                                    capture_output=True, text=True, timeout=60, cwd=ROOT)
                for how in ("mininet", "lab")}
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    for how, run in runs.items():
        assert run.returncode == 0, (how, run.stdout + run.stderr)
    assert "*** Error setting resource limits" in runs["mininet"].stderr      # what the lab avoids
    lab = runs["lab"].stdout + runs["lab"].stderr
    assert "Error" not in lab, lab
    absent = ("net.core.netdev_max_backlog", "net.ipv4.neigh.default.gc_thresh1",
              "net.ipv4.neigh.default.gc_thresh2", "net.ipv4.neigh.default.gc_thresh3", "net.ipv4.route.max_size")
    assert f"note: {', '.join(absent)} not in this network namespace" in lab, lab
    assert "could not raise" not in lab, lab


@pytest.mark.network
@pytest.mark.docker
def test_the_topology_verb_brings_up_the_scenarios_network_and_tears_it_down(network_ready, no_leftovers):
    # The one CLI reads the topology from the Scenario (no second --set parser): M, U and the
    # kind from --set, the controller port from [network]; UEs as containers, every pair pinged.
    out = subprocess.run([sys.executable, "-m", "testbed", "topology", "--set", "topology.kind=star",
                          "--set", "model.n_servers=2", "--set", "model.n_users=3",
                          "--set", f"network.controller_port={PORT}", "--plan"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    import json
    result = json.loads(out.stdout)
    assert (result["topology"], result["mec"], result["ues"], result["containers"]) == ("star", 2, 3, 3)
    assert result["reachability"]["failed"] == 0 and result["reachability"]["pairs"] > 0
    assert sorted(result["plan"]["nodes"]) == ["gw1", "lab0", "mec1", "mec2", "ue1", "ue2", "ue3"]
    assert result["teardown_s"] >= 0
    bad = subprocess.run([sys.executable, "-m", "testbed", "topology", "--set", "topology.kind=ring"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "topology.kind" in bad.stderr, bad.stderr


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.network
@pytest.mark.docker
def test_a_killed_runs_bridges_and_root_interfaces_are_swept_first(network_ready, no_leftovers, tmp_path,
                                                                   platform, capsys):
    """A run killed outright leaves its OVS bridges (tagged with its pid) and lab0's root-namespace
    veths; the next run of the topology removes them before it builds, saying so, and comes up."""
    topo = build_topo(TopologyConfig(kind="cells"), 2, 3, 0, platform)
    dead = _dead_pid()
    subprocess.run(["ovs-vsctl", "add-br", "mgmt1", "--", "br-set-external-id", "mgmt1",
                    "mec-testbed-owner", str(dead)], check=True)
    subprocess.run(["ip", "link", "add", "lab0-eth1", "type", "veth", "peer", "name", "mgmt1-eth4"], check=True)
    try:
        with _emulate(topo, tmp_path, platform) as net:
            assert net.get("lab0").intf("lab0-eth1") is not None
        out = capsys.readouterr().err            # stderr: stdout carries results (JSON in --plan mode)
        assert f"removing OVS bridge mgmt1 left by an earlier run (pid {dead}, gone)" in out, out
        assert "removing interface lab0-eth1 left by an earlier run" in out, out
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", "mgmt1"], capture_output=True)
        subprocess.run(["ip", "link", "del", "lab0-eth1"], capture_output=True)


@pytest.mark.network
def test_a_live_runs_bridge_is_refused_and_left_alone(network_ready, no_leftovers, tmp_path, platform):
    topo = build_topo(TopologyConfig(kind="cells"), 2, 3, 0, platform)
    holder = subprocess.Popen(["sleep", "60"])           # stands for another run that is up
    subprocess.run(["ovs-vsctl", "add-br", "mgmt1", "--", "br-set-external-id", "mgmt1",
                    "mec-testbed-owner", str(holder.pid)], check=True)
    try:
        with pytest.raises(RuntimeError, match=f"mgmt1 belongs to a running testbed run \\(pid {holder.pid}\\)"):
            with _emulate(topo, tmp_path, platform):
                pass
        assert subprocess.run(["ovs-vsctl", "br-exists", "mgmt1"]).returncode == 0     # untouched
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", "mgmt1"], capture_output=True)
