"""Budgets: each miner's hash budget p_m, as its CPU quota, whenever an assignment is put in force.

The policy's hash level for a server is a model level (MHash/s); this app writes it as the
miner's cgroup CPU quota (the level's cores, :class:`scenario.units.LiveMapping`), and its
host's work kernel's quota to what the miner leaves (``coupling = "shared"``: f_m − κ·p_m),
with the lab's one writer (:func:`chain.cgroup.write_quota`, cgroup v1 or v2). It is the first
*applier* (:data:`controller.shared.appliers`): budgets before steering flows. It also reads
each miner's CPU time for the state's snapshot (:attr:`controller.state.LabState.probe`), from
which the policy's side computes the hash p̂_m really done.
"""
from __future__ import annotations

import time
from pathlib import Path

from os_ken.base import app_manager
from os_ken.ofproto import ofproto_v1_3

from chain.cgroup import MIN_QUOTA_US, controller_dir, cpu_seconds, executor_cores, write_quota
from controller import settings, shared
from controller.state import Assignment


class BudgetApplier:
    """Writes each miner's CPU quota, and its host's work kernel's.

    ``miners``: name -> {"host_group": path under the CPU controller (the MEC host's group),
    "period_us", "host_cores", "coupling"}. The miner's own group is the child named
    ``<name>-<geth pid>`` (a restarted miner gets a new one, found again here).
    """

    def __init__(self, miners: dict[str, dict], levels_cores: list[float], logger):
        self.miners, self.levels_cores, self.logger = miners, levels_cores, logger
        self.in_force: dict[str, float] = {}

    def _group(self, name: str) -> Path | None:
        root = controller_dir()
        if root is None:
            return None
        base = root / self.miners[name]["host_group"]
        found = sorted(base.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime) if base.is_dir() else []
        return found[-1] if found else None

    def apply(self, a: Assignment) -> dict:
        """Set every miner's quota, and its host's work kernel's to what the miner leaves
        (``coupling = "shared"``: f_m − κ·p_m); {"budgets": wall time the last was written}."""
        for name, k in a.levels.items():
            cores = self.levels_cores[k]
            group = self._group(name)
            if group is None:
                self.logger.warning("budget for %s not applied: its miner's cgroup is gone", name)
                continue
            m = self.miners[name]
            period = int(m.get("period_us", 100_000))
            left = executor_cores(float(m.get("host_cores", 1.0)), cores, m.get("coupling", "shared"))
            try:
                for g, c in ((group, cores), (group.parent / "executor", left)):
                    write_quota(g, max(c, MIN_QUOTA_US / period), period, weight=c)   # level 0: the kernel's minimum
            except OSError as e:
                self.logger.warning("budget for %s not applied: %s", name, e)
                continue
            self.in_force[name] = cores
        return {"budgets": time.time(), "budgets_cores": dict(self.in_force)}

    def cpu_seconds(self) -> dict:
        """Each miner's CPU time so far (its cgroup's, s) and when read: over a slot, the CPU it
        really mined with, from which the policy's side computes p̂_m (scenario.units)."""
        out = {}
        for name in self.miners:
            group = self._group(name)
            if group is not None:
                try:
                    out[name] = cpu_seconds(group)
                except OSError:
                    continue
        return {"t": time.time(), "seconds": out}


class Budgets(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = settings.required(__name__)
        self.state = shared.state()
        self.budgets = BudgetApplier(cfg.miners, cfg.levels_cores, self.logger)
        self.state.probe = self.budgets.cpu_seconds
        shared.appliers.insert(0, ("budgets", self.apply))     # before the steering flows

    def apply(self, a: Assignment) -> dict:
        try:
            return self.budgets.apply(a)
        finally:                                   # what is in force, for GET /state and the live view
            self.state.miners["budgets_cores"] = dict(self.budgets.in_force)
