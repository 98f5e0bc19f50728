"""The live lab as a Gymnasium environment, with the simulated ``MecChainEnv``'s interface.

``LiveEnv`` drives a running lab through the controller's API: ``step(action)`` puts the
assignment and the hash budgets of action (10) in force (``PUT /assignment``; the controller
applies the budgets to the miners, its switches steer the UEs' traffic), waits for the slot to
end, and returns the **measured** state (9) and the utility (11) **computed from measured
values** over the slot's window:

    R_m      = R × the canonical blocks miner m mined in the window (not uncles; R = model.mining_reward)
    φ_u      = the escrows actually paid to server m in the window (EscrowPaid, wei -> tokens)
    T_u^m    = the service latency its executor measured for each task it finished in the window
    r_t      = Σ_m (R_m + φ_m − w · T_m)          (w = model.latency_weight)

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

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agent.env import split_action
from testbed.policy import observation, project, to_assignment
from testbed.runinfo import LabInfo


class ApiClient:
    """The policy's side of the controller API (it holds the bearer token)."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def state(self) -> dict:
        status, snap = self.call("GET", "/state")
        if status != 200:
            raise RuntimeError(f"GET /state answered {status}: {snap}")
        return snap



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
        self.action_space = spaces.MultiDiscrete([c.n_users + 1] * c.n_servers + [c.n_levels] * c.n_servers)
        # the simulation's bounds; measured values may exceed them (Box is advisory here)
        from agent.env import MecChainEnv
        self.observation_space = MecChainEnv(c).observation_space
        self.slot = 0
        self.last_snapshot: dict | None = None       # the state the last observation came from
        self.t_slot = time.time()
        self.block = 0
        self.progress = progress

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
        return self.api.call("PUT", "/assignment", {"slot": self.slot, "serve": serve, "levels": levels})

    def step(self, action):
        """``action``: the flat (2M,) or (2, M) array of eq. (10), or a (serve, levels) pair."""
        t0 = self.t_slot
        snap = self.last_snapshot or self.api.state()
        if isinstance(action, tuple) and len(action) == 2 and isinstance(action[0], dict):
            serve, levels = action
        else:
            users, levels_arr = split_action(action, len(self.servers))
            serve, levels = to_assignment(np.stack([users, levels_arr]), snap["servers"], snap["ues"])
        serve, levels, projected = project(serve, levels, snap, self.cfg)
        t_dec = time.time()
        status, resp = self.apply(serve, levels)
        t_put = time.time()
        # the slot lasts model.slot_s from its start
        time.sleep(max(0.0, t0 + self.cfg.slot_s - time.time()))
        t1 = time.time()
        terms = self.measure(t0, t1)
        obs, snap = self._observe()
        self.last_snapshot = snap
        info = {**terms, "slot": self.slot, "status": status, "error": resp.get("error"),
                "serve": serve, "levels": levels, "projected": projected,
                "applied": resp.get("applied", {}), "put_ms": (t_put - t_dec) * 1e3,
                "slot_to_applied_s": (resp.get("accepted_at", t_put) - t0
                                      + max((resp.get("applied") or {}).get("budgets_applied_s", 0.0),
                                            (resp.get("applied") or {}).get("flows_applied_s", 0.0))),
                "snapshot": snap}
        self.slot += 1
        self.t_slot = t1
        return obs, float(info["server_utility"].sum()), False, False, info

    def measure(self, t0: float, t1: float) -> dict:
        """The terms of eq. (11) per server over [t0, t1), from the chain and the reports."""
        c = self.cfg
        M = len(self.servers)
        idx = {m: i for i, m in enumerate(self.servers)}
        blocks, revenue_wei = np.zeros(M), np.zeros(M)
        head = self.w3.eth.block_number
        for n in range(self.block + 1, head + 1):      # the blocks that arrived in the slot
            b = self.w3.eth.get_block(n)
            m = self.miner_of.get(b["miner"].lower())
            if m is not None:
                blocks[idx[m]] += 1
        if head > self.block:
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
        mining = c.mining_reward * blocks
        revenue = revenue_wei / 1e18
        utility = mining + revenue - c.latency_weight * latency
        return {"server_utility": utility, "mining_reward": float(mining.sum()), "revenue": float(revenue.sum()),
                "latency_s": float(latency.sum()), "n_served": int(served.sum()),
                "blocks": blocks.tolist(), "t0": t0, "t1": t1}

    def close(self) -> None:
        """Detach; a lab this environment started (:meth:`start`) is torn down."""
        lab = getattr(self, "owned_lab", None)
        if lab is not None:
            self.owned_lab = None
            lab.stop()
