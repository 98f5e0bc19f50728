"""What the controller's apps share in one process: the lab's state, its topology, and the one
way an assignment is put in force.

The apps (:mod:`controller.l2_switch`, :mod:`controller.monitor`, :mod:`controller.steering`,
:mod:`controller.budgets`, :mod:`controller.journal`, :mod:`controller.fallback`,
:mod:`controller.api_app`) run on os-ken's native threads in one process; each does one job
and they meet here: :func:`state` is the one :class:`controller.state.LabState` of the run,
:data:`topology` what the lab told the controller about its hosts (``PUT /topology``: IP,
MAC, switch and port of each), :data:`appliers` the apps that put a new assignment in force
(budgets, steering flows): each returns when it took effect, and :func:`put_in_force` calls
them for the policy's assignments (the API) and the controller's own (the fallback).
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable

from controller import settings
from controller.state import Assignment, LabState

_lock = threading.Lock()
_state: LabState | None = None

#: host name -> {"ip", "mac", "dpid", "port", "role"}; plus "service" and "probe" entries.
topology: dict = {}
topology_ready = threading.Event()
#: (name, fn(assignment) -> {what: wall time applied}), called in order on every assignment. An
#: applier that waits for others (the switches' barrier) returns instead a callable that waits
#: and returns that dict: it is called once every applier has started, so the waits overlap.
appliers: list[tuple[str, Callable[[Assignment], dict | Callable[[], dict]]]] = []

_apply_lock = threading.Lock()
_budget_log = None            # budgets.jsonl, opened on the first assignment
logger = logging.getLogger(__name__)


def state() -> LabState:
    """The run's state (made from the lab settings on first use)."""
    global _state
    with _lock:
        if _state is None:
            cfg = settings.required("the lab apps")
            _state = LabState(cfg.servers, cfg.ues, cfg.levels_mhs, cfg.budget_mhs, cfg.window_s, cfg.task_ranges)
        return _state


def set_topology(info: dict) -> None:
    topology.clear()
    topology.update(info)
    topology_ready.set()


def put_in_force(a: Assignment) -> dict:
    """Call every applier in order (then wait for those that wait), one assignment at a time;
    mark on the state when its budgets and flows took effect, and log the assignment with those
    times as one line of ``budgets.jsonl``. Returns ``{"budgets_applied_s", "flows_applied_s"}`` (s after the
    decision) and what else the appliers said."""
    global _budget_log
    with _apply_lock:
        out, waits = {}, []
        for name, fn in appliers:
            try:
                got = fn(a)
            except Exception as e:         # one part failing must not block the others
                logger.warning("applying slot %s: %s failed: %s", a.slot, name, e)
                continue
            waits.append((name, got if callable(got) else (lambda got=got: got)))
        for name, finish in waits:
            try:
                got = finish()
            except Exception as e:
                logger.warning("applying slot %s: %s failed: %s", a.slot, name, e)
                continue
            for what, t in got.items():
                if isinstance(t, float) and what in ("budgets", "flows"):
                    state().mark_applied(a.slot, what, t)
                    out[f"{what}_applied_s"] = t - a.decided_at
                else:
                    out[what] = t
        if _budget_log is None:
            _budget_log = open(settings.required("the budgets' log").budget_log, "a", buffering=1)
        _budget_log.write(json.dumps({"slot": a.slot, "decided_at": a.decided_at, "levels": a.levels,
                                      "serve": a.serve, "fallback": a.fallback, **out}) + "\n")
        return out
