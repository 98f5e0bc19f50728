"""The paper's experiments (Figs. 4-7, Table II) under every reading, and sweeps, on Ray or a pool.

    from scenario.config import load_scenario
    from testbed.experiments.paper import run_paper, run_sweep
    scn = load_scenario("paper")
    run_paper(scn, Path("results/paper"))                       # embedded Ray, scn.paper.jobs CPUs
    run_paper(scn, out, engine="pool", jobs=2)                  # the same numbers on a process pool
    run_paper(scn, out, address="head-node:6379")               # on a Ray cluster
    run_sweep(scn, Path("scenarios/sweeps/readings.toml"), Path("results/sweep"))

``python -m testbed paper|sweep`` calls exactly these. Both resume: runs already in
``<out>/runs.jsonl`` are not run again (delete the folder to start afresh). Every file they
write records the scenario's digest (:meth:`scenario.config.Scenario.digest`), and a folder
holding runs of another scenario is refused.
"""
from __future__ import annotations

import csv
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from base.errors import ConfigError
from scenario.config import load_scenario
from testbed.experiments.paper import report
from testbed.experiments.paper.runner import ENGINES, Job, execute, job

__all__ = ["run_paper", "run_sweep", "paper_jobs"]


def paper_jobs(scn) -> list[Job]:
    """Every run of Figs. 4-7 and Table II, for every reading in ``scn.paper.readings``."""
    pc, learner = scn.paper, scn.learner.to_dict()
    jobs: list[Job] = []
    for reading in pc.readings:
        base = pc.reading_model(scn.model, reading).to_dict()

        def add(fig, series, algo, x, over, variant="full", train=pc.train_slots, evals=pc.eval_slots, curve=False):
            for s in range(pc.seeds):
                jobs.append(job(reading, fig, series, algo, x, s, {**base, **over}, learner, train, evals,
                                variant=variant, keep_curve=curve, conv_window=pc.convergence_window,
                                conv_tol=pc.convergence_tolerance))

        # Fig. 4: learning curves. With fig4_slots = train_slots these are Fig. 5's runs at U = fig4_users
        # (same key), so they are computed once.
        for algo in report.LEARNERS:
            add("fig4", algo, algo, pc.fig4_users, {"n_users": pc.fig4_users}, train=pc.fig4_slots, curve=True)
        for u in pc.users_grid:                                                # Fig. 5 (+ Table II)
            for algo in report.ALGOS:
                add("fig5", algo, algo, u, {"n_users": u})
        for xi in pc.demand_grid:                                              # Fig. 6
            for algo in report.ALGOS:
                add("fig6", algo, algo, xi, {"demand_gcycles_range": [xi, xi]})
        for fig, fee in (("fig7", base["fee_per_kb"]), ("fig7_fee", pc.fee_reading_per_kb)):   # Fig. 7
            for b in pc.block_grid:
                for variant in ("full", "no_ra_equal", "no_ra_random", "no_us"):
                    add(fig, variant, "ddqn", b, {"block_kb": b, "fee_per_kb": fee}, variant=variant)
                add(fig, "oracle", "oracle", b, {"block_kb": b, "fee_per_kb": fee})
    return jobs


def _announce(scn) -> None:
    from agent.model import latency_weight_threshold
    pc = scn.paper
    for name in pc.readings:
        m = pc.reading_model(scn.model, name)
        w_star = latency_weight_threshold(m)
        side = "below: utility rises with ξ" if m.latency_weight < w_star else "above: utility falls with ξ"
        star = "  (paper scenario's default)" if name == pc.default_reading else ""
        print(f"reading {name:<12} ξ {m.demand_reading:<6} w = {m.latency_weight:<5g} w* = µ·f/d̄ = "
              f"{w_star:.3f} token/s -> w is {side}{star}" if m.demand_reading == "per_mb" else
              f"reading {name:<12} ξ {m.demand_reading:<6} w = {m.latency_weight:<5g} w* = µ·f = "
              f"{w_star:.3f} token/s -> w is {side}{star}", file=sys.stderr)


def run_paper(scn, out_dir: Path, *, jobs: int | None = None, engine: str = "ray", address: str | None = None) -> dict:
    """Run Figs. 4-7 and Table II under every reading; write ``out_dir``; return the summary.

    ``jobs``: CPUs of the embedded Ray or processes of the pool (default ``scn.paper.jobs``);
    ``address``: an existing Ray cluster (``engine="ray"`` only). Returns
    ``{"wall_seconds", "out", "runs", "failed", "w_star", "claims_reproduced", "ddqn_gap_closed"}``.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address and engine != "ray":
        raise ConfigError("--address needs --engine ray")
    out_dir = Path(out_dir)
    workers = jobs or scn.paper.jobs
    _announce(scn)
    t0 = time.time()
    all_jobs = paper_jobs(scn)
    print(f"paper: {len(all_jobs)} runs ({len({j.key for j in all_jobs})} distinct) on {engine} with {workers} "
          f"workers -> {out_dir}", file=sys.stderr)
    res = execute(all_jobs, out_dir, scenario_digest=scn.digest(), engine=engine, workers=workers,
                  address=address, desc="paper")
    meta = {"scenario": scn.name, "scenario_digest": scn.digest(), "wall_seconds": time.time() - t0, "engine": engine, "workers": workers, "address": address,
            "runs": len({j.key for j in all_jobs}), "ran": res.ran, "resumed": res.resumed, "failed": res.failed}
    summary = report.write_report(res.rows, out_dir, scn, meta)
    result = {"wall_seconds": round(meta["wall_seconds"], 1), "out": str(out_dir), "engine": engine,
              "workers": workers, "runs": meta["runs"], "ran": res.ran, "resumed": res.resumed,
              "failed": sorted(res.failed),
              "w_star": {n: round(s["w_star"], 4) for n, s in summary["readings"].items()},
              "claims_reproduced": {n: sum(c["readings"][n]["verdict"] == "yes" for c in summary["claims"])
                                    for n in summary["readings"]},
              "ddqn_gap_closed": {n: {u: round(c.get("ddqn", float("nan")), 3) for u, c in s["gap_closed"].items()}
                                  for n, s in summary["readings"].items()}}
    return result


# --- sweeps --------------------------------------------------------------------------------------

def _with(section_cfg, over: dict[str, Any]):
    """A copy of a [model]/[learner] dataclass with fields replaced, validated again."""
    return type(section_cfg).from_dict({**section_cfg.to_dict(), **over})


def sweep_jobs(scn, sweep) -> list[Job]:
    scenarios = [(name, load_scenario(name)) for name in sweep.scenarios] or [(scn.name, scn)]
    keys = list(sweep.grid)
    jobs: list[Job] = []
    for sname, sc in scenarios:
        readings = sweep.readings or list(sc.paper.readings)
        missing = [r for r in readings if r not in sc.paper.readings]
        if missing:
            raise ConfigError(f"sweep.readings {missing} not in scenario {sname!r}'s paper.readings "
                              f"({', '.join(sc.paper.readings)})")
        for reading in readings:
            base_model = sc.paper.reading_model(sc.model, reading)
            for values in itertools.product(*(sweep.grid[k] for k in keys)):
                point = dict(zip(keys, values))
                m_over = {k.split(".", 1)[1]: v for k, v in point.items() if k.startswith("model.")}
                l_over = {k.split(".", 1)[1]: v for k, v in point.items() if k.startswith("learner.")}
                try:
                    model, learner = _with(base_model, m_over).to_dict(), _with(sc.learner, l_over).to_dict()
                except ConfigError as e:
                    raise ConfigError(f"sweep point {point} of scenario {sname!r}, reading {reading!r}: {e}") from None
                cell = "/".join([sname, reading] + [f"{k}={v}" for k, v in point.items()])
                for algo in sweep.algos:
                    for seed in sweep.seeds:
                        jobs.append(job(cell, "sweep", algo, algo, 0.0, seed, model, learner,
                                        sweep.train_slots or sc.paper.train_slots,
                                        sweep.eval_slots or sc.paper.eval_slots,
                                        conv_window=sc.paper.convergence_window,
                                        conv_tol=sc.paper.convergence_tolerance))
    return jobs


def run_sweep(scn, out_dir: Path, *, engine: str = "ray", address: str | None = None,
              jobs: int | None = None) -> dict:
    """Run the scenario's ``[sweep]``; write ``runs.jsonl``, ``runs.csv`` and ``sweep.json``/
    ``sweep.md`` (mean utility, its 95 % interval and the share of the random-to-oracle gap per
    cell and algorithm)."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    sweep = scn.sweep
    out_dir = Path(out_dir)
    workers = jobs or scn.paper.jobs
    t0 = time.time()
    all_jobs = sweep_jobs(scn, sweep)
    print(f"sweep: {len(all_jobs)} runs on {engine} with {workers} workers -> {out_dir}", file=sys.stderr)
    res = execute(all_jobs, out_dir, scenario_digest=scn.digest(), engine=engine, workers=workers,
                  address=address, desc="sweep")
    cells: dict[str, dict] = {}
    for r in res.rows:
        cells.setdefault(r["reading"], {}).setdefault(r["algo"], {})[r["seed"]] = r["avg_utility"]
    table = {}
    for cell, algos in cells.items():
        row = {}
        rnd, orc = algos.get("random"), algos.get("oracle")
        for algo, per_seed in algos.items():
            m, h = report.ci95(per_seed.values())
            row[algo] = {"mean": m, "ci95": h, "n": len(per_seed)}
            if rnd and orc:
                rm, om = report.ci95(rnd.values())[0], report.ci95(orc.values())[0]
                row[algo]["gap_closed"] = (m - rm) / (om - rm) if om != rm else None
        table[cell] = row
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["reading"] + report.RUN_FIELDS[3:], extrasaction="ignore")
        w.writeheader()
        for r in sorted(res.rows, key=lambda r: (r["reading"], r["algo"], r["seed"])):
            w.writerow(r)
    result = {"scenario": scn.name, "scenario_digest": scn.digest(),
              "wall_seconds": round(time.time() - t0, 1), "out": str(out_dir), "engine": engine, "workers": workers,
              "runs": len({j.key for j in all_jobs}), "ran": res.ran, "resumed": res.resumed,
              "failed": sorted(res.failed), "cells": table}
    (out_dir / "sweep.json").write_text(json.dumps(result, indent=1, default=lambda o: None))
    L = [f"# Sweep {scn.name}", "", f"{result['runs']} runs, {result['wall_seconds']:.0f} s on {engine}.", "",
         "| cell | algorithm | utility (token/slot) | gap closed |", "|---|---|---|---|"]
    for cell, row in table.items():
        for algo, v in row.items():
            g = v.get("gap_closed")
            L.append(f"| {cell} | {algo} | {report._fmt(v['mean'], v['ci95'])} | {'' if g is None else f'{g:.3f}'} |")
    (out_dir / "sweep.md").write_text("\n".join(L) + "\n")
    return result
