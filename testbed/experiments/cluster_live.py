"""The live-lab stage of ``cluster-check``: ``testbed run`` across the servers (issue 22, step 2).

The ``lab`` scenario at M = 2 MEC servers and U = 2 UEs on the cells topology, one UE nearest
each site (the placement seed of :func:`testbed.experiments.cluster_lab_network.one_ue_per_site`),
the cluster of that stage (this machine as the hub: ``bh1``, ``gw1``, ``lab0``, the controller,
the policy loop, the chain's RPC gateway, the contract's deployer; site 1 on server a, site 2 on
server b), the run folder in ``cluster.shared_dir``. The small chain of the test labs (2 x 60
MHash/s on 2 x 0.06 cores, the MEC servers' own chain at the shortest interval ethash's minimum
difficulty allows on this machine's calibration) and the ``round_robin`` policy, which takes the
servers in turn, so each UE is served by the MEC server of the other server too.

Required: at least one paid task in each direction (a UE on server b served by the MEC server on
server a, and the reverse), the books closing on chain, and nothing left on any server.

Then the mapping per server (:meth:`scenario.units.LiveMapping.for_server`) live: the same
scenario across the servers once more, with server b given a calibration of its own, this
machine's with every rate :data:`HETERO` times as high (as if b's CPU hashed and clocked that
much faster per core; both servers are this machine, so b's figures are made, and said so). b's
miner must get b's own quota at each level, b's executor must run b's own iterations per Gcycle,
and its tasks must still be verified by the UEs (completed, none a wrong result), the books closing.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import time
from pathlib import Path

from chain.config import MIN_DIFFICULTY
from scenario.config import Scenario, load_scenario
from scenario.units import Calibration, LiveMapping, kernel_iterations
from testbed.experiments import cluster_lab_network as lab_network
from topologies import build_topo, remote
from topologies.cluster import run_on
from topologies.config import ClusterConfig
from topologies.placement import place
from topologies.platform import detect

SLOTS = 6
HETERO = 1.25                        # server b's made calibration: this machine's rates x 1.25
HETERO_DIR = Path("/run/mec-cluster-check-hetero")   # the calibration's path, the same on every server


def scenario(scn: Scenario) -> Scenario:
    """The stage's scenario (see the module docstring)."""
    over = ["model.n_servers=2", "model.n_users=2", "model.hash_budget_mhs=120", "lab.mining_cores=0.12",
            f"lab.slots={SLOTS}", "lab.policy=round_robin", "topology.kind=cells", "chain.outside=none"]
    base = load_scenario("lab", over)
    m = LiveMapping(base.model, base.lab.mining_cores, base.lab.host_cores, Calibration.load(base.path(base.lab.calibration)))
    hps = float(m.real_hashrate(base.model.hash_levels_mhs[base.model.equal_hash_level])) * base.model.n_servers
    seed = lab_network.one_ue_per_site(base.topology, scn.seed)
    fitted = load_scenario("lab", over + [f"seed={seed}",
                                          f"lab.block_interval_s={max(2.0, 1.2 * MIN_DIFFICULTY / hps):.2f}"])
    return dataclasses.replace(fitted, cluster=lab_network.cluster_of(scn.cluster))


OUTCOME_FIELDS = ("data_mb", "demand", "desired_s", "outcome")   # what "the same task outcome" compares


def _run(scn: Scenario, run_dir: Path, keep: Path) -> dict:
    """One live run (``testbed run``) of ``scn`` into ``run_dir``; its summary, slots, books and
    tasks, the report copied to ``keep``."""
    from testbed.experiments import live
    out: dict = {"run_dir": str(run_dir)}
    try:
        summary = live.run(scn, run_dir)
        out["summary"] = {k: summary.get(k) for k in ("tasks", "lost", "bring_up", "teardown_s", "total_s")}
    except Exception as e:   # noqa: BLE001 - recorded; a must fails
        out["error"] = f"{type(e).__name__}: {e}"
    if (run_dir / "raw.json").exists():
        raw = json.loads((run_dir / "raw.json").read_text())
        audit = raw.get("audit") or {}
        out["audit"] = {k: v for k, v in audit.items() if k not in ("ues", "mec_wallets")}
        out["audit"]["adds_up"] = {n: x.get("adds_up") for part in ("ues", "mec_wallets")
                                   for n, x in (audit.get(part) or {}).items()}
        slots = raw.get("slots") or []
        out["applied_ms"] = {k: _pct([1000 * s[k] for s in slots if s.get(k) is not None])
                             for k in ("slot_to_applied_s",)}
        out["applied_ms"]["budgets_applied"] = _pct([1000 * s["applied"]["budgets_applied_s"] for s in slots
                                                     if (s.get("applied") or {}).get("budgets_applied_s") is not None])
    tasks = run_dir / "tasks.csv"
    out["tasks"] = list(csv.DictReader(tasks.open())) if tasks.exists() else []
    keep.mkdir(parents=True, exist_ok=True)
    for f in ("summary.json", "summary.md", "tasks.csv", "slots.csv", "raw.json"):
        if (run_dir / f).exists():
            shutil.copy(run_dir / f, keep / f)
    return out


def _pct(xs: list[float]) -> dict:
    import numpy as np
    return {"n": len(xs), **({"p50": round(float(np.percentile(xs, 50)), 2), "p95": round(float(np.percentile(xs, 95)), 2),
                              "max": round(max(xs), 2)} if xs else {})}


def same_outcomes(one: list[dict], two: list[dict], slots: int = SLOTS) -> dict:
    """Tasks of a run on one machine against the same scenario's on a cluster, matched by UE and
    task number: the tasks both offered must be the same tasks (size, demand, deadline: the
    UEs' seeded draws) with the same outcome. How many each offered is timing (the last slot's
    end), reported. So is a task that either run served after the policy's ``slots`` slots (in
    the drain, where the controller's fallback decides until the UEs stop): whether a UE's last
    announcement is served before its client is stopped is the drain's timing, not the cluster's;
    such tasks are listed (``after_last_slot``), not compared."""
    a = {(t["ue"], t["task_id"]): t for t in one}
    b = {(t["ue"], t["task_id"]): t for t in two}
    late = lambda t: (t.get("slot") or "").strip() != "" and int(t["slot"]) >= slots  # noqa: E731
    both = sorted(set(a) & set(b), key=lambda k: (k[0], int(k[1])))
    after = [k for k in both if late(a[k]) or late(b[k])]
    differ = [{"task": f"{u}#{i}", "one": {f: a[(u, i)][f] for f in OUTCOME_FIELDS},
               "two": {f: b[(u, i)][f] for f in OUTCOME_FIELDS}}
              for u, i in both if (u, i) not in after and any(a[(u, i)][f] != b[(u, i)][f] for f in OUTCOME_FIELDS)]
    count = lambda ts: {o: sum(t["outcome"] == o for t in ts) for o in sorted({t["outcome"] for t in ts})}  # noqa: E731
    return {"offered_one": len(a), "offered_two": len(b), "compared": len(both) - len(after), "differ": differ,
            "after_last_slot": [{"task": f"{u}#{i}", "one": {f: a[(u, i)][f] for f in ("slot", "outcome")},
                                 "two": {f: b[(u, i)][f] for f in ("slot", "outcome")}} for u, i in after],
            "only_one": sorted(f"{u}#{i}" for u, i in set(a) - set(b)),
            "only_two": sorted(f"{u}#{i}" for u, i in set(b) - set(a)),
            "outcomes_one": count(one), "outcomes_two": count(two)}


def stage(scn: Scenario, shared: Path, out_dir: Path) -> dict:
    """Run the live lab across the servers for :data:`SLOTS` slots, then the same scenario on
    this machine alone; what the cluster run served by direction, its books and applied
    latencies, and the two runs' task outcomes side by side. The runs' reports are copied to
    ``out_dir/live-lab`` and ``out_dir/live-lab-one-machine`` (the run folders are in the shared
    folder, which a check removes)."""
    t0 = time.monotonic()
    run_scn = scenario(scn)
    where = place(build_topo(run_scn.topology, 2, 2, run_scn.seed, detect()).plan, run_scn.cluster).server
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: dict = {"seed": run_scn.seed, "slots": SLOTS, "policy": run_scn.lab.policy,
                 "servers": {n: where[n] for n in ("mec1", "mec2", "ue1", "ue2")}}
    two = _run(run_scn, shared / f"run-{stamp}-cluster", out_dir / "live-lab")
    directions: dict[str, int] = {}
    for t in two["tasks"]:
        if t["outcome"] == "completed" and t["ue"] in where and t["mec"] in where:
            key = f"{t['ue']} ({where[t['ue']]}) -> {t['mec']} ({where[t['mec']]})"
            directions[key] = directions.get(key, 0) + 1
    out["served"] = directions
    out["cluster_run"] = {k: v for k, v in two.items() if k != "tasks"}
    one = _run(dataclasses.replace(run_scn, cluster=ClusterConfig()), shared / f"run-{stamp}-one-machine",
               out_dir / "live-lab-one-machine")
    out["one_machine_run"] = {k: v for k, v in one.items() if k != "tasks"}
    out["same_outcomes"] = same_outcomes(one["tasks"], two["tasks"])
    out["hetero"] = hetero(run_scn, {m: where[m] for m in ("mec1", "mec2")}, shared / f"run-{stamp}-hetero",
                           out_dir / "live-lab-hetero")
    out["total_s"] = round(time.monotonic() - t0, 2)
    return out


def faster(cal: Calibration, k: float) -> Calibration:
    """``cal`` as measured on a CPU whose every rate (hashes per core, clock, kernel iterations
    per core-second) is ``k`` times as high: the same cycles per iteration."""
    return dataclasses.replace(cal, core_hz=k * cal.core_hz, kernel_iterations_per_core_s=k * cal.kernel_iterations_per_core_s,
                               hashrate_hps_per_core=k * cal.hashrate_hps_per_core,
                               hashrate_points=[{**p, "hashrate_hps": k * p["hashrate_hps"]}
                                                if p.get("hashrate_hps") is not None else p for p in cal.hashrate_points])


def hetero(run_scn: Scenario, where: dict[str, str], run_dir: Path, keep: Path) -> dict:
    """The live run across the servers with server b's own calibration (see the module
    docstring): what b's miner, b's executor and the UEs used, against b's mapping. ``where``:
    each MEC server's server (the placement: mec1 on a, mec2 on b)."""
    cluster, path = run_scn.cluster, HETERO_DIR / "calibration.json"
    lab_cal = Calibration.load(run_scn.path(run_scn.lab.calibration))
    b_cal = faster(lab_cal, HETERO)
    lab_map = LiveMapping(run_scn.model, run_scn.lab.mining_cores, run_scn.lab.host_cores, lab_cal)
    b_map = lab_map.for_server(b_cal)
    levels = list(run_scn.model.hash_levels_mhs)
    out: dict = {"k": HETERO, "levels_cores": {"lab": [round(float(c), 5) for c in lab_map.miner_cores(levels)],
                                               "b": [round(float(c), 5) for c in b_map.miner_cores(levels)]},
                 "iterations_per_gcycle": {"lab": lab_map.iterations_per_gcycle, "b": b_map.iterations_per_gcycle}}
    try:
        for spec in cluster.servers:
            cal = b_cal if spec.name == "b" else lab_cal
            remote.put_files(spec, cluster, {str(HETERO_DIR): 0o700},
                             {str(path): (json.dumps(dataclasses.asdict(cal), indent=1) + "\n", None)})
        scn = dataclasses.replace(run_scn, lab=dataclasses.replace(run_scn.lab, calibration=str(path)))
        run = _run(scn, run_dir, keep)
        out.update({k: v for k, v in run.items() if k not in ("tasks",)})
        used: dict[str, set] = {m: set() for m in where}
        for s in json.loads((keep / "raw.json").read_text()).get("slots", []) if (keep / "raw.json").exists() else []:
            for m, c in ((s.get("applied") or {}).get("budgets_cores") or {}).items():
                used[m].add(round(float(c), 5))
        out["budgets_cores_used"] = {m: sorted(v) for m, v in used.items()}
        served = {m: [] for m in where}
        for m in where:
            f = run_dir / "lab" / "executors" / f"{m}.jsonl"
            for line in f.read_text().splitlines() if f.exists() else []:
                r = json.loads(line)
                if r.get("event") == "served":
                    ipg = (b_map if where[m] == "b" else lab_map).iterations_per_gcycle
                    served[m].append({"task": f"{r['ue_name']}#{r['task_id']}", "iterations": r["iterations"],
                                      "own": kernel_iterations(r["gcycles"], ipg)})
        out["served"] = served
        out["outcomes_by_mec"] = {m: sorted({t["outcome"] for t in run["tasks"] if t["mec"] == m}) for m in where}
    except Exception as e:   # noqa: BLE001 - recorded; a must fails
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        for spec in cluster.servers:
            run_on(spec, cluster, f"rm -rf {HETERO_DIR}")
    return out


def musts(r: dict) -> dict[str, bool]:
    served = r.get("served") or {}
    across = {(k.split("(")[1].split(")")[0], k.split("(")[2].split(")")[0]) for k in served}
    two, one = r.get("cluster_run") or {}, r.get("one_machine_run") or {}
    books = lambda x: "error" not in x and ((x.get("summary") or {}).get("lost") or {}).get("books_close") is True  # noqa: E731
    applied = ((two.get("applied_ms") or {}).get("budgets_applied") or {})
    same = r.get("same_outcomes") or {}
    return {
        "live lab: a paid task each way across servers (UE on b -> MEC on a, UE on a -> MEC on b)":
            "error" not in two and {("b", "a"), ("a", "b")} <= across,
        "live lab: the books close (across servers, and on one machine)": books(two) and books(one),
        "live lab: budgets applied on the servers' miners, slot start -> applied p95 < 300 ms":
            applied.get("n", 0) > 0 and applied.get("p95", 1e9) < 300.0,
        "live lab: the same tasks with the same outcomes at one server and at two":
            same.get("compared", 0) > 0 and not same.get("differ"),
        "live lab, server b with a calibration of its own: b's miner at b's quotas, b's executor at "
        "b's iterations, its tasks verified by the UEs, the books closing": hetero_ok(r.get("hetero") or {}),
    }


def hetero_ok(h: dict) -> bool:
    """The heterogeneous run's must (:func:`hetero`)."""
    if "error" in h or not h.get("served"):
        return False
    b_levels, lab_levels = set(h["levels_cores"]["b"]), set(h["levels_cores"]["lab"])
    used = h.get("budgets_cores_used") or {}
    books = ((h.get("summary") or {}).get("lost") or {}).get("books_close") is True
    return (books and bool(used.get("mec2")) and set(used["mec2"]) <= b_levels and not set(used["mec2"]) & lab_levels
            and b_levels != lab_levels
            and bool(used.get("mec1")) and set(used["mec1"]) <= lab_levels
            and all(t["iterations"] == t["own"] for m in ("mec1", "mec2") for t in h["served"][m])
            and len(h["served"]["mec2"]) > 0 and "wrong_result" not in h["outcomes_by_mec"]["mec2"]
            and "completed" in h["outcomes_by_mec"]["mec2"])
