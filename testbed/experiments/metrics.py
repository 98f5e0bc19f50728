"""Metrics of the miners' chain, per node and over time, read from the nodes themselves.

:class:`ChainMonitor` runs beside a :class:`chain.network.Chain`: one WebSocket ``newHeads``
subscription per node records when each node first has each block as its head (block
propagation), and a sampler reads every node's hashrate, head, peers and CPU time once per
``period_s``. :func:`chain_blocks` reads the canonical chain (author ``miner``, uncles,
timestamps) and :func:`summarize` turns the lot into per-node figures (blocks mined, uncles,
block interval, hashrate, propagation delay), written as JSON and CSV by :func:`write`.

Hashrate. geth's figure (``eth_getHashrate``) is a go-metrics 1-minute EWMA ticked every 5 s:
``r_k = r_{k-1} + α (x_k − r_{k-1})`` with ``α = 1 − e^{−5/60}``, where ``x_k`` is the
number of hashes in the last 5-s tick divided by 5. :func:`instant_hashrate` inverts that
from two successive readings, ``x_k = r_{k-1} + (r_k − r_{k-1}) / α``: the node's true hashing rate over
each 5-s tick, without the minute-long lag of the EWMA.
"""
from __future__ import annotations

import csv
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from chain.geth import GethNode

EWMA_ALPHA = 1 - math.exp(-5.0 / 60.0)   # go-metrics EWMA1, ticked every 5 s
TICK_S = 5.0


def instant_hashrate(times: Sequence[float], ewma: Sequence[float]) -> list[tuple[float, float]]:
    """Recover the per-tick hashing rate (H/s) from samples of geth's EWMA hashrate.

    ``times``/``ewma`` are readings at least once per tick (5 s). A tick shows as a change of
    the reading; each change gives ``(time first seen, rate over the 5 s before it)``. A tick
    that leaves the reading unchanged (no hashing before or after) is invisible and harmless.
    """
    out = []
    for (t0, r0), (t1, r1) in zip(zip(times, ewma), zip(times[1:], ewma[1:])):
        if r1 != r0:
            out.append((t1, max(0.0, r0 + (r1 - r0) / EWMA_ALPHA)))
    return out


@dataclass
class Sample:
    t: float            # wall-clock time, s
    node: str
    head: int | None
    peers: int | None
    hashrate_ewma: float | None   # eth_getHashrate, H/s
    cpu_s: float | None           # CPU time used by the geth process so far, s
    drift_s: float | None         # head timestamp minus t: > 15 s and peers refuse blocks
    threads: int
    cpu_quota: float | None


@dataclass
class ChainMonitor:
    """Background recorder of head arrivals (WebSocket) and per-node samples (HTTP)."""
    nodes: Sequence[GethNode]
    period_s: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    arrivals: dict[str, dict[str, float]] = field(default_factory=dict)  # hash -> node -> t
    numbers: dict[str, int] = field(default_factory=dict)                # hash -> number

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> "ChainMonitor":
        for nd in self.nodes:
            th = threading.Thread(target=self._watch_heads, args=(nd,), daemon=True,
                                  name=f"heads-{nd.name}")
            th.start()
            self._threads.append(th)
        th = threading.Thread(target=self._sample_loop, daemon=True, name="sampler")
        th.start()
        self._threads.append(th)
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=5)
        self._threads.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- recording ----------------------------------------------------------------------
    def _watch_heads(self, nd: GethNode) -> None:
        from websockets.sync.client import connect   # web3's own dependency
        while not self._stop.is_set():
            if not nd.alive:   # killed in a fault test: wait for its restart
                self._stop.wait(0.5)
                continue
            try:
                with connect(nd.ws_url, open_timeout=5, close_timeout=1, max_size=2**22) as ws:
                    ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                        "params": ["newHeads"]}))
                    while not self._stop.is_set():
                        try:
                            msg = ws.recv(timeout=0.5)
                        except TimeoutError:
                            continue
                        t = time.time()
                        data = json.loads(msg)
                        head = data.get("params", {}).get("result")
                        if head and "hash" in head:
                            with self._lock:
                                self.arrivals.setdefault(head["hash"], {}).setdefault(nd.name, t)
                                self.numbers[head["hash"]] = int(head["number"], 16)
            except Exception:
                self._stop.wait(0.5)   # node down or restarting: try again

    def _sample_loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            for nd in self.nodes:
                self.samples.append(self._sample(nd))
            next_t += self.period_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    @staticmethod
    def _sample(nd: GethNode) -> Sample:
        t = time.time()
        head = peers = rate = cpu = drift = None
        if nd.alive:
            try:
                rate = nd.hashrate()
                blk = nd.head()
                head, drift = int(blk["number"], 16), int(blk["timestamp"], 16) - t
                peers = nd.peer_count()
                cpu = nd.cpu_seconds()
            except Exception:
                pass
        return Sample(t, nd.name, head, peers, rate, cpu, drift, nd.threads, nd.cpu_quota)

    # ---- derived series ----------------------------------------------------------------
    def hashrate_series(self, name: str) -> list[tuple[float, float]]:
        """(t, H/s over the 5-s tick ending near t) for node ``name``."""
        s = [x for x in self.samples if x.node == name and x.hashrate_ewma is not None]
        return instant_hashrate([x.t for x in s], [x.hashrate_ewma for x in s])

    def mean_hashrate(self, name: str, t0: float, t1: float) -> float:
        """Mean hashing rate of ``name`` over [t0, t1], H/s (from the per-tick rates)."""
        series = self.hashrate_series(name)
        rates = [r for t, r in series if t0 + TICK_S <= t <= t1]   # ticks wholly inside
        if not rates:   # a window shorter than a tick: the ticks that overlap it
            rates = [r for t, r in series if t0 < t <= t1 + TICK_S]
        return float(np.mean(rates)) if rates else float("nan")

    def cpu_cores(self, name: str, t0: float, t1: float) -> float:
        """Mean CPU cores used by ``name`` over [t0, t1]."""
        s = [x for x in self.samples if x.node == name and x.cpu_s is not None
             and t0 <= x.t <= t1]
        if len(s) < 2 or s[-1].t <= s[0].t:
            return float("nan")
        return (s[-1].cpu_s - s[0].cpu_s) / (s[-1].t - s[0].t)


def chain_blocks(nd: GethNode, first: int, last: int) -> list[dict]:
    """The canonical blocks ``first..last`` as seen by ``nd``, with their uncles' authors."""
    out = []
    for n in range(first, last + 1):
        b = nd.rpc("eth_getBlockByNumber", hex(n), False)
        if b is None:
            break
        uncles = []
        for i in range(len(b["uncles"])):
            u = nd.rpc("eth_getUncleByBlockHashAndIndex", b["hash"], hex(i))
            uncles.append({"hash": u["hash"], "number": int(u["number"], 16),
                           "miner": u["miner"].lower()})
        out.append({"number": n, "hash": b["hash"], "miner": b["miner"].lower(),
                    "timestamp": int(b["timestamp"], 16), "difficulty": int(b["difficulty"], 16),
                    "gas_used": int(b["gasUsed"], 16), "uncles": uncles})
    return out


def summarize(blocks: list[dict], miners: dict[str, str], monitor: ChainMonitor | None = None,
              t0: float | None = None, t1: float | None = None) -> dict:
    """Per-node and chain-wide figures over ``blocks``.

    ``miners`` maps a lower-case etherbase to a node name. Block share is the fraction of the
    canonical blocks a node authored; uncles are counted by their author; the interval is the
    difference of consecutive block timestamps (1-s resolution, as in the header);
    propagation is, per block, the time each node first had it as head minus the earliest
    such time (the miner's own).
    """
    names = list(dict.fromkeys(miners.values()))
    n_blocks = len(blocks)
    per = {name: {"blocks": 0, "uncles_mined": 0} for name in names}
    unknown = 0
    for b in blocks:
        who = miners.get(b["miner"])
        if who is None:
            unknown += 1
        else:
            per[who]["blocks"] += 1
        for u in b["uncles"]:
            if (w := miners.get(u["miner"])) is not None:
                per[w]["uncles_mined"] += 1
    n_uncles = sum(len(b["uncles"]) for b in blocks)
    stamps = [b["timestamp"] for b in blocks]
    intervals = np.diff(stamps) if len(stamps) > 1 else np.array([])
    for name in names:
        p = per[name]
        p["block_share"] = p["blocks"] / n_blocks if n_blocks else float("nan")
        mine = [b["timestamp"] for b in blocks if miners.get(b["miner"]) == name]
        p["own_interval_mean_s"] = float(np.mean(np.diff(mine))) if len(mine) > 1 else float("nan")
    prop = propagation(blocks, monitor) if monitor is not None else {}
    if monitor is not None and t0 is not None and t1 is not None:
        rates = {name: monitor.mean_hashrate(name, t0, t1) for name in names}
        total = sum(r for r in rates.values() if not math.isnan(r))
        for name in names:
            per[name]["hashrate_hps"] = rates[name]
            per[name]["hash_share"] = rates[name] / total if total > 0 else float("nan")
            per[name]["cpu_cores"] = monitor.cpu_cores(name, t0, t1)
    for name in names:
        per[name].update(prop.get(name, {}))
    spread = propagation_spread(blocks, monitor, len(names)) if monitor is not None else {}
    if monitor is not None:
        drifts = [x.drift_s for x in monitor.samples if x.drift_s is not None]
        spread["clock_drift_max_s"] = max(drifts) if drifts else float("nan")
    return {
        **spread,
        "blocks": n_blocks,
        "first_block": blocks[0]["number"] if blocks else None,
        "last_block": blocks[-1]["number"] if blocks else None,
        "blocks_by_unknown_miner": unknown,
        "uncles": n_uncles,
        "uncle_rate": n_uncles / n_blocks if n_blocks else float("nan"),
        "interval_mean_s": float(intervals.mean()) if intervals.size else float("nan"),
        "interval_median_s": float(np.median(intervals)) if intervals.size else float("nan"),
        "difficulty_first": blocks[0]["difficulty"] if blocks else None,
        "difficulty_last": blocks[-1]["difficulty"] if blocks else None,
        "nodes": per,
    }


def propagation(blocks: list[dict], monitor: ChainMonitor) -> dict[str, dict]:
    """Per node: mean/p50/p95 delay (ms) between a block's first arrival anywhere and its
    arrival at this node, over the canonical ``blocks`` the node saw, and how many it missed
    (a block that was never its head, e.g. replaced in one step by a longer segment)."""
    delays: dict[str, list[float]] = {}
    missed: dict[str, int] = {}
    names = {n for seen in monitor.arrivals.values() for n in seen}
    for b in blocks:
        seen = monitor.arrivals.get(b["hash"], {})
        if not seen:
            continue
        first = min(seen.values())
        for name in names:
            if name in seen:
                delays.setdefault(name, []).append(1000 * (seen[name] - first))
            else:
                missed[name] = missed.get(name, 0) + 1
    out = {}
    for name in names:
        d = np.array(delays.get(name, []))
        out[name] = {"prop_mean_ms": float(d.mean()) if d.size else float("nan"),
                     "prop_p50_ms": float(np.median(d)) if d.size else float("nan"),
                     "prop_p95_ms": float(np.percentile(d, 95)) if d.size else float("nan"),
                     "prop_blocks_seen": int(d.size), "prop_blocks_missed": missed.get(name, 0)}
    return out


def propagation_spread(blocks: list[dict], monitor: ChainMonitor, n_nodes: int) -> dict:
    """Chain-wide propagation φ: per canonical block, the delay from its first arrival to
    each other node (mean, ms) and to the last node (mean, p95, ms)."""
    others, to_all = [], []
    for b in blocks:
        seen = sorted(monitor.arrivals.get(b["hash"], {}).values())
        if len(seen) >= 2:
            others += [1000 * (t - seen[0]) for t in seen[1:]]
        if len(seen) == n_nodes and n_nodes >= 2:
            to_all.append(1000 * (seen[-1] - seen[0]))
    return {"propagation_mean_ms": float(np.mean(others)) if others else float("nan"),
            "propagation_to_all_mean_ms": float(np.mean(to_all)) if to_all else float("nan"),
            "propagation_to_all_p95_ms": float(np.percentile(to_all, 95)) if to_all
            else float("nan"),
            "propagation_blocks_seen_by_all": len(to_all)}


def write(out_dir: Path, stem: str, summary: dict, blocks: list[dict],
          monitor: ChainMonitor | None, miners: dict[str, str]) -> dict[str, Path]:
    """Write ``<stem>.json`` (summary), ``<stem>_blocks.csv``, ``<stem>_samples.csv``,
    ``<stem>_hashrate.csv`` (per-tick rates) and ``<stem>_arrivals.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "blocks": out_dir / f"{stem}_blocks.csv"}
    paths["json"].write_text(json.dumps(clean_json(summary), indent=2))
    with open(paths["blocks"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "hash", "miner", "node", "timestamp", "difficulty", "gas_used",
                    "uncles", "uncle_miners"])
        for b in blocks:
            w.writerow([b["number"], b["hash"], b["miner"], miners.get(b["miner"], ""),
                        b["timestamp"], b["difficulty"], b["gas_used"], len(b["uncles"]),
                        " ".join(miners.get(u["miner"], u["miner"]) for u in b["uncles"])])
    if monitor is not None:
        paths["samples"] = out_dir / f"{stem}_samples.csv"
        with open(paths["samples"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t", "node", "head", "peers", "hashrate_ewma_hps", "cpu_s",
                        "clock_drift_s", "threads", "cpu_quota"])
            for s in monitor.samples:
                w.writerow([f"{s.t:.3f}", s.node, s.head, s.peers, s.hashrate_ewma,
                            s.cpu_s, s.drift_s, s.threads, s.cpu_quota])
        paths["hashrate"] = out_dir / f"{stem}_hashrate.csv"
        with open(paths["hashrate"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t", "node", "hashrate_hps"])
            for name in dict.fromkeys(s.node for s in monitor.samples):
                for t, r in monitor.hashrate_series(name):
                    w.writerow([f"{t:.3f}", name, f"{r:.1f}"])
        paths["arrivals"] = out_dir / f"{stem}_arrivals.csv"
        with open(paths["arrivals"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["hash", "number", "node", "t"])
            for h, seen in monitor.arrivals.items():
                for name, t in seen.items():
                    w.writerow([h, monitor.numbers.get(h), name, f"{t:.4f}"])
    return paths


def clean_json(x):
    """``x`` with numpy scalars as Python numbers, paths as strings and NaN/inf as None
    (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x
