"""Smoke topology: one switch, two plain hosts and one UE in a Docker container.

    h1 ---+
    h2 ---s1
    ue1 --+   (Docker container host)
"""
from mininet.topo import Topo

from testbed.docker_host import DockerHost


class SmokeTopo(Topo):
    def build(self, bw_mbit: float | None = 50.0, delay: str | None = None):
        link = {k: v for k, v in (("bw", bw_mbit), ("delay", delay)) if v is not None}
        s1 = self.addSwitch("s1")
        for name in ("h1", "h2"):
            self.addLink(s1, self.addHost(name), **link)
        # Switch first: Mininet moves the veth end into `netns <pid of node 2>`.
        self.addLink(s1, self.addHost("ue1", cls=DockerHost), **link)


topos = {"smoke": SmokeTopo}
