"""Journal: the lab's state survives a controller restart.

At start this app reads the state file back (pending tasks, the assignment in force, reports,
the topology), so a restarted controller picks up where the last one stopped. It then writes
the state to the file before an assignment or a task is visible (the state calls
:attr:`controller.state.LabState.journal` under its lock after such a change) and every second
for the rest (reports, links, slots). Each write is atomic: a temporary file, then a rename.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from os_ken.base import app_manager
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from controller import settings, shared


class Journal(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state_file = Path(settings.required(__name__).state_file)
        self.state = shared.state()
        self._restore()
        self.state.journal = self._save        # an assignment or a task is on disk before it is seen
        hub.spawn(self._persist)

    def _restore(self):
        if not self.state_file.exists():
            return
        try:
            saved = json.loads(self.state_file.read_text())
            self.state.restore(saved)
            if saved.get("topology"):
                shared.set_topology(saved["topology"])
            self.logger.info("state restored from %s (saved %.1f s ago)", self.state_file,
                             time.time() - saved.get("t", time.time()))
        except Exception as e:
            self.logger.warning("could not restore %s: %s", self.state_file, e)

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
