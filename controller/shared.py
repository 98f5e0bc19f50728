"""What the controller's apps share in one process: the lab's state and its topology.

The apps (:mod:`controller.l2_switch`, :mod:`controller.monitor`, :mod:`controller.steering`,
:mod:`controller.lab_app`) run on os-ken's native threads in one process; each does one job
and they meet here: :func:`state` is the one :class:`controller.state.LabState` of the run,
:data:`topology` what the lab told the controller about its hosts (``PUT /topology``: IP,
MAC, switch and port of each), and :data:`appliers` the apps that put a new assignment in
force (budgets, steering flows): each returns when it took effect.
"""
from __future__ import annotations

import threading
from typing import Callable

from controller import settings
from controller.state import Assignment, LabState

_lock = threading.Lock()
_state: LabState | None = None

#: host name -> {"ip", "mac", "dpid", "port", "role"}; plus "service" and "probe" entries.
topology: dict = {}
topology_ready = threading.Event()
#: (name, fn(assignment) -> {what: wall time applied}), called in order on every assignment.
appliers: list[tuple[str, Callable[[Assignment], dict]]] = []


def state() -> LabState:
    """The run's state (made from the lab settings on first use)."""
    global _state
    with _lock:
        if _state is None:
            cfg = settings.lab()
            if cfg is None:
                raise RuntimeError("the lab apps need --lab-config")
            _state = LabState(cfg.servers, cfg.ues, cfg.levels_mhs, cfg.budget_mhs, cfg.window_s, cfg.task_ranges)
        return _state


def set_topology(info: dict) -> None:
    topology.clear()
    topology.update(info)
    topology_ready.set()
