"""What a run can leave behind on the machine, so tests can assert that teardown is clean.

``snapshot()`` lists what *this* Python process could have left: network namespaces, veth
interfaces, OVS bridges and the lab's cgroups (compared before/after), containers this
process started (label ``mec-testbed.owner`` = its pid), and processes it started (every
:class:`base.processes.ManagedProcess`, plus any descendant of this process still running,
Mininet shells included). ``leaks(before, after)`` is what appeared in between.

A user's own geth, anvil, container or bridge on the same machine is neither touched nor
counted: it is not our child, not in the registry and carries no label of ours.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

from base.processes import started_pids

CGROUP_DIRS = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup"))


def _lines(cmd: list[str]) -> set[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.strip() for line in out.splitlines() if line.strip()}


def _processes() -> set[str]:
    """Processes this run started that are still running (zombies excluded: they hold nothing)."""
    found = {}
    for pid, name in started_pids().items():
        found[pid] = name
    me = psutil.Process()
    for child in me.children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            found.setdefault(child.pid, " ".join(child.cmdline())[:120])
        except psutil.NoSuchProcess:
            continue
    return {f"{pid} {name}" for pid, name in found.items()}


def _cgroups() -> set[str]:
    """The lab's cgroups (``mec-chain``, ``mec-lab`` subtrees of the CPU controller)."""
    out = set()
    for root in CGROUP_DIRS:
        for top in ("mec-chain", "mec-lab"):
            base = root / top
            if base.is_dir():
                out |= {str(p.relative_to(root)) for p in base.rglob("*") if p.is_dir()}
    return out


def snapshot() -> dict[str, set[str]]:
    return {
        "netns": {line.split()[0] for line in _lines(["ip", "netns", "list"])},
        "veth": {line.split(":")[1].strip().split("@")[0]
                 for line in _lines(["ip", "-o", "link", "show", "type", "veth"])},
        "ovs_bridges": _lines(["ovs-vsctl", "--timeout=5", "list-br"]),
        "containers": _lines(["/usr/bin/docker", "ps", "-a", "--filter",
                              f"label=mec-testbed.owner={os.getpid()}", "--format", "{{.Names}}"]),
        "processes": _processes(),
        "cgroups": _cgroups(),
    }


def leaks(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    """Everything present in ``after`` but not in ``before``, by kind (empty dict if clean)."""
    return {k: sorted(after[k] - before.get(k, set())) for k in after if after[k] - before.get(k, set())}
