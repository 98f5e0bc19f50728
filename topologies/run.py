"""Run one topology alone: ``python -m topologies.NAME --mec 10 --ues 20 [--cli]``.

Brings the topology up with the lab's :class:`testbed.network.EmulatedNetwork` and the L2
controller app, checks that every host reaches every other on the data network with
parallel pings, optionally opens the Mininet CLI, and always tears down (Ctrl-C and SIGTERM
included). Prints one JSON object: bring-up and teardown times (s), memory (MiB: the
machine's ``MemAvailable`` delta, noisy when other jobs run, and by part: OVS, controller,
Mininet shells, containers and their shims), the reachability result and the notes (what
this machine does not emulate). Needs root; run it under the lab's lock::

    flock /tmp/lab-net.lock .venv/bin/python -m topologies.cells --mec 10 --ues 20
    ... --set radio_bandwidth_mhz=40 --set site_layout=grid    # any TopologyConfig field
    ... --plain-ues                  # UEs as plain Mininet hosts instead of containers
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import psutil

from testbed.config import NetworkConfig
from base.errors import ConfigError
from testbed.network import EmulatedNetwork, probe_reachability
from testbed.platform import detect
from topologies import TopologyConfig, build_topo


def _value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


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


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(kind: str, argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m topologies.{kind}",
                                 description=f"bring up the '{kind}' topology, check it, tear it down")
    ap.add_argument("--mec", type=int, default=2, help="MEC servers M (default 2)")
    ap.add_argument("--ues", type=int, default=3, help="UEs U (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="placement seed (cells)")
    ap.add_argument("--cli", action="store_true", help="open the Mininet CLI once it is up")
    ap.add_argument("--plain-ues", action="store_true", help="UEs as plain hosts, not containers")
    ap.add_argument("--port", type=int, default=6653, help="controller's OpenFlow port")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a TopologyConfig field (repeatable)")
    ap.add_argument("--plan", action="store_true", help="also print the topology's plan")
    ap.add_argument("--probe", choices=("all", "servers"), default="all",
                    help="ping every pair (all) or every host to mec*, gw1, lab0 (servers)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (Mininet and Open vSwitch): run it with sudo", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    result: dict = {"topology": kind, "mec": args.mec, "ues": args.ues, "seed": args.seed,
                    "cores": os.cpu_count(), "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    try:
        known = {f.name for f in dataclasses.fields(TopologyConfig)} - {"kind"}
        sets = {}
        for item in args.set:
            key, _, text = item.partition("=")
            key = key.strip().removeprefix("topology.")
            if key not in known:
                raise ConfigError(f"unknown field topology.{key}; known: {', '.join(sorted(known))}")
            sets[key] = _value(text.strip())
        cfg = TopologyConfig(kind=kind, **{"ue_containers": not args.plain_ues, **sets})
        platform = detect()
        topo = build_topo(cfg, args.mec, args.ues, args.seed, platform)
        log_dir = Path(tempfile.mkdtemp(prefix=f"topology-{kind}-"))
        result["log_dir"] = str(log_dir)
        emu = EmulatedNetwork(topo, NetworkConfig(controller_port=args.port, link_bw_mbit=None),
                              log_dir, platform)
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
                targets = None if args.probe == "all" else {
                    n.name: n.data_ip for n in topo.plan.nodes.values() if n.role in ("mec", "gw", "lab")}
                result["reachability"] = probe_reachability(net.hosts, targets, attempts=5).to_dict()
                if args.cli:
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
        if args.plan:
            result["plan"] = topo.plan.to_dict()
        print(json.dumps(result, indent=1))
        return 0 if result["reachability"]["failed"] == 0 else 1
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(json.dumps({**result, "interrupted": True}, indent=1))
        print("interrupted: everything started was torn down", file=sys.stderr)
        return 130
