"""``python -m testbed calibrate``: measure this machine for the model-to-lab mapping.

Writes ``results/calibration.json`` (:class:`scenario.units.Calibration`), dated:

1. **The work kernel** (:mod:`nodes.work`, the MEC executor's SHA-256 chain): iterations per
   CPU-second on one core, then the same kernel in a cgroup with a CPU quota of
   ``calibrate.hash_quotas[0]`` cores, to check that a quota of q cores gives q times the rate.
2. **The clock**: cycles per second of one core, from ``perf stat`` where the machine counts
   cycles, else /proc/cpuinfo's ``cpu MHz``; cycles per kernel iteration follow.
3. **Hash rate against CPU quota**: one geth node per CPU quota of ``calibrate.hash_quotas``
   (the scenario's ``[chain]``, test-size DAG by default), one thread each, all mining at once,
   each on its own chain (:func:`hashrate_per_core` says why at once is the same); the
   rate of each 5-s hashrate tick is recovered from geth's EWMA
   (:func:`testbed.experiments.metrics.instant_hashrate`), the first tick after a change is dropped. geth
   counts hashes in batches of 32768, so at a few kH/s single ticks are coarse: the mean over
   a window of many ticks is what is kept. The rate is not proportional to the quota (geth's
   own work takes a fixed share): :class:`scenario.units.LiveMapping` interpolates between the
   measured points.

About a minute with the defaults (three when the quotas were measured one after another). :class:`scenario.units.LiveMapping` then maps the
model's hash levels to miner quotas and a task's Gcycles to kernel iterations.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from chain.cgroup import CpuQuota
from chain.network import Chain
from chain.config import PORT_FIELDS
from testbed.experiments.metrics import TICK_S, instant_hashrate
from nodes.work import compute
from scenario.config import ROOT, Scenario
from base import machine
from base.processes import ManagedProcess, local, log_ready
from scenario.units import Calibration

CGROUP_PARENT = "mec-lab"
# The calibration kernel's one result line. Matched with its newline: a child whose stdout is
# unbuffered (PYTHONUNBUFFERED=1, as on CI machines) may write a line in pieces, and under a
# 0.04-core quota it can be throttled between them (the check once saw "WALL" alone).
WALL_LINE = r"(?m)^WALL (\S+)\n"


def kernel_rate(seconds: float) -> float:
    """Iterations per CPU-second of the work kernel in this process (one core)."""
    n, spent, iters = 20_000, 0.0, 0
    while spent < seconds:
        t0 = time.thread_time()
        compute(b"calibrate", n)
        dt = time.thread_time() - t0
        spent += dt
        iters += n
        if dt < 0.2:
            n *= 2
    return iters / spent


def wall_seconds(proc: ManagedProcess, timeout: float) -> float:
    """The seconds on the kernel's ``WALL`` line, once the whole line is in its log."""
    proc.wait_ready(log_ready(WALL_LINE), timeout, "done")
    return float(re.search(WALL_LINE, proc.log_path.read_text()).group(1))


def kernel_rate_under_quota(cores: float, iterations: int, log_dir: Path) -> float:
    """Iterations per wall-second of the kernel in a child process capped at ``cores``."""
    name = f"calibrate-{time.monotonic_ns()}"
    code = ("import re, time, sys\n"
            "from nodes.work import compute\n"
            f"while '{name}' not in open('/proc/self/cgroup').read(): time.sleep(0.01)\n"
            "t0 = time.monotonic()\n"
            f"compute(b'calibrate', {iterations})\n"
            "sys.stdout.write(f'WALL {time.monotonic() - t0}\\n'); sys.stdout.flush()\n")
    quota = CpuQuota(name, parent=CGROUP_PARENT)
    try:
        quota.set(cores)
        proc = ManagedProcess("calibration kernel", [sys.executable, "-c", code],
                              log_dir / f"{name}.log", launcher=local(), cwd=ROOT)
        with proc:
            quota.attach(proc.pid)
            wall = wall_seconds(proc, 300)
    finally:
        quota.remove()
    return iterations / wall


def core_hz() -> tuple[float, str]:
    """Cycles per second of one core: perf's count if the machine has one, else cpuinfo."""
    try:
        out = subprocess.run(["perf", "stat", "-x,", "-e", "cycles", sys.executable, "-c",
                              "import hashlib\nh=b'x'\nfor _ in range(300000): h=hashlib.sha256(h).digest()"],
                             capture_output=True, text=True, timeout=60)
        field = out.stderr.strip().splitlines()[-1].split(",")[0] if out.stderr.strip() else ""
        if field.isdigit():
            # cycles over the task's CPU time
            t = re.search(r"([\d.]+),msec,task-clock", out.stderr)
            if t:
                return int(field) / (float(t.group(1)) / 1000), "perf"
    except (OSError, subprocess.TimeoutExpired):
        pass
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)]
    if not mhz:
        raise RuntimeError("cannot read the CPU clock: no perf cycle counter and no 'cpu MHz' in /proc/cpuinfo")
    return float(np.mean(mhz)) * 1e6, "/proc/cpuinfo cpu MHz (perf cannot count cycles here)"


def hashrate_per_core(scn: Scenario, quotas: tuple[float, ...], seconds: float) -> list[dict]:
    """One geth node per quota, one thread each, all hashing at once for ``seconds``, each
    alone on its own chain (no peers: as a single miner it imports only its own blocks) and in
    its own cgroup capped at its quota: mean per-tick hash rate (H/s) of each.

    At once, not one quota after another: the quotas are hard caps far below the machine's
    cores (Σ ``calibrate.hash_quotas`` = 0.58 of 2 by default, refused above half the cores),
    so no node waits for a CPU and each measures what it would alone, in a quarter of the time
    (issue 21: docs/performance.md, "calibration")."""
    cores = os.cpu_count() or 1
    if sum(quotas) > cores / 2:
        raise ValueError(f"calibrate.hash_quotas sum to {sum(quotas):g} cores, more than half of this machine's "
                         f"{cores}: measured at once they would wait for CPU; give fewer or smaller quotas")
    points = []
    with contextlib.ExitStack() as stack:
        nodes = []
        for k, q in enumerate(quotas):
            # ports apart by 10 per chain (a chain of one node takes its port and the next)
            cfg = dataclasses.replace(scn.chain, n_nodes=1, n_ues=0, threads=1, budget_mode="cpu_quota",
                                      genesis_difficulty=2**19, workdir=None,
                                      **{f: getattr(scn.chain, f) + 10 * k for f in PORT_FIELDS})
            chain = stack.enter_context(Chain(cfg, budgets=[1], cpu_quotas=[q], names=[f"calibrate{k}"],
                                              wait_first_block=False))
            nodes.append(chain.nodes[0])
        t_change = time.time()
        times, ewma = [], [[] for _ in nodes]
        while time.time() < t_change + seconds:
            times.append(time.time())
            for k, node in enumerate(nodes):
                ewma[k].append(node.hashrate())
            time.sleep(0.5)
    for q, series in zip(quotas, ewma):
        ticks = [(t, r) for t, r in instant_hashrate(times, series) if t > t_change + TICK_S + 0.5]
        rates = [r for _, r in ticks]
        points.append({"quota_cores": q, "ticks": len(rates),
                       "hashrate_hps": float(np.mean(rates)) if rates else float("nan"),
                       "hps_per_core": float(np.mean(rates)) / q if rates else float("nan")})
    return points


def run(scn: Scenario, out: Path | None = None) -> Calibration:
    c = scn.calibrate
    path = out or scn.path(c.out)
    log_dir = scn.results_path / "calibration-logs"
    print("[calibrate] work kernel on one core ...", file=sys.stderr, flush=True)
    rate = kernel_rate(c.kernel_seconds)
    q0 = c.hash_quotas[0]
    print(f"[calibrate] work kernel under a {q0}-core quota ...", file=sys.stderr, flush=True)
    quota_rate = kernel_rate_under_quota(q0, int(rate * q0 * c.kernel_seconds), log_dir)
    hz, source = core_hz()
    print(f"[calibrate] geth hash rate under quotas {list(c.hash_quotas)} "
          f"(at once, {c.hash_seconds:.0f} s) ...", file=sys.stderr, flush=True)
    points = hashrate_per_core(scn, c.hash_quotas, c.hash_seconds)
    per_core = [p["hps_per_core"] for p in points if np.isfinite(p["hps_per_core"])]
    if not per_core:
        raise RuntimeError("no hashrate tick was measured: raise calibrate.hash_seconds")
    big = max(points, key=lambda p: p["quota_cores"])
    cal = Calibration(
        date=Calibration.now(), machine=machine.facts(), core_hz=hz,
        core_hz_source=source, kernel_iterations_per_core_s=rate,
        cycles_per_iteration=hz / rate, kernel_quota_linearity=quota_rate / q0 / rate,
        hashrate_hps_per_core=float(big["hps_per_core"]), hashrate_points=points,
        pow_mode=scn.chain.pow_mode)
    cal.save(path)
    print(json.dumps(dataclasses.asdict(cal), indent=1))
    print(f"[calibrate] wrote {path}", file=sys.stderr)
    return cal
