"""Topologies as Mininet ``Topo`` classes; each module exports ``topos`` for ``mn --custom``."""
from topologies.smoke import topos as _smoke

TOPOLOGIES = {**_smoke}
