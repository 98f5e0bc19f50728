"""The controller's configuration for one lab run, read once from ``--lab-config PATH``.

``python -m controller`` stores the path here before os-ken starts the apps; the apps read
:func:`lab` (a dict written by the lab: servers, UEs, accounts, the API's address, the
policy's token file, each miner's cgroup and RPC, the hash levels and their CPU quotas).
Without ``--lab-config`` the controller is a plain L2 switch (the smoke demo).
"""
from __future__ import annotations

import json
from pathlib import Path

_PATH: Path | None = None
_LAB: dict | None = None


def set_path(path: str | Path | None) -> None:
    global _PATH, _LAB
    _PATH, _LAB = (Path(path) if path else None), None


def lab() -> dict | None:
    """The lab's settings, or None when the controller runs without a lab."""
    global _LAB
    if _LAB is None and _PATH is not None:
        _LAB = json.loads(_PATH.read_text())
    return _LAB
