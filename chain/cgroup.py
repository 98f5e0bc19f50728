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


def controller_dir() -> Path | None:
    """The CPU controller's root: the v1 ``cpu`` hierarchy, or the v2 unified root (None if
    neither). Group paths (``CpuQuota.dir``) are under it."""
    d = _v1_dir()
    if d is not None:
        return d
    return CGROUP_ROOT if _v2() else None


def cpu_seconds(group_dir: Path) -> float:
    """CPU time (user + system, seconds) used so far by the processes in the cgroup
    ``group_dir`` of the CPU controller. v2: its ``cpu.stat`` ``usage_usec``. v1: the CPU
    controller keeps no usage (that is cpuacct, a separate hierarchy on some machines, this
    project's among them), so the processes' own counters (/proc/<pid>/stat) of the group's
    members are summed; a member that exited takes its time with it."""
    group_dir = Path(group_dir)
    stat = group_dir / "cpu.stat"
    if stat.exists():
        for line in stat.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                return int(v) / 1e6
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in (group_dir / "cgroup.procs").read_text().split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:          # exited meanwhile
            continue
        total += int(fields[11]) + int(fields[12])        # utime, stime (clock ticks)
    return total / tick


MIN_QUOTA_US = 1000   # the kernel refuses a CFS quota below 1 ms per period


def executor_cores(host_cores: float, miner_cores: float, coupling: str = "shared") -> float:
    """The CPU quota of a MEC host's work kernel: what its miner leaves of the host's
    (``"shared"``: f_m − κ·p_m in the model), or the whole host's (``"separate"``); at least
    the kernel's minimum (1 ms per 100-ms period)."""
    return max(MIN_QUOTA_US / 100_000, host_cores - miner_cores) if coupling == "shared" else host_cores


class QuotaError(ValueError):
    """A CPU quota the kernel cannot enforce (below 1 ms per period, or not positive)."""


def check_quota(cores: float | None, period_us: int = 100_000) -> None:
    """Refuse a quota the kernel would not enforce as asked (the kernel's minimum is 1 ms per
    period: with a 10-ms period, 0.05 cores would silently become 0.1). None: no cap."""
    if cores is None:
        return
    if not cores > 0:
        raise QuotaError(f"a CPU quota must be > 0 cores, got {cores!r}")
    if round(cores * period_us) < MIN_QUOTA_US:
        raise QuotaError(f"a CPU quota of {cores} cores is {cores * period_us:.0f} us per "
                         f"{period_us}-us period, below the kernel's minimum of "
                         f"{MIN_QUOTA_US} us: use at least {MIN_QUOTA_US / period_us:g} cores "
                         "or a longer period")


def write_quota(group_dir: Path, cores: float | None, period_us: int = 100_000,
                weight: float | None = None) -> None:
    """The one CPU-quota writer (the lab's :class:`CpuQuota` and the controller's hash budgets):
    cap the cgroup ``group_dir`` at ``cores`` CPUs per ``period_us`` (None = no cap) and weight
    it by ``weight`` cores' worth (default: the same as ``cores``; 1 core if uncapped). v1
    (``cpu.cfs_quota_us``, ``cpu.shares``) or v2 (``cpu.max``, ``cpu.weight``), as the group's
    files say. QuotaError for a quota the kernel would not enforce; OSError if it cannot write."""
    check_quota(cores, period_us)
    group_dir = Path(group_dir)
    w = weight if weight is not None else (cores if cores is not None else 1.0)
    if (group_dir / "cpu.cfs_quota_us").exists():
        quota = -1 if cores is None else round(cores * period_us)
        # the period only if it changes: on a group whose tasks run, each write of either file
        # resets the group's bandwidth (~0.13 ms here, on the controller's path every slot)
        try:
            same = int((group_dir / "cpu.cfs_period_us").read_text()) == period_us
        except (OSError, ValueError):
            same = False
        if not same:
            (group_dir / "cpu.cfs_period_us").write_text(str(period_us))
        (group_dir / "cpu.cfs_quota_us").write_text(str(quota))
        (group_dir / "cpu.shares").write_text(str(max(2, round(1024 * w))))
    else:
        quota = "max" if cores is None else str(round(cores * period_us))
        (group_dir / "cpu.max").write_text(f"{quota} {period_us}")
        (group_dir / "cpu.weight").write_text(str(min(10_000, max(1, round(100 * w)))))


def read_quota(group_dir: Path) -> tuple[int | None, int]:
    """The quota in force on ``group_dir``, as the kernel reports it: (quota µs per period or
    None for no cap, period µs), from ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (v1) or
    ``cpu.max`` (v2)."""
    group_dir = Path(group_dir)
    if (group_dir / "cpu.cfs_quota_us").exists():
        quota = int((group_dir / "cpu.cfs_quota_us").read_text())
        return (None if quota < 0 else quota), int((group_dir / "cpu.cfs_period_us").read_text())
    quota, period = (group_dir / "cpu.max").read_text().split()
    return (None if quota == "max" else int(quota)), int(period)


def miner_group(host_dir: Path, name: str) -> Path | None:
    """Miner ``name``'s own group in its MEC host's group ``host_dir``: the newest child named
    ``<name>-<geth pid>`` (a restarted miner gets a new one); None if there is none."""
    host_dir = Path(host_dir)
    found = sorted(host_dir.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime) if host_dir.is_dir() else []
    return found[-1] if found else None


def write_budget(host_dir: Path, name: str, miner_cores: float, host_cores: float, coupling: str,
                 period_us: int = 100_000) -> dict | None:
    """One MEC host's hash budget (the controller's :mod:`controller.budgets`, locally or through
    a cluster server's agent, :mod:`nodes.server_agent`): miner ``name`` capped at
    ``miner_cores`` and the host's work kernel (``executor``) at what it leaves
    (:func:`executor_cores`), each at least the kernel's minimum. None if the miner's group is
    gone; QuotaError or OSError as :func:`write_quota`. Returns what was written."""
    group = miner_group(host_dir, name)
    if group is None:
        return None
    left = executor_cores(host_cores, miner_cores, coupling)
    floor = MIN_QUOTA_US / period_us                     # level 0: the kernel's minimum
    for g, c in ((group, miner_cores), (group.parent / "executor", left)):
        write_quota(g, max(c, floor), period_us, weight=c)
    return {"group": group.name, "miner_cores": miner_cores, "executor_cores": left}


class CpuQuota:
    """One cgroup with a CPU quota in cores (1.0 = one full core).

    ``parent`` nests it under another group (a path relative to the CPU controller's root,
    default ``mec-chain``): the parent's quota then caps the children together, which is how
    a MEC host's miner and executor share that host's CPU.
    """

    def __init__(self, name: str, period_us: int = 100_000, parent: str = PARENT):
        self.name, self.period_us, self.parent = name, period_us, parent
        self.kind = available()
        if self.kind is None:
            raise CgroupError("no cgroup CPU controller (neither /sys/fs/cgroup/cpu/"
                              "cpu.cfs_quota_us nor a v2 'cpu' controller): use "
                              "chain.budget_mode = \"threads\"")
        if self.kind == "v1":
            self.dir = _v1_dir() / parent / name
        else:
            # v2 only lets a group's children use the cpu controller once it is delegated,
            # at every level from the root down.
            d = CGROUP_ROOT
            for part in Path(parent).parts:
                (d / "cgroup.subtree_control").write_text("+cpu")
                d = d / part
                d.mkdir(exist_ok=True)
            (d / "cgroup.subtree_control").write_text("+cpu")
            self.dir = d / name
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup {self.dir}: {e} (needs root)") from None
        self.cores: float | None = None

    def attach(self, pid: int) -> None:
        """Move process ``pid`` with all its threads into this group."""
        (self.dir / "cgroup.procs").write_text(str(pid))

    check = staticmethod(check_quota)

    def set(self, cores: float | None, weight: float | None = None) -> None:
        """Cap the group at ``cores`` CPUs (None = no cap) and weight it by ``weight`` cores'
        worth of CPU shares (default: the same as ``cores``; 1 core if uncapped)."""
        write_quota(self.dir, cores, self.period_us, weight)
        self.cores = cores

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the group's processes have used, seconds (:func:`cpu_seconds`)."""
        return cpu_seconds(self.dir)

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
        """Delete the group once its processes have exited (any left: moved to the root), and
        its parents that are left empty."""
        try:
            procs = (self.dir / "cgroup.procs").read_text().split()
        except OSError:
            return
        root = self.dir.parents[len(Path(self.parent).parts)]
        for pid in procs:
            try:
                (root / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        d = self.dir
        while d != root:
            try:
                os.rmdir(d)
            except OSError:
                break   # a parent still holds other groups, or already gone
            d = d.parent


def host_groups(parent: str, host: str, host_cores: float, executor: float, miner_pid: int,
                attach: bool = False) -> list[CpuQuota]:
    """A MEC host's groups as the lab makes them (``testbed.lab``, ``chain.geth``):
    ``<parent>/<host>`` (weighted by its ``host_cores``, no cap), its work kernel's ``executor``
    (capped at ``executor`` cores) and its miner's ``<host>-<miner_pid>`` (no cap until the
    controller's first budget), process ``miner_pid`` moved into it when ``attach``. In creation
    order: remove them in reverse."""
    made = []
    try:
        for name, under, cores, weight in ((host, parent, None, host_cores),
                                           ("executor", f"{parent}/{host}", executor, executor),
                                           (f"{host}-{miner_pid}", f"{parent}/{host}", None, None)):
            made.append(CpuQuota(name, parent=under))
            made[-1].set(cores, weight=weight)
        if attach:
            made[-1].attach(miner_pid)
    except BaseException:
        for q in reversed(made):
            q.remove()
        raise
    return made


def remove_tree(group: str) -> list[str]:
    """Remove ``group`` (a path under the CPU controller's root, in the lab's ``mec-chain`` or
    ``mec-lab`` tree) and every group below it, deepest first; a process still in one is moved
    to the root first; then its parents in the tree that are left empty. Returns the groups
    that could not be removed (empty: all gone)."""
    parts = Path(group).parts
    if len(parts) < 2 or parts[0] not in (PARENT, "mec-lab") or ".." in parts:
        raise ValueError(f"not a group of the lab's trees (mec-chain/..., mec-lab/...): {group!r}")
    root = controller_dir()
    top = root / group if root is not None else None
    if top is None or not top.is_dir():
        return []
    left = []
    for d in sorted((x for x in top.rglob("*") if x.is_dir()), key=lambda x: -len(x.parts)) + [top]:
        try:
            for pid in (d / "cgroup.procs").read_text().split():
                try:
                    (root / "cgroup.procs").write_text(pid)
                except OSError:
                    pass       # exited meanwhile
            d.rmdir()
        except OSError:
            left.append(str(d.relative_to(root)))
    for d in top.parents[:len(parts) - 1]:
        try:
            d.rmdir()
        except OSError:
            break                  # other groups still in it
    return left
