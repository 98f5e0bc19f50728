"""Forwarding: an OpenFlow 1.3 learning switch for any loop-free topology (star, cells, tree).

The pipeline has two tables, so that other apps can act on a packet before it is forwarded:

- table 0 belongs to the apps that rewrite or capture (:mod:`controller.steering` puts the
  service-address rewrites there, :mod:`controller.monitor` its probe replies); its default
  entry sends everything on to table 1;
- table 1 is this app's: multicast and broadcast frames are flooded by the switch itself (no
  trip to the controller: at 30 sites every ARP broadcast used to reach the controller once
  per switch), and a unicast frame to an unknown address goes to the controller, which learns
  ``(switch, source MAC) -> port`` and installs a flow once the destination is known.
"""
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib.packet import ethernet, ether_types, packet
from os_ken.ofproto import ofproto_v1_3

FORWARDING_TABLE = 1


def flow_mod(dp, priority, match, actions=(), table_id=0, goto=None, idle_timeout=0, cookie=0,
             command=None):
    """One flow entry's message: apply ``actions``, then go to table ``goto`` if given."""
    parser, ofp = dp.ofproto_parser, dp.ofproto
    inst = []
    if actions:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(actions)))
    if goto is not None:
        inst.append(parser.OFPInstructionGotoTable(goto))
    return parser.OFPFlowMod(datapath=dp, table_id=table_id, priority=priority, match=match,
                             instructions=inst, idle_timeout=idle_timeout, cookie=cookie,
                             command=ofp.OFPFC_ADD if command is None else command)


def add_flow(dp, *args, **kwargs):
    """Send one flow entry (:func:`flow_mod`'s arguments)."""
    dp.send_msg(flow_mod(dp, *args, **kwargs))


class L2Switch(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mac_to_port: dict[int, dict[str, int]] = {}

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        dp = ev.msg.datapath
        parser, ofp = dp.ofproto_parser, dp.ofproto
        self.mac_to_port.pop(dp.id, None)       # a reconnecting switch: learn afresh
        add_flow(dp, 0, parser.OFPMatch(), table_id=0, goto=FORWARDING_TABLE)
        add_flow(dp, 0, parser.OFPMatch(), [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)],
                 table_id=FORWARDING_TABLE)
        add_flow(dp, 1, parser.OFPMatch(eth_dst=("01:00:00:00:00:00", "01:00:00:00:00:00")),
                 [parser.OFPActionOutput(ofp.OFPP_FLOOD)], table_id=FORWARDING_TABLE)
        self.logger.info("switch %016x connected", dp.id)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev):
        msg = ev.msg
        if msg.table_id != FORWARDING_TABLE:
            return                              # another app's capture (table 0)
        dp = msg.datapath
        parser, ofp = dp.ofproto_parser, dp.ofproto
        in_port = msg.match["in_port"]
        eth = packet.Packet(msg.data).get_protocols(ethernet.ethernet)[0]
        if eth.ethertype == ether_types.ETH_TYPE_LLDP:
            return
        table = self.mac_to_port.setdefault(dp.id, {})
        table[eth.src] = in_port
        out_port = table.get(eth.dst, ofp.OFPP_FLOOD)
        actions = [parser.OFPActionOutput(out_port)]
        if out_port != ofp.OFPP_FLOOD:
            add_flow(dp, 10, parser.OFPMatch(in_port=in_port, eth_dst=eth.dst), actions,
                     table_id=FORWARDING_TABLE)
        data = msg.data if msg.buffer_id == ofp.OFP_NO_BUFFER else None
        dp.send_msg(parser.OFPPacketOut(datapath=dp, buffer_id=msg.buffer_id, in_port=in_port,
                                        actions=actions, data=data))
