"""Monitor: what the network and the miners look like, measured every ``monitor_period_s``.

- **Port and flow statistics** of every switch (OFPPortStatsRequest, OFPFlowStatsRequest):
  bytes and packets per port and their rates, flows per table.
- **Latency to each MEC server**: the controller sends an ICMP echo request as a packet-out on
  the switch port where the server's MAC was learned, from a probe address that belongs to no
  host (each MEC host has a static ARP entry for it); the server's reply matches a table-0
  entry that sends it back to the controller. RTT = packet-in time − packet-out time − the
  controller's OpenFlow echo RTT to that switch, so it is the switch-to-server round trip
  (link, host stack). Resolution: the controller's clock and thread scheduling, about
  0.1–1 ms; there is no netem here, so it is small.
- **Reachability**: a port that goes down (OFPPortStatus) takes the server behind it out of
  service at once; two probes in a row without an answer also do; an answer brings it back.
  A server out of service is in ``state.down``: the API refuses to assign it a UE.
- **Miners**: each miner's hash rate, whether it mines, its head (JSON-RPC on the management
  network, :class:`chain.rpc.JsonRpc`, 2 s per call at most), every few periods.
"""
from __future__ import annotations

import secrets
import time

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.lib.packet import ethernet, icmp, ipv4, packet
from os_ken.ofproto import ofproto_v1_3

from chain.rpc import JsonRpc
from controller import settings, shared
from controller.l2_switch import add_flow

MISSES_DOWN = 2
MINER_RPC_TIMEOUT_S = 2.0     # per call: a miner that hangs delays the next round this much, no more


class Monitor(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = settings.lab()
        # without a lab (the smoke demo) the monitor measures every half second, no miners
        self.period = cfg.monitor_period_s if cfg else 0.5
        self.miners = {name: JsonRpc(url, timeout_s=MINER_RPC_TIMEOUT_S)
                       for name, url in (cfg.miner_rpc if cfg else {}).items()}
        self.datapaths: dict[int, object] = {}
        self.echo_sent: dict[int, float] = {}
        self.echo_rtt: dict[int, float] = {}
        self.probe_sent: dict[str, tuple[int, float]] = {}   # mec -> (seq, t)
        self.misses: dict[str, int] = {}
        self.ports: dict[str, dict] = {}
        self.port_down: set[tuple[int, int]] = set()
        self.seq = 0
        self.captured: set[int] = set()
        hub.spawn(self._loop)

    # ---- switches ------------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER])
    def _state_change(self, ev):
        self.datapaths[ev.datapath.id] = ev.datapath

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        self.captured.discard(ev.msg.datapath.id)     # (re)connected: install the capture again

    def _capture(self, dp, probe):
        parser, ofp = dp.ofproto_parser, dp.ofproto
        add_flow(dp, 200, parser.OFPMatch(eth_type=0x0800, ipv4_dst=probe["ip"]),
                 [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)], table_id=0)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        dp, port = msg.datapath, msg.desc.port_no
        down = bool(msg.desc.state & dp.ofproto.OFPPS_LINK_DOWN) or msg.reason == dp.ofproto.OFPPR_DELETE
        key = (dp.id, port)
        if down:
            self.port_down.add(key)
        else:
            self.port_down.discard(key)
        for name, h in shared.topology.get("hosts", {}).items():
            if h.get("role") == "mec" and (h.get("dpid"), h.get("port")) == key:
                self._mark(name, up=not down, why=f"port {port} of switch {dp.id:x} {'down' if down else 'up'}")

    def _mark(self, mec: str, up: bool, why: str) -> None:
        st = shared.state()
        with st.lock:
            was = mec in st.down
            (st.down.discard if up else st.down.add)(mec)
        if was == up:
            self.logger.info("%s %s (%s)", mec, "back in service" if up else "OUT OF SERVICE", why)
            st.links.setdefault("events", []).append({"t": time.time(), "mec": mec, "up": up, "why": why})

    # ---- the periodic loop -------------------------------------------------------------
    def _loop(self):
        k = 0
        while True:
            hub.sleep(self.period)
            k += 1
            try:
                for dp in list(self.datapaths.values()):
                    self._echo(dp)
                    dp.send_msg(dp.ofproto_parser.OFPPortStatsRequest(dp, 0, dp.ofproto.OFPP_ANY))
                self._probe_all()
                if k % max(1, int(5 / self.period)) == 0:
                    self._poll_miners()
            except Exception as e:      # keep measuring whatever one round hit
                self.logger.warning("monitor round failed: %s", e)

    def _echo(self, dp):
        self.echo_sent[dp.id] = time.time()
        dp.send_msg(dp.ofproto_parser.OFPEchoRequest(dp, data=b"mon"))

    @set_ev_cls(ofp_event.EventOFPEchoReply, MAIN_DISPATCHER)
    def _echo_reply(self, ev):
        dp = ev.msg.datapath
        if dp.id in self.echo_sent:
            self.echo_rtt[dp.id] = time.time() - self.echo_sent[dp.id]

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats(self, ev):
        now = time.time()
        for s in ev.msg.body:
            key = f"{ev.msg.datapath.id:x}:{s.port_no}"
            prev = self.ports.get(key)
            cur = {"t": now, "rx_bytes": s.rx_bytes, "tx_bytes": s.tx_bytes, "rx_packets": s.rx_packets,
                   "tx_packets": s.tx_packets, "rx_dropped": s.rx_dropped}
            if prev and now > prev["t"]:
                cur["rx_mbit_s"] = (s.rx_bytes - prev["rx_bytes"]) * 8e-6 / (now - prev["t"])
                cur["tx_mbit_s"] = (s.tx_bytes - prev["tx_bytes"]) * 8e-6 / (now - prev["t"])
            self.ports[key] = cur
        st = shared.state()
        with st.lock:
            st.links["ports"] = dict(self.ports)
            st.links["controller_echo_ms"] = {f"{k:x}": v * 1e3 for k, v in self.echo_rtt.items()}

    # ---- latency probes ------------------------------------------------------------------
    def _probe_all(self):
        topo = shared.topology
        if not topo.get("probe"):
            return
        for dpid, dp in list(self.datapaths.items()):
            if dpid not in self.captured:
                self._capture(dp, topo["probe"])
                self.captured.add(dpid)
        for name, h in topo.get("hosts", {}).items():
            if h.get("role") != "mec":
                continue
            if name in self.probe_sent:                # the last probe was never answered
                self.misses[name] = self.misses.get(name, 0) + 1
                if self.misses[name] >= MISSES_DOWN:
                    self._mark(name, up=False, why=f"{self.misses[name]} probes unanswered")
            dp = self.datapaths.get(h.get("dpid"))
            if dp is None or (h["dpid"], h["port"]) in self.port_down:
                continue
            self.seq = secrets.randbelow(65536)        # unpredictable: a forger cannot guess it
            self._send_probe(dp, h, topo["probe"], self.seq)
            self.probe_sent[name] = (self.seq, time.time())

    @staticmethod
    def _send_probe(dp, host, probe, seq):
        parser, ofp = dp.ofproto_parser, dp.ofproto
        pkt = packet.Packet()
        pkt.add_protocol(ethernet.ethernet(dst=host["mac"], src=probe["mac"], ethertype=0x0800))
        pkt.add_protocol(ipv4.ipv4(src=probe["ip"], dst=host["ip"], proto=1))
        pkt.add_protocol(icmp.icmp(type_=icmp.ICMP_ECHO_REQUEST, data=icmp.echo(id_=0x4d, seq=seq, data=b"lab")))
        pkt.serialize()
        dp.send_msg(parser.OFPPacketOut(datapath=dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                        actions=[parser.OFPActionOutput(host["port"])], data=pkt.data))

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        msg = ev.msg
        if msg.table_id != 0:
            return
        t = time.time()
        pkt = packet.Packet(msg.data)
        ip, ic = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(icmp.icmp)
        probe = shared.topology.get("probe", {})
        if ip is None or ic is None or ip.dst != probe.get("ip") or ic.type != icmp.ICMP_ECHO_REPLY:
            return
        in_port = msg.match.get("in_port")
        for name, h in shared.topology.get("hosts", {}).items():
            if h.get("ip") == ip.src and name in self.probe_sent:
                seq, t0 = self.probe_sent[name]
                # Only the answer to the probe in flight, on the server's own switch port: a
                # forged or replayed reply (another host, an old sequence number) is dropped and
                # leaves the probe pending, so a dead server cannot be kept "up".
                if (seq != getattr(ic.data, "seq", None) or msg.datapath.id != h.get("dpid")
                        or in_port != h.get("port")):
                    return
                del self.probe_sent[name]
                rtt = max(0.0, t - t0 - self.echo_rtt.get(msg.datapath.id, 0.0))
                self.misses[name] = 0
                st = shared.state()
                with st.lock:
                    st.links.setdefault("rtt_ms", {})[name] = rtt * 1e3
                self._mark(name, up=True, why="probe answered")
                return

    # ---- miners ----------------------------------------------------------------------------
    def _poll_miners(self):
        out = {}
        for name, rpc in self.miners.items():
            try:
                out[name] = {"hashrate_hps": float(rpc("eth_getHashrate")),
                             "mining": bool(rpc("eth_mining")),
                             "head": int(rpc("eth_blockNumber"), 16)}
            except Exception as e:
                out[name] = {"error": str(e)}
        st = shared.state()
        with st.lock:
            st.miners.update(out)

