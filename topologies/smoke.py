"""Smoke topology: one switch, two plain hosts and one UE in a Docker container.

    h1 ---+
    h2 ---s1
    ue1 --+   (Docker container host)

The toolchain check of ``make demo``; not one of the lab's MEC topologies (no MEC servers,
no management network).
"""
from mininet.topo import Topo

from topologies.docker_host import DockerHost
from topologies.links import ShapedLink
from topologies.plan import NodePlan, SwitchPlan, TopologyPlan


class SmokeTopo(Topo):
    def build(self, bw_mbit: float | None = 50.0, delay: str | None = None):
        link = {k: v for k, v in (("bw", bw_mbit), ("delay", delay)) if v is not None}
        self.plan = TopologyPlan(kind="smoke", seed=0, n_mec=0, n_ues=1, data_net="10.0.0.0/8",
                                 mgmt_net=None)
        s1 = self.addSwitch("s1")
        self.plan.switches["s1"] = SwitchPlan("s1", "access", 1, controlled=True)
        for k, name in enumerate(("h1", "h2", "ue1"), start=1):
            ip = f"10.0.0.{k}"
            ue = name == "ue1"
            # Switch first: Mininet moves the veth end into `netns <pid of node 2>`.
            self.addLink(s1, self.addHost(name, ip=f"{ip}/8", **({"cls": DockerHost} if ue else {})),
                         cls=ShapedLink, **link)
            self.plan.nodes[name] = NodePlan(name, "ue" if ue else "host", ip, None, "s1",
                                             link_bw_mbit=bw_mbit, container=ue)


topos = {"smoke": SmokeTopo}
