"""Fallback: keep the lab serving when the policy is silent.

If no decision arrives for 1.5 slots (the policy's process crashed or hangs), this app decides
itself: the waiting UEs round-robin over the servers that are up (:func:`controller.state.round_robin`,
the one round-robin), every server at the model's equal hash level (the budget split equally).
The assignment is marked ``fallback`` and put in force like a policy's (:func:`controller.shared.put_in_force`,
so it is logged in ``budgets.jsonl``); a policy that comes back takes over with its next decision.
"""
from __future__ import annotations

import time

from os_ken.base import app_manager
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from controller import settings, shared
from controller.state import round_robin

SILENT_SLOTS = 1.5     # slots without a decision before the controller decides itself


class Fallback(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = settings.required(__name__)
        self.state = shared.state()
        self.slot_s, self.equal_level = cfg.slot_s, cfg.equal_level
        hub.spawn(self._watchdog)

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
        if last is None or time.time() - last < SILENT_SLOTS * self.slot_s:
            return                                  # the policy is alive (or not started yet)
        slot = (st.assignment.slot + 1) if st.assignment else 0
        with st.lock:
            waiting = [u for _, u in sorted((t.since, u) for u, t in st.pending.items() if t.mec is None)]
            serve = round_robin(list(st.servers), st.down, waiting, turn=slot)
        a = st.assign(slot=slot, serve=serve,
                      levels={m: self.equal_level for m in st.servers}, fallback=True)
        self.logger.warning("no decision for %.0f s: fallback round-robin (%d UEs)", time.time() - last,
                            sum(u is not None for u in serve.values()))
        shared.put_in_force(a)
        st.release(a)
