"""The lab-network stage of ``cluster-check``: the lab's own topology across the servers
(issue 22, step 2: the management network tunnelled).

The scenario's topology kind is replaced by the paper's cells at M = 2 MEC sites and U = 2 UEs
(one per site: the first placement seed from ``seed`` on that puts one UE nearest each site),
each UE a container made by its server's own Docker engine
(:class:`topologies.cluster.ClusterDockerHost`). The cluster is this machine, the orchestrator, as the hub (``bh1``, ``gw1``,
``lab0``, ``mgmt1``: ``lab0`` is the orchestrator's own root namespace) plus the first two
servers of ``[cluster]``, site 1 pinned on the first and site 2 on the second; built exactly as
the lab builds its network (:class:`topologies.network.EmulatedNetwork` with the cluster,
through :func:`topologies.run.run`, the controller's L2 switch app on
``cluster.controller_address``). So four links cross servers: two backhaul links
(``acc<k>-bh1``) and two management links (``mgmt1-mec<k>``), each a tunnel of ``cluster.link``.

Measured and required:

- the switches of every server connected to the controller within 10 s of the switches' start;
- every host reaches every other on the data network (parallel pings), nothing lost;
- the management network across the tunnels: ``lab0`` and ``gw1`` reach each MEC host's
  management address, and a full-sized frame at the tunnel MTU (don't fragment) passes from
  ``lab0`` to the MEC host on the last server;
- the management network stays closed to UEs across servers: no UE's ping to a MEC host's
  management address (on its own server and on the other) is answered;
- teardown leaves nothing on any server (compared by the caller, :mod:`testbed.experiments.cluster_check`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from pathlib import Path

from base.processes import in_mininet_host, in_remote_host, remote_pid
from scenario.config import Scenario
from topologies import build_topo
from topologies.config import ClusterConfig, ServerSpec, TopologyConfig
from topologies.platform import detect
from topologies.network import probe_reachability
from topologies.run import run as run_topology

ORCHESTRATOR = "orchestrator"
M, U = 2, 2
CONNECT_WITHIN_S = 10.0


def _loss(out: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)% packet loss", out)
    return float(m.group(1)) if m else None


def one_ue_per_site(topology: TopologyConfig, seed: int) -> int:
    """The first seed from ``seed`` on whose cells placement puts one UE nearest each site."""
    platform = detect()
    for s in range(seed, seed + 200):
        plan = build_topo(topology, M, U, s, platform).plan
        if sorted(n.site for n in plan.ues) == [1, 2]:
            return s
    raise RuntimeError(f"no seed in [{seed}, {seed + 200}) puts one UE at each of 2 cells sites")


def cluster_of(cluster: ClusterConfig) -> ClusterConfig:
    """This machine as the hub plus the first two servers, site k on server k."""
    a, b = cluster.servers[:2]
    return dataclasses.replace(cluster, servers=(ServerSpec(name=ORCHESTRATOR, address="localhost"), a, b),
                               hub=ORCHESTRATOR, pin={"mec1": a.name, "mec2": b.name})


CHAIN_OBSERVE_S = 30.0     # mining across the servers, then the heads compared


def _chain(scn: Scenario, emu, net, shared: Path) -> dict:
    """The lab's chain on the network across servers: a geth miner in mec1 (server a) and mec2
    (server b), started there over ssh (:func:`base.processes.in_remote_host`), and the RPC
    gateway in gw1 (here), devp2p and the miners' RPC on the tunnelled management network, the
    datadirs in ``shared`` (the same path on every server). Each miner mines with one thread
    (threads budget: the lab's quotas on remote servers go through their agents, the budgets
    stage) for :data:`CHAIN_OBSERVE_S`; then both stop and the heads are compared."""
    from chain.network import Chain
    plan, c = emu.plan, scn.chain
    mecs = ["mec1", "mec2"]
    cfg = dataclasses.replace(c, n_nodes=2, workdir=str(shared / f"chain-{os.getpid()}"), budget_mode="threads",
                              outside="none")
    out: dict = {"workdir": cfg.workdir, "miners": {m: emu.placement.server[m] for m in mecs}}
    chain = Chain(cfg, ips=[plan.mgmt_ip(m) for m in mecs], names=mecs,
                  launchers=[in_remote_host(net.get(m)) for m in mecs], quota_parents=[None, None],
                  gateway_ip=plan.mgmt_ip("gw1"), gateway_rpc_ip=plan.data_ip("gw1"),
                  gateway_launcher=in_mininet_host(net.get("gw1")))
    t0 = time.monotonic()
    try:
        out["start_s"] = {k: round(v, 2) for k, v in chain.start([1, 1], wait=True).items()}
        out["remote_pids"] = {nd.name: remote_pid(nd.proc) for nd in chain.nodes}
        out["peers"] = {nd.name: nd.peer_count() for nd in chain.nodes}
        out["gateway_peers"] = int(chain.gateway.rpc("net_peerCount"), 16)
        time.sleep(CHAIN_OBSERVE_S)
        for nd in chain.nodes:
            nd.set_hash_budget(0)
        deadline = time.monotonic() + 15
        while True:
            heads = {nd.name: nd.head() for nd in [*chain.nodes, chain.gateway]}
            if len({h["hash"] for h in heads.values()}) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        out["heads"] = {k: {"number": int(h["number"], 16) if isinstance(h["number"], str) else h["number"],
                            "hash": h["hash"]} for k, h in heads.items()}
        top = min(v["number"] for v in out["heads"].values())
        authors: dict[str, int] = {}
        for n in range(1, top + 1):
            who = chain.miner_of(chain.gateway.rpc("eth_getBlockByNumber", hex(n), False)["miner"]) or "other"
            authors[who] = authors.get(who, 0) + 1
        out["blocks_by_miner"] = authors
    except Exception as e:   # noqa: BLE001 - recorded; a must fails
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        t = time.monotonic()
        chain.stop()
        out["stop_s"] = round(time.monotonic() - t, 2)
        shutil.rmtree(cfg.workdir, ignore_errors=True)
    out["total_s"] = round(time.monotonic() - t0, 2)
    return out


def stage(scn: Scenario) -> dict:
    """Build, check and tear down the lab's network across the servers (and the chain on it,
    when ``cluster.shared_dir`` names a folder shared by the servers); the results."""
    t0 = time.monotonic()
    topology = dataclasses.replace(scn.topology, kind="cells", ue_containers=True)
    seed = one_ue_per_site(topology, scn.seed)
    cluster = cluster_of(scn.cluster)
    out: dict = {"topology": "cells", "mec": M, "ues": U, "seed": seed,
                 "servers": {s.name: s.address for s in cluster.servers}}

    def checks(emu, net, result):
        t = emu.timings
        result["switches_connected_after_start_s"] = round(t["switches_s"] + t["configure_s"] + t["connect_s"], 2)
        result["switch_servers"] = {sw.name: getattr(sw, "server", ORCHESTRATOR) for sw in net.switches}
        plan = emu.plan
        pings = {}
        for src in ("lab0", "gw1"):
            for mec in ("mec1", "mec2"):
                o = net.get(src).cmd(f"ping -n -q -c 5 -i 0.2 -W 2 {plan.mgmt_ip(mec)}")
                pings[f"{src}->{mec} (management)"] = _loss(o)
        mtu = net.get("mec2").cmd("cat /sys/class/net/mec2-eth1/mtu").strip()
        o = net.get("lab0").cmd(f"ping -n -q -c 3 -i 0.2 -W 2 -M do -s {int(mtu) - 28} {plan.mgmt_ip('mec2')}")
        pings[f"lab0->mec2 full frame {mtu} B, DF (management)"] = _loss(o)
        result["management_ping_loss_pct"] = pings
        # answered or not (a UE has no route there: ping may not even send)
        closed = probe_reachability([net.get(n.name) for n in plan.ues],
                                    {f"{m} management": plan.mgmt_ip(m) for m in ("mec1", "mec2")},
                                    timeout_s=1, attempts=2)
        result["ue_to_management"] = {"pairs": closed.pairs, "unanswered": len(closed.failed),
                                      "ues": {n.name: emu.placement.server[n.name] for n in plan.ues}}
        # each UE a container of its own server's Docker engine, running, its shell inside it
        result["ue_containers"] = {}
        for n in plan.ues:
            h = net.get(n.name)
            state = h._docker(f"docker inspect --format '{{{{.State.Running}}}} {{{{.State.Pid}}}}' {h.cname}").split()
            result["ue_containers"][n.name] = {
                "server": h.server, "class": type(h).__name__, "container": h.cname,
                "running": state[:1] == ["true"], "pid_matches": state[1:] == [str(h.container_pid)],
                # the shell joined the container's mount namespace: its /etc/hostname is the container's
                "etc_hostname_inside": h.cmd("cat /etc/hostname").strip()}
        if scn.cluster.shared_dir:
            result["chain"] = _chain(scn, emu, net, Path(scn.cluster.shared_dir))

    result = run_topology(topology, scn.network, M, U, seed, cluster=cluster, checks=checks)
    out.update({k: result.get(k) for k in ("placement", "bringup_s", "bringup_steps_s", "switches_connected_after_start_s",
                                           "switch_servers", "reachability", "management_ping_loss_pct",
                                           "ue_to_management", "ue_containers", "chain", "teardown_s", "notes")})
    out["total_s"] = round(time.monotonic() - t0, 2)
    return out


def musts(r: dict) -> dict[str, bool]:
    reach = r.get("reachability") or {}
    mgmt = r.get("management_ping_loss_pct") or {}
    closed = r.get("ue_to_management") or {}
    crossing = (r.get("placement") or {}).get("crossing", [])
    return {
        "lab network: backhaul and management links cross servers":
            {x["kind"] for x in crossing} == {"backhaul", "management"},
        f"lab network: switches connected within {CONNECT_WITHIN_S:g} s":
            r.get("switches_connected_after_start_s") is not None
            and r["switches_connected_after_start_s"] <= CONNECT_WITHIN_S,
        "lab network: every host reaches every other, nothing lost":
            reach.get("pairs", 0) > 0 and reach.get("failed") == 0,
        "lab network: management network across servers, nothing lost, full frames too":
            bool(mgmt) and all(v == 0.0 for v in mgmt.values()),
        "lab network: each UE a running container of its own server's Docker engine":
            len(r.get("ue_containers") or {}) == U and all(
                c["running"] and c["pid_matches"] and c["class"] == "ClusterDockerHost" and c["etc_hostname_inside"] == ue
                for ue, c in r["ue_containers"].items()),
        **({} if "chain" not in r else {
            "chain: the miners on both servers peer (with each other and the gateway here)":
                (r["chain"].get("peers") or {}) == {"mec1": 2, "mec2": 2} and r["chain"].get("gateway_peers") == 2,
            "chain: one head on every node, blocks of both servers' miners in it":
                "error" not in r["chain"] and len({h["hash"] for h in r["chain"]["heads"].values()}) == 1
                and all(r["chain"]["blocks_by_miner"].get(m, 0) > 0 for m in ("mec1", "mec2"))}),
        "lab network: UEs cannot reach the management network":
            closed.get("pairs", 0) == U * 2 and closed.get("unanswered") == closed["pairs"],
    }
