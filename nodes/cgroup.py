"""A CPU quota for one process: the CFS bandwidth controller of a cgroup (v1 or v2).

Threads alone cannot express a hash budget on a small machine: with 2 cores, 1 : 2 : 4
threads oversubscribe the CPU and the kernel, not geth, decides who hashes. A quota
(``cpu.cfs_quota_us`` / ``cpu.max``) caps a node at a fraction of a core, and a weight
(``cpu.shares`` / ``cpu.weight``) proportional to the same budget keeps the ratio when the
machine is busier than the quotas add up to. Needs root; cgroup-tools is not needed.
"""
from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "mec-chain"   # every quota lives under this group, one child per node


class CgroupError(RuntimeError):
    """The cgroup CPU controller is missing or not writable."""


def _v1_dir() -> Path | None:
    for name in ("cpu", "cpu,cpuacct"):
        d = CGROUP_ROOT / name
        if (d / "cpu.cfs_quota_us").exists():
            return d
    return None


def _v2() -> bool:
    ctrl = CGROUP_ROOT / "cgroup.controllers"
    return ctrl.exists() and "cpu" in ctrl.read_text().split()


def available() -> str | None:
    """Which cgroup CPU controller this machine offers: ``"v1"``, ``"v2"`` or None."""
    if _v1_dir() is not None:
        return "v1"
    if _v2():
        return "v2"
    return None


class CpuQuota:
    """One cgroup holding one process, with a CPU quota in cores (1.0 = one full core)."""

    def __init__(self, name: str, period_us: int = 100_000):
        self.name, self.period_us = name, period_us
        self.kind = available()
        if self.kind is None:
            raise CgroupError("no cgroup CPU controller (neither /sys/fs/cgroup/cpu/"
                              "cpu.cfs_quota_us nor a v2 'cpu' controller): use "
                              "chain.budget_mode = \"threads\"")
        if self.kind == "v1":
            self.dir = _v1_dir() / PARENT / name
        else:
            parent = CGROUP_ROOT / PARENT
            parent.mkdir(exist_ok=True)
            # v2 only lets a group's children use the cpu controller once it is delegated.
            (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu")
            (parent / "cgroup.subtree_control").write_text("+cpu")
            self.dir = parent / name
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup {self.dir}: {e} (needs root)") from None
        self.cores: float | None = None

    def attach(self, pid: int) -> None:
        """Move process ``pid`` with all its threads into this group."""
        (self.dir / "cgroup.procs").write_text(str(pid))

    def set(self, cores: float | None) -> None:
        """Cap the group at ``cores`` CPUs (None = no cap) and weight it by the same amount."""
        self.cores = cores
        if self.kind == "v1":
            quota = -1 if cores is None else max(1000, round(cores * self.period_us))
            (self.dir / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.dir / "cpu.cfs_quota_us").write_text(str(quota))
            shares = 1024 if cores is None else max(2, round(1024 * cores))
            (self.dir / "cpu.shares").write_text(str(shares))
        else:
            quota = "max" if cores is None else str(max(1000, round(cores * self.period_us)))
            (self.dir / "cpu.max").write_text(f"{quota} {self.period_us}")
            weight = 100 if cores is None else min(10_000, max(1, round(100 * cores)))
            (self.dir / "cpu.weight").write_text(str(weight))

    def throttled(self) -> dict:
        """The kernel's throttling counters for the group (nr_periods, nr_throttled, ...)."""
        out = {}
        stat = self.dir / "cpu.stat"
        if stat.exists():
            for line in stat.read_text().splitlines():
                k, _, v = line.partition(" ")
                if v.strip().isdigit():
                    out[k] = int(v)
        return out

    def remove(self) -> None:
        """Delete the group once its process has exited (processes left: moved to the root)."""
        try:
            procs = (self.dir / "cgroup.procs").read_text().split()
        except OSError:
            return
        root_procs = (self.dir.parent.parent / "cgroup.procs")
        for pid in procs:
            try:
                root_procs.write_text(pid)
            except OSError:
                pass
        for d in (self.dir, self.dir.parent):
            try:
                os.rmdir(d)
            except OSError:
                pass   # parent still holds other nodes' groups, or already gone
