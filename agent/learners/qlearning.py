"""Tabular Q-learning on a discretised state (the paper's "RL" baseline [12]).

A table over the joint state and action is hopeless (the paper's own count: 10·200^5 states),
so the table is factorised like the networks' output: per server m, with the server's
reputation bin s_m = bin(Υ_m) and each UE's class c_u = (bin(ξ_u), bin(d_u)),

    A_m(s, u) = QA[m, s_m, c_u],   A_m(s, idle) = QI[m, s_m],   B_m(s, k) = QB[m, s_m, k].

One update per slot, no replay, no target network: for every server,
δ_m = r_m + γ·max_a' Q_m(s', a'_m) - Q_m(s, a_m), and each table entry that entered Q_m(s, a_m)
moves by α·δ_m (Watkins' rule for one-hot features). The max over next actions is the same
feasible matching + knapsack as the networks use.
"""
from __future__ import annotations

import numpy as np

from agent import actions
from agent.config import LearnerConfig, ModelConfig
from agent.learners.base import Agent, Transition


class QLearningAgent(Agent):
    name = "qlearning"
    trains = True

    def __init__(self, cfg: ModelConfig, lcfg: LearnerConfig | None = None, seed: int = 0):
        super().__init__(cfg, lcfg, seed)
        lc = self.lcfg
        M, K, nb = cfg.n_servers, cfg.n_levels, lc.q_bins
        self.QA = np.zeros((M, nb, nb * nb))
        self.QI = np.zeros((M, nb))
        self.QB = np.zeros((M, nb, K))
        self.slot = 0
        self._servers = np.arange(M)

    @property
    def epsilon(self) -> float:
        lc = self.lcfg
        frac = min(1.0, self.slot / lc.eps_decay_slots)
        return lc.eps_start + frac * (lc.eps_end - lc.eps_start)

    def _bin(self, x, lo, hi):
        nb = self.lcfg.q_bins
        return np.clip(((np.asarray(x) - lo) / max(hi - lo, 1e-12) * nb).astype(np.int64), 0, nb - 1)

    def _features(self, obs):
        demand, data, _, pending, rep = self.layout.split(obs)
        c = self.cfg
        ue_class = self._bin(demand, *c.demand_gcycles_range) * self.lcfg.q_bins + self._bin(data, *c.data_mb_range)
        srv = self._bin(rep / (1.0 + rep), 0.0, 1.0)
        return ue_class, srv, pending

    def _scores(self, obs):
        ue_class, srv, pending = self._features(obs)
        A = np.concatenate([self.QA[self._servers[:, None], srv[:, None], ue_class[None, :]],
                            self.QI[self._servers, srv][:, None]], axis=1)     # (M, U+1)
        B = self.QB[self._servers, srv]                                         # (M, K)
        return A, B, pending

    def _greedy(self, obs):
        A, B, pending = self._scores(obs)
        users = actions.match_users(A, pending)
        levels = actions.knapsack_levels(B, self.cfg)
        return users, levels, A, B

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        if explore and self.rng.random() < self.epsilon:
            return actions.random_action(self.cfg, self.layout.split(obs)[3], self.rng)
        users, levels, _, _ = self._greedy(obs)
        return actions.join_action(users, levels)

    def state(self) -> dict:
        import torch
        return {"QA": torch.from_numpy(self.QA.copy()), "QI": torch.from_numpy(self.QI.copy()),
                "QB": torch.from_numpy(self.QB.copy()), "slot": self.slot}

    def load_state(self, state: dict) -> None:
        for name in ("QA", "QI", "QB"):
            table = state[name].numpy()
            if table.shape != getattr(self, name).shape:
                raise ValueError(f"saved table {name} has shape {table.shape}, this agent needs "
                                 f"{getattr(self, name).shape}")
            setattr(self, name, table.astype(np.float64))
        self.slot = int(state["slot"])

    def learn(self, tr: Transition) -> dict:
        self.slot += 1
        lc, U = self.lcfg, self.cfg.n_users
        users, levels = actions.split_action(tr.action, self.cfg.n_servers)
        ue_class, srv, _ = self._features(tr.obs)
        m = self._servers
        served = users < U
        q_a = np.where(served, self.QA[m, srv, ue_class[np.where(served, users, 0)]], self.QI[m, srv])
        q_now = q_a + self.QB[m, srv, levels]
        nu, nl, nA, nB = self._greedy(tr.next_obs)
        q_next = nA[m, nu] + nB[m, nl]
        delta = tr.server_reward + lc.gamma * (1.0 - float(tr.terminated)) * q_next - q_now
        step = lc.q_alpha * delta
        # Each server m owns its own table row, so the fancy-indexed updates never collide.
        self.QA[m[served], srv[served], ue_class[users[served]]] += step[served]
        self.QI[m[~served], srv[~served]] += step[~served]
        self.QB[m, srv, levels] += step
        return {"td": float(np.abs(delta).mean())}
