"""The live view: the page the controller's API serves at ``GET /`` while a run goes.

The page (``controller/static/live.html``) is self-contained (inline CSS, JavaScript and SVG,
no external resource: the lab is offline). It fetches ``GET /state`` every poll (a third of
a slot, as the recent slots' timestamps tell, at most every 2 s) and shows each MEC server's
reputation Υ_m, hash budget (model level, MHash/s and the CPU cores in force), the UE it
serves, blocks mined over the recent slots, its miner's head and hashrate, and the policy's
recent slots (utility, latency, mining reward, revenue, served) as a table and a chart.
Its elements carry ``data-server``/``data-slot-row`` and ``data-field`` attributes, and
``<body data-slot>`` names the assignment slot shown, so a test can read exact values
(tests/test_live_view.py).
"""
from __future__ import annotations

from pathlib import Path

PAGE = Path(__file__).with_name("static") / "live.html"


def page() -> bytes:
    """The page's bytes, read at each request (about 12 kB): an edited page shows on reload."""
    return PAGE.read_bytes()
