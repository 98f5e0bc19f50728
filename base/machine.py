"""What machine this is, as a calibration records it, and whether a calibration still fits.

``testbed calibrate`` measures one machine's hash rate and work-kernel speed and records the
machine's facts beside them (:func:`facts`). The measurements stand for that CPU and that
number of cores only: on another CPU model or core count they are stale, and a lab built on them
would set quotas and difficulties for a machine that is not there. :func:`stale` says why, the
one rule used for this machine (the lab's start) and for every cluster server (the pre-start
check reads each server's own facts with :data:`PROBE` and its own calibration file). The host
name and the kernel are recorded but do not make a calibration stale: a container or a renamed
host on the same CPU computes at the same speed.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

#: The facts that make a calibration stale when they change.
PERFORMANCE_FACTS = ("cpu", "cores")

#: A shell snippet printing the same facts on a server (``machine-cpu ...``, ``machine-cores N``,
#: ``machine-host ...``, ``machine-kernel ...``), read back by :func:`parse_probe`.
PROBE = ("echo \"machine-cpu $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')\"; "
         "echo \"machine-cores $(getconf _NPROCESSORS_ONLN)\"; echo \"machine-host $(uname -n)\"; "
         "echo \"machine-kernel $(uname -r)\"")


def facts() -> dict:
    """This machine: host name, CPU model, online cores, kernel release."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": model, "cores": os.cpu_count(), "kernel": platform.release()}


def parse_probe(out: str) -> dict:
    """The facts :data:`PROBE` printed (the keys of :func:`facts`; cores as an int)."""
    found = {}
    for line in out.splitlines():
        if line.startswith("machine-"):
            key, _, value = line[len("machine-"):].partition(" ")
            found[key] = value.strip()
    if "cores" in found:
        found["cores"] = int(found["cores"]) if found["cores"].isdigit() else None
    return found


def stale(recorded: dict, here: dict) -> str | None:
    """Why a calibration measured on ``recorded`` does not fit the machine ``here``, or
    ``None`` when it does (same CPU model, same number of cores)."""
    wrong = [k for k in PERFORMANCE_FACTS if recorded.get(k) != here.get(k)]
    if not wrong:
        return None
    return (f"calibrated on {recorded.get('cpu') or '?'} with {recorded.get('cores')} cores, this machine has "
            f"{here.get('cpu') or '?'} with {here.get('cores')} cores: run `make calibrate` on it")
