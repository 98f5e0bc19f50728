"""Benchmarks of the miners' chain; each prints one JSON object (and writes it to results/).

``python -m nodes.chain_bench startup [--nodes 10]``
    N nodes from launch to peered and mining (target: <= 30 s for 10), memory per node.
``python -m nodes.chain_bench budget``
    how long a hash-budget change takes to show: in geth's ``eth_getHashrate`` (its next
    5-s tick), in the per-tick rate recovered from it, and in the process's CPU use.
``python -m nodes.chain_bench dag [--generate]``
    the full epoch-0 DAG: generation time and peak memory (``geth makedag``), its size, and a
    full-DAG node against a test-mode node: start-up, hashrate per thread, memory.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from nodes.chain import Chain, dag_files, dag_ready
from nodes.config import ROOT, ChainConfig
from nodes.metrics import TICK_S, clean_json, instant_hashrate


def _mem_stats(mem: dict[str, dict]) -> dict:
    out = {}
    for key in ("rss_mib", "uss_mib", "pss_mib"):
        vals = [m[key] for m in mem.values() if key in m]
        if vals:
            out[key] = {"mean": float(np.mean(vals)), "max": float(np.max(vals)),
                        "total": float(np.sum(vals))}
    return out


def bench_startup(n: int, settle_s: float, pow_mode: str) -> dict:
    """Launch ``n`` nodes (1 thread each) and time them to peered and mining."""
    cfg = ChainConfig(n_nodes=n, threads=1, pow_mode=pow_mode, start_timeout_s=120.0)
    with Chain(cfg) as chain:
        chain.setup()
        timings = chain.start()
        time.sleep(settle_s)   # memory once the nodes have mined for a while
        mem = chain.memory()
        heads = chain.heads()
    return {"bench": "startup", "nodes": n, "pow_mode": pow_mode, "cores": psutil.cpu_count(),
            "init_s": timings["init_s"], "rpc_up_s": timings["rpc_up_s"],
            "peered_s": timings["peered_s"], "peered_and_mining_s": timings["mining_s"],
            "target_s": 30.0, "meets_target": timings["mining_s"] <= 30.0,
            "memory_after_s": settle_s, "memory_mib": _mem_stats(mem), "per_node_mib": mem,
            "head_after": max(heads.values())}


def bench_budget(hold_s: float, period_s: float) -> dict:
    """One node; budget steps 1 -> 0 -> 1 -> 2 -> 1 threads, each held ``hold_s``."""
    steps = [1, 0, 1, 2, 1]
    cfg = ChainConfig(n_nodes=1, threads=steps[0])
    samples = []   # (t, ewma H/s, cpu s)
    changes = []   # (t, threads)
    with Chain(cfg) as chain:
        chain.setup()
        chain.start()
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
                    "5-s rate recovered from it (nodes.metrics.instant_hashrate)."}


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


def _node_profile(pow_mode: str, run_s: float, port_base: int) -> dict:
    cfg = ChainConfig(n_nodes=2, threads=1, pow_mode=pow_mode, start_timeout_s=300.0,
                      p2p_port=port_base, http_port=port_base + 100, ws_port=port_base + 200,
                      authrpc_port=port_base + 300)
    with Chain(cfg) as chain:
        chain.setup()
        timings = chain.start()
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


def bench_dag(generate: bool, run_s: float) -> dict:
    cfg = ChainConfig(pow_mode="full")
    dag = cfg.dag_path
    out: dict = {"bench": "dag", "dag_dir": str(dag), "cores": psutil.cpu_count()}
    if generate or not dag_ready(dag):
        out["generation"] = generate_dag(dag, cfg.geth_path)
    elif (dag / "generation.json").exists():
        out["generation"] = json.loads((dag / "generation.json").read_text())
    out["dag_files"] = {p.name: p.stat().st_size for p in dag_files(dag)}
    out["full"] = _node_profile("full", run_s, 32_400)
    out["test"] = _node_profile("test", run_s, 32_500)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodes.chain_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("startup")
    s.add_argument("--nodes", type=int, default=10)
    s.add_argument("--settle", type=float, default=20.0, help="seconds before reading memory")
    s.add_argument("--pow-mode", choices=["test", "full"], default="test")
    b = sub.add_parser("budget")
    b.add_argument("--hold", type=float, default=25.0, help="seconds per budget step")
    b.add_argument("--period", type=float, default=0.25, help="sampling period, s")
    d = sub.add_parser("dag")
    d.add_argument("--generate", action="store_true", help="(re)generate the DAG")
    d.add_argument("--run", type=float, default=60.0, help="seconds each node profile mines")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    if args.bench == "startup":
        if not 1 <= args.nodes <= 64:
            ap.error(f"--nodes must be in [1, 64], got {args.nodes}")
        res = bench_startup(args.nodes, args.settle, args.pow_mode)
    elif args.bench == "budget":
        res = bench_budget(args.hold, args.period)
    else:
        res = bench_dag(args.generate, args.run)
    res = clean_json(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"chain_bench_{args.bench}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
