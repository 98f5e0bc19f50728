"""The live lab as a Gymnasium environment, with the simulated ``MecChainEnv``'s interface.

``LiveEnv`` drives a running lab through the controller's API: ``step(action)`` puts the
assignment and the hash budgets of action (10) in force (``PUT /assignment``; the controller
applies the budgets to the miners, its switches steer the UEs' traffic), waits for the slot to
end, and returns the **measured** state (9) and the utility (11) **computed from measured
values** over the slot's window, by the one eq. (11) function :func:`agent.model.utility_terms`:

    p̂_m      = the hash miner m really did in the window, model MHash/s: its cgroup's CPU time
               over the window × the calibrated hashes per core-second, over X
               (:meth:`scenario.units.LiveMapping.measured_hash_mhs`)
    R_m      = the expected mining reward of eqs. (4)-(6) at p̂_m: (R + r·b)·e^(−ηφ(b))·p̂_m / H
    φ_u      = what server m was paid for the tasks it delivered in the window: the escrows paid
               to it (EscrowPaid, ``contract.payment = "escrow"``) or the voucher increments its
               executor accepted and delivered (``"channel"``), wei -> tokens
    T_u^m    = the execution time of eq. (2) its executor measured (queue + compute) for each task
               it finished in the window
    r_t      = Σ_m (R_m + φ_m − w · T_m)          (w = model.latency_weight)

The blocks each miner really mined in the window (canonical, not uncles) are counted too, in
``info["blocks"]``: the check of eq. (4) (block share against hash share), not the reward.

Same spaces and ``info`` keys as the simulation (``server_utility``, ``mining_reward``,
``revenue``, ``latency_s``, ``n_served``, ...), so the same training loop runs on both.
An action that cannot be applied (a server down, a UE whose task is gone) is projected to a
feasible one before it is sent, and ``info["projected"]`` says what was dropped.

``LiveEnv(lab_json, token)`` attaches to a lab already running (the policy loop on the
controller does this; ``close()`` detaches). ``LiveEnv.start(scn, run_dir)`` brings a new lab up
from a scenario first (topology, chain, contract, executors, UE containers) and ``close()``
then tears it all down, so a script can train on the testbed as it trains on the simulation::

    env = LiveEnv.start(load_scenario("lab"), Path("results/live-train"))
    try:
        run_slots(agent, env, 30, explore=True)          # agent.train: the same loop as in simulation
    finally:
        env.close()
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from scenario.units import wei_to_token
from testbed.policy import observation, project, to_assignment
from nodes.api_client import ApiClient
from scenario.runinfo import LabInfo


class LiveEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, lab_json: Path, token: str, *, progress=None):
        from contracts.binding import TradingContract
        from web3 import HTTPProvider, Web3
        self.info_file = Path(lab_json)
        self.lab = LabInfo.load(self.info_file)
        self.scn = self.lab.scenario_obj()
        c = self.scn.model
        self.cfg = c
        self.api = ApiClient(self.lab.api_url, token)
        self.w3 = Web3(HTTPProvider(self.lab.gateway_url, request_kwargs={"timeout": 15}))
        self.trade = TradingContract(self.w3, self.lab.contract, self.scn.contract)
        self.servers = list(self.lab.servers)
        self.miner_of = {e.address.lower(): m for m, e in self.lab.servers.items()}
        # each MEC server's (its own server's calibration on a cluster): p̂_m from its miner's CPU
        self.mappings = self.lab.mappings(self.info_file.parent)
        self.action_space = spaces.MultiDiscrete([c.n_users + 1] * c.n_servers + [c.n_levels] * c.n_servers)
        # the simulation's bounds; measured values may exceed them (Box is advisory here)
        from agent.env import MecChainEnv
        self.observation_space = MecChainEnv(c).observation_space
        self.slot = 0
        self.last_snapshot: dict | None = None       # the state the last observation came from
        self.t_slot = time.time()
        self.block = 0
        self.progress = progress
        self.puts, self.puts_done = threading.Condition(), 0   # PUT /assignment calls made so far
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="slot-reads")

    @classmethod
    def start(cls, scn, run_dir: Path, *, progress=None) -> "LiveEnv":
        """A new lab of ``scn`` brought up in ``run_dir``, owned by the environment."""
        from testbed.lab import Lab
        lab = Lab(scn, Path(run_dir)).start()
        try:
            env = cls(lab.lab_dir / "lab.json", lab.token, progress=progress)
        except BaseException:
            lab.stop()
            raise
        env.owned_lab = lab
        return env

    # ---- measured state -------------------------------------------------------------------
    def _observe(self) -> tuple[np.ndarray, dict]:
        snap = self.api.state()
        obs, _ = observation(snap, self.cfg)
        return obs, snap

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.block = self.w3.eth.block_number
        self.t_slot = time.time()
        obs, snap = self._observe()
        self.last_snapshot = snap
        return obs, {"snapshot": snap}

    # ---- one slot -----------------------------------------------------------------------------
    def apply(self, serve: dict, levels: dict) -> tuple[int, dict]:
        """PUT one slot's decision (used by :meth:`step` and by policies that decide on the
        snapshot directly)."""
        try:
            return self.api.call("PUT", "/assignment", {"slot": self.slot, "serve": serve, "levels": levels})
        finally:
            with self.puts:
                self.puts_done += 1
                self.puts.notify_all()

    def step(self, action):
        """``action``: the flat (2M,) or (2, M) array of eq. (10), or a (serve, levels) pair."""
        t0 = self.t_slot
        snap = self.last_snapshot or self.api.state()
        if isinstance(action, tuple) and len(action) == 2 and isinstance(action[0], dict):
            serve, levels = action
        else:
            serve, levels = to_assignment(action, snap["servers"], snap["ues"])
        serve, levels, projected = project(serve, levels, snap, self.cfg)
        t_dec = time.time()
        status, resp = self.apply(serve, levels)
        t_put = time.time()
        # the slot lasts model.slot_s from its start
        time.sleep(max(0.0, t0 + self.cfg.slot_s - time.time()))
        t1 = time.time()
        # the slot's blocks, payments and reports read beside the observation (both on the next
        # slot's path to its decision; read one after the other they took 8 + 12 ms at p50)
        reads = self.reader.submit(self.slot_reads, t0, t1)
        obs, snap_end = self._observe()
        t_obs = time.time()
        terms = self.measure(t0, t1, snap, snap_end, reads.result())
        t_meas = time.time()
        snap = snap_end
        self.last_snapshot = snap
        info = {**terms, "slot": self.slot, "status": status, "error": resp.get("error"),
                "serve": serve, "levels": levels, "projected": projected,
                "applied": resp.get("applied", {}), "put_ms": (t_put - t_dec) * 1e3,
                # where slot start -> applied goes: slot start -> the PUT sent (the end of the
                # slot before observed and measured, the policy's decision), then put_ms; and
                # this slot's own end observed, and measured, each since the slot's end (the
                # next slot's lead)
                "lead_ms": (t_dec - t0) * 1e3, "end_observe_ms": (t_obs - t1) * 1e3,
                "end_measure_ms": (t_meas - t1) * 1e3,
                "slot_to_applied_s": (resp.get("accepted_at", t_put) - t0
                                      + max((resp.get("applied") or {}).get("budgets_applied_s", 0.0),
                                            (resp.get("applied") or {}).get("flows_applied_s", 0.0))),
                "snapshot": snap}
        self.slot += 1
        self.t_slot = t1
        return obs, float(info["server_utility"].sum()), False, False, info

    def measure(self, t0: float, t1: float, snap0: dict, snap1: dict, reads: dict | None = None) -> dict:
        """The terms of eq. (11) per server over [t0, t1), from the chain and the reports
        (``reads``: :meth:`slot_reads`, read now if not given) and the miners' CPU time between
        the snapshots ``snap0`` (slot start) and ``snap1`` (slot end)."""
        c = self.cfg
        r = reads if reads is not None else self.slot_reads(t0, t1)
        cores = miner_cores(snap0, snap1, self.servers)
        terms, hash_mhs = measured_terms(c, [self.mappings[m] for m in self.servers], cores, r["revenue_wei"],
                                         r["latency"])
        geth = [float((snap1.get("miners") or {}).get(m, {}).get("hashrate_hps") or 0.0) for m in self.servers]
        slot_share = (t1 - t0) / c.slot_s
        return {"server_utility": terms.utility, "mining_reward": float(terms.mining.sum()),
                "revenue": float(terms.revenue.sum()), "latency_s": float(terms.latency.sum()),
                "n_served": int(r["served"].sum()), "blocks": r["blocks"].tolist(),
                "outside_blocks": r["outside_blocks"],
                "hash_mhs": hash_mhs.tolist(), "miner_cores": cores.tolist(), "geth_hashrate_hps": geth,
                "expected_mec_blocks": float(hash_mhs.sum() / c.network_hash_mhs * slot_share),
                "t0": t0, "t1": t1}

    def slot_reads(self, t0: float, t1: float) -> dict:
        """What the chain and the executors' reports say of [t0, t1), per server: blocks mined
        (and by miners outside the lab), wei paid, execution time of tasks served and their
        count."""
        M = len(self.servers)
        idx = {m: i for i, m in enumerate(self.servers)}
        blocks, revenue_wei = np.zeros(M), np.zeros(M)
        outside_blocks = 0
        head = self.w3.eth.block_number
        for n in range(self.block + 1, head + 1):      # the blocks that arrived in the slot
            b = self.w3.eth.get_block(n)
            m = self.miner_of.get(b["miner"].lower())
            if m is not None:
                blocks[idx[m]] += 1
            else:
                outside_blocks += 1
        if head > self.block and self.scn.contract.payment == "escrow":
            for ev in self.trade.paid_escrows(from_block=self.block + 1, to_block=head):
                m = self.miner_of.get(str(ev["mec"]).lower())
                if m is not None:
                    revenue_wei[idx[m]] += ev["amount"]
        self.block = head
        latency, served = np.zeros(M), np.zeros(M)
        status, reports = self.api.call("GET", f"/reports?since={t0}")
        for r in reports if status == 200 else []:
            if r["source"] == "executor" and r["t"] < t1 and r["mec"] in idx:
                latency[idx[r["mec"]]] += r["latency_s"]
                served[idx[r["mec"]]] += 1
                if self.scn.contract.payment == "channel" and r["ok"]:
                    revenue_wei[idx[r["mec"]]] += int((r.get("detail") or {}).get("paid_wei", 0))
        return {"blocks": blocks, "outside_blocks": outside_blocks, "revenue_wei": revenue_wei,
                "latency": latency, "served": served}

    def close(self) -> None:
        """Detach; a lab this environment started (:meth:`start`) is torn down."""
        self.reader.shutdown(wait=True)
        lab = getattr(self, "owned_lab", None)
        if lab is not None:
            self.owned_lab = None
            lab.stop()


def measured_terms(cfg, mappings, cores, revenue_wei, latency_s):
    """Eq. (11) from what the lab measured in a slot (:func:`agent.model.utility_terms`): the
    miners' CPU (cores) as hash p̂_m (MHash/s) by each server's mapping (``mappings``, one per
    server), what each server was paid (wei) and the execution times of its tasks (s).
    Returns (the terms, p̂)."""
    from agent.model import utility_terms
    hash_mhs = np.array([float(mp.measured_hash_mhs(c)) for mp, c in zip(mappings, cores, strict=True)])
    revenue = np.array([wei_to_token(int(w)) for w in np.asarray(revenue_wei).ravel()]).reshape(np.shape(revenue_wei))
    return utility_terms(cfg, hash_mhs, revenue, latency_s), hash_mhs


def miner_cores(snap0: dict, snap1: dict, servers: list[str]) -> np.ndarray:
    """CPU (cores) each miner used between two snapshots, from their ``miner_cpu`` readings
    (the miner's cgroup CPU time); 0 for a miner without two readings or whose counter went
    back (a restarted miner starts from 0: its slot is not counted as mining)."""
    a, b = snap0.get("miner_cpu") or {}, snap1.get("miner_cpu") or {}
    dt = float(b.get("t", 0.0)) - float(a.get("t", 0.0))
    sa, sb = a.get("seconds") or {}, b.get("seconds") or {}
    out = np.zeros(len(servers))
    if dt <= 0:
        return out
    for i, m in enumerate(servers):
        if m in sa and m in sb and sb[m] >= sa[m]:
            out[i] = (sb[m] - sa[m]) / dt
    return out
