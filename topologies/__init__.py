"""The emulated network: what it looks like (topologies) and the parts that emulate it.

Descriptions: each topology is a Mininet ``Topo`` class (``star.py``, ``cells.py``, ``tree.py``,
``smoke.py``; each module exports ``topos`` for ``mn --custom``) on the lab's address plan
(``plan.py``); the lab builds one with :func:`build_topo`, and its plan (names, roles,
addresses, sites, link rates: :class:`topologies.plan.TopologyPlan`) is ``topo.plan``. They
name their parts only: switch and link classes (``links.py``) and the Docker-container host
(``docker_host.py``).

Emulation: ``network.py`` (:class:`EmulatedNetwork`: one Mininet network plus the os-ken
controller process, owned and torn down together), ``platform.py`` (what this machine can
emulate), ``images.py`` (the UE containers' images, built offline), ``run.py`` (one topology
brought up alone: ``python -m testbed topology``). ``config.py`` holds the ``[topology]`` and
``[network]`` tables. Imports: ``base/`` only; submodules are imported on use.
"""
from __future__ import annotations

from importlib import import_module

from topologies.config import KINDS, TopologyConfig

__all__ = ["TopologyConfig", "KINDS", "build_topo", "topology_class", "TOPOLOGIES"]


def topology_class(kind: str):
    """The ``Topo`` class of ``kind`` (``smoke``, ``star``, ``cells``, ``tree``)."""
    if kind not in KINDS:
        raise KeyError(f"unknown topology {kind!r}; known: {', '.join(KINDS)}")
    return import_module(f"topologies.{kind}").topos[kind]


def build_topo(cfg: TopologyConfig, n_mec: int, n_ues: int, seed: int, platform):
    """The lab's one constructor: ``cfg.kind``'s topology for M = ``n_mec`` MEC servers and
    U = ``n_ues`` UEs, placed with ``seed``; ``platform`` (``topologies.platform.detect()``) says
    whether delays can be emulated (netem) and which OVS datapath the management bridge uses
    when run by ``mn``. The smoke topology ignores M and U (it has h1, h2, ue1)."""
    cls = topology_class(cfg.kind)
    if cfg.kind == "smoke":
        return cls(bw_mbit=cfg.ue_bw_mbit)
    return cls(mec=n_mec, ues=n_ues, seed=seed, cfg=cfg, datapath=platform.ovs_datapath,
               netem=platform.netem)


def __getattr__(name: str):
    if name == "TOPOLOGIES":   # kind -> Topo class, for code written before build_topo
        return {k: topology_class(k) for k in KINDS}
    raise AttributeError(name)
