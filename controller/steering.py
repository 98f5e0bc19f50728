"""Steering: every UE sends its tasks to one service address; the switches deliver each UE's
task traffic to the MEC server the policy assigned it, without the UE's involvement.

The service address (IP and MAC, ``PUT /topology``) belongs to no host; each UE container has
a static ARP entry for it. On each assignment this app writes two entries into table 0 of the
UE's access switch (OpenFlow set-field, then on to the forwarding table):

    UE -> service:port   rewrite  eth_dst, ipv4_dst  := the assigned server's MAC and IP
    server:port -> UE    rewrite  eth_src, ipv4_src  := the service address's

so a UE's TCP connection to the service address is, in the network, a connection to its
server, and the executor sees the UE's own address. A UE has one task at a time and gets a
server per task, so its entries change only between its connections. A barrier after the
flow-mods says when each switch has them: the last switch's reply, when the controller handled
it, is reported as ``flows`` (not when the API's request saw it: the budgets are written in
between, and the request's thread has to be woken). The barrier
covers the switch's flow table, not the datapath's cache of it: on a loaded machine the
userspace datapath may steer a UE's next connection by its previous route for a moment
(measured under the slow-client load: 3 connections of 316, `docs/security.md`), so a UE whose
connection is reset, or answered by another server (``wrong_lane``), before anything was
accepted tries again (``nodes/ue_client.py``, ``STEERING_RETRIES``).

Switches that reconnect (a controller restart) get the entries in force again.
"""
from __future__ import annotations

import threading
import time

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import MAIN_DISPATCHER, set_ev_cls
from os_ken.lib.packet import ether_types, in_proto
from os_ken.ofproto import ofproto_v1_3

from controller import shared
from controller.l2_switch import FORWARDING_TABLE, flow_mod
from controller.state import Assignment

PRIORITY = 100
COOKIE = 0x5E7


class _Barrier:
    """One barrier request in flight: set, with the time, when its switch replies."""

    def __init__(self):
        self.done, self.at = threading.Event(), None

    def reply(self) -> None:
        self.at = time.time()
        self.done.set()


class Steering(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.datapaths: dict[int, object] = {}
        self.routes: dict[str, str] = {}            # ue -> mec in force
        self.barriers: dict[int, _Barrier] = {}
        # first: its flow-mods are on their way to the switches while the budgets are written
        shared.appliers.insert(0, ("flows", self.apply))

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        self.datapaths[dp.id] = dp
        # a switch (re)connecting: put the routes in force on it again
        msgs = [msg for ue, mec in list(self.routes.items()) if self._host(ue).get("dpid") == dp.id
                for msg in self._route(dp, ue, mec)]
        if msgs:
            self._send_together(dp, msgs)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply(self, ev):
        b = self.barriers.pop(ev.msg.xid, None)
        if b is not None:
            b.reply()

    @staticmethod
    def _host(name: str) -> dict:
        return shared.topology.get("hosts", {}).get(name, {})

    @staticmethod
    def _send_together(dp, msgs: list) -> None:
        """``msgs`` handed to the switch's send queue as one write: os-ken's queue holds 16
        messages, and ~40 flow-mods sent one by one went out at the pace its send thread got
        the GIL (docs/performance.md, change 12)."""
        for msg in msgs:
            if msg.xid is None:           # a barrier has its own already, to be waited for
                dp.set_xid(msg)
            msg.serialize()
        dp.send(b"".join(msg.buf for msg in msgs))

    def _route(self, dp, ue: str, mec: str) -> list:
        """The two flow-mods that steer ``ue``'s task traffic to ``mec`` and back."""
        parser = dp.ofproto_parser
        u, m, svc = self._host(ue), self._host(mec), shared.topology["service"]
        port = int(shared.topology["executor_port"])
        fwd = parser.OFPMatch(eth_type=ether_types.ETH_TYPE_IP, ip_proto=in_proto.IPPROTO_TCP,
                              ipv4_src=u["ip"], ipv4_dst=svc["ip"], tcp_dst=port)
        back = parser.OFPMatch(eth_type=ether_types.ETH_TYPE_IP, ip_proto=in_proto.IPPROTO_TCP,
                               ipv4_dst=u["ip"], tcp_src=port)
        return [flow_mod(dp, PRIORITY, fwd, [parser.OFPActionSetField(eth_dst=m["mac"]),
                                             parser.OFPActionSetField(ipv4_dst=m["ip"])],
                         table_id=0, goto=FORWARDING_TABLE, cookie=COOKIE),
                flow_mod(dp, PRIORITY, back, [parser.OFPActionSetField(eth_src=svc["mac"]),
                                              parser.OFPActionSetField(ipv4_src=svc["ip"])],
                         table_id=0, goto=FORWARDING_TABLE, cookie=COOKIE)]

    def apply(self, a: Assignment):
        """Send the new routes and a barrier to each switch touched; returns the wait for the
        barriers' replies (:data:`controller.shared.appliers`), which says when every switch
        confirmed."""
        if not shared.topology_ready.is_set():
            return {}
        waits, batches = [], {}
        for mec, ue in a.serve.items():
            if ue is None or self.routes.get(ue) == mec:
                continue
            dpid = self._host(ue).get("dpid")
            dp = self.datapaths.get(dpid)
            if dp is None:
                self.logger.warning("no switch %s for %s: its route to %s waits for it", dpid, ue, mec)
                self.routes[ue] = mec
                continue
            batches.setdefault(dp, []).extend(self._route(dp, ue, mec))
            self.routes[ue] = mec
        for dp, msgs in batches.items():            # one write per switch, the barrier last
            req = dp.ofproto_parser.OFPBarrierRequest(dp)
            dp.set_xid(req)
            b = _Barrier()
            self.barriers[req.xid] = b
            self._send_together(dp, [*msgs, req])
            waits.append(b)

        def confirmed() -> dict:
            late = sum(not b.done.wait(1.0) for b in waits)
            if late:
                self.logger.warning("slot %s: %d switch(es) did not confirm the routes within 1 s", a.slot, late)
            if not batches:
                return {}
            return {"flows": time.time() if late else max(b.at for b in waits), "switches": len(batches)}
        return confirmed
