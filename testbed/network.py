"""The emulated network: one Mininet emulation plus the os-ken controller that drives it.

:class:`EmulatedNetwork` owns both and tears both down on success, error and Ctrl-C. It
picks the Open vSwitch datapath from the platform probe (kernel if the module exists, else
userspace ``netdev``) and refuses, with a clear message, what the machine cannot emulate
(link delay without ``netem``) instead of failing deep inside Mininet.
"""
from __future__ import annotations

import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from mininet.clean import cleanup as mininet_cleanup
from mininet.link import TCLink
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import OVSSwitch, RemoteController
from mininet.topo import Topo

from testbed.config import ConfigError, NetworkConfig
from testbed.docker_host import DockerHost, remove_leftover_containers
from testbed.platform import PlatformReport, detect
from testbed.processes import ManagedProcess

ROOT = Path(__file__).resolve().parent.parent


class EmulatedNetwork:
    """``with EmulatedNetwork(topo, cfg, log_dir) as net:`` gives a started ``Mininet``."""

    def __init__(self, topo: Topo, cfg: NetworkConfig, log_dir: Path,
                 platform: PlatformReport | None = None, controller_apps: list[str] | None = None):
        self.topo, self.cfg, self.log_dir = topo, cfg, Path(log_dir)
        self.platform = platform or detect()
        self.apps = controller_apps or ["controller.l2_switch"]
        self.datapath = self._choose_datapath()
        self.notes: list[str] = []
        self.controller: ManagedProcess | None = None
        self.net: Mininet | None = None

    def _choose_datapath(self) -> str:
        want, kernel_ok = self.cfg.datapath, self.platform.ovs_datapath == "kernel"
        if want == "kernel" and not kernel_ok:
            raise ConfigError("network.datapath = 'kernel' but this machine has no openvswitch "
                              "kernel module (see `testbed doctor`); use 'auto' or 'user'")
        return "kernel" if want == "kernel" or (want == "auto" and kernel_ok) else "user"

    def start(self) -> Mininet:
        if self.cfg.link_delay_ms and not self.platform.netem:
            raise ConfigError("network.link_delay_ms is set but this kernel has no netem qdisc: "
                              "link delay cannot be emulated here (see `testbed doctor`)")
        if self.cfg.link_bw_mbit and not self.platform.htb:
            raise ConfigError("network.link_bw_mbit is set but htb is unavailable: bandwidth "
                              "cannot be shaped here (see `testbed doctor`)")
        setLogLevel("warning")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.controller = ManagedProcess(
            "os-ken controller",
            [sys.executable, "-m", "controller", "--listen", self.cfg.controller_ip,
             "--port", str(self.cfg.controller_port), *sum((["--app", a] for a in self.apps), [])],
            self.log_dir / "controller.log", cwd=ROOT).start()
        self.controller.wait_for_port(self.cfg.controller_ip, self.cfg.controller_port)
        switch = partial(OVSSwitch, protocols="OpenFlow13",
                         datapath="user" if self.datapath == "user" else "kernel")
        self.net = Mininet(topo=self.topo, switch=switch, link=TCLink, controller=None,
                           autoSetMacs=True, build=False, waitConnected=False)
        self.net.addController(RemoteController("c0", ip=self.cfg.controller_ip,
                                                port=self.cfg.controller_port))
        self.net.build()
        self.net.start()
        if self.datapath == "user":
            # The userspace datapath does not fill in TCP checksums offloaded by veths.
            for host in self.net.hosts:
                for intf in host.intfList():
                    if intf.name != "lo":
                        host.cmd("ethtool -K", intf.name, "tx off")
            self.notes.append("userspace OVS datapath (netdev); TX checksum offload off on hosts")
        if not self.cfg.link_delay_ms:
            self.notes.append("no link delay emulated (link_delay_ms unset)")
        self._wait_connected()
        return self.net

    def _wait_connected(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        names = [s.name for s in self.net.switches]
        while time.monotonic() < deadline:
            out = subprocess.run(["ovs-vsctl", "--columns=is_connected", "list", "controller"],
                                 capture_output=True, text=True).stdout
            if out.count("true") >= len(names):
                return
            time.sleep(0.2)
        raise TimeoutError(f"switches {names} did not connect to the controller at "
                           f"{self.cfg.controller_ip}:{self.cfg.controller_port}:\n"
                           f"{self.controller.log_tail()}")

    def stop(self) -> None:
        """Tear everything down; safe to call twice and after a failed start."""
        try:
            if self.net is not None:
                self.net.stop()
                # RemoteController.stop() is a no-op in Mininet 2.3: its shell would outlive us.
                for c in self.net.controllers:
                    c.terminate()
        finally:
            self.net = None
            if self.controller is not None:
                self.controller.stop()
            # Whatever a crashed start left behind: this topology's containers and bridges
            # (not those of another run on the same machine).
            remove_leftover_containers(self.topo.hosts())
            for sw in self.topo.switches():
                subprocess.run(["ovs-vsctl", "--if-exists", "del-br", sw], capture_output=True)

    def __enter__(self) -> Mininet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def full_cleanup() -> None:
    """``testbed cleanup``: Mininet's own sweep (all OVS bridges, namespaces, stale
    controllers) plus the testbed's containers. For a lab machine after a hard crash."""
    mininet_cleanup()
    remove_leftover_containers()
