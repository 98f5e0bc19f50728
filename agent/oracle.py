"""The one-slot oracle: the exact maximiser of eq. (11) for the current slot.

It knows the model and every UE's task, and solves

    max  Σ_m [R_m(p_m) + φ_{u_m} - w·T_{u_m}^m(p_m)]
    s.t. a matching of UEs to servers (each at most once, min(M, #tasks) served),
         p_m in the hash levels,  Σ_m p_m <= budget,

exactly. The servers are identical (Table I), so only which UEs are served, at which level,
and the levels of the idle servers matter: a dynamic programme over the UEs with state
(servers used, hash budget used) gives the optimum in about a millisecond
(:func:`solve_slot`). The same problem as a small integer programme (HiGHS through
``scipy.optimize.milp``, :func:`solve_slot_milp`) cross-checks it in the tests.

It is myopic: it maximises this slot only and ignores what its choice does to the waiting
tasks and the reputations. It is therefore the upper bound of any *one-slot* policy; a learner
may in principle beat it over time, and any result above it is reported with that reason.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from agent import actions, model
from agent.config import ModelConfig
from agent.learners.base import Agent


def solve_slot_milp(cfg: ModelConfig, data_mb: np.ndarray, demand: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Exact best action (2M,) for one slot, by integer programming (slow; for checks)."""
    M, U, K = cfg.n_servers, cfg.n_users, cfg.n_levels
    cand = np.flatnonzero(pending)
    n = len(cand)
    n_served = min(M, n)
    serve, idle = model.pair_values(cfg, data_mb[cand], demand[cand])    # (n, K), (K,)
    p = np.asarray(cfg.hash_levels_mhs)
    nz = n * K
    c = -np.concatenate([serve.ravel(), idle])
    A = lil_matrix((n + 3, nz + K))
    for j in range(n):                                   # each UE at most once
        A[j, j * K:(j + 1) * K] = 1.0
    A[n, :nz] = 1.0                                      # exactly min(M, n) served
    A[n + 1, :] = 1.0                                    # exactly M servers
    A[n + 2, :nz] = np.tile(p, n)                        # hash budget
    A[n + 2, nz:] = p
    lo = np.concatenate([np.zeros(n), [n_served, M, -np.inf]])
    hi = np.concatenate([np.ones(n), [n_served, M, cfg.hash_budget_mhs]])
    res = milp(c, constraints=LinearConstraint(A.tocsr(), lo, hi), integrality=np.ones(nz + K),
               bounds=Bounds(np.zeros(nz + K), np.concatenate([np.ones(nz), np.full(K, M)])))
    if res.x is None:
        raise RuntimeError(f"oracle: integer programme failed: {res.message}")
    x = np.round(res.x).astype(np.int64)
    z = x[:nz].reshape(n, K)
    users = np.full(M, U, dtype=np.int64)
    levels = np.zeros(M, dtype=np.int64)
    js, ks = np.nonzero(z)
    users[:len(js)] = cand[js]
    levels[:len(js)] = ks
    levels[len(js):] = np.repeat(np.arange(K), x[nz:])
    return actions.join_action(users, levels)


def solve_slot(cfg: ModelConfig, data_mb: np.ndarray, demand: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Exact best action (2M,) for one slot, by dynamic programming.

    F[s, c]: best utility of the UEs seen so far with s of them served using c budget units
    (exactly); G[r, c]: best utility of r idle servers using c units. The answer joins
    F[min(M, n), ·] and G[M - min(M, n), ·] under the budget.
    """
    M, U, K = cfg.n_servers, cfg.n_users, cfg.n_levels
    w, C = actions._units(cfg.hash_levels_mhs, cfg.hash_budget_mhs)
    C = min(C, int(w.max()) * M)
    cand = np.flatnonzero(pending)
    n = len(cand)
    ns, r = min(M, n), M - min(M, n)
    serve, idle = model.pair_values(cfg, data_mb[cand], demand[cand])
    F = np.full((ns + 1, C + 1), -np.inf)
    F[0, 0] = 0.0
    took = np.zeros((n, ns + 1, C + 1), dtype=np.int8)        # 0 = skip, k + 1 = served at k
    for j in range(n):
        new = F.copy()
        for k in range(K):
            cand_v = np.full_like(F, -np.inf)
            cand_v[1:, w[k]:] = F[:-1, :C + 1 - w[k]] + serve[j, k]
            better = cand_v > new
            new[better] = cand_v[better]
            took[j][better] = k + 1
        F = new
    G = np.full((r + 1, C + 1), -np.inf)
    G[0, 0] = 0.0
    gk = np.zeros((r + 1, C + 1), dtype=np.int64)
    for i in range(1, r + 1):
        for k in range(K):
            cand_v = np.full(C + 1, -np.inf)
            cand_v[w[k]:] = G[i - 1, :C + 1 - w[k]] + idle[k]
            better = cand_v > G[i]
            G[i][better] = cand_v[better]
            gk[i][better] = k
    # best split of the budget between served and idle servers
    g_best = np.maximum.accumulate(G[r])
    g_arg = np.array([int(np.argmax(G[r, :c + 1])) for c in range(C + 1)])
    total = F[ns] + g_best[::-1]                              # c1 + c2 <= C
    c1 = int(np.argmax(total))
    if not np.isfinite(total[c1]):
        raise RuntimeError("oracle: no feasible action (budget below the minimum levels)")
    c2 = int(g_arg[C - c1])
    users = np.full(M, U, dtype=np.int64)
    levels = np.zeros(M, dtype=np.int64)
    slot, s, c = 0, ns, c1
    for j in range(n - 1, -1, -1):
        k1 = int(took[j, s, c])
        if k1:
            users[slot], levels[slot] = cand[j], k1 - 1
            slot, s, c = slot + 1, s - 1, c - w[k1 - 1]
    for i in range(r, 0, -1):
        k = int(gk[i, c2])
        levels[slot] = k
        slot, c2 = slot + 1, c2 - w[k]
    return actions.join_action(users, levels)


class OracleAgent(Agent):
    """Solves each slot exactly with the model's own equations (the upper bound of Figs. 5-6)."""
    name = "oracle"

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        demand, data, _, pending, _ = self.layout.split(obs)
        return solve_slot(self.cfg, data, demand, pending)
