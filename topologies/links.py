"""The switch and link classes a topology names: the parts, without the network that runs them.

- :class:`DataSwitch`: an OpenFlow 1.3 switch driven by the os-ken controller. A *subclass*
  of ``OVSSwitch``, never a ``functools.partial``: Mininet starts the switches of a class
  with ``batchStartup`` in one ``ovs-vsctl`` call from Python; a partial has no such method,
  so Mininet sends each switch's whole ``add-br ... add-port ...`` line through the switch's
  shell, whose terminal cuts lines at 4095 bytes: past ~54 ports the bridge never came up.
- :class:`ManagementBridge`: a standalone L2 bridge with no controller (the management
  network of the MEC servers, the chain gateway and the lab's root-namespace host).
- :class:`ShapedLink` / :class:`ShapedIntf`: Mininet's ``TCLink`` with an htb ``quantum``
  chosen for the rate, so the kernel does not warn ``quantum of class ... is big`` (which
  Mininet prints as ``*** Error``), and with TX checksum offload off by default (TCP through
  the userspace datapath needs it off). A real tc failure is still printed as ``*** Error``.

Topologies (``topologies/plan.py``) import these and :class:`topologies.docker_host.DockerHost`;
:class:`topologies.network.EmulatedNetwork` builds and runs them.
"""
from __future__ import annotations

from mininet.link import TCIntf, TCLink
from mininet.node import OVSBridge, OVSSwitch


class DataSwitch(OVSSwitch):
    """OpenFlow 1.3 Open vSwitch bridge controlled by the os-ken controller."""

    def __init__(self, name, protocols="OpenFlow13", **params):
        super().__init__(name, protocols=protocols, **params)


class ManagementBridge(OVSBridge):
    """Standalone L2 bridge (``fail_mode=standalone``, no controller): the management network."""


def htb_quantum(rate_mbit: float) -> int:
    """htb quantum (bytes) for a class of ``rate_mbit``: rate/r2q as htb would compute it
    (r2q = 10), kept within [MTU, 200000] bytes, htb's own bounds, but given explicitly so the
    kernel does not correct it and warn."""
    return int(min(max(rate_mbit * 1e6 / 8 / 10, 1514), 200_000))


class ShapedIntf(TCIntf):
    """``TCIntf`` with an explicit htb quantum and TX checksum offload off by default."""

    bwParamMax = 10_000   # Mbit/s; htb handles it (Mininet's 1000 is a caution, not a limit)

    def bwCmds(self, bw=None, speedup=0, use_hfsc=False, use_tbf=False, **params):
        cmds, parent = super().bwCmds(bw=bw, speedup=speedup, use_hfsc=use_hfsc,
                                      use_tbf=use_tbf, **params)
        if bw is not None and not (use_hfsc or use_tbf):
            rate = speedup if speedup > 0 and self.node.name[:1] == "s" else bw
            cmds = [c + f" quantum {htb_quantum(rate)}" if " htb rate " in c else c for c in cmds]
        return cmds, parent

    def config(self, txo=False, **params):
        # The userspace datapath does not fill in checksums a veth left to the NIC: TCP fails
        # with offload on. Off costs a little CPU with the kernel datapath and is harmless.
        return super().config(txo=txo, **params)


class ShapedLink(TCLink):
    """A veth pair of :class:`ShapedIntf` (``bw`` in Mbit/s, ``delay`` needs netem)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("cls1", ShapedIntf)
        kwargs.setdefault("cls2", ShapedIntf)
        super().__init__(*args, **kwargs)
