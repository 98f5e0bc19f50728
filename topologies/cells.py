"""Cells: the paper's scenario. M MEC sites and U UEs in a square area (500 m x 500 m),
each UE attached to the access switch of its nearest site, the sites joined by a backhaul.

    acc1 -- mec1, the UEs nearest site 1      (UE link rate: radio model, from the distance)
    acc2 -- mec2, the UEs nearest site 2
    ...        \\ each accI -- bh1 (backhaul_bw_mbit, backhaul_delay_ms)
    bh1  -- gw1, lab0
    mec*, gw1, lab0 also on the management bridge mgmt1 (standalone, no controller)

Placement is seeded (``random.Random(seed)``): the sites uniformly at random in the area
(``site_layout = "random"``, the paper's "distributed over a 500m x 500m area") or at the
centres of a near-square grid (``"grid"``), then the UEs uniformly at random. A UE's link
is shaped (htb, both directions) to the rate of :mod:`topologies.radio` at its distance
from its site; its propagation delay d/c is applied where netem exists (microseconds: it is
listed in the plan's notes where it is not).

    mn --custom topologies/cells.py --topo cells,mec=2,ues=3 --switch ovs,datapath=user ...
    python -m testbed topology --set topology.kind=cells [--cli]      # M, U: model.n_servers, n_users
"""
from __future__ import annotations

import math
import random

from topologies.plan import LabTopo
from topologies.radio import RadioModel


def place_sites(n: int, area_m: float, layout: str, rng: random.Random) -> list[tuple[float, float]]:
    """Positions of ``n`` MEC sites in the square [0, area_m]^2 (metres)."""
    if layout == "grid":
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        return [((k % cols + 0.5) * area_m / cols, (k // cols + 0.5) * area_m / rows) for k in range(n)]
    return [(rng.uniform(0, area_m), rng.uniform(0, area_m)) for _ in range(n)]


class CellsTopo(LabTopo):
    kind = "cells"

    def layout(self, n_mec: int, n_ues: int, seed: int) -> None:
        cfg = self.cfg
        rng = random.Random(seed)
        radio = RadioModel.from_config(cfg)
        sites = place_sites(n_mec, cfg.area_m, cfg.site_layout, rng)
        self.plan.radio = {**radio.describe(), "area_m": cfg.area_m, "site_layout": cfg.site_layout}
        bh = self.data_switch("bh1", "backhaul")
        access = []
        for i, pos in enumerate(sites, start=1):
            access.append(self.data_switch(f"acc{i}", "access", site=i))
            self.trunk(access[-1], bh, cfg.backhaul_bw_mbit, cfg.backhaul_delay_ms)
            self.add_mec(i, access[-1], site=i, position_m=_round(pos))
        for j in range(1, n_ues + 1):
            pos = (rng.uniform(0, cfg.area_m), rng.uniform(0, cfg.area_m))
            d, i = min((math.dist(pos, s), k) for k, s in enumerate(sites, start=1))
            d = round(d, 1)   # the plan's distance; the rate and delay follow from it
            self.add_ue(j, access[i - 1], bw=round(radio.rate_mbit(d), 3),
                        delay_ms=radio.propagation_delay_ms(d), site=i,
                        position_m=_round(pos), distance_m=d)
        self.add_gateway_and_lab(bh)


def _round(p: tuple[float, float]) -> tuple[float, float]:
    return (round(p[0], 1), round(p[1], 1))


topos = {"cells": CellsTopo}
