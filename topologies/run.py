"""Bring one topology up alone, check it, time it, tear it down: ``python -m testbed topology``.

The verb reads the Scenario as every other verb does (``--set topology.kind=cells --set
model.n_servers=10 --set model.n_users=20``; UEs as plain hosts with ``--set
topology.ue_containers=false``) and calls :func:`run`, which builds the network exactly as the lab
does (:func:`topologies.build_topo` and :class:`topologies.network.EmulatedNetwork` from the
``[topology]`` and ``[network]`` tables) with the L2 controller app, checks that every host reaches
every other on the data network with parallel pings, optionally opens the Mininet CLI, and always
tears down (Ctrl-C and SIGTERM included). It returns one dict: bring-up and teardown times (s),
memory (MiB: the machine's ``MemAvailable`` delta, noisy when other jobs run, and by part: OVS,
controller, Mininet shells, containers and their shims), the reachability result and the notes
(what this machine does not emulate). Needs root; run it under the lab's lock::

    flock /tmp/lab-net.lock .venv/bin/python -m testbed topology --set topology.kind=cells
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import psutil

from topologies import build_topo
from topologies.config import ClusterConfig, NetworkConfig, TopologyConfig
from topologies.network import EmulatedNetwork, probe_reachability
from topologies.platform import detect


MIB = 2**20


def _used_mib() -> float:
    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / MIB


def _pss_mib(procs) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / MIB


def _ovs_rss_mib() -> float:
    return sum(p.info["memory_info"].rss for p in psutil.process_iter(["name", "memory_info"])
               if p.info["name"] in ("ovs-vswitchd", "ovsdb-server")) / MIB


def _memory(emu, container_ids: list[str]) -> dict:
    """What the running topology holds, by part (MiB). PSS for processes (shared pages split
    among sharers); a container's own cgroup usage (its processes and page cache); the
    containerd shim that runs beside each container."""
    ctl = psutil.Process(emu.controller.pid)
    ctl_tree = [ctl, *ctl.children(recursive=True)]
    skip = {p.pid for p in ctl_tree}
    shells = [p for p in psutil.Process().children(recursive=True) if p.pid not in skip]
    cgroup = 0
    for cid in container_ids:
        for f in (Path(f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes"),
                  Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current")):
            if f.exists():
                cgroup += int(f.read_text())
                break
    ids = set(container_ids)
    shims = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] and
             p.info["name"].startswith("containerd-shim") and ids & set(p.info["cmdline"] or [])]
    return {"controller_pss": round(_pss_mib(ctl_tree)), "mininet_shells_pss": round(_pss_mib(shells)),
            "containers_cgroup": round(cgroup / MIB), "container_shims_pss": round(_pss_mib(shims)),
            "orchestrator_rss": round(psutil.Process().memory_info().rss / MIB)}


def run(topology: TopologyConfig, network: NetworkConfig, n_mec: int, n_ues: int, seed: int, *,
        cli: bool = False, probe: str = "all", plan: bool = False, cluster: ClusterConfig | None = None,
        checks=None) -> dict:
    """Bring the topology up, measure and check it, tear it down; the result as a dict (see the
    module docstring). ``probe``: ping every pair ("all") or every host to mec*, gw1, lab0
    ("servers"); ``plan``: also return the topology's plan; ``cli``: open the Mininet CLI once
    it is up. ConfigError (before anything starts) for what this machine cannot emulate.
    ``cluster``: the ``[cluster]`` table; with servers, the network spans them (the placement
    and the cross-server links of :mod:`topologies.cluster`; ``result["placement"]``).
    ``checks(emu, net, result)``: more checks on the running network, into ``result``."""
    result: dict = {"topology": topology.kind, "mec": n_mec, "ues": n_ues, "seed": seed,
                    "cores": os.cpu_count(), "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    platform = detect()
    topo = build_topo(topology, n_mec, n_ues, seed, platform)
    log_dir = Path(tempfile.mkdtemp(prefix=f"topology-{topology.kind}-"))
    result["log_dir"] = str(log_dir)
    emu = EmulatedNetwork(topo, network, log_dir, platform, cluster=cluster)
    if emu.placement is not None:
        result["placement"] = emu.placement.to_dict()
    mem0, ovs0, t0, t_end = _used_mib(), _ovs_rss_mib(), time.monotonic(), None
    try:
        with emu as net:
            result["bringup_s"] = round(time.monotonic() - t0, 2)
            result["bringup_steps_s"] = emu.timings
            containers = [h.container.id for h in net.hosts if getattr(h, "container", None)]
            result["memory_mib"] = {"machine_used_delta": round(_used_mib() - mem0),
                                    "ovs_rss_delta": round(_ovs_rss_mib() - ovs0),
                                    **_memory(emu, containers)}
            result.update(datapath=emu.datapath, switches=len(net.switches), hosts=len(net.hosts),
                          containers=sum(n.container for n in topo.plan.nodes.values()))
            targets = None if probe == "all" else {
                n.name: n.data_ip for n in topo.plan.nodes.values() if n.role in ("mec", "gw", "lab")}
            result["reachability"] = probe_reachability(net.hosts, targets, attempts=5).to_dict()
            if checks is not None:
                checks(emu, net, result)
            if cli:
                from mininet.cli import CLI
                from mininet.log import setLogLevel
                print(json.dumps(result, indent=1), flush=True)
                setLogLevel("output")     # the CLI's answers are logged at this level
                CLI(net)
                setLogLevel("warning")
            t_end = time.monotonic()
    finally:
        if t_end is not None:
            result["teardown_s"] = round(time.monotonic() - t_end, 2)
    result["notes"] = emu.notes
    if plan:
        result["plan"] = topo.plan.to_dict()
    return result
