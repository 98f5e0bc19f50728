"""Tree: two tiers of switches and a far cloud server behind a thin, long link.

                      core1 ---- cloud1   (topology.cloud_bw_mbit, cloud_delay_ms one-way)
                  /     |     \\
             edge1    edge2 ... edgeK     (edge-core links: backhaul_bw_mbit, backhaul_delay_ms)
             mec/ue   mec/ue    mec/ue    (MEC server i on edge ((i-1) mod K)+1, UE j likewise)
    gw1 and lab0 hang on core1; mec*, gw1, lab0 also on the management bridge mgmt1.

The edge tier is where MEC servers sit, one switch away from their UEs; ``cloud1``
(10.0.4.1) is the remote data centre a researcher compares them with.

    mn --custom topologies/tree.py --topo tree,mec=2,ues=3 --switch ovs,datapath=user ...
    python -m testbed topology --set topology.kind=tree [--cli]
"""
from topologies.plan import LabTopo


class TreeTopo(LabTopo):
    kind = "tree"

    def layout(self, n_mec: int, n_ues: int, seed: int) -> None:
        cfg = self.cfg
        core = self.data_switch("core1", "core")
        edges = []
        for k in range(1, cfg.tree_edges + 1):
            edges.append(self.data_switch(f"edge{k}", "edge", site=k))
            self.trunk(edges[-1], core, cfg.backhaul_bw_mbit, cfg.backhaul_delay_ms, "edge-core links")
        for i in range(1, n_mec + 1):
            k = (i - 1) % len(edges)
            self.add_mec(i, edges[k], site=k + 1)
        for j in range(1, n_ues + 1):
            k = (j - 1) % len(edges)
            self.add_ue(j, edges[k], bw=cfg.ue_bw_mbit, site=k + 1)
        self.add_gateway_and_lab(core)
        self.add_cloud(core, cfg.cloud_bw_mbit, cfg.cloud_delay_ms)


topos = {"tree": TreeTopo}
