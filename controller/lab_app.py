"""The lab app: the controller's HTTP API, the miners' hash budgets, and a fallback policy.

One job: hold the run's :class:`controller.state.LabState` (in :mod:`controller.shared`) and
let the rest of the lab speak to it:

- it serves the API (:class:`controller.api.Api`) on lab0's address, reachable from the
  policy in the root namespace, the executors on the MEC hosts and the UE containers;
- when the policy puts an assignment in force it calls every *applier* (:mod:`controller.steering`'s
  flows, and its own hash budgets: each miner's CPU quota, the model level's cores from
  :class:`scenario.units.LiveMapping`), and answers with when each took effect; every change is
  logged with its time in ``budgets.jsonl``;
- if no decision arrives for 1.5 slots (the policy's process crashed or hangs), it decides
  itself, round-robin with the budget split equally, so the lab keeps serving, and marks those
  slots as fallback;
- it writes the state to a file every second and reads it back when it starts, so a restarted
  controller picks up where the last one stopped (pending tasks, the assignment in force,
  reports, the topology).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from os_ken.base import app_manager
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from controller import settings, shared
from controller.api import Api
from controller.api_server import make_api_server
from controller.state import Assignment, Refused, round_robin

class BudgetApplier:
    """Writes each miner's CPU quota, and its host's work kernel's, with the lab's one writer
    (:func:`chain.cgroup.write_quota`, cgroup v1 or v2).

    ``miners``: name -> {"host_group": path under the CPU controller (the MEC host's group),
    "period_us"}. The miner's own group is the child named ``<name>-<geth pid>`` (a restarted
    miner gets a new one, found again here).
    """

    def __init__(self, miners: dict[str, dict], levels_cores: list[float], logger):
        self.miners, self.levels_cores, self.logger = miners, levels_cores, logger
        self.in_force: dict[str, float] = {}

    def _group(self, name: str) -> Path | None:
        from chain.cgroup import controller_dir
        root = controller_dir()
        if root is None:
            return None
        base = root / self.miners[name]["host_group"]
        found = sorted(base.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime) if base.is_dir() else []
        return found[-1] if found else None

    def apply(self, a: Assignment) -> dict:
        """Set every miner's quota, and its host's work kernel's to what the miner leaves
        (``coupling = "shared"``: f_m − κ·p_m); {"budgets": wall time the last was written}."""
        from chain.cgroup import MIN_QUOTA_US, executor_cores, write_quota
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
        from chain.cgroup import cpu_seconds
        out = {}
        for name in self.miners:
            group = self._group(name)
            if group is not None:
                try:
                    out[name] = cpu_seconds(group)
                except OSError:
                    continue
        return {"t": time.time(), "seconds": out}


class LabApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = settings.lab()
        if cfg is None:
            raise RuntimeError("controller.lab_app needs --lab-config")
        self.cfg = cfg
        self.state = shared.state()
        self.slot_s = cfg.slot_s
        self.state_file = Path(cfg.state_file)
        self.budgets = BudgetApplier(cfg.miners, cfg.levels_cores, self.logger)
        self.state.probe = self.budgets.cpu_seconds
        shared.appliers.insert(0, ("budgets", self.budgets.apply))
        token = Path(cfg.token_file).read_text().strip()
        from controller.live_view import page as live_page      # GET /: the live view
        self.api = Api(self.state, cfg.accounts, token, on_assignment=self.apply, page=live_page,
                       extra={"PUT topology": self.put_topology, "PUT slot": self.put_slot},
                       work=cfg.work)
        self.log = open(cfg.budget_log, "a", buffering=1)
        self.apply_lock = threading.Lock()
        self._restore()
        hub.spawn(self._serve)
        hub.spawn(self._watchdog)

    # ---- API ---------------------------------------------------------------------------------
    def _serve(self):
        """Serve the API on lab0's address. The controller starts before the network, so the
        address appears only once Mininet has made lab0's interface: keep trying for a minute."""
        host, port = self.cfg.api_host, self.cfg.api_port
        deadline = time.monotonic() + 60
        while True:
            try:
                server = make_api_server(host, port, self.api, trusted=(host, "127.0.0.1"),
                                         read_deadline_s=self.cfg.api_read_deadline_s,
                                         max_connections=self.cfg.api_max_connections,
                                         per_client=self.cfg.api_per_client)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    self.logger.error("lab API cannot listen on %s:%d: %s", host, port, e)
                    return
                hub.sleep(0.2)
        self.logger.info("lab API on http://%s:%d", host, port)
        server.serve_forever(poll_interval=0.5)

    def put_topology(self, data: dict) -> dict:
        for key in ("hosts", "service", "probe", "executor_port"):
            if key not in data:
                raise Refused(f"a topology needs {key}")
        shared.set_topology(data)
        self._reapply()
        return {"hosts": len(data["hosts"])}

    def put_slot(self, rec: dict) -> dict:
        self.state.add_slot(rec)
        return {"slots": len(self.state.slots)}

    def _reapply(self):
        a = self.state.assignment
        if a is not None:
            self.apply(a)

    # ---- applying a decision ---------------------------------------------------------------
    def apply(self, a: Assignment) -> dict:
        with self.apply_lock:
            out = {}
            for name, fn in shared.appliers:
                try:
                    got = fn(a)
                except Exception as e:         # one part failing must not block the others
                    self.logger.warning("applying slot %s: %s failed: %s", a.slot, name, e)
                    continue
                for what, t in got.items():
                    if isinstance(t, float) and what in ("budgets", "flows"):
                        self.state.mark_applied(a.slot, what, t)
                        out[f"{what}_applied_s"] = t - a.decided_at
                    else:
                        out[what] = t
            if self.log is not None:
                self.log.write(json.dumps({"slot": a.slot, "decided_at": a.decided_at, "levels": a.levels,
                                           "serve": a.serve, "fallback": a.fallback, **out}) + "\n")
            self.state.miners["budgets_cores"] = dict(self.budgets.in_force)
            return out

    # ---- the fallback: keep serving without a policy -----------------------------------
    def _watchdog(self):
        while True:
            hub.sleep(self.slot_s / 2)
            try:
                self._maybe_fallback()
            except Exception as e:
                self.logger.warning("fallback failed: %s", e)

    def _maybe_fallback(self):
        st = self.state
        last = st.assignment.decided_at if st.assignment else None
        if last is None or time.time() - last < 1.5 * self.slot_s:
            return                                  # the policy is alive (or not started yet)
        slot = (st.assignment.slot + 1) if st.assignment else 0
        with st.lock:
            waiting = [u for _, u in sorted((t.since, u) for u, t in st.pending.items() if t.mec is None)]
            serve = round_robin(list(st.servers), st.down, waiting, turn=slot)
            k = self.cfg.equal_level
        a = st.assign(slot=slot, serve=serve,
                      levels={m: k for m in st.servers}, fallback=True)
        self.logger.warning("no decision for %.0f s: fallback round-robin (%d UEs)", time.time() - last,
                            sum(u is not None for u in serve.values()))
        self.apply(a)
        st.release(a)

    # ---- surviving a restart ---------------------------------------------------------------
    def _restore(self):
        if self.state_file is not None and self.state_file.exists():
            try:
                saved = json.loads(self.state_file.read_text())
                self.state.restore(saved)
                if saved.get("topology"):
                    shared.set_topology(saved["topology"])
                self.logger.info("state restored from %s (saved %.1f s ago)", self.state_file,
                                 time.time() - saved.get("t", time.time()))
            except Exception as e:
                self.logger.warning("could not restore %s: %s", self.state_file, e)
        if self.state_file is not None:
            self.state.journal = self._save        # an assignment or a task is on disk before it is seen
            hub.spawn(self._persist)

    def _save(self):
        """The state to ``state_file``, atomically (write, then rename), under the state's lock."""
        with self.state.lock:
            try:
                data = {**self.state.dump(), "topology": dict(shared.topology), "t": time.time()}
                tmp = self.state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(data))
                tmp.replace(self.state_file)
            except Exception as e:
                self.logger.warning("state not saved: %s", e)

    def _persist(self):
        while True:                                # reports, links, slots: once a second
            hub.sleep(1.0)
            self._save()

