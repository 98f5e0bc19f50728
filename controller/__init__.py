"""The SDN controller: os-ken apps and the lab's API, run as one ``osken-manager``-like process.

``l2_switch.py`` forwards on the data network; ``monitor.py`` measures link and task latency and
computes each server's reputation Υ_m; ``steering.py`` installs the flows that send a UE's task to
its assigned server; ``lab_app.py`` applies each slot's decision (hash budgets through the
miners' CPU quotas, assignments) and falls back to round-robin when the policy is silent;
``api.py`` + ``api_server.py`` the HTTP API (bearer token for the operator, signatures for UEs and
servers), ``state.py`` what survives a restart, ``live_view.py`` the browser view. Settings come
typed from the Scenario (``settings.py``). Imports: the layers below (``scenario/``, ``chain/``,
``base/``) and the host programs' wire formats (``nodes.wire``, ``nodes.work``), never ``testbed/``.
"""
