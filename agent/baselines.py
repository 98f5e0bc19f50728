"""Baselines that do not learn: random, the greedy heuristic and the genetic algorithm."""
from __future__ import annotations

import numpy as np

from agent import actions, model
from agent.config import LearnerConfig, ModelConfig
from agent.learners.base import Agent


class RandomAgent(Agent):
    """A uniformly random feasible action each slot."""
    name = "random"

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        return actions.random_action(self.cfg, self.layout.split(obs)[3], self.rng)


def levels_by_reputation(cfg: ModelConfig, reputation: np.ndarray) -> np.ndarray:
    """Hash power in proportion to Υ_m (the paper's rule), rounded down to the levels, then the
    budget left over spent one step at a time on the most reputable servers."""
    p = np.asarray(cfg.hash_levels_mhs)
    share = cfg.hash_budget_mhs * reputation / max(reputation.sum(), 1e-12)
    levels = np.clip(np.searchsorted(p, share + 1e-9, side="right") - 1, 0, cfg.n_levels - 1)
    for m in np.argsort(-reputation, kind="stable"):
        while levels[m] + 1 < cfg.n_levels and p[levels].sum() - p[levels[m]] + p[levels[m] + 1] <= cfg.hash_budget_mhs:
            levels[m] += 1
    return levels


class GreedyAgent(Agent):
    """Highest service demand ξ_u to the fastest server (least hash power, so most CPU left
    for tasks); hash power in proportion to reputation."""
    name = "greedy"

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        demand, _, _, pending, rep = self.layout.split(obs)
        M, U = self.cfg.n_servers, self.cfg.n_users
        levels = levels_by_reputation(self.cfg, rep)
        cand = np.flatnonzero(pending)
        chosen = cand[np.argsort(-demand[cand], kind="stable")][:M]
        fastest = np.lexsort((-rep, levels))               # lowest level first, then higher Υ
        users = np.full(M, U, dtype=np.int64)
        users[fastest[:len(chosen)]] = chosen
        return actions.join_action(users, levels)


class GAAgent(Agent):
    """Genetic algorithm on the slot's utility (11), with a fixed evaluation budget per slot:
    ``ga_population`` x ``ga_generations`` evaluations of (11) through the model.

    Genome: per server, (UE, hash level). Tournament selection of size 2, uniform crossover
    over servers, per-server mutation, elitism of 2; children are repaired to feasibility
    (duplicate or missing UEs replaced at random, levels lowered until the budget holds).
    """
    name = "ga"

    def __init__(self, cfg: ModelConfig, lcfg: LearnerConfig | None = None, seed: int = 0):
        super().__init__(cfg, lcfg, seed)
        self.evaluations_per_slot = self.lcfg.ga_population * self.lcfg.ga_generations

    def _repair_users(self, users: np.ndarray, pending: np.ndarray) -> np.ndarray:
        """Make every row of ``users`` (P, M) a feasible selection, vectorised over the rows."""
        P, M = users.shape
        U, rng = self.cfg.n_users, self.rng
        rows = np.arange(P)[:, None]
        valid = (users < U) & np.append(pending, False)[users]
        same = (users[:, :, None] == users[:, None, :]) & valid[:, None, :]
        dup = (same & np.tri(M, M, -1, dtype=bool)).any(axis=2)   # served by an earlier server
        keep = valid & ~dup
        out = np.where(keep, users, U)
        missing = min(M, int(pending.sum())) - keep.sum(axis=1)
        if missing.max() > 0:
            used = np.zeros((P, U + 1), dtype=bool)
            used[rows, out] = True
            ue_keys = rng.random((P, U))
            ue_keys[used[:, :U] | ~pending] = np.inf
            unused = np.argsort(ue_keys, axis=1)                 # unused tasks, random order
            srv_keys = rng.random((P, M))
            srv_keys[keep] = np.inf
            free = np.argsort(srv_keys, axis=1)                  # servers without a UE, random order
            for i in range(int(missing.max())):
                r = np.flatnonzero(missing > i)
                out[r, free[r, i]] = unused[r, i]
        return out

    def _repair_levels(self, levels: np.ndarray) -> np.ndarray:
        """Lower a random server of each over-budget row one level until all rows fit."""
        p = np.asarray(self.cfg.hash_levels_mhs)
        levels = levels.copy()
        while True:
            over = np.flatnonzero(p[levels].sum(axis=1) > self.cfg.hash_budget_mhs + 1e-9)
            if not len(over):
                return levels
            keys = self.rng.random((len(over), levels.shape[1]))
            keys[levels[over] == 0] = -1.0
            levels[over, np.argmax(keys, axis=1)] -= 1

    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        demand, data, _, pending, _ = self.layout.split(obs)
        cfg, lc, rng = self.cfg, self.lcfg, self.rng
        P, M, K, U = lc.ga_population, cfg.n_servers, cfg.n_levels, cfg.n_users
        cand = np.flatnonzero(pending)
        n_elite = min(2, P)
        pop_u = self._repair_users(np.full((P, M), U), pending)          # random feasible start
        pop_l = self._repair_levels(rng.integers(0, K, size=(P, M)))
        for gen in range(lc.ga_generations):
            fit = model.slot_terms(cfg, data, demand, pop_u, pop_l).total
            if gen == lc.ga_generations - 1:
                break
            n_child = P - n_elite
            duel = rng.integers(0, P, size=(2, n_child, 2))              # two tournaments of size 2
            winners = np.where(fit[duel[..., 0]] >= fit[duel[..., 1]], duel[..., 0], duel[..., 1])
            mask = rng.random((n_child, M)) < 0.5                        # uniform crossover per server
            cu = np.where(mask, pop_u[winners[0]], pop_u[winners[1]])
            cl = np.where(mask, pop_l[winners[0]], pop_l[winners[1]])
            if len(cand):
                mut = rng.random((n_child, M)) < lc.ga_mutation
                cu = np.where(mut, rng.choice(cand, size=(n_child, M)), cu)
            mut = rng.random((n_child, M)) < lc.ga_mutation
            cl = np.where(mut, rng.integers(0, K, size=(n_child, M)), cl)
            elite = np.argsort(-fit)[:n_elite]
            pop_u = np.concatenate([pop_u[elite], self._repair_users(cu, pending)])
            pop_l = np.concatenate([pop_l[elite], self._repair_levels(cl)])
        best = int(np.argmax(fit))
        return actions.join_action(pop_u[best], pop_l[best])
