"""The one interface every learner and baseline implements: observe -> act -> learn, and save.

An agent is built from the scenario's ``[model]`` and ``[learner]`` sections
(:func:`agent.registry.make_agent`), acts on the observation of eq. (9), learns from one
:class:`Transition` per slot, and saves itself to a file a user can keep: a torch ``.pt`` file
holding plain data only (the agent's name, its variant, both configurations as dicts and its
learnt tensors), read back by :func:`agent.registry.load_agent` with ``weights_only=True``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import LearnerConfig, ModelConfig
from agent.model import ObsLayout

FILE_FORMAT = "mecchain-agent"      # written into every saved file, checked when loading
FILE_VERSION = 1


@dataclass
class Transition:
    """One slot: (s_t, a_t, r_t, s_{t+1}) with r_t split into its M per-server terms of (11)."""
    obs: np.ndarray            # s_t, (D,)
    action: np.ndarray         # a_t, (2M,): users, then hash levels (agent.actions.split_action)
    reward: float              # r_t = Σ_m server_reward (token)
    server_reward: np.ndarray  # (M,) R_m + φ_u - w·T_u^m
    next_obs: np.ndarray       # s_{t+1}
    terminated: bool           # never True here: the MEC system does not end
    truncated: bool


class Agent:
    """Base class: ``act(obs) -> action``, a member (2M,) of the env's action space (users, then
    hash levels: :func:`agent.actions.join_action`), and ``learn(transition)``; stateless
    baselines simply ignore ``learn``. ``explore=False`` asks for the greedy (evaluation) policy."""
    name = "agent"
    trains = False             # whether `learn` does anything (the experiments skip training otherwise)
    variant = "full"           # Fig. 7's ablations change this for the DQN family

    def __init__(self, cfg: ModelConfig, lcfg: LearnerConfig | None = None, seed: int = 0):
        self.cfg = cfg
        self.lcfg = lcfg or LearnerConfig()
        self.seed = seed
        self.layout = ObsLayout(cfg.n_users, cfg.n_servers)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        raise NotImplementedError

    def learn(self, tr: Transition) -> dict | None:
        return None

    # --- what a saved file holds ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The learnt parameters as tensors and plain numbers (empty for the baselines)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`."""

    def save(self, path: str | Path) -> Path:
        """Write name, variant, seed, ``[model]``, ``[learner]`` and :meth:`state` to ``path`` (.pt)."""
        import torch
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FILE_FORMAT, "version": FILE_VERSION, "agent": self.name,
                    "variant": self.variant, "seed": self.seed, "model": self.cfg.to_dict(),
                    "learner": self.lcfg.to_dict(), "state": self.state()}, path)
        return path
