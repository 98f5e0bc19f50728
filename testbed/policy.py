"""Who decides each slot on the live lab: the paper's action (10) from the measured state (9).

A policy reads the controller's ``GET /state`` snapshot and returns, for every MEC server,
the UE it serves (or None) and its hash level (an index into ``model.hash_levels_mhs``).
``lab.policy`` names it:

- ``round_robin``: the longest-waiting UEs first, servers taken in turn, the budget split
  equally (the scheme without user selection or resource allocation);
- ``greedy``: the paper's rules of thumb on *measured* reputation: the UEs with the highest
  service demand ξ_u go to the servers with the highest Υ_m, hash power in proportion to Υ_m,
  and a server whose Υ_m fell below ``lab.reputation_floor`` × the best one gets no UE (it
  failed or is far slower than the others);
- ``agent:NAME``: any agent of :mod:`agent.registry` (``ddqn``, ``dqn``, ``qlearning``, ``ga``,
  ``greedy``, ``random``, ``oracle``), fresh; ``file:PATH``: a saved one (e.g. a DDQN trained
  in simulation). It sees the simulation's observation layout (:class:`agent.model.ObsLayout`)
  built from measured values (:func:`observation`); its action is read back by
  :func:`to_assignment`.

What an agent chooses that the lab cannot do (a server that is down) is projected away and the
projection is returned in ``info`` so the run can log it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from agent import actions
from agent.baselines import levels_by_reputation
from agent.config import AGENT_NAMES as AGENTS
from agent.model import ObsLayout
from base.errors import ConfigError
from controller.state import round_robin


def observation(snap: dict, model_cfg) -> tuple[np.ndarray, list[str]]:
    """The observation of eq. (9) from a state snapshot: [ξ_u, d_u, age_u, has_task_u, Υ_m].
    Only tasks still waiting for a server count as pending. Returns (obs, UE names in order)."""
    ues, servers = snap["ues"], snap["servers"]
    U = len(ues)
    demand, data, age, pending = np.zeros(U), np.zeros(U), np.zeros(U), np.zeros(U, dtype=bool)
    now = snap["t"]
    for j, u in enumerate(ues):
        t = snap["pending"].get(u)
        if t is None or t.get("mec") is not None:
            continue
        demand[j], data[j], pending[j] = t["demand"], t["data_mb"], True
        age[j] = min(float(model_cfg.max_wait_slots), (now - t["since"]) // model_cfg.slot_s)
    rep = np.array([snap["reputation"].get(m, 1.0) for m in servers], dtype=float)
    return ObsLayout(U, len(servers)).join(demand, data, age, pending, rep), list(ues)


def to_assignment(action, servers: list[str], ues: list[str]) -> tuple[dict, dict]:
    """Action (10), the env's flat (2M,) -> ({server: UE or None}, {server: level})."""
    users, hash_levels = actions.split_action(action, len(servers))
    serve = {m: (ues[u] if u < len(ues) else None) for m, u in zip(servers, users)}
    levels = {m: int(k) for m, k in zip(servers, hash_levels)}
    return serve, levels


def project(serve: dict, levels: dict, snap: dict, model_cfg) -> tuple[dict, dict, list[str]]:
    """The nearest feasible action to (serve, levels): what cannot be applied is dropped and
    said, never sent. A server down or unknown serves no one; a UE without a waiting task, or
    one already given to another server, is served by no one; a hash level outside the model's
    levels is clipped; while the budget Σ p_m exceeds the model's hash budget, the highest level
    in force is lowered by one. Returns (serve, levels, messages), one message per change."""
    notes = []
    servers = list(snap["servers"])
    down = set(snap.get("down", []))
    waiting = {u for u, t in snap["pending"].items() if t.get("mec") is None}
    out, taken = {}, set()
    for m in servers:
        u = serve.get(m)
        if u is not None and m in down:
            notes.append(f"{m} is down: {u} not sent there")
            u = None
        elif u is not None and u not in waiting:
            notes.append(f"{u} has no waiting task: {m} idles")
            u = None
        elif u is not None and u in taken:
            notes.append(f"{u} is already served: {m} idles")
            u = None
        if u is not None:
            taken.add(u)
        out[m] = u
    for m in set(serve) - set(servers):
        notes.append(f"{m} is not a server of this lab: dropped")
    K = model_cfg.n_levels
    lv = {}
    for m in servers:
        k = int(levels.get(m, 0))
        if not 0 <= k < K:
            notes.append(f"{m}: hash level {k} is not in 0..{K - 1}: clipped")
            k = min(max(k, 0), K - 1)
        lv[m] = k
    mhs = model_cfg.hash_levels_mhs
    while sum(mhs[k] for k in lv.values()) > model_cfg.hash_budget_mhs + 1e-9 and max(lv.values()) > 0:
        m = max(servers, key=lambda x: (lv[x], -servers.index(x)))
        notes.append(f"hash power {sum(mhs[k] for k in lv.values()):g} MHash/s over the budget "
                     f"{model_cfg.hash_budget_mhs:g}: {m} lowered to level {lv[m] - 1}")
        lv[m] -= 1
    return out, lv, notes


class RoundRobin:
    name = "round_robin"

    def __init__(self, model_cfg):
        self.cfg = model_cfg
        self.turn = 0

    def decide(self, snap: dict) -> tuple[dict, dict, dict]:
        waiting = [u for _, u in sorted((t["since"], u) for u, t in snap["pending"].items() if t.get("mec") is None)]
        serve = round_robin(snap["servers"], snap.get("down", []), waiting, self.turn)
        self.turn += 1
        levels = {m: int(k) for m, k in zip(snap["servers"], actions.equal_levels(self.cfg))}
        return serve, levels, {}


class ReputationGreedy:
    """``greedy`` on the live lab (see the module docstring)."""
    name = "greedy"

    def __init__(self, model_cfg, floor: float):
        self.cfg, self.floor = model_cfg, floor

    def decide(self, snap: dict) -> tuple[dict, dict, dict]:
        servers = snap["servers"]
        rep = np.array([snap["reputation"].get(m, 1.0) for m in servers], dtype=float)
        levels = levels_by_reputation(self.cfg, rep)
        down = set(snap.get("down", []))
        up = [r for m, r in zip(servers, rep) if m not in down]
        best = max(up) if up else 1.0          # the floor is relative to the best server in service
        usable = [m for m, r in sorted(zip(servers, rep), key=lambda x: -x[1])
                  if m not in down and r >= self.floor * best]
        waiting = sorted(((t["demand"], u) for u, t in snap["pending"].items() if t.get("mec") is None),
                         reverse=True)
        serve = {m: None for m in servers}
        for m, (_, u) in zip(usable, waiting):
            serve[m] = u
        return serve, {m: int(k) for m, k in zip(servers, levels)}, {
            "excluded": sorted(set(servers) - set(usable) - down)}


class AgentPolicy:
    """An agent of :mod:`agent` on the live lab. It decides through
    :func:`agent.train.run_slots` on :class:`testbed.live_env.LiveEnv` (the observation of
    :func:`observation`, the action read back by :func:`to_assignment`), as in simulation."""

    def __init__(self, agent, model_cfg):
        self.agent, self.cfg = agent, model_cfg
        self.name = f"agent:{agent.name}"
        # one decision on an empty state at load time: torch's first call builds its kernels
        # (~10 ms), which would otherwise count in the first slot's decision latency
        from agent.model import ObsLayout
        layout = ObsLayout(model_cfg.n_users, model_cfg.n_servers)
        agent.act(np.zeros(layout.size, dtype=np.float32), explore=False)


def make_policy(scn):
    """The policy named by ``scn.lab.policy`` for the scenario's model."""
    name = scn.lab.policy
    if name == "round_robin":
        return RoundRobin(scn.model)
    if name == "greedy":
        return ReputationGreedy(scn.model, scn.lab.reputation_floor)
    from agent.registry import load_agent, make_agent
    if name.startswith("file:"):
        agent = load_agent(scn.path(name[5:]))
        if (agent.cfg.n_servers, agent.cfg.n_users) != (scn.model.n_servers, scn.model.n_users):
            raise ConfigError(f"lab.policy {name}: the saved agent is for M = {agent.cfg.n_servers}, "
                              f"U = {agent.cfg.n_users}; the scenario has model.n_servers = "
                              f"{scn.model.n_servers}, model.n_users = {scn.model.n_users}")
        return AgentPolicy(agent, scn.model)
    if name.startswith("agent:") and name[6:] in AGENTS:
        return AgentPolicy(make_agent(name[6:], scn.model, scn.learner, seed=scn.seed), scn.model)
    raise ConfigError(f"lab.policy must be round_robin, greedy, agent:<{'|'.join(AGENTS)}> or "
                      f"file:<path of a saved agent>, got {name!r}")


def check_policy(scn) -> str:
    """The name of the policy ``scn.lab.policy`` names, checked as :func:`make_policy` checks it
    (an agent built, a saved agent read back and matched to M and U), ConfigError naming the
    field if not. An agent is checked in a child process that then exits: torch (~500 MB
    resident) belongs to the policy loop, not to the orchestrator that waits for the run."""
    if scn.lab.policy in ("round_robin", "greedy"):
        return make_policy(scn).name

    root = Path(__file__).resolve().parents[1]
    code = ("import json, sys\n"
            "from base.errors import ConfigError\n"
            "from scenario.config import scenario_from_dict\n"
            "from testbed.policy import make_policy\n"
            "try:\n"
            "    reply = {'name': make_policy(scenario_from_dict(json.load(sys.stdin))).name}\n"
            "except ConfigError as e:\n"
            "    reply = {'error': str(e)}\n"
            "print(json.dumps(reply))\n")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(scn.to_dict()), capture_output=True,
                       text=True, cwd=root, timeout=300)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"checking lab.policy = {scn.lab.policy!r} failed (exit {r.returncode}): "
                           f"{r.stderr.strip()[-2000:]}")
    reply = json.loads(lines[-1])
    if "error" in reply:
        raise ConfigError(reply["error"])
    return reply["name"]
