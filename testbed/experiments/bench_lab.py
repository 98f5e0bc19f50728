"""``python -m testbed bench-lab``: one live run measured for speed and footprint, so that two
commits compare on the same machine (issue 21's figures).

It runs the scenario's live lab (``lab.slots`` slots, ``lab.policy``) and writes, beside the run's
own folder, ``bench.json``: bring-up per step, teardown, peak memory the lab adds and per part,
CPU per part, slot start → applied p50/p95/p99, decision p50/p99, controller CPU, tasks and
books, the machine's cores and memory, and each target of issue 21 with whether it was met.
Everything is read from the run's ``summary.json`` (measured, never set).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import psutil

# issue 21's targets by scale (M, U): bring-up s, lab peak memory MiB, applied p95 s, teardown s
TARGETS = {(10, 20): {"bring_up_s": 30.0, "lab_peak_memory_mib": 1536.0, "applied_p95_s": 0.050, "teardown_s": 5.0},
           (30, 60): {"bring_up_s": 90.0, "lab_peak_memory_mib": 4096.0, "applied_p95_s": 0.200}}


def _pct(d: dict | None, *keys: str) -> dict:
    d = d or {}
    return {k: d.get(k) for k in keys}


def extract(s: dict) -> dict:
    """bench.json's content from a run's summary."""
    bring = dict(s.get("bring_up") or {})
    dec = s.get("decision") or {}
    res = s.get("resources") or {}
    vm = psutil.virtual_memory()
    out = {
        "scenario": s.get("scenario"), "scenario_digest": s.get("scenario_digest"),
        "M": s.get("M"), "U": s.get("U"), "slots": s.get("slots"), "slot_s": s.get("slot_s"), "policy": s.get("policy"),
        "bring_up_s": bring.pop("bring_up_s", None), "bring_up_steps_s": bring,
        "teardown_s": s.get("teardown_s"),
        "lab_peak_memory_mib": s.get("lab_peak_memory_mib"), "machine_peak_used_mib": s.get("machine_peak_used_mib"),
        "memory_mib_by_part": {k: v.get("rss_mib_max") for k, v in res.items() if isinstance(v, dict)},
        "cores_mean_by_part": {k: v.get("cores_mean") for k, v in res.items() if isinstance(v, dict)},
        "slot_start_to_applied_s": _pct(dec.get("slot_start_to_applied_s"), "n", "p50", "p95", "p99", "max"),
        "decision_ms": _pct(dec.get("decision_ms"), "n", "p50", "p99"),
        "controller_cores": _pct(res.get("controller"), "cores_mean", "cores_max"),
        "tasks": _pct(s.get("tasks"), "offered", "completed", "failed", "refunded"),
        "books_close": (s.get("lost") or {}).get("books_close"),
        "attack": s.get("attack"),
        "machine": {"cores": os.cpu_count(), "memory_mib": round(vm.total / 2**20)},
        "run_dir": s.get("run_dir"),
    }
    t = TARGETS.get((s.get("M"), s.get("U")))
    if t:
        got = {"bring_up_s": out["bring_up_s"], "lab_peak_memory_mib": out["lab_peak_memory_mib"],
               "applied_p95_s": out["slot_start_to_applied_s"].get("p95"), "teardown_s": out["teardown_s"]}
        out["targets"] = {k: {"target": v, "measured": got[k], "met": got[k] is not None and got[k] <= v}
                          for k, v in t.items()}
    return out


def run(scn, out_dir: Path) -> dict:
    from testbed.experiments import live
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = live.run(scn, out_dir / "run")
    bench = extract(summary)
    (out_dir / "bench.json").write_text(json.dumps(bench, indent=1, default=float))
    return bench
