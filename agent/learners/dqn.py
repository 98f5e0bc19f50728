"""Double DQN (the paper's Algorithm 1) and classic DQN, on CPU with torch.

The joint action (10) has (U+1)^M·K^M values, so the network does not output one Q-value per
joint action. It outputs, per server m, a score A_m(s, u) for serving each UE u (or idling)
and a score B_m(s, k) for each hash level k, and

    Q(s, a) = Σ_m Q_m(s, a_m),   Q_m(s, a_m) = A_m(s, u_m) + B_m(s, k_m),

so the output grows as M·(U+1) + M·K. The best feasible action for such a Q is exact and cheap
(:mod:`agent.actions`: matching + knapsack). Each Q_m is trained on its own term r_m of the
reward (11) (the sum of the targets is the target of (14) for the sum):

    DDQN (14):  y_m = r_m + γ·Q_m(s', a*_m | θ'),  a* = argmax_a Q(s', a | θ)    (online picks, target evaluates)
    DQN  (12):  y_m = r_m + γ·Q_m(s', a*_m | θ'),  a* = argmax_a Q(s', a | θ')   (target picks and evaluates)

The paper writes min/argmin in (12), (14) and Algorithm 1 while it maximises a utility; we
read them as max/argmax. The trunk is the paper's 64-32-32 ReLU network.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agent import actions
from agent.config import LearnerConfig, ModelConfig
from agent.learners.base import Agent, Transition

Selector = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
USER_MODES = ("learned", "random")             # "random": Fig. 7's "without user selection"
HASH_MODES = ("learned", "equal", "random")    # "equal"/"random": Fig. 7's "without resource allocation"


class QNetwork(nn.Module):
    """State (9) -> (A (B, M, U+1), B (B, M, K)); inputs scaled to about [0, 1] inside.

    ``head="shared"``: every UE u gets an embedding e_u from the trunk's features h of the
    whole state and its own features x_u, by weights shared across UEs; then
    A_m(s, u) = g(e_u) + q_m·k_u, where the low-rank term pairs server m's query q_m (from h,
    Υ_m and one-hot m) with UE u's key k_u: the same function scores every UE, so it learns
    from all of them at once. ``head="flat"``: one linear layer from the trunk to all
    M·(U+1) + M·K outputs (the paper's network taken literally).
    """

    def __init__(self, cfg: ModelConfig, lcfg: LearnerConfig):
        super().__init__()
        U, M, K = cfg.n_users, cfg.n_servers, cfg.n_levels
        self.U, self.M, self.K, self.kind = U, M, K, lcfg.head
        scale = np.concatenate([np.full(U, cfg.demand_gcycles_range[1]), np.full(U, cfg.data_mb_range[1]),
                                np.full(U, float(cfg.max_wait_slots)), np.ones(U)])
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        layers, prev = [], 4 * U + M
        for width in lcfg.hidden:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            prev = width
        self.trunk = nn.Sequential(*layers)
        if self.kind == "flat":
            self.out = nn.Linear(prev, M * (U + 1) + M * K)
        else:
            P, Z, r = lcfg.pair_hidden, 1 + M, lcfg.pair_rank
            self.register_buffer("server_id", torch.eye(M))
            self.ue_h = nn.Linear(prev, P)                 # UE embedding e_u = ReLU(W_h·h + W_x·x_u)
            self.ue_x = nn.Linear(4, P, bias=False)
            self.ue_value = nn.Linear(P, 1)                # g(e_u): worth of serving u, any server
            self.ue_key = nn.Linear(P, r, bias=False)      # k_u
            self.srv_query = nn.Linear(prev + Z, r)        # q_m: which UEs suit server m
            self.idle = nn.Linear(prev + Z, 1)
            self.hash = nn.Linear(prev + Z, K)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        U, M, K = self.U, self.M, self.K
        n = obs.shape[0]
        ue = obs[:, :4 * U] / self.scale
        rep = obs[:, 4 * U:]
        rep = rep / (1.0 + rep)                            # Υ in [0, inf) -> [0, 1)
        h = self.trunk(torch.cat([ue, rep], dim=1))
        if self.kind == "flat":
            out = self.out(h)
            return out[:, :M * (U + 1)].view(n, M, U + 1), out[:, M * (U + 1):].view(n, M, K)
        x = ue.view(n, 4, U).transpose(1, 2)               # (n, U, 4): ξ, d, age, has_task
        z = torch.cat([rep.unsqueeze(-1), self.server_id.expand(n, M, M)], dim=-1)   # (n, M, 1+M)
        hz = torch.cat([h.unsqueeze(1).expand(n, M, h.shape[1]), z], dim=-1)        # (n, M, H+1+M)
        e = F.relu(self.ue_h(h).unsqueeze(1) + self.ue_x(x))                         # (n, U, P)
        a_users = self.ue_value(e).transpose(1, 2) + self.srv_query(hz) @ self.ue_key(e).transpose(1, 2)
        return torch.cat([a_users, self.idle(hz)], dim=-1), self.hash(hz)


def greedy_selector(cfg: ModelConfig) -> Selector:
    """argmax_a Q(s, a) over feasible actions, batched: matching on A, knapsack on B."""
    def select(A: np.ndarray, B: np.ndarray, pending: np.ndarray):
        return actions.match_users_batch(A, pending), actions.knapsack_levels(B, cfg)
    return select


def q_of(A: torch.Tensor, B: torch.Tensor, users, levels) -> torch.Tensor:
    """Q_m(s, a_m) = A_m(s, u_m) + B_m(s, k_m), shape (n, M)."""
    users = torch.as_tensor(users, dtype=torch.int64)
    levels = torch.as_tensor(levels, dtype=torch.int64)
    return A.gather(2, users.unsqueeze(-1)).squeeze(-1) + B.gather(2, levels.unsqueeze(-1)).squeeze(-1)


def q_target(online: nn.Module, target: nn.Module, next_obs: torch.Tensor, server_reward: torch.Tensor,
             terminated: torch.Tensor, gamma: float, pending: np.ndarray, select: Selector,
             double: bool = True, online_next: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-server targets y_m (n, M): eq. (14) if ``double`` else the classic single-Q target.

    ``select`` turns scores into the argmax feasible action; ``online_next`` may carry the
    online network's (A, B) at ``next_obs`` when the caller already computed them.
    """
    with torch.no_grad():
        A_t, B_t = target(next_obs)
        if double:
            A_s, B_s = online_next if online_next is not None else online(next_obs)
        else:
            A_s, B_s = A_t, B_t
        users, levels = select(A_s.numpy(), B_s.numpy(), pending)
        q_next = q_of(A_t, B_t, users, levels)
        return server_reward + gamma * (1.0 - terminated.unsqueeze(-1)) * q_next


class DQNAgent(Agent):
    """Classic DQN with experience replay and a target network (single-Q target)."""
    name = "dqn"
    double = False
    trains = True

    def __init__(self, cfg: ModelConfig, lcfg: LearnerConfig | None = None, seed: int = 0,
                 user_mode: str = "learned", hash_mode: str = "learned"):
        super().__init__(cfg, lcfg, seed)
        if user_mode not in USER_MODES:
            raise ValueError(f"user_mode must be one of {USER_MODES}, got {user_mode!r}")
        if hash_mode not in HASH_MODES:
            raise ValueError(f"hash_mode must be one of {HASH_MODES}, got {hash_mode!r}")
        lc = self.lcfg
        self.user_mode, self.hash_mode = user_mode, hash_mode
        self.variant = {("learned", "learned"): "full", ("learned", "equal"): "no_ra_equal",
                        ("learned", "random"): "no_ra_random", ("random", "learned"): "no_us"}.get(
                            (user_mode, hash_mode), f"{user_mode}_users_{hash_mode}_hash")
        torch.set_num_threads(lc.torch_threads)
        torch.manual_seed(seed)
        self.q = QNetwork(cfg, lc)
        self.q_target = copy.deepcopy(self.q)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=lc.lr, foreach=True)
        D, M = self.layout.size, cfg.n_servers
        cap = lc.replay_size
        self._obs = np.empty((cap, D), dtype=np.float32)      # np.empty: pages are only touched when written
        self._next = np.empty((cap, D), dtype=np.float32)
        self._act = np.empty((cap, 2, M), dtype=np.int64)
        self._rew = np.empty((cap, M), dtype=np.float32)
        self._term = np.empty(cap, dtype=np.float32)
        self.n_stored = self._pos = self.slot = self.updates = 0
        self.update_seconds = 0.0

    def state(self) -> dict:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(), "optimizer": self.opt.state_dict(),
                "slot": self.slot, "updates": self.updates}

    def load_state(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.opt.load_state_dict(state["optimizer"])
        self.slot, self.updates = int(state["slot"]), int(state["updates"])

    # --- policy -----------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        lc = self.lcfg
        frac = min(1.0, self.slot / lc.eps_decay_slots)
        return lc.eps_start + frac * (lc.eps_end - lc.eps_start)

    def _select(self, A: np.ndarray, B: np.ndarray, pending: np.ndarray):
        """Greedy feasible actions for a batch, with the ablations of Fig. 7 applied."""
        n = A.shape[0]
        if self.user_mode == "random":
            users = np.stack([actions.random_users(self.cfg, p, self.rng) for p in pending])
        else:
            users = actions.match_users_batch(A, pending)
        if self.hash_mode == "equal":
            levels = np.tile(actions.equal_levels(self.cfg), (n, 1))
        elif self.hash_mode == "random":
            levels = np.stack([actions.random_levels(self.cfg, self.rng) for _ in range(n)])
        else:
            levels = actions.knapsack_levels(B, self.cfg)
        return users, levels

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        pending = self.layout.split(obs)[3]
        if explore and self.rng.random() < self.epsilon:
            users = actions.random_users(self.cfg, pending, self.rng)
            levels = (actions.equal_levels(self.cfg) if self.hash_mode == "equal"
                      else actions.random_levels(self.cfg, self.rng))        # "random" and "learned" explore alike
            return actions.join_action(users, levels)
        with torch.no_grad():
            A, B = self.q(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
        users, levels = self._select(A.numpy(), B.numpy(), pending[None])
        return actions.join_action(users[0], levels[0])

    # --- learning -----------------------------------------------------------------------------
    def learn(self, tr: Transition) -> dict | None:
        i = self._pos
        self._obs[i], self._next[i], self._act[i] = tr.obs, tr.next_obs, actions.split_action(tr.action, self.cfg.n_servers)
        self._rew[i], self._term[i] = tr.server_reward, float(tr.terminated)
        self._pos = (i + 1) % self.lcfg.replay_size
        self.n_stored = min(self.n_stored + 1, self.lcfg.replay_size)
        self.slot += 1
        lc = self.lcfg
        if self.n_stored >= max(lc.learning_starts, lc.batch_size) and self.slot % lc.train_every == 0:
            return self.update()
        return None

    def update(self) -> dict:
        t0 = time.perf_counter()
        lc = self.lcfg
        idx = self.rng.integers(0, self.n_stored, size=lc.batch_size)
        obs = torch.from_numpy(self._obs[idx])
        nxt = torch.from_numpy(self._next[idx])
        act = self._act[idx]
        pending = self.layout.split(self._next[idx])[3]
        y = q_target(self.q, self.q_target, nxt, torch.from_numpy(self._rew[idx]),
                     torch.from_numpy(self._term[idx]), lc.gamma, pending, self._select, self.double)
        A, B = self.q(obs)
        q = q_of(A, B, act[:, 0], act[:, 1])
        loss = F.mse_loss(q, y)                              # (13), averaged over servers and batch
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), lc.grad_clip)
        self.opt.step()
        self.updates += 1
        if self.updates % lc.target_update_every == 0:
            self.q_target.load_state_dict(self.q.state_dict())
        self.update_seconds += time.perf_counter() - t0
        return {"loss": loss.item(), "q": q.detach().sum(1).mean().item()}


class DDQNAgent(DQNAgent):
    """Double DQN: the online weights θ pick a*, the target weights θ' evaluate it (14)."""
    name = "ddqn"
    double = True
