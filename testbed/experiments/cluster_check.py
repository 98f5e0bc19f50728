"""``python -m testbed cluster-check``: one emulated network across the servers of ``[cluster]``.

The network layer of issue 22, shown on real servers (``make cluster-check`` makes two of them
as containers, ``scripts/cluster-check.sh``). From this machine, the orchestrator:

1. the pre-start check (:func:`topologies.cluster.check_servers`) passes on every server (the
   tools of the network and of UE containers, the Docker engine answering), and refuses, naming
   the server, servers asked for a calibration of their own where they have none and one
   reached on a port where no sshd listens (both recorded);
2. the os-ken controller (the L2 switch app) listens on ``cluster.controller_address``;
3. per server k: an OpenFlow 1.3 userspace OVS switch ``s<k>`` and a host ``h<k>``
   (10.0.0.k/24) on it, Mininet's remote nodes over ssh; ``s<k>`` and ``s<k+1>`` joined by the
   ``cluster.link`` tunnel (VXLAN, or the ssh fallback);
4. measured: each switch's time from start to connected (must be within 10 s), ping both
   ways (must lose nothing), a full-sized frame at the tunnel's MTU with don't-fragment;
5. torn down always;
6. the budgets stage (:mod:`testbed.experiments.cluster_budgets`): on each server a miner
   stand-in in the lab's cgroups and the budgets agent started over ssh; the controller's
   ``BudgetApplier`` puts a hash level in force every slot through the agents (slot start ->
   applied p95 on the last server < 300 ms, every write read back, the miners' CPU within
   their budgets, every agent gone with its ssh session);
7. each server's namespaces, veth/VXLAN/TAP interfaces, OVS bridges, Mininet shells, tunnels,
   agents and the lab's cgroups are compared with what was there before (must be nothing
   new), and this machine's own (processes, interfaces, cgroups).

Writes ``cluster-check.json`` into the results folder (``--out``; default
``results/cluster-check/<stamp>-<link>``). Exit 0 when every must holds.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

from mininet.log import setLogLevel
from mininet.net import Mininet

from base.processes import ManagedProcess
from scenario.config import ROOT, Scenario
from testbed import leftovers
from testbed.experiments import cluster_budgets, cluster_lab_network, cluster_live
from topologies import cluster as cl
from topologies.config import ServerSpec
from topologies.network import ListeningController, init_mininet

CONNECT_WITHIN_S = 10.0
PINGS = 10
NO_CALIBRATION = "/run/mec-cluster-check-none/calibration.json"   # a path with no calibration on any server


def _loss(out: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)% packet loss", out)
    return float(m.group(1)) if m else None


def _refusals(scn: Scenario) -> dict:
    """What the check refuses, by name: servers without a calibration of their own (at a path
    where none is), a server whose port has no sshd."""
    out = {}
    try:
        cl.check_servers(scn.cluster, containers=True, calibration=NO_CALIBRATION)
        out["no_calibration"] = "NOT refused"
    except cl.ClusterError as e:
        out["no_calibration"] = str(e)
    first = scn.cluster.servers[0]
    ghost = ServerSpec(name="ghost", address=first.address, user=first.user, port=1)
    try:
        cl.check_servers(dataclasses.replace(scn.cluster, servers=[ghost]), containers=False)
        out["unreachable"] = "NOT refused"
    except cl.ClusterError as e:
        out["unreachable"] = str(e)
    return out


def run(scn: Scenario, out_dir: Path, budget_slots: int = 20, lab_network: bool = True,
        live_lab: bool = True) -> int:
    cluster = scn.cluster
    if len(cluster.servers) < 2:
        raise SystemExit("cluster-check needs [cluster] with at least two servers (see docs/cluster.md)")
    setLogLevel("warning")
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"scenario_digest": scn.digest(), "link": cluster.link,
                    "servers": {s.name: s.address for s in cluster.servers},
                    "controller": f"{cluster.controller_address}:{scn.network.controller_port}"}
    t0 = time.monotonic()
    checks = cl.check_servers(cluster, containers=True)
    result["precheck"] = {n: {"ok": c.ok, "clock_offset_s": round(c.clock_offset_s, 4), "rtt_s": round(c.rtt_s, 4)}
                          for n, c in checks.items()}
    result["precheck_s"] = round(time.monotonic() - t0, 2)
    result["refused"] = _refusals(scn)
    before = {s.name: cl.snapshot(s, cluster) for s in cluster.servers}
    here_before = leftovers.snapshot()

    controller = ManagedProcess(
        "os-ken controller",
        [sys.executable, "-m", "controller", "--listen", cluster.controller_address,
         "--port", str(scn.network.controller_port), "--app", "controller.l2_switch"],
        out_dir / "controller.log", cwd=ROOT)
    net = None
    link = cl.link_class(cluster)
    network_done = False
    try:
        controller.start()
        controller.wait_for_port(cluster.controller_address, scn.network.controller_port)
        init_mininet()                  # the lab's limits, as the lab's own networks do
        net = Mininet(topo=None, build=False, controller=None, autoSetMacs=True, waitConnected=False)
        net.addController(ListeningController("c0", ip=cluster.controller_address, port=scn.network.controller_port))
        switches, hosts = [], []
        t = time.monotonic()
        for k, spec in enumerate(cluster.servers, start=1):
            where = {"server": spec.name, "serverIP": spec.address, "ssh": cl.ssh_argv(spec, cluster)}
            switches.append(net.addSwitch(f"s{k}", cls=cl.ClusterSwitch, dpid=f"{k:016x}", datapath="user", **where))
            hosts.append(net.addHost(f"h{k}", cls=cl.ClusterHost, ip=f"10.0.0.{k}/24", **where))
            net.addLink(hosts[-1], switches[-1], cls=link)
        for a, b in zip(switches, switches[1:]):
            net.addLink(a, b, cls=link)
        net.build()
        result["build_s"] = round(time.monotonic() - t, 2)
        started = time.monotonic()
        net.start()
        result["switches_start_s"] = round(time.monotonic() - started, 2)
        connect: dict[str, float | None] = {s.name: None for s in switches}
        while time.monotonic() - started < CONNECT_WITHIN_S + 20 and None in connect.values():
            for s in switches:
                if connect[s.name] is None and s.connected():   # Mininet's: ovs-vsctl there
                    connect[s.name] = round(time.monotonic() - started, 2)
            time.sleep(0.1)
        result["connect_s"] = connect
        for h in hosts:   # TCP through the userspace datapath needs it; ping does not
            h.cmd(f"ethtool -K {h.defaultIntf()} tx off >/dev/null 2>&1")
        pings = {}
        for src, dst in ((hosts[0], hosts[-1]), (hosts[-1], hosts[0])):
            out = src.cmd(f"ping -n -q -c {PINGS} -i 0.2 -W 2 {dst.IP()}")
            pings[f"{src.name}->{dst.name}"] = {"loss_pct": _loss(out), "summary": out.strip().splitlines()[-1:]}
        payload = link.mtu - 28   # IPv4 20 + ICMP 8
        out = hosts[0].cmd(f"ping -n -q -c 3 -i 0.2 -W 2 -M do -s {payload} {hosts[-1].IP()}")
        pings[f"full frame {link.mtu} B, DF"] = {"loss_pct": _loss(out), "summary": out.strip().splitlines()[-1:]}
        result["ping"] = pings
        result["crossing_links"] = [f"{lk.intf1.name}-{lk.intf2.name} ({lk.intf1.node.server}-{lk.intf2.node.server}"
                                    f"{', VNI %d' % lk.vni if hasattr(lk, 'vni') else ''})"
                                    for lk in net.links if lk.tunnel]
        network_done = True
    finally:
        t = time.monotonic()
        try:
            if net is not None:
                net.stop()
                for c in net.controllers:
                    c.terminate()
        except Exception as e:   # noqa: BLE001 - recorded; what it left is listed below
            result["teardown_error"] = f"{type(e).__name__}: {e}"
            for node in (net.hosts + net.switches) if net is not None else []:
                node.terminate()   # at least this machine's ssh sessions
        finally:
            controller.stop()
        result["teardown_s"] = round(time.monotonic() - t, 2)
        if lab_network and network_done:
            try:
                result["lab_network"] = cluster_lab_network.stage(scn)
            except Exception as e:   # noqa: BLE001 - recorded, a must fails; the rest still runs
                result["lab_network"] = {"error": f"{type(e).__name__}: {e}"}
        if live_lab and network_done and scn.cluster.shared_dir:
            try:
                result["live_lab"] = cluster_live.stage(scn, Path(scn.cluster.shared_dir), out_dir)
            except Exception as e:   # noqa: BLE001 - recorded, a must fails; the rest still runs
                result["live_lab"] = {"error": f"{type(e).__name__}: {e}"}
        if budget_slots and network_done:
            result["budgets"] = cluster_budgets.stage(cluster, out_dir, slots=budget_slots)
        left = {}
        for s in cluster.servers:   # a shell that got its hang-up may take a moment to go
            deadline = time.monotonic() + 5
            try:
                while (leaked := cl.leaks(before[s.name], cl.snapshot(s, cluster))) and time.monotonic() < deadline:
                    time.sleep(0.5)
            except cl.ClusterError as e:
                leaked = {"error": [str(e)]}
            left[s.name] = leaked
        left["orchestrator"] = leftovers.leaks(here_before, leftovers.snapshot())
        result["leftovers"] = left
        result["total_s"] = round(time.monotonic() - t0, 2)
        (out_dir / "cluster-check.json").write_text(json.dumps(result, indent=1, default=str))

    musts = {
        "every server passed the pre-start check": all(c["ok"] for c in result["precheck"].values()),
        "refusals name the server": all(r.startswith("refused to start: server ") for r in result["refused"].values()),
        f"every switch connected within {CONNECT_WITHIN_S:g} s": all(
            v is not None and v <= CONNECT_WITHIN_S for v in result["connect_s"].values()),
        "no loss either way, full frames too": all(p["loss_pct"] == 0.0 for p in result["ping"].values()),
        "teardown left nothing (cgroups too)": not any(result["leftovers"].values())
            and "teardown_error" not in result
            and all(not g for g in result.get("budgets", {}).get("groups_left", {}).values())
            and result.get("budgets", {}).get("secrets_removed", True),
    }
    if lab_network:
        musts.update(cluster_lab_network.musts(result.get("lab_network", {})))
    if live_lab and scn.cluster.shared_dir:
        musts.update(cluster_live.musts(result.get("live_lab", {})))
    if budget_slots:
        musts.update(cluster_budgets.musts(result["budgets"], [s.name for s in cluster.servers]))
    result["musts"] = musts
    (out_dir / "cluster-check.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("link", "precheck", "connect_s", "ping", "leftovers", "musts",
                                             "build_s", "teardown_s", "total_s")}, indent=1, default=str))
    if lab_network:
        print(json.dumps(result.get("lab_network"), indent=1, default=str))
    if live_lab:
        print(json.dumps(result.get("live_lab"), indent=1, default=str))
    if budget_slots:
        b = result["budgets"]
        print(json.dumps({k: b.get(k) for k in ("miner", "error", "applied_ms", "used_by_level", "writes_read_back",
                                                "agent_end", "groups_left", "total_s")}, indent=1, default=str))
    print(f"cluster-check ({cluster.link}): {'ok' if all(musts.values()) else 'FAILED'}; {out_dir / 'cluster-check.json'}")
    return 0 if all(musts.values()) else 1
