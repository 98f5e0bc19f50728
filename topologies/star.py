"""Star: one access switch ``s1`` with every MEC server, every UE, the gateway and the lab host.

    mec1..mecM --+
    ue1..ueU ----s1            (UE links shaped to topology.ue_bw_mbit)
    gw1, lab0 ---+
    mec*, gw1, lab0 also on the management bridge mgmt1 (standalone, no controller)

    mn --custom topologies/star.py --topo star,mec=2,ues=3 --switch ovs,datapath=user ...
    python -m testbed topology --set topology.kind=star [--cli]
"""
from topologies.plan import LabTopo


class StarTopo(LabTopo):
    kind = "star"

    def layout(self, n_mec: int, n_ues: int, seed: int) -> None:
        s1 = self.data_switch("s1", "access")
        for i in range(1, n_mec + 1):
            self.add_mec(i, s1)
        for j in range(1, n_ues + 1):
            self.add_ue(j, s1, bw=self.cfg.ue_bw_mbit)
        self.add_gateway_and_lab(s1)


topos = {"star": StarTopo}
