"""``python -m testbed bench-server-agent``: hash budgets through a server's agent, timed (issue 22).

The agent (:mod:`nodes.server_agent`) runs as a real process, by default in a network namespace
of its own behind a veth pair (a "remote server" on this machine: another network stack, the
same cgroup tree), on real cgroups of the lab's tree (``mec-lab/agent-bench-<pid>/mecK/``: the
host group, its ``executor`` and a ``mecK-<pid>`` miner group, as the lab makes them). The
controller's client (:class:`nodes.server_agent.AgentClient`) sends ``writes`` budgets over TCP,
each to every miner, the level cycling; each write is read back from the cgroup files. Printed
as JSON, written to ``results/bench/server-agent/bench.json``:

- ``round_trip_ms`` p50/p95/p99/max: request sent -> the agent's answer back at the controller
  (what ``budgets_applied_s`` counts: the controller marks a budget applied when the answer comes);
- ``request_to_applied_ms``: request sent -> the agent's own time after its last write (the same
  clock here);
- the target: slot start -> applied p95 < 300 ms on a remote server (issue 22's must), met or not.

``--busy N`` spins N processes beside the agent the whole time (a loaded server: the agent has
no CPU reservation of its own). ``--delay-ms D`` adds D ms each way on the veth (``tc netem``: a LAN between servers; this
project's machine kind has no netem). Everything
made is removed after: the namespace, the veth, the cgroups, the agent.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from base.processes import ManagedProcess, local, log_ready
from chain.cgroup import CpuQuota, MIN_QUOTA_US, controller_dir, host_groups, read_quota
from nodes.server_agent import AgentClient, new_secret
from testbed.lab import CGROUP_PARENT, ROOT

TARGET_P95_MS = 300.0
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)       # miner cores as a share of its host's, cycled (0: the kernel's minimum)


@contextlib.contextmanager
def lab_groups(run: str, miners: list[str], host_cores: float = 1.0):
    """The lab's groups for ``miners`` under ``mec-lab/<run>``, as ``testbed.lab`` makes them
    (host, ``executor``, the miner's ``<name>-<pid>``); yields {name: miner group dir}; removed
    after."""
    made: list[CpuQuota] = []
    try:
        made.append(CpuQuota(run, parent=CGROUP_PARENT))
        groups = {}
        for m in miners:
            made += host_groups(f"{CGROUP_PARENT}/{run}", m, host_cores, host_cores, os.getpid())
            groups[m] = made[-1].dir
        yield groups
    finally:
        for q in reversed(made):
            q.remove()


def agent_config(run: str, miners: list[str], secret: str, host_cores: float = 1.0,
                 period_us: int = 100_000) -> dict:
    """The agent's configuration for ``miners`` of run ``run`` (what the lab hands each server)."""
    return {"secret": secret, "max_age_s": 30.0,
            "miners": {m: {"host_group": f"{CGROUP_PARENT}/{run}/{m}", "host_cores": host_cores,
                           "coupling": "shared", "period_us": period_us} for m in miners}}


@contextlib.contextmanager
def netns(name: str, delay_ms: float = 0.0):
    """A namespace ``name`` joined to this one by a veth pair: yields (this side's address, the
    namespace's). ``delay_ms`` each way (netem). Removed after."""
    here, there = "198.18.0.1", "198.18.0.2"
    veth = f"ag{os.getpid() % 100000}"

    def sh(*argv):
        subprocess.run(argv, check=True, capture_output=True, timeout=20)
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", f"{veth}h", "type", "veth", "peer", "name", f"{veth}a", "netns", name)
        sh("ip", "addr", "add", f"{here}/30", "dev", f"{veth}h")
        sh("ip", "link", "set", f"{veth}h", "up")
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{there}/30", "dev", f"{veth}a"],
                    ["ip", "link", "set", f"{veth}a", "up"]):
            sh("ip", "netns", "exec", name, *cmd)
        if delay_ms:
            tc = subprocess.run(["tc", "qdisc", "add", "dev", f"{veth}h", "root", "netem", "delay", f"{delay_ms}ms"],
                                capture_output=True, text=True, timeout=20)
            if tc.returncode:
                raise RuntimeError(f"--delay-ms needs the kernel's netem qdisc (sch_netem): {tc.stderr.strip()}")
            sh("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", f"{veth}a", "root", "netem",
               "delay", f"{delay_ms}ms")
        yield here, there
    finally:
        subprocess.run(["ip", "link", "del", f"{veth}h"], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


@contextlib.contextmanager
def agent_process(cfg: dict, log_dir: Path, listen: str = "127.0.0.1", ns: str | None = None):
    """The agent as a real process (``python -m nodes.server_agent``, in namespace ``ns`` if
    given: ``nsenter --net``, which keeps this machine's /sys and so its cgroups); yields
    (the process, its "host:port"). The configuration goes through a file readable by root
    only, removed once the agent has read it. Stopped after (SIGTERM)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    conf = log_dir / "agent-config.json"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    prefix = ["nsenter", f"--net=/var/run/netns/{ns}"] if ns else []
    argv = prefix + [str(ROOT / ".venv" / "bin" / "python"), "-m", "nodes.server_agent",
                     "--listen", listen, "--port", "0", "--config", str(conf)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = ManagedProcess("server agent", argv, log_dir / "agent.log", launcher=local(), cwd=ROOT, env=env,
                          ready=log_ready(r"listening on \S+:\d+"), ready_timeout_s=30, grace_s=5)
    try:
        proc.start()
        conf.unlink()
        line = next(x for x in proc.log_path.read_text().splitlines() if x.startswith("listening on "))
        yield proc, line.split()[2]
    finally:
        proc.stop()
        conf.unlink(missing_ok=True)


def _percentiles(xs: list[float]) -> dict:
    a = np.array(xs)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3)}


def bench(writes: int = 200, miners: int = 2, in_netns: bool = True, delay_ms: float = 0.0,
          log_dir: Path | None = None, host_cores: float = 1.0, period_us: int = 100_000, busy: int = 0) -> dict:
    """``writes`` budgets through a real agent (see the module docstring), with ``busy``
    processes spinning beside it (a loaded server); the JSON report."""
    if controller_dir() is None:
        raise RuntimeError("no cgroup CPU controller on this machine")
    run = f"agent-bench-{os.getpid()}"
    names = [f"mec{k}" for k in range(1, miners + 1)]
    log_dir = log_dir or Path(f"/tmp/{run}")
    round_trip, to_applied, wrong = [], [], []
    load_before = os.getloadavg()
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        groups = stack.enter_context(lab_groups(run, names, host_cores))
        ns = f"mec-agentb-{os.getpid()}" if in_netns else None
        here, there = stack.enter_context(netns(ns, delay_ms)) if ns else ("127.0.0.1", "127.0.0.1")
        secret = new_secret()
        proc, address = stack.enter_context(agent_process(agent_config(run, names, secret, host_cores, period_us),
                                                          log_dir, listen=there, ns=ns))
        client = stack.enter_context(AgentClient(address, secret))
        for k in range(busy):
            stack.enter_context(ManagedProcess(f"busy {k}", [sys.executable, "-c", "while True: pass"],
                                               log_dir / f"busy-{k}.log"))
        client.cpu_seconds()                          # connected, as the controller is by its first slot
        for i in range(writes):
            budgets = {m: LEVELS[(i + k) % len(LEVELS)] * host_cores for k, m in enumerate(names)}
            t0, w0 = time.perf_counter(), time.time()
            answer = client.apply(budgets)
            round_trip.append((time.perf_counter() - t0) * 1e3)
            to_applied.append((answer["at"] - w0) * 1e3)
            for m, c in budgets.items():
                want = round(max(c, MIN_QUOTA_US / period_us) * period_us)
                got, _ = read_quota(groups[m])
                if got != want or m not in answer["applied"]:
                    wrong.append({"write": i, "miner": m, "want_us": want, "got_us": got})
        agent_pid = proc.pid
    rep = {
        "bench": "server-agent", "writes": writes, "miners": miners, "in_netns": in_netns, "busy_processes": busy,
        "delay_ms_each_way": delay_ms, "cores": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "round_trip_ms": _percentiles(round_trip), "request_to_applied_ms": _percentiles(to_applied),
        "read_back_wrong": wrong[:10], "read_back_ok": not wrong,
        "target": {"what": "slot start -> applied on a remote server, p95", "p95_ms": TARGET_P95_MS,
                   "measured_p95_ms": round(float(np.percentile(np.array(round_trip), 95)), 3)},
        "total_s": round(time.monotonic() - t_start, 2), "agent_pid": agent_pid,
    }
    rep["target"]["met"] = rep["target"]["measured_p95_ms"] < TARGET_P95_MS and rep["read_back_ok"]
    return rep


def run(out_dir: Path, **kw) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = bench(log_dir=out_dir, **kw)
    (out_dir / "bench.json").write_text(json.dumps(rep, indent=1))
    return rep
