"""The SDN controller: os-ken apps and the lab's API, run as one ``osken-manager``-like process.

``l2_switch.py`` forwards on the data network; ``monitor.py`` measures link and task latency and
computes each server's reputation Υ_m; ``steering.py`` installs the flows that send a UE's task to
its assigned server; ``budgets.py`` writes each slot's hash budgets as the miners' CPU quotas;
``fallback.py`` decides round-robin when the policy is silent; ``journal.py`` keeps the state on
disk across a restart; ``api_app.py`` serves the HTTP API (``api.py`` on ``api_server.py``: bearer
token for the operator, signatures for UEs and servers). One app, one job: they share the state
(``state.py``) and the one way an assignment is put in force through ``shared.py``;
``live_view.py`` is the browser view. Settings come typed from the Scenario (``settings.py``).
Imports: the layers below (``scenario/``, ``chain/``,
``base/``) and the host programs' wire formats (``nodes.wire``, ``nodes.work``), never ``testbed/``.
"""
