"""Benchmarks of the miners' chain; each prints one JSON object (and writes it to results/).

``python -m testbed bench-chain startup``
    M = ``model.n_servers`` nodes from launch to peered and mining (target: <= 30 s for 10),
    memory per node.
``python -m testbed bench-chain budget``
    how long a hash-budget change takes to show: in geth's ``eth_getHashrate`` (its next
    5-s tick), in the per-tick rate recovered from it, and in the process's CPU use.
``python -m testbed bench-chain dag [--generate]``
    the full epoch-0 DAG: generation time and peak memory (``geth makedag``), its size, and a
    full-DAG node against a test-mode node: start-up, hashrate per thread, memory.

Settings: the scenario's ``[chain]`` and ``[bench_chain]``.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil

from chain.network import Chain, dag_files, dag_ready
from chain.config import ChainConfig
from testbed.experiments.metrics import TICK_S, clean_json, instant_hashrate
from scenario.config import Scenario


def _mem_stats(mem: dict[str, dict]) -> dict:
    out = {}
    for key in ("rss_mib", "uss_mib", "pss_mib"):
        vals = [m[key] for m in mem.values() if key in m]
        if vals:
            out[key] = {"mean": float(np.mean(vals)), "max": float(np.max(vals)),
                        "total": float(np.sum(vals))}
    return out


def bench_startup(chain_cfg: ChainConfig, settle_s: float) -> dict:
    """Launch the chain's nodes (1 thread each) and time them to peered and mining."""
    cfg = dataclasses.replace(chain_cfg, threads=1, start_timeout_s=max(120.0, chain_cfg.start_timeout_s))
    n, pow_mode = cfg.n_nodes, cfg.pow_mode
    with Chain(cfg) as chain:
        timings = dict(chain.timings)
        time.sleep(settle_s)   # memory once the nodes have mined for a while
        mem = chain.memory()
        heads = chain.heads()
    return {"bench": "startup", "nodes": n, "pow_mode": pow_mode, "cores": psutil.cpu_count(),
            "init_s": timings["init_s"], "rpc_up_s": timings["rpc_up_s"],
            "peered_s": timings["peered_s"], "peered_and_mining_s": timings["mining_s"],
            "target_s": 30.0, "meets_target": timings["mining_s"] <= 30.0,
            "memory_after_s": settle_s, "memory_mib": _mem_stats(mem), "per_node_mib": mem,
            "head_after": max(heads.values())}


def bench_budget(chain_cfg: ChainConfig, steps: tuple[int, ...], hold_s: float,
                 period_s: float = 0.25) -> dict:
    """One node; thread budgets ``steps`` in turn (1 -> 0 -> 1 -> 2 -> 1), each held ``hold_s``."""
    cfg = dataclasses.replace(chain_cfg, n_nodes=1, threads=steps[0])
    samples = []   # (t, ewma H/s, cpu s)
    changes = []   # (t, threads)
    with Chain(cfg) as chain:
        nd = chain.nodes[0]
        t_end = time.time() + hold_s
        for k, threads in enumerate(steps):
            if k > 0:
                chain.set_hash_budget(0, threads)
                changes.append((time.time(), threads))
                t_end = time.time() + hold_s
            while time.time() < t_end:
                samples.append((time.time(), nd.hashrate(), nd.cpu_seconds()))
                time.sleep(period_s)
    t = np.array([s[0] for s in samples])
    ewma = np.array([s[1] for s in samples])
    cpu = np.array([s[2] for s in samples])
    inst = instant_hashrate(list(t), list(ewma))
    it = np.array([x[0] for x in inst])
    ir = np.array([x[1] for x in inst])
    cpu_rate = np.diff(cpu) / np.diff(t)
    cpu_t = t[1:]
    results = []
    bounds = [c[0] for c in changes] + [t[-1]]
    for i, (tc, threads) in enumerate(changes):
        t_prev_start = changes[i - 1][0] if i > 0 else t[0]
        t_next = bounds[i + 1]

        def level(ts, xs, a, b):
            m = (ts >= a) & (ts < b)
            return float(np.mean(xs[m])) if m.any() else float("nan")
        old = level(it, ir, t_prev_start + 2 * TICK_S, tc)
        new = level(it, ir, tc + 2 * TICK_S, t_next)
        old_cpu = level(cpu_t, cpu_rate, t_prev_start + 2, tc)
        new_cpu = level(cpu_t, cpu_rate, tc + 2, t_next)

        def first_cross(ts, xs, a, b):
            """First time after the change when xs has moved halfway from a to b."""
            mid = (a + b) / 2
            m = ts > tc
            for tt, x in zip(ts[m], xs[m]):
                if (b > a and x >= mid) or (b < a and x <= mid):
                    return float(tt - tc)
            return float("nan")
        # the first tick seen between two readings both taken after the change
        tick = next((float(t1 - tc) for t0, t1, r0, r1 in zip(t[:-1], t[1:], ewma[:-1], ewma[1:])
                     if t0 > tc and r1 != r0), float("nan"))
        ewma_after = ewma[(t > tc) & (t < t_next)]
        ewma_half = first_cross(t, ewma, ewma[t <= tc][-1], new)
        results.append({
            "threads_to": threads, "hashrate_before_hps": old, "hashrate_after_hps": new,
            "first_ewma_tick_s": tick,
            "tick_rate_halfway_s": first_cross(it, ir, old, new),
            "ewma_halfway_s": ewma_half,
            "ewma_at_end_of_hold_hps": float(ewma_after[-1]) if ewma_after.size else None,
            "cpu_cores_before": old_cpu, "cpu_cores_after": new_cpu,
            "cpu_halfway_s": first_cross(cpu_t, cpu_rate, old_cpu, new_cpu)})
    tick_half = [r["tick_rate_halfway_s"] for r in results]
    return {"bench": "budget", "hold_s": hold_s, "sample_period_s": period_s,
            "cores": psutil.cpu_count(), "changes": results,
            "tick_rate_halfway_max_s": float(np.nanmax(tick_half)),
            "target_s": 5.0,
            "note": "eth_getHashrate is geth's 1-min EWMA ticked every 5 s; 'tick_rate' is the "
                    "5-s rate recovered from it (testbed.experiments.metrics.instant_hashrate)."}


def generate_dag(dag_dir: Path, geth: Path) -> dict:
    """Run ``geth makedag`` for epochs 0 and 1 into ``dag_dir``; record wall time, CPU time
    and peak RSS of each (written to ``dag_dir/generation.json``)."""
    dag_dir.mkdir(parents=True, exist_ok=True)
    rec = {"cores": psutil.cpu_count(), "epochs": {}}
    for epoch in (0, 1):
        t0 = time.monotonic()
        proc = subprocess.Popen([str(geth), "makedag", str(epoch * 30_000), str(dag_dir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p = psutil.Process(proc.pid)
        peak, cpu = 0, 0.0
        while proc.poll() is None:
            try:
                peak = max(peak, p.memory_info().rss)
                t = p.cpu_times()
                cpu = t.user + t.system
            except psutil.Error:
                pass
            time.sleep(0.5)
        rec["epochs"][str(epoch)] = {
            "generation_s": time.monotonic() - t0, "cpu_s": cpu, "peak_rss_mib": peak / 2**20,
            "exit_code": proc.returncode, "load_avg_1m_after": psutil.getloadavg()[0]}
    (dag_dir / "generation.json").write_text(json.dumps(rec, indent=1))
    return rec


def _node_profile(chain_cfg: ChainConfig, pow_mode: str, run_s: float, port_shift: int) -> dict:
    c = chain_cfg
    cfg = dataclasses.replace(c, n_nodes=2, threads=1, pow_mode=pow_mode, start_timeout_s=300.0,
                              p2p_port=c.p2p_port + port_shift, http_port=c.http_port + port_shift,
                              ws_port=c.ws_port + port_shift, authrpc_port=c.authrpc_port + port_shift)
    with Chain(cfg) as chain:
        timings = dict(chain.timings)
        samples = {nd.name: [] for nd in chain.nodes}
        t_end = time.time() + run_s
        while time.time() < t_end:
            for nd in chain.nodes:
                samples[nd.name].append((time.time(), nd.hashrate()))
            time.sleep(1.0)
        mem = chain.memory()
        heads = chain.heads()
    rates = []
    for name, s in samples.items():
        inst = instant_hashrate([x[0] for x in s], [x[1] for x in s])
        rates += [r for _, r in inst[1:]]
    return {"pow_mode": pow_mode, "nodes": 2, "threads_per_node": 1,
            "peered_and_mining_s": timings["mining_s"],
            "hashrate_per_thread_hps": float(np.median(rates)) if rates else None,
            "memory_mib": _mem_stats(mem), "blocks_in_run": max(heads.values()), "run_s": run_s}


def bench_dag(chain_cfg: ChainConfig, generate: bool, run_s: float) -> dict:
    cfg = dataclasses.replace(chain_cfg, pow_mode="full")
    dag = cfg.dag_path
    out: dict = {"bench": "dag", "dag_dir": str(dag), "cores": psutil.cpu_count()}
    if generate or not dag_ready(dag):
        out["generation"] = generate_dag(dag, cfg.geth_path)
    elif (dag / "generation.json").exists():
        out["generation"] = json.loads((dag / "generation.json").read_text())
    out["dag_files"] = {p.name: p.stat().st_size for p in dag_files(dag)}
    out["full"] = _node_profile(chain_cfg, "full", run_s, 0)
    out["test"] = _node_profile(chain_cfg, "test", run_s, 2)
    return out


def run(scn: Scenario, which: str, *, generate: bool = False, out_dir: Path | None = None) -> dict:
    """Run benchmark ``which`` ("startup", "budget" or "dag"), print and write its JSON."""
    b = scn.bench_chain
    if which == "startup":
        res = bench_startup(scn.chain, b.settle_s)
    elif which == "budget":
        res = bench_budget(scn.chain, b.budget_steps, b.step_s)
    elif which == "dag":
        res = bench_dag(scn.chain, generate, b.dag_run_s)
    else:
        raise ValueError(f"unknown chain benchmark {which!r}: startup, budget or dag")
    res = clean_json({**res, "scenario_digest": scn.digest()})
    out = out_dir or scn.results_path
    out.mkdir(parents=True, exist_ok=True)
    (out / f"chain_bench_{which}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=1))
    return res
