"""Budgets: each miner's hash budget p_m, as its CPU quota, whenever an assignment is put in force.

The policy's hash level for a server is a model level (MHash/s); this app writes it as the
miner's cgroup CPU quota (the level's cores, :class:`scenario.units.LiveMapping`), and its
host's work kernel's quota to what the miner leaves (``coupling = "shared"``: f_m − κ·p_m),
with the lab's one writer (:func:`chain.cgroup.write_quota`, cgroup v1 or v2): here for the
miners on this machine, through each cluster server's agent (:mod:`nodes.server_agent`, the
same writer there) for the miners placed on other servers. It is an *applier*
(:data:`controller.shared.appliers`): written while the steering flows, sent first, are on their
way to the switches. It also reads each miner's CPU time for the state's snapshot
(:attr:`controller.state.LabState.probe`), from which the policy's side computes the hash p̂_m
really done.
"""
from __future__ import annotations

import time
from pathlib import Path

from os_ken.base import app_manager
from os_ken.ofproto import ofproto_v1_3

from chain.cgroup import controller_dir, cpu_seconds, miner_group, write_budget
from controller import settings, shared
from controller.state import Assignment
from nodes.server_agent import AgentClient, AgentError


class BudgetApplier:
    """Writes each miner's CPU quota, and its host's work kernel's.

    ``miners``: name -> {"host_group": path under the CPU controller (the MEC host's group),
    "period_us", "host_cores", "coupling"} and, for a miner on another server of a cluster,
    "server" (its name) and "levels_cores" (each level's quota by that server's calibration,
    instead of ``levels_cores``). The miner's own group is the child named ``<name>-<geth pid>`` (a
    restarted miner gets a new one, found again here). ``agents``: server name -> the
    :class:`nodes.server_agent.AgentClient` of that server's agent, which applies the budgets
    of the miners placed there (issue 22) with the same writer; the others are written here.
    """

    def __init__(self, miners: dict[str, dict], levels_cores: list[float], logger,
                 agents: dict[str, AgentClient] | None = None):
        self.miners, self.levels_cores, self.logger = miners, levels_cores, logger
        self.agents = dict(agents or {})
        self.in_force: dict[str, float] = {}
        self.written: dict[str, tuple[Path, float]] = {}    # local miner -> (its group, cores) last written

    def _agent(self, name: str) -> str | None:
        server = self.miners[name].get("server")
        return server if server in self.agents else None

    def _group(self, name: str) -> Path | None:
        root = controller_dir()
        return None if root is None else miner_group(root / self.miners[name]["host_group"], name)

    def apply(self, a: Assignment) -> dict:
        """Set every miner's quota, and its host's work kernel's to what the miner leaves
        (``coupling = "shared"``: f_m − κ·p_m): here, or one request per server through its
        agent; {"budgets": wall time the last was written (here: its agent's answer came)}."""
        remote: dict[str, dict[str, float]] = {}
        root = controller_dir()
        for name, k in a.levels.items():
            cores = self.miners[name].get("levels_cores", self.levels_cores)[k]
            server = self._agent(name)
            if server is not None:
                remote.setdefault(server, {})[name] = cores
                continue
            m = self.miners[name]
            host = None if root is None else root / m["host_group"]
            # Unchanged since this applier wrote it, to the same group (a restarted miner has a
            # new one): in force already, as nothing else writes these groups. Writing it again
            # cost 20 cgroup writes a slot on the decision's path (docs/performance.md, change 8).
            last = self.written.get(name)
            if host is not None and last is not None and last[1] == cores and last[0] == miner_group(host, name):
                self.in_force[name] = cores
                continue
            try:
                done = None if host is None else write_budget(
                    host, name, cores, float(m.get("host_cores", 1.0)),
                    m.get("coupling", "shared"), int(m.get("period_us", 100_000)))
            except OSError as e:
                self.logger.warning("budget for %s not applied: %s", name, e)
                continue
            if done is None:
                self.logger.warning("budget for %s not applied: its miner's cgroup is gone", name)
                continue
            self.in_force[name] = cores
            self.written[name] = (host / done["group"], cores)
        for server, budgets in remote.items():
            try:
                answer = self.agents[server].apply(budgets)
            except AgentError as e:
                self.logger.warning("budgets for %s not applied on server %s: %s", ", ".join(budgets), server, e)
                continue
            for name, why in answer.get("not_applied", {}).items():
                self.logger.warning("budget for %s not applied on server %s: %s", name, server, why)
            for name in answer.get("applied", {}):
                self.in_force[name] = budgets[name]
        return {"budgets": time.time(), "budgets_cores": dict(self.in_force)}

    def cpu_seconds(self) -> dict:
        """Each miner's CPU time so far (its cgroup's, s) and when read: over a slot, the CPU it
        really mined with, from which the policy's side computes p̂_m (scenario.units); a remote
        miner's from its server's agent."""
        out = {}
        for name in self.miners:
            if self._agent(name) is not None:
                continue
            group = self._group(name)
            if group is not None:
                try:
                    out[name] = cpu_seconds(group)
                except OSError:
                    continue
        for server, agent in self.agents.items():
            try:
                out.update({n: s for n, s in agent.cpu_seconds().items() if self._agent(n) == server})
            except AgentError as e:
                self.logger.debug("no CPU times from server %s: %s", server, e)
        return {"t": time.time(), "seconds": out}


class Budgets(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = settings.required(__name__)
        self.state = shared.state()
        agents = {server: AgentClient(a["address"], Path(a["secret_file"]).read_text().strip())
                  for server, a in cfg.agents.items()}
        self.budgets = BudgetApplier(cfg.miners, cfg.levels_cores, self.logger, agents)
        self.state.probe = self.budgets.cpu_seconds
        shared.appliers.append(("budgets", self.apply))   # after the steering flows are sent

    def apply(self, a: Assignment) -> dict:
        try:
            return self.budgets.apply(a)
        finally:                                   # what is in force, for GET /state and the live view
            self.state.miners["budgets_cores"] = dict(self.budgets.in_force)
