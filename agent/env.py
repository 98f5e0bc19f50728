"""The blockchain-empowered MEC system of the paper as a Gymnasium environment.

One step is one time slot. The agent (the DRL unit on the SDN controller) sees the state
s = [S_U, S_M] of eq. (9), chooses the action a of eq. (10) (which UE each MEC server serves,
and each server's hash power), and receives the system utility of eq. (11) for the slot.

UEs that are not served keep their task: it waits, ages, and is dropped after
``max_wait_slots``; a UE without a task gets a new one with probability ``arrival_prob`` per
slot. That, and the sliding reputation window of eq. (3), make the problem sequential.
All per-UE and per-server work is vectorised; the equations live in :mod:`agent.model`.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agent import model
from agent.actions import join_action, split_action
from agent.config import ModelConfig


class MecChainEnv(gym.Env):
    """M MEC servers (also miners) and U UEs; one task per UE at a time.

    Action: the flat ``MultiDiscrete([U+1]*M + [K]*M)`` vector (2M,) that any Gymnasium library
    handles: the first M entries are the UE served by each server m (``U`` = idle), the last M
    the index of server m's hash level in ``cfg.hash_levels_mhs``. The project's agents emit
    members of this space; :meth:`step` also reads a (2, M) array (row 0 users, row 1 levels)
    (:func:`agent.actions.split_action` is the one conversion). Infeasible actions raise ``ValueError``
    (see :func:`agent.model.action_problems`): agents must emit feasible ones, and generic
    libraries wrap the env in :class:`RepairAction` (``gymnasium.make("MecChain-v0", repair=True)``).

    Observation: float64 vector laid out by :class:`agent.model.ObsLayout` (model units).
    Reward: eq. (11) for the slot (token). ``info["server_utility"]`` has the M per-server terms.
    """
    metadata = {"render_modes": []}

    def __init__(self, cfg: ModelConfig | None = None):
        self.cfg = cfg or ModelConfig()
        c = self.cfg
        self.layout = model.ObsLayout(c.n_users, c.n_servers)
        U, M = c.n_users, c.n_servers
        fastest = float(model.task_gcycles(c, c.data_mb_range[0], c.demand_gcycles_range[0])) / c.cpu_ghz  # s
        high = self.layout.join(np.full(U, c.demand_gcycles_range[1]), np.full(U, c.data_mb_range[1]),
                                np.full(U, float(c.max_wait_slots)), np.ones(U),
                                np.full(M, max(1.0, c.desired_time_s_range[1] / fastest)))
        self.observation_space = spaces.Box(np.zeros_like(high), high, dtype=np.float64)
        self.action_space = spaces.MultiDiscrete([c.n_users + 1] * c.n_servers + [c.n_levels] * c.n_servers)
        self._levels = np.asarray(c.hash_levels_mhs)
        self.t = 0

    # --- state ----------------------------------------------------------------------------
    def _draw_tasks(self, mask: np.ndarray) -> None:
        """Give a new task (d_u, ξ_u, τ_u) to the UEs in ``mask``; always draws U values so the
        random stream does not depend on the mask (same seed, same tasks)."""
        c, U = self.cfg, self.cfg.n_users
        d = self.np_random.uniform(*c.data_mb_range, size=U)
        xi = self.np_random.uniform(*c.demand_gcycles_range, size=U)
        tau = self.np_random.uniform(*c.desired_time_s_range, size=U)
        self.data_mb[mask] = d[mask]
        self.demand[mask] = xi[mask]
        self.desired_s[mask] = tau[mask]
        self.age[mask] = 0
        self.pending[mask] = True

    @property
    def reputation(self) -> np.ndarray:
        """Υ_m of eq. (3) over the last ``reputation_window`` slots."""
        return model.reputation(self._win_desired.sum(axis=0), self._win_actual.sum(axis=0))

    def _obs(self) -> np.ndarray:
        d = np.where(self.pending, self.data_mb, 0.0)
        xi = np.where(self.pending, self.demand, 0.0)
        return self.layout.join(xi, d, self.age.astype(float), self.pending, self.reputation)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        c = self.cfg
        U, M = c.n_users, c.n_servers
        self.data_mb = np.zeros(U)
        self.demand = np.zeros(U)
        self.desired_s = np.zeros(U)
        self.age = np.zeros(U, dtype=np.int64)
        self.pending = np.zeros(U, dtype=bool)
        self._draw_tasks(np.ones(U, dtype=bool))          # every UE starts with a task
        self._win_desired = np.zeros((c.reputation_window, M))
        self._win_actual = np.zeros((c.reputation_window, M))
        self.t = 0
        return self._obs(), {}

    # --- dynamics -------------------------------------------------------------------------
    def step(self, action):
        c = self.cfg
        U, M = c.n_users, c.n_servers
        users, levels = split_action(action, M)
        problems = model.action_problems(c, users, levels, self.pending)
        if problems:
            raise ValueError("infeasible action: " + "; ".join(problems))

        terms = model.slot_terms(c, self.data_mb, self.demand, users, levels)
        served = users < U
        served_users = users[served]

        # Eq. (3): this slot's desired and actual latencies enter the sliding window.
        row = self.t % c.reputation_window
        self._win_desired[row] = np.where(served, self.desired_s[np.where(served, users, 0)], 0.0)
        self._win_actual[row] = terms.latency

        # Served tasks leave; the others wait one more slot, and leave when too old.
        was_served = np.zeros(U, dtype=bool)
        was_served[served_users] = True
        ecl = float(terms.latency.sum())
        waited = self.age[served_users].astype(float) * c.slot_s
        self.pending &= ~was_served
        self.age[self.pending] += 1
        dropped = self.pending & (self.age >= c.max_wait_slots)
        self.pending &= ~dropped
        arrivals = ~self.pending & (self.np_random.random(U) < c.arrival_prob)
        self._draw_tasks(arrivals)

        self.t += 1
        info = {
            "server_utility": terms.utility,
            "mining_reward": float(terms.mining.sum()),
            "revenue": float(terms.revenue.sum()),
            "latency_s": ecl,                       # Σ T_u^m of the slot: edge computation latency
            "n_served": int(served.sum()),
            "n_dropped": int(dropped.sum()),
            "wait_s": float(waited.mean()) if len(waited) else 0.0,
            "hash_mhs": float(self._levels[levels].sum()),
        }
        truncated = self.t >= c.horizon_slots
        return self._obs(), float(terms.total), False, truncated, info


class RepairAction(gym.ActionWrapper):
    """Make any action of the ``MultiDiscrete`` space feasible, so generic RL libraries (which
    sample the whole space) can drive :class:`MecChainEnv`. Deterministic: a UE chosen twice
    or without a task is dropped, idle servers take the waiting UEs in index order, and the
    highest hash levels are lowered one step at a time until the budget holds."""

    def action(self, action):
        env: MecChainEnv = self.unwrapped
        c = env.cfg
        U, M = c.n_users, c.n_servers
        users, levels = (row.copy() for row in split_action(action, M))
        out = np.full(M, U, dtype=np.int64)
        taken = np.zeros(U, dtype=bool)
        for m in range(M):                       # M is small; this loop is over servers, not UEs
            u = users[m]
            if 0 <= u < U and env.pending[u] and not taken[u]:
                out[m], taken[u] = u, True
        waiting = np.flatnonzero(env.pending & ~taken)
        idle = np.flatnonzero(out == U)
        n = min(len(waiting), len(idle))
        out[idle[:n]] = waiting[:n]
        levels = np.clip(levels, 0, c.n_levels - 1)
        p = np.asarray(c.hash_levels_mhs)
        while p[levels].sum() > c.hash_budget_mhs + 1e-9:
            levels[np.argmax(levels)] -= 1
        return join_action(out, levels)


def make_env(cfg: ModelConfig | dict | None = None, repair: bool = False, **model_fields) -> gym.Env:
    """Entry point of ``gymnasium.make("MecChain-v0", cfg=..., repair=..., **model_fields)``.

    ``cfg`` is a :class:`ModelConfig` or a dict of its fields (e.g. ``Scenario.model.to_dict()``);
    keyword arguments override single fields (``n_users=30``). ``repair=True`` wraps the env in
    :class:`RepairAction` so that any sample of the action space is feasible (for generic RL
    libraries such as Stable-Baselines3).
    """
    base = cfg.to_dict() if isinstance(cfg, ModelConfig) else dict(cfg or {})
    env: gym.Env = MecChainEnv(ModelConfig.from_dict({**base, **model_fields}))
    return RepairAction(env) if repair else env


ENV_ID = "MecChain-v0"
if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="agent.env:make_env")
