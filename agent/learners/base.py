"""The one interface every learner and baseline implements: observe -> act -> learn."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.config import ModelConfig
from agent.model import ObsLayout


@dataclass
class Transition:
    """One slot: (s_t, a_t, r_t, s_{t+1}) with r_t split into its M per-server terms of (11)."""
    obs: np.ndarray            # s_t, (D,)
    action: np.ndarray         # a_t, (2, M): users, hash levels
    reward: float              # r_t = Σ_m server_reward (token)
    server_reward: np.ndarray  # (M,) R_m + φ_u - w·T_u^m
    next_obs: np.ndarray       # s_{t+1}
    terminated: bool           # never True here: the MEC system does not end
    truncated: bool


class Agent:
    """Base class: ``act(obs) -> action (2, M)``, ``learn(transition)``; stateless baselines
    simply ignore ``learn``. ``explore=False`` asks for the greedy (evaluation) policy."""
    name = "agent"
    trains = False             # whether `learn` does anything (the experiments skip training otherwise)

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        self.cfg = cfg
        self.layout = ObsLayout(cfg.n_users, cfg.n_servers)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        raise NotImplementedError

    def learn(self, tr: Transition) -> dict | None:
        return None
