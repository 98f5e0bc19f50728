"""Topologies as Mininet ``Topo`` classes; each module exports ``topos`` for ``mn --custom``.

The lab builds one with :func:`build_topo`; its plan (names, roles, addresses, sites, link
rates: :class:`topologies.plan.TopologyPlan`) is ``topo.plan``. Submodules are imported on
use, so ``python -m topologies.NAME`` runs a module that the package has not imported yet.
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
    U = ``n_ues`` UEs, placed with ``seed``; ``platform`` (``testbed.platform.detect()``) says
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
