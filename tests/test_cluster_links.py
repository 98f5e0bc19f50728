"""The cluster's real parts that need no second server (issue 22): a VXLAN link made by
:func:`topologies.cluster.vxlan_commands` between two network namespaces joined by a veth
"underlay", and the pre-start check refusing a server, named, for what is missing. The check
over ssh between two servers is `make cluster-check` (scripts/cluster-check.sh)."""
import dataclasses
import json
import os
import subprocess
import time

import pytest

from base import machine
from topologies.cluster import (VXLAN_OVERHEAD, ClusterError, check_servers, judge, leaks, snapshot,
                                vxlan_commands)
from topologies.config import ClusterConfig, ServerSpec

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"), pytest.mark.machine]


def _sh(ns, script, check=True):
    r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise AssertionError(f"{ns}: {script}: {r.stdout}{r.stderr}")
    return r


@pytest.fixture
def two_servers():
    """Two namespaces as two servers, a veth pair between them as their network (MTU 1500)."""
    names = [f"mec-vx{k}-{os.getpid()}" for k in "ab"]
    try:
        for ns in names:
            subprocess.run(["ip", "netns", "add", ns], check=True)
        _sh(names[0], f"ip link add u0 type veth peer name u0 netns {names[1]}")
        for k, ns in enumerate(names, start=1):
            _sh(ns, f"ip link set lo up && ip addr add 192.0.2.{k}/24 dev u0 && ip link set u0 up")
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(ns in left for ns in names)


def test_a_vxlan_link_carries_full_sized_frames_between_two_servers(two_servers):
    a, b = two_servers
    mtu = 1500 - VXLAN_OVERHEAD
    for ns, own, other, addr in ((a, "192.0.2.1", "192.0.2.2", "10.99.0.1"), (b, "192.0.2.2", "192.0.2.1", "10.99.0.2")):
        _sh(ns, " && ".join(vxlan_commands("s1-eth9", 4242, own, other, mtu=mtu)))
        _sh(ns, f"ip addr add {addr}/24 dev s1-eth9")
    out = _sh(a, "ip -d link show s1-eth9").stdout
    assert "vxlan id 4242 remote 192.0.2.2 local 192.0.2.1" in out and f"mtu {mtu}" in out and "dstport 4789" in out
    ping = _sh(a, "ping -n -q -c 3 -i 0.2 -W 2 10.99.0.2").stdout
    assert " 0% packet loss" in ping
    # a full frame at the tunnel's MTU (ICMP payload = MTU - IPv4 20 - ICMP 8), never fragmented
    assert " 0% packet loss" in _sh(a, f"ping -n -q -c 2 -i 0.2 -W 2 -M do -s {mtu - 28} 10.99.0.2").stdout
    assert _sh(a, f"ping -n -q -c 1 -W 1 -M do -s {mtu - 27} 10.99.0.2", check=False).returncode != 0


def _cluster(*servers, **kw):
    return ClusterConfig(servers=list(servers), controller_address="192.0.2.1", **kw)


def test_an_unreachable_server_is_refused_by_name():
    cluster = _cluster(ServerSpec(name="far", address="127.0.0.2", port=1))
    with pytest.raises(ClusterError, match=r"server far: unreachable over ssh \(exit 255"):
        check_servers(cluster, timeout_s=10)


def test_a_missing_tool_is_refused_by_name_and_a_complete_server_passes(tmp_path, monkeypatch):
    here = _cluster(ServerSpec(name="here", address="localhost"))
    if subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True).returncode:
        pytest.fail("Open vSwitch is not running: `make setup` starts it")
    checks = check_servers(here, timeout_s=10)
    assert checks["here"].ok and abs(checks["here"].clock_offset_s) < 0.5
    # the same machine with a PATH that has the shell, date, ip, iptables and the OVS tools only
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "date", "ip", "iptables", "ovs-vsctl", "ovs-appctl"):
        (bare / tool).symlink_to(subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                                                text=True).stdout.strip())
    monkeypatch.setenv("PATH", str(bare))
    with pytest.raises(ClusterError, match=r"server here: mnexec missing, docker missing$"):
        check_servers(here, timeout_s=10)
    assert check_servers(here, containers=False, raise_error=False)["here"].problems == ["mnexec missing"]


def test_a_server_needs_its_own_calibration_measured_on_its_own_cpu(tmp_path):
    """Calibration per server: the pre-start check reads the server's own calibration file (the
    same path on every server) and refuses one that is missing or was measured on another CPU
    model or core count; the shell probe reads the same facts as ``base.machine.facts``."""
    here = _cluster(ServerSpec(name="here", address="localhost"))
    cal = tmp_path / "calibration.json"
    with pytest.raises(ClusterError, match=rf"server here: no calibration at {cal} \(run `make calibrate` there\)"):
        check_servers(here, containers=False, timeout_s=10, calibration=str(cal))
    mine = machine.facts()
    cal.write_text(json.dumps({"date": "2026-12-06T00:00:00+00:00", "machine": {**mine, "host": "elsewhere"},
                               "kernel_iterations_per_core_s": 1.0}, indent=1))
    check = check_servers(here, containers=False, timeout_s=10, calibration=str(cal))["here"]
    assert check.ok and check.machine == mine and check.calibration["kernel_iterations_per_core_s"] == 1.0
    cal.write_text(json.dumps({"machine": {**mine, "cpu": "Another CPU", "cores": 64}}))
    with pytest.raises(ClusterError, match=r"server here: stale calibration: calibrated on Another CPU with 64 "
                                           rf"cores, this machine has .* with {mine['cores']} cores"):
        check_servers(here, containers=False, timeout_s=10, calibration=str(cal))
    cal.write_text("{not json")
    assert "unreadable" in check_servers(here, containers=False, raise_error=False,
                                         calibration=str(cal))["here"].problems[0]


def test_the_lab_refuses_a_calibration_of_another_machine(tmp_path):
    """The same rule on one machine: a lab started on a calibration measured on another CPU
    refuses before it starts anything, naming the file and the fix."""
    from base.errors import ConfigError
    from scenario.config import ROOT, load_scenario
    from testbed.lab import Lab
    real = json.loads((ROOT / "results" / "calibration.json").read_text())
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({**real, "machine": {**real["machine"], "cpu": "Another CPU"}}))
    lab = Lab(load_scenario("lab", ["model.n_servers=2", f"lab.calibration={cal}"]), tmp_path / "run", start_ues=False)
    with pytest.raises(ConfigError, match=rf"the calibration {cal} does not fit this machine: calibrated on "
                                          r"Another CPU .* run `make calibrate` on it"):
        lab.start()
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_skewed_clock_is_refused():
    ok = judge("b", 0, "clock 1000.40\n", "", 999.9, 1000.1, 1.0)
    assert ok.ok and ok.clock_offset_s == pytest.approx(0.4) and ok.rtt_s == pytest.approx(0.2)
    assert judge("b", 0, "clock 1001.05\n", "", 999.9, 1000.1, 1.0).ok     # 1.05 s +- 0.1 s: maybe 0.95
    late = judge("b", 0, "missing docker\nclock 1001.60\n", "", 999.9, 1000.1, 1.0)
    assert late.problems == ["docker missing", "clock off by +1.60 s (more than 1 s: run chrony or another "
                             "NTP client on every server)"]


def test_the_leftover_snapshot_sees_a_veth_and_a_namespace_left_behind():
    here, cluster = ServerSpec(name="here", address="localhost"), _cluster()
    name = f"mec-lk{os.getpid() % 100000}"
    before = snapshot(here, cluster)
    holder = subprocess.Popen(["unshare", "-n", "sleep", "30"])   # a process in a namespace of its own
    try:
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
        deadline = time.monotonic() + 5
        while (ns := os.readlink(f"/proc/{holder.pid}/ns/net")) == os.readlink("/proc/self/ns/net") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        left = leaks(before, snapshot(here, cluster))
        assert name in left["veth"] and ns in left["netns"]
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    left = leaks(before, snapshot(here, cluster))
    assert name not in left.get("veth", []) and ns not in left.get("netns", [])


# ---------------------------------------------------------------------------- the lab's network on a cluster


def test_the_lab_network_refuses_a_hub_on_another_server_and_unsupported_remote_nodes(tmp_path):
    """The hub (the backhaul switch, gw1, lab0, the management bridge) stays on the orchestrator:
    lab0 is its own root namespace. A node class with no remote form is refused by name."""
    from mininet.node import Host

    from base.errors import ConfigError
    from topologies import TopologyConfig, build_topo
    from topologies.cluster import ClusterDockerHost, ClusterHost, ClusterSwitch, remote_class
    from topologies.config import NetworkConfig
    from topologies.docker_host import DockerHost
    from topologies.links import DataSwitch, ManagementBridge
    from topologies.network import EmulatedNetwork
    from topologies.platform import detect
    platform = detect()
    topo = build_topo(TopologyConfig(kind="cells", ue_containers=False), 2, 2, 0, platform)
    far = _cluster(ServerSpec(name="far", address="192.0.2.9"), ServerSpec(name="here", address="localhost"))
    with pytest.raises(ConfigError, match=r"cluster.hub = 'far': the hub .* must be this machine"):
        EmulatedNetwork(topo, NetworkConfig(), tmp_path, platform, cluster=far)
    net = EmulatedNetwork(topo, NetworkConfig(), tmp_path, platform, cluster=_cluster(
        ServerSpec(name="here", address="localhost"), ServerSpec(name="far", address="192.0.2.9"), pin={"mec2": "far"}))
    assert net.servers_of_switches() == {"far": ["acc2"]} and net.controller_ip == "192.0.2.1"
    assert net.placement.server["mec2"] == "far" and net.placement.server["mec1"] == "here"
    assert remote_class(DataSwitch) is ClusterSwitch and remote_class(Host) is ClusterHost
    assert remote_class(DockerHost) is ClusterDockerHost
    with pytest.raises(ClusterError, match="keep the hub"):
        remote_class(ManagementBridge)


@pytest.mark.network
def test_the_lab_network_on_a_cluster_of_this_machine_is_built_at_the_tunnels_mtu(network_ready, no_leftovers):
    """The lab's cells network built through the cluster code with one server, this machine: the
    same network as on one machine (every host reaches every other, the management network
    closed to UEs) with the tunnels' MTU (underlay 1500 - 50) on every link, so a full frame
    from any host would pass a tunnel; the controller on cluster.controller_address."""
    from topologies import TopologyConfig
    from topologies.config import NetworkConfig
    from topologies.network import probe_reachability
    from topologies.run import run
    addr, dummy = "192.0.2.77", f"mecclu{os.getpid() % 10000}"
    # an address of this machine that is not loopback (no dummy module in this kernel: a veth)
    subprocess.run(["ip", "link", "add", dummy, "type", "veth", "peer", "name", dummy + "p"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{addr}/32", "dev", dummy], check=True)
        for end in (dummy, dummy + "p"):
            subprocess.run(["ip", "link", "set", end, "up"], check=True)
        cluster = ClusterConfig(servers=[ServerSpec(name="here", address="localhost")], controller_address=addr)
        seen = {}

        def checks(emu, net, result):
            seen["controller"] = emu.controller.argv[emu.controller.argv.index("--listen") + 1]
            seen["mtu"] = {f"{h.name}:{i.name}": h.cmd(f"cat /sys/class/net/{i.name}/mtu").strip()
                           for h in net.hosts for i in h.intfList() if i.name != "lo"}
            seen["mtu"].update({i.name: net.get(sw.name).cmd(f"cat /sys/class/net/{i.name}/mtu").strip()
                                for sw in net.switches for i in sw.intfList() if i.name != "lo"})
            mgmt = {n.name: n.mgmt_ip for n in emu.plan.nodes.values() if n.mgmt_ip}
            seen["ue_to_mgmt"] = probe_reachability([net.get(n.name) for n in emu.plan.ues], mgmt,
                                                    timeout_s=1, attempts=1)
            seen["lab0_full_frame"] = net.get("lab0").cmd(f"ping -n -q -c 2 -i 0.2 -W 2 -M do -s {1450 - 28} "
                                                          f"{mgmt['mec2']}")
        result = run(TopologyConfig(kind="cells", ue_containers=False), NetworkConfig(controller_port=16654),
                     2, 3, 0, cluster=cluster, checks=checks)
    finally:
        subprocess.run(["ip", "link", "del", dummy], capture_output=True)
    assert result["reachability"]["failed"] == 0 and result["reachability"]["pairs"] == 7 * 6
    assert result["placement"]["crossing"] == [] and set(result["placement"]["nodes"]) == {"here"}
    assert seen["controller"] == addr
    assert set(seen["mtu"].values()) == {str(1500 - VXLAN_OVERHEAD)}, seen["mtu"]
    assert seen["ue_to_mgmt"].pairs == 3 * 4 and len(seen["ue_to_mgmt"].failed) == 3 * 4
    assert " 0% packet loss" in seen["lab0_full_frame"]


def test_a_lab_on_a_cluster_keeps_its_run_in_the_shared_folder(tmp_path):
    """testbed run on a cluster: the run folder must be in cluster.shared_dir (the folder every
    server sees at the same path), refused by name before anything starts."""
    import dataclasses

    from base.errors import ConfigError
    from scenario.config import load_scenario
    from testbed.lab import Lab
    scn = load_scenario("lab", ["model.n_servers=2"])
    for shared in ("", str(tmp_path / "elsewhere")):
        cluster = _cluster(ServerSpec(name="here", address="localhost"), ServerSpec(name="far", address="192.0.2.9"),
                           shared_dir=shared)
        lab = Lab(dataclasses.replace(scn, cluster=cluster), tmp_path / "run", start_ues=False)
        with pytest.raises(ConfigError, match=r"a lab on a cluster keeps its run folder in cluster.shared_dir"):
            lab.start()
        assert not (tmp_path / "run").exists()


def test_the_same_outcomes_rule():
    """cluster-check's comparison of a run on one machine with the same scenario's on two
    servers: the tasks both offered must match in size, demand, deadline and outcome."""
    from testbed.experiments.cluster_live import same_outcomes
    def t(ue, i, out="completed", mb="2.5", slot="0"):
        return {"ue": ue, "task_id": str(i), "data_mb": mb, "demand": "1.2", "desired_s": "1.5", "outcome": out,
                "slot": "" if out == "stopped" else slot}
    one = [t("ue1", 1), t("ue1", 2), t("ue2", 1, "stopped")]
    same = same_outcomes(one, [t("ue1", 1), t("ue1", 2), t("ue2", 1, "stopped"), t("ue2", 2)], slots=6)
    assert same["compared"] == 3 and same["differ"] == [] and same["only_two"] == ["ue2#2"]
    bad = same_outcomes(one, [t("ue1", 1, "refunded"), t("ue1", 2, mb="9.9"), t("ue2", 1, "stopped")], slots=6)
    assert [d["task"] for d in bad["differ"]] == ["ue1#1", "ue1#2"]
    # served after the policy's last slot (the drain's fallback) in one run, stopped in the other: listed, not compared
    drain = same_outcomes(one, [t("ue1", 1), t("ue1", 2), t("ue2", 1, slot="6")], slots=6)
    assert drain["differ"] == [] and drain["compared"] == 2 and [x["task"] for x in drain["after_last_slot"]] == ["ue2#1"]
    # ... but a task stopped in one run and served within the slots in the other is a difference
    assert [d["task"] for d in same_outcomes(one, [t("ue1", 1), t("ue1", 2), t("ue2", 1, slot="5")], slots=6)["differ"]] \
        == ["ue2#1"]


def test_the_lab_maps_each_server_by_its_own_calibration(tmp_path):
    """Issue 22's mapping per server, through the Lab: mec2 placed on server b, whose
    calibration hashes twice as much per core and clocks 1.5x: its miner settings carry its own
    quota per level (half the lab's), the controller checks its work with its own iterations
    per Gcycle, lab.json names its calibration (put in the lab folder, public); mec1, here, keeps
    the lab's. A server whose miner could not fit its host at the top level is refused by name."""
    from base.errors import ConfigError
    from scenario.config import load_scenario
    from scenario.units import Calibration, LiveMapping
    from testbed.lab import Lab
    from topologies.placement import Placement
    scn = load_scenario("lab", ["model.n_servers=2"])
    ref = Calibration(date="2026-01-01T00:00:00+00:00", machine={}, core_hz=2.6e9, core_hz_source="test",
                      kernel_iterations_per_core_s=3e6, cycles_per_iteration=2.6e9 / 3e6,
                      kernel_quota_linearity=1.0, hashrate_hps_per_core=2e5, hashrate_points=[])
    fast = dataclasses.replace(ref, hashrate_hps_per_core=4e5, core_hz=1.5 * ref.core_hz)
    lab = Lab(scn, tmp_path / "run", start_ues=False)
    lab.lab_dir.mkdir(parents=True)
    lab.chain_cfg = scn.chain
    lab.mapping = LiveMapping(scn.model, scn.lab.mining_cores, scn.lab.host_cores, ref)
    lab.placement = Placement(server={"mec1": "here", "mec2": "b"})
    lab.server_cals = {"b": fast}
    lab.remote_server = lambda node: ServerSpec(name="b", address="192.0.2.2") if node == "mec2" else None
    lab._map_servers()
    miners = lab._miner_settings()
    levels = list(scn.model.hash_levels_mhs)
    assert "levels_cores" not in miners["mec1"]
    assert miners["mec2"]["levels_cores"] == pytest.approx([x / 2 for x in lab.mapping.miner_cores(levels)])
    assert lab.mec_mappings["mec2"].iterations_per_gcycle == pytest.approx(1.5 * lab.mapping.iterations_per_gcycle)
    assert Calibration.load(lab.lab_dir / "calibration-b.json") == fast
    assert (lab.lab_dir / "calibration-b.json").stat().st_mode & 0o777 == 0o644   # b's MEC host uid reads it
    slow = dataclasses.replace(ref, hashrate_hps_per_core=1e4)        # 20x the lab's cores per level
    lab.server_cals = {"b": slow}
    with pytest.raises(ConfigError, match=r"mec2 on server b: by that server's calibration its miner takes "
                                          r"[0-9.]+ cores at the top hash level, more than the host's"):
        lab._map_servers()


def test_the_heterogeneous_stage_judges_by_server_bs_own_mapping():
    """make cluster-check's run with server b's made calibration (every rate x 1.25): b's mapping
    runs 1.25x the iterations and gives its miner fewer cores per level; the must holds only when
    b's miner ran at b's quotas, mec1's at the lab's, and every served task at its server's own
    iterations, b's tasks completed and verified, the books closed."""
    from scenario.config import load_scenario
    from scenario.units import Calibration, LiveMapping
    from testbed.experiments.cluster_live import faster, hetero_ok
    cal = Calibration(date="2026-01-01T00:00:00+00:00", machine={}, core_hz=2.6e9, core_hz_source="test",
                      kernel_iterations_per_core_s=3e6, cycles_per_iteration=2.6e9 / 3e6, kernel_quota_linearity=1.0,
                      hashrate_hps_per_core=2e5, hashrate_points=[{"quota_cores": 0.1, "hashrate_hps": 15000.0},
                                                                  {"quota_cores": 0.3, "hashrate_hps": 51500.0}])
    fast = faster(cal, 1.25)
    assert fast.cycles_per_iteration == cal.cycles_per_iteration and fast.hashrate_at(0.2) == 1.25 * cal.hashrate_at(0.2)
    scn = load_scenario("lab")
    lab = LiveMapping(scn.model, scn.lab.mining_cores, scn.lab.host_cores, cal)
    b = lab.for_server(fast)
    assert b.iterations_per_gcycle == pytest.approx(1.25 * lab.iterations_per_gcycle)
    lv = list(scn.model.hash_levels_mhs)
    cores = {"lab": [round(float(c), 5) for c in lab.miner_cores(lv)], "b": [round(float(c), 5) for c in b.miner_cores(lv)]}
    good = {"k": 1.25, "levels_cores": cores, "summary": {"lost": {"books_close": True}},
            "budgets_cores_used": {"mec1": [cores["lab"][2]], "mec2": [cores["b"][2]]},
            "served": {"mec1": [{"task": "ue2#1", "iterations": 10, "own": 10}],
                       "mec2": [{"task": "ue1#1", "iterations": 13, "own": 13}]},
            "outcomes_by_mec": {"mec1": ["completed"], "mec2": ["completed"]}}
    assert hetero_ok(good)
    for bad in ({"budgets_cores_used": {"mec1": [cores["lab"][2]], "mec2": [cores["lab"][2]]}},   # b at the lab's quota
                {"served": {**good["served"], "mec2": [{"task": "ue1#1", "iterations": 10, "own": 13}]}},
                {"outcomes_by_mec": {"mec1": ["completed"], "mec2": ["completed", "wrong_result"]}},
                {"summary": {"lost": {"books_close": False}}}, {"error": "LabError: boom"}):
        assert not hetero_ok({**good, **bad}), bad
