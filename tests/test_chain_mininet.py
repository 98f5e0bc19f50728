"""The same Chain inside Mininet hosts: geth runs in each host's network namespace, binds the
host's emulated IP, peers over the emulated switch and mines. A root-namespace port on the
switch lets the manager reach the nodes' RPC, as the testbed's composer will."""
import os
import subprocess
from functools import partial

import psutil
import pytest

from chain_ports import free_port_base, port_kwargs
from chain.network import Chain
from chain.config import ChainConfig
from base.processes import in_mininet_host

pytestmark = [pytest.mark.network, pytest.mark.chain]

SUBNET = "10.123.0"   # a subnet of its own, apart from the testbed's 10.0.0.0/8 default


@pytest.fixture
def mininet_hosts():
    if os.geteuid() != 0:
        pytest.fail("Mininet tests need root (`make setup`)")
    if subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True).returncode:
        pytest.fail("Open vSwitch is not running (`make setup` starts it)")
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.node import OVSBridge
    setLogLevel("warning")
    net = Mininet(topo=None, switch=partial(OVSBridge, datapath="user"), controller=None,
                  build=False, autoSetMacs=True, ipBase=f"{SUBNET}.0/24")
    try:
        sw = net.addSwitch("mcs1")
        hosts = [net.addHost(f"mh{i + 1}", ip=f"{SUBNET}.{i + 1}/24") for i in range(3)]
        for h in hosts:
            net.addLink(h, sw)
        root = net.addHost("mroot", inNamespace=False, ip=f"{SUBNET}.254/24")
        net.addLink(root, sw)
        net.build()
        net.start()
        for h in hosts + [root]:   # userspace datapath: veths must not offload checksums
            for intf in h.intfList():
                if intf.name != "lo":
                    h.cmd("ethtool -K", intf.name, "tx off")
        yield hosts
    finally:
        net.stop()


def test_chain_runs_inside_mininet_hosts(mininet_hosts):
    hosts = mininet_hosts
    cfg = ChainConfig(n_nodes=3, **port_kwargs(free_port_base(3)))
    with Chain(cfg, ips=[h.IP() for h in hosts],
               launchers=[in_mininet_host(h) for h in hosts]) as chain:
        pids = [nd.pid for nd in chain.nodes]
        for nd, h in zip(chain.nodes, hosts):
            # in the host's namespace, not the root one
            assert os.readlink(f"/proc/{nd.pid}/ns/net") == os.readlink(f"/proc/{h.pid}/ns/net")
            assert os.readlink(f"/proc/{nd.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            # psutil reads the caller's namespace: ask the host itself (only geth runs there)
            listening = {tuple(line.split()[-2].rsplit(":", 1))
                         for line in h.cmd("ss -Hltun").splitlines() if line.strip()}
            # the engine API (authrpc) only on the host's own loopback; the rest on its address
            assert {ip for ip, _ in listening} == {h.IP(), "127.0.0.1"}, listening
            assert {int(port) for ip, port in listening if ip == "127.0.0.1"} == {nd.authrpc_port}, listening
            assert {p["network"]["remoteAddress"].split(":")[0] for p in nd.peers()} \
                <= {x.IP() for x in hosts}
        assert all(nd.peer_count() == 2 for nd in chain.nodes)
        assert min(chain.heads().values()) >= 1
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
               for p in pids)
