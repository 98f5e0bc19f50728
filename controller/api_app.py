"""The API app: the controller's HTTP API on lab0's address.

It serves :class:`controller.api.Api` (on :mod:`controller.api_server`: read deadline, body
limit, connection caps) on lab0's data address, reachable from the policy in the root namespace,
the executors on the MEC hosts and the UE containers. A policy's assignment is put in force by
:func:`controller.shared.put_in_force` (steering flows sent, hash budgets written, the
switches' confirmation) before the API answers with when each took effect. Two more
policy-only endpoints: ``PUT /topology`` (what the lab built: each host's IP, MAC, switch and
port; the assignment in force is applied again with it) and ``PUT /slot`` (the policy's
measured slot, for the live view at ``GET /``).
"""
from __future__ import annotations

import time
from pathlib import Path

from os_ken.base import app_manager
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from controller import settings, shared
from controller.api import Api
from controller.api_server import make_api_server
from controller.live_view import page as live_page
from controller.state import Refused


class ApiApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = settings.required(__name__)
        self.state = shared.state()
        token = Path(self.cfg.token_file).read_text().strip()
        self.api = Api(self.state, self.cfg.accounts, token, on_assignment=shared.put_in_force, page=live_page,
                       extra={"PUT topology": self.put_topology, "PUT slot": self.put_slot},
                       work=self.cfg.work)
        hub.spawn(self._serve)

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
        if self.state.assignment is not None:       # the steering flows need the hosts
            shared.put_in_force(self.state.assignment)
        return {"hosts": len(data["hosts"])}

    def put_slot(self, rec: dict) -> dict:
        self.state.add_slot(rec)
        return {"slots": len(self.state.slots)}
