"""What the SDN controller knows about the lab, and the rules for changing it.

:class:`LabState` holds the state s of eq. (9) as measured: each UE's pending task (its
service demand ξ_u, data size d_u, desired time τ_u), each MEC server's reputation Υ_m
(eq. (3) over a sliding window of the executors' reports), the policy's assignment (which UE
each server serves, eq. (10)'s x_u^m) and hash budgets (eq. (10)'s p_m, as model levels), and
the latest measurements of links and miners. It is plain Python (no os-ken), guarded by one
lock; the controller's apps and its HTTP API (:mod:`controller.api`) share one instance.

Every change is validated as a whole before anything is applied: an assignment naming an
unknown server, a UE twice, a UE without a pending task, or a budget over the limit is
refused with a :class:`Refused` error that says why, and the previous assignment stays.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


def round_robin(servers: list[str], down, waiting: list[str], turn: int = 0) -> dict[str, str | None]:
    """The one round-robin (the ``round_robin`` policy and the controller's fallback): the
    waiting UEs, oldest first, to the servers that are up, in order, starting ``turn`` servers
    further each slot; one UE per server, None where no UE is left. Hash levels are the
    caller's (both split the budget equally)."""
    up = [m for m in servers if m not in set(down)]
    k = turn % max(1, len(up))
    serve: dict[str, str | None] = {m: None for m in servers}
    for m, u in zip(up[k:] + up[:k], waiting):
        serve[m] = u
    return serve


class Refused(ValueError):
    """A request that changes nothing: the message says what is wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class PendingTask:
    """A UE's task waiting for a server: R_u = (d_u, ξ_u, τ_u) in model units."""
    ue: str
    task_id: int
    data_mb: float
    demand: float
    desired_s: float
    since: float                       # wall time the UE announced it
    assigned_slot: int | None = None   # the slot that gave it a server
    mec: str | None = None
    released: bool = False             # the steering to its server is in force: the UE may go


@dataclass
class Report:
    """One finished (or failed) task, as an executor or a UE reported it."""
    source: str          # "executor" or "ue"
    mec: str
    ue: str
    task_id: int
    desired_s: float     # τ_u
    latency_s: float     # T_u^m as measured (service latency: upload, queue, compute, download)
    ok: bool
    t: float             # wall time of the report
    detail: dict = field(default_factory=dict)


@dataclass
class Assignment:
    """The policy's decision for one slot: UE per server (None = idle) and hash level per server."""
    slot: int
    serve: dict[str, str | None]
    levels: dict[str, int]
    decided_at: float                                  # wall time the API accepted it
    applied: dict[str, float] = field(default_factory=dict)   # what -> wall time it took effect
    fallback: bool = False                             # decided by the controller's fallback


class LabState:
    """The controller's view of the lab; thread-safe (os-ken runs its apps on native threads
    here, and the API serves a thread per connection).

    Args:
        servers: MEC server names (mec1 ...), in order.
        ues: UE names (ue1 ...).
        levels_mhs: the model's hash levels p (MHash/s); a budget is an index into them.
        budget_mhs: Σ_m p_m may not exceed this (the model's P).
        window_s: reports older than this leave the reputation window (eq. (3)).
        task_ranges: ``{"data_mb": (lo, hi), "demand": ..., "desired_s": ...}``, Table I's
            ranges of the scenario: an announced task outside them is refused.
    """

    def __init__(self, servers: list[str], ues: list[str], levels_mhs: list[float],
                 budget_mhs: float, window_s: float = 60.0, task_ranges: dict | None = None):
        self.servers, self.ues = list(servers), list(ues)
        self.task_ranges = {k: (float(v[0]), float(v[1])) for k, v in (task_ranges or {}).items()}
        self.levels_mhs, self.budget_mhs, self.window_s = list(levels_mhs), budget_mhs, window_s
        self.lock = threading.Condition()
        self.pending: dict[str, PendingTask] = {}          # ue -> its waiting task
        self.reports: deque[Report] = deque()
        self.assignment: Assignment | None = None
        self.history: deque[Assignment] = deque(maxlen=1000)
        self.down: set[str] = set()                        # servers the monitor finds unreachable
        self.links: dict[str, Any] = {}                    # monitor's measurements
        self.miners: dict[str, Any] = {}                   # hash rates, budgets in force
        self.counters = {"tasks": 0, "reports": 0, "assignments": 0, "refused": 0}
        # mec -> {(ue, task id): the task as announced (desired_s, data_mb, demand)}: the only
        # tasks a report may be about, and the τ_u a report counts with (never the reporter's)
        self._assigned: dict[str, dict[tuple[str, int], dict]] = {m: {} for m in self.servers}
        self.slots: deque[dict] = deque(maxlen=30)          # the policy's last measured slots (live view)
        # read at every snapshot, outside the lock: the miners' CPU time so far (controller.budgets)
        self.probe: Callable[[], dict] | None = None
        # called under the lock after every change a restart must not lose (an assignment, an
        # announced or dropped task): whoever sees the change sees it only once it is on disk
        self.journal: Callable[[], None] | None = None

    # ---- UEs announce tasks -------------------------------------------------------------
    def add_task(self, ue: str, task_id: int, data_mb: float, demand: float, desired_s: float) -> PendingTask:
        if ue not in self.ues:
            raise Refused(f"unknown UE {ue!r}")
        if not isinstance(task_id, int) or isinstance(task_id, bool) or not 0 <= task_id < 2 ** 63:
            raise Refused(f"task_id must be an integer in [0, 2^63), got {task_id!r}")
        for name, v in (("data_mb", data_mb), ("demand", demand), ("desired_s", desired_s)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not v > 0:
                raise Refused(f"{name} must be a finite number > 0, got {v!r}")
            lo, hi = self.task_ranges.get(name, (0.0, math.inf))
            if not lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                raise Refused(f"{name} = {v!r} is outside the scenario's range [{lo:g}, {hi:g}]")
        with self.lock:
            old = self.pending.get(ue)
            if old is not None and old.task_id == task_id:
                return old                                  # a retried announcement
            task = PendingTask(ue, int(task_id), float(data_mb), float(demand), float(desired_s), time.time())
            self.pending[ue] = task
            self.counters["tasks"] += 1
            self._journal()
            self.lock.notify_all()
            return task

    def drop_task(self, ue: str, task_id: int) -> None:
        """The UE is done with the task (served, failed or given up)."""
        with self.lock:
            t = self.pending.get(ue)
            if t is not None and t.task_id == task_id:
                del self.pending[ue]
                self._journal()

    def wait_assigned(self, ue: str, task_id: int, timeout: float) -> PendingTask | None:
        """Block until the UE's task has a server (or ``timeout`` s); the task, or None."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                t = self.pending.get(ue)
                if t is None or t.task_id != task_id:
                    raise Refused(f"{ue} has no pending task {task_id}", status=404)
                if t.mec is not None and t.released:
                    return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.lock.wait(left)

    # ---- the policy decides -----------------------------------------------------------------
    def validate(self, slot: Any, serve: Any, levels: Any) -> tuple[int, dict, dict]:
        """Check a whole assignment; return it normalised or raise :class:`Refused`."""
        if not isinstance(slot, int) or isinstance(slot, bool) or slot < 0:
            raise Refused(f"slot must be an integer >= 0, got {slot!r}")
        if not isinstance(serve, dict) or not isinstance(levels, dict):
            raise Refused("serve and levels must be objects keyed by MEC server name")
        unknown = sorted(set(serve) - set(self.servers)) + sorted(set(levels) - set(self.servers))
        if unknown:
            raise Refused(f"unknown server(s) {', '.join(map(str, unknown))}; servers: {', '.join(self.servers)}")
        chosen = [u for u in serve.values() if u is not None]
        for u in chosen:
            if u not in self.ues:
                raise Refused(f"unknown UE {u!r}")
        twice = sorted({u for u in chosen if chosen.count(u) > 1})
        if twice:
            raise Refused(f"UE(s) {', '.join(twice)} assigned to more than one server")
        with self.lock:
            idle = sorted(u for u in chosen if u not in self.pending or self.pending[u].mec is not None)
            down = sorted(m for m, u in serve.items() if u is not None and m in self.down)
        if idle:
            raise Refused(f"UE(s) {', '.join(idle)} have no task waiting for a server")
        if down:
            raise Refused(f"server(s) {', '.join(down)} are unreachable and cannot serve")
        full = {m: levels.get(m) for m in self.servers}
        for m, k in full.items():
            if k is None:
                raise Refused(f"no hash level for {m}: every server needs one")
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(self.levels_mhs):
                raise Refused(f"hash level of {m} must be an index in [0, {len(self.levels_mhs) - 1}], got {k!r}")
        total = sum(self.levels_mhs[k] for k in full.values())
        if total > self.budget_mhs + 1e-9:
            raise Refused(f"hash budgets add up to {total:g} MHash/s, over the limit {self.budget_mhs:g}")
        return slot, {m: serve.get(m) for m in self.servers}, full

    def assign(self, slot: int, serve: dict, levels: dict, fallback: bool = False) -> Assignment:
        """Validate, then put the assignment in force and wake the UEs it names."""
        try:
            slot, serve, levels = self.validate(slot, serve, levels)
        except Refused:
            with self.lock:
                self.counters["refused"] += 1
            raise
        with self.lock:
            a = Assignment(slot, serve, levels, time.time(), fallback=fallback)
            if fallback:
                self.counters["fallback"] = self.counters.get("fallback", 0) + 1
            for m, u in serve.items():
                if u is not None:
                    t = self.pending[u]
                    t.assigned_slot, t.mec = slot, m
                    self._assigned[m][(u, t.task_id)] = {"desired_s": t.desired_s, "data_mb": t.data_mb,
                                                         "demand": t.demand}
            self.assignment = a
            self.history.append(a)
            self.counters["assignments"] += 1
            self._journal()
            self.lock.notify_all()
            return a

    def _journal(self) -> None:
        if self.journal is not None:
            self.journal()

    def release(self, a: Assignment) -> None:
        """Tell the UEs of ``a`` their servers: only once the switches steer their traffic there
        (a UE that connected before would reach its previous server, or none)."""
        with self.lock:
            for m, u in a.serve.items():
                t = self.pending.get(u) if u is not None else None
                if t is not None and t.mec == m:
                    t.released = True
            self.lock.notify_all()

    def mark_applied(self, slot: int, what: str, t: float | None = None) -> None:
        """Record when part of a slot's decision took effect (a switch, a miner)."""
        with self.lock:
            for a in reversed(self.history):
                if a.slot == slot:
                    a.applied[what] = time.time() if t is None else t
                    return

    # ---- reports and reputation ------------------------------------------------------------
    def add_report(self, r: Report) -> None:
        if r.mec not in self.servers:
            raise Refused(f"unknown server {r.mec!r}")
        with self.lock:
            self.reports.append(r)
            self.counters["reports"] += 1
            self._expire(time.time())

    def _expire(self, now: float) -> None:
        while self.reports and self.reports[0].t < now - self.window_s:
            self.reports.popleft()

    def reputation(self, now: float | None = None) -> dict[str, dict]:
        """Υ_m = Σ τ_u / Σ T_u^m over the tasks of the window (eq. (3)).

        T_u^m is the executor's measured service latency. A task that failed counts with T = the
        window's length, whatever its executor reported: the UE waited in vain. Failed means
        proven: the executor says so itself, a UE's ``wrong_result`` claim that the controller
        checked, or a UE's claim that an accepted task never came back, carrying the server's
        signed acceptance, while the server does not report it served (if it does, one of the
        two is wrong and neither counts: ``disputed``). Every other claim (a refusal, no
        evidence) is listed by kind in ``unproven_by_kind`` and changes nothing. No evidence at
        all: Υ_m = 1.
        """
        with self.lock:
            self._expire(time.time() if now is None else now)
            reports = list(self.reports)
        served_by_executor = {(r.mec, r.ue, r.task_id) for r in reports if r.ok and r.source == "executor"}
        failed, unproven, disputed = {}, [], []
        for r in reports:
            if r.ok:
                continue
            key, proven = (r.mec, r.ue, r.task_id), r.detail.get("proven")
            if r.source == "executor" or proven == "wrong_result":
                failed[key] = r
            elif proven == "accepted" and key not in served_by_executor:
                failed[key] = r
            elif proven == "accepted":
                disputed.append(r)
            else:
                unproven.append(r)
        served = {(r.mec, r.ue, r.task_id): r for r in reports
                  if r.ok and r.source == "executor" and (r.mec, r.ue, r.task_id) not in failed}
        acc = {m: {"desired_s": 0.0, "latency_s": 0.0, "tasks": 0, "failed": 0, "failed_by_kind": {},
                   "unproven_by_kind": {}, "disputed": 0} for m in self.servers}
        for r in unproven:
            k = acc[r.mec]["unproven_by_kind"]
            k[r.detail.get("kind", "?")] = k.get(r.detail.get("kind", "?"), 0) + 1
        for r in disputed:
            acc[r.mec]["disputed"] += 1
        for (m, _, _), r in served.items():
            acc[m]["tasks"] += 1
            acc[m]["desired_s"] += r.desired_s
            acc[m]["latency_s"] += r.latency_s
        for (m, _, _), r in failed.items():
            acc[m]["failed"] += 1
            kind = r.detail.get("kind", r.source)       # a UE's names its kind; an executor's own failure
            acc[m]["failed_by_kind"][kind] = acc[m]["failed_by_kind"].get(kind, 0) + 1
            acc[m]["desired_s"] += r.desired_s
            acc[m]["latency_s"] += self.window_s
        for a in acc.values():
            a["reputation"] = a["desired_s"] / a["latency_s"] if a["latency_s"] > 0 else 1.0
        return acc

    def add_slot(self, rec: dict) -> None:
        """A slot as the policy measured it (utility terms, blocks, latency), for the live view."""
        with self.lock:
            self.slots.append(rec)

    def reports_since(self, t: float) -> list[dict]:
        with self.lock:
            return [asdict(r) for r in self.reports if r.t > t]

    def was_assigned(self, ue: str, mec: str, task_id: int) -> bool:
        """Whether the policy gave ``ue``'s task ``task_id`` to ``mec`` (a report about any
        other pair is not the reporter's to make)."""
        with self.lock:
            return (ue, task_id) in self._assigned.get(mec, {})

    def announced(self, ue: str, mec: str, task_id: int) -> dict | None:
        """The task as its UE announced it (desired_s, data_mb, demand), if the policy gave it
        to ``mec``; else None."""
        with self.lock:
            t = self._assigned.get(mec, {}).get((ue, task_id))
            return dict(t) if t is not None else None

    # ---- surviving a controller restart ----------------------------------------------------
    def dump(self) -> dict:
        with self.lock:
            return {"pending": {u: asdict(t) for u, t in self.pending.items()},
                    "reports": [asdict(r) for r in self.reports],
                    "assignment": asdict(self.assignment) if self.assignment else None,
                    "down": sorted(self.down), "counters": dict(self.counters),
                    "assigned": {m: [[u, t, d] for (u, t), d in v.items()] for m, v in self._assigned.items()},
                    "slots": list(self.slots)}

    def restore(self, d: dict) -> None:
        with self.lock:
            self.pending = {u: PendingTask(**t) for u, t in d.get("pending", {}).items()}
            self.reports = deque(Report(**r) for r in d.get("reports", []))
            a = d.get("assignment")
            self.assignment = Assignment(**a) if a else None
            if self.assignment:
                self.history.append(self.assignment)
            self.down = set(d.get("down", []))
            self.counters.update(d.get("counters", {}))
            self.counters["restored"] = self.counters.get("restored", 0) + 1
            for m, v in d.get("assigned", {}).items():
                self._assigned.setdefault(m, {}).update(((x[0], int(x[1])), dict(x[2])) for x in v)
            self.slots.extend(d.get("slots", []))
            self.lock.notify_all()

    # ---- the state s of eq. (9) ---------------------------------------------------------------
    def snapshot(self) -> dict:
        rep = self.reputation()
        miner_cpu = self.probe() if self.probe is not None else {}
        with self.lock:
            a = self.assignment
            return {
                "t": time.time(),
                "servers": self.servers, "ues": self.ues,
                "pending": {u: asdict(t) for u, t in self.pending.items()},
                "reputation": {m: r["reputation"] for m, r in rep.items()},
                "reputation_detail": rep,
                "assignment": asdict(a) if a else None,
                "down": sorted(self.down),
                "links": dict(self.links), "miners": dict(self.miners), "miner_cpu": miner_cpu,
                "levels_mhs": self.levels_mhs, "budget_mhs": self.budget_mhs,
                "counters": dict(self.counters),
                "recent_slots": list(self.slots),
            }
