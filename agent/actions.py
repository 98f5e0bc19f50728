"""Turning per-server scores into feasible actions (10): a matching and a knapsack.

Every agent scores "server m serves UE u" (M x U+1 values, last column = idle) and "server m
mines at level k" (M x K). The best feasible joint action for such additive scores is exact and
cheap: the user selection is an assignment problem (Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``) and the hash levels a multiple-choice knapsack under
the budget (dynamic programming over servers). Both are used by the learners to act and, for
DQN/DDQN, to pick the next action inside the target.

An action, wherever it leaves an agent, is the env's flat ``MultiDiscrete`` vector (2M,): the
M users first, then the M hash levels. :func:`join_action` builds it and :func:`split_action`
is the one way back to (users, levels).
"""
from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np
from scipy.optimize import linear_sum_assignment

from agent.config import ModelConfig


def join_action(users: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The flat action (2M,) of the env's action space: users (M,) (``U`` = idle), then levels (M,)."""
    return np.concatenate([users, levels]).astype(np.int64)


def split_action(action, n_servers: int) -> tuple[np.ndarray, np.ndarray]:
    """(users (M,), levels (M,)) from a flat (2M,) action; a (2, M) array (row 0 users, row 1
    levels) from a foreign policy reads the same."""
    a = np.asarray(action, dtype=np.int64)
    if a.size != 2 * n_servers:
        raise ValueError(f"action must have 2 x {n_servers} entries (users, hash levels), got shape {a.shape}")
    a = a.reshape(2, n_servers)
    return a[0], a[1]


def match_users(scores: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Users (M,) maximising Σ_m scores[m, u_m] over feasible selections.

    ``scores``: (M, U+1), column U = idle. Exactly min(M, #pending) servers serve a pending UE
    (the paper's Σ_u x_u^m = 1 when enough tasks wait); the rest idle.
    """
    M, U1 = scores.shape
    U = U1 - 1
    users = np.full(M, U, dtype=np.int64)
    if U >= M and pending.all():                     # the common case: no idle server
        rows, cols = linear_sum_assignment(scores[:, :U], maximize=True)
        users[rows] = cols
        return users
    cand = np.flatnonzero(pending)
    n_idle = max(0, M - len(cand))
    cols = np.concatenate([scores[:, cand], np.repeat(scores[:, U:], n_idle, axis=1)], axis=1)
    rows, picked = linear_sum_assignment(cols, maximize=True)
    real = picked < len(cand)
    users[rows[real]] = cand[picked[real]]
    return users


def match_users_batch(scores: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """:func:`match_users` for a batch: scores (B, M, U+1), pending (B, U) -> (B, M)."""
    B, M, U1 = scores.shape
    U = U1 - 1
    if U < M:
        return np.stack([match_users(s, p) for s, p in zip(scores, pending)])
    out = np.empty((B, M), dtype=np.int64)
    full = pending.all(axis=1)
    for b in range(B):                     # the common case (no idle server) without match_users' set-up
        if full[b]:
            out[b] = linear_sum_assignment(scores[b, :, :U], maximize=True)[1]
        else:
            out[b] = match_users(scores[b], pending[b])
    return out


@lru_cache(maxsize=64)
def _units(levels: tuple[float, ...], budget: float) -> tuple[np.ndarray, int]:
    """Integer weights of the hash levels and the budget in the same unit (their gcd)."""
    scaled = [round(v * 1000) for v in levels]
    unit = 0
    for v in scaled:
        unit = gcd(unit, v)
    weights = np.array([v // unit for v in scaled], dtype=np.int64)
    return weights, int(round(budget * 1000) // unit)


def knapsack_levels(values: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Levels (..., M) maximising Σ_m values[..., m, k_m] subject to Σ_m p_{k_m} <= budget.

    Exact dynamic programme over servers; vectorised over the leading (batch) dimensions.
    """
    values = np.asarray(values, dtype=float)
    lead = values.shape[:-2]
    M, K = values.shape[-2:]
    v = values.reshape(-1, M, K)
    B = v.shape[0]
    w, cap = _units(cfg.hash_levels_mhs, cfg.hash_budget_mhs)
    cap = min(cap, int(w.max()) * M)                   # a budget above M x top level never binds
    dp = np.zeros((B, cap + 1))                         # best value with total weight <= c
    choice = np.zeros((M, B, cap + 1), dtype=np.int64)
    cand = np.empty((B, K, cap + 1))
    for m in range(M):
        cand.fill(-np.inf)
        for k in range(K):
            cand[:, k, w[k]:] = dp[:, :cap + 1 - w[k]] + v[:, m, k:k + 1]
        choice[m] = cand.argmax(axis=1)
        dp = cand.max(axis=1)
    levels = np.zeros((B, M), dtype=np.int64)
    c = np.full(B, cap)
    rows = np.arange(B)
    for m in range(M - 1, -1, -1):
        k = choice[m, rows, c]
        levels[:, m] = k
        c = c - w[k]
    return levels.reshape(lead + (M,))


def repair_levels(levels: np.ndarray, cfg: ModelConfig, rng: np.random.Generator) -> np.ndarray:
    """Lower random servers' levels one step at a time until the budget holds."""
    levels = np.array(levels, dtype=np.int64)
    p = np.asarray(cfg.hash_levels_mhs)
    while p[levels].sum() > cfg.hash_budget_mhs + 1e-9:
        can = np.flatnonzero(levels > 0)
        levels[rng.choice(can)] -= 1
    return levels


def random_users(cfg: ModelConfig, pending: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random feasible user selection (random UEs on random servers)."""
    M, U = cfg.n_servers, cfg.n_users
    cand = rng.permutation(np.flatnonzero(pending))[:M]
    users = np.full(M, U, dtype=np.int64)
    users[rng.permutation(M)[:len(cand)]] = cand
    return users


def random_levels(cfg: ModelConfig, rng: np.random.Generator) -> np.ndarray:
    return repair_levels(rng.integers(0, cfg.n_levels, size=cfg.n_servers), cfg, rng)


def equal_levels(cfg: ModelConfig) -> np.ndarray:
    """Every server at the largest level an equal split of the budget allows (no allocation)."""
    return np.full(cfg.n_servers, cfg.equal_hash_level, dtype=np.int64)


def random_action(cfg: ModelConfig, pending: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random feasible action (2M,)."""
    return join_action(random_users(cfg, pending, rng), random_levels(cfg, rng))
