"""What a run can leave behind on the machine, so tests can assert that teardown is clean.

``snapshot()`` lists network namespaces, veth interfaces, OVS bridges, the testbed's
containers, Mininet shells and geth/anvil/controller processes; ``leaks(before, after)`` is
what appeared in between.
"""
from __future__ import annotations

import subprocess

import psutil

# Process command lines that belong to a testbed run.
PROCESS_MARKS = ("mininet:", "geth", "anvil", "-m controller")


def _lines(cmd: list[str]) -> set[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.strip() for line in out.splitlines() if line.strip()}


def _processes() -> set[str]:
    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m in cmd for m in PROCESS_MARKS) and "pytest" not in cmd:
            found.add(f"{p.info['pid']} {cmd[:120]}")
    return found


def snapshot() -> dict[str, set[str]]:
    return {
        "netns": {line.split()[0] for line in _lines(["ip", "netns", "list"])},
        "veth": {line.split(":")[1].strip().split("@")[0]
                 for line in _lines(["ip", "-o", "link", "show", "type", "veth"])},
        "ovs_bridges": _lines(["ovs-vsctl", "--timeout=5", "list-br"]),
        "containers": _lines(["/usr/bin/docker", "ps", "-a", "--filter", "label=mec-testbed",
                              "--format", "{{.Names}}"]),
        "processes": _processes(),
    }


def leaks(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    """Everything present in ``after`` but not in ``before``, by kind (empty dict if clean)."""
    return {k: sorted(after[k] - before.get(k, set())) for k in after if after[k] - before.get(k, set())}
