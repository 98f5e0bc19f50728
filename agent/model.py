"""The paper's system model as pure, vectorised numpy functions (eqs. (1)-(6), (11)).

Nothing here keeps state: the Gymnasium environment (:mod:`agent.env`), the oracle, the genetic
algorithm and, later, the live testbed (which feeds measured latencies and reputations) all call
these same functions. Every function broadcasts over leading dimensions. Units: data in MB,
service demand ξ in Gcycles (``demand_reading = "total"``) or Gcycles per MB (``"per_mb"``),
CPU in GHz (Gcycles/s), hash power in MHash/s, time in s, block size in KB, money in tokens.
The readings behind each one are in docs/model.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent import config
from agent.config import ModelConfig


# --- Offloading (section III.A) ------------------------------------------------------------

def service_cost(unit_price: float, demand):
    """Eq. (1): φ_u = µ·ξ_u, tokens paid by UE u (µ token/Gcycle, ξ_u as in Table I).

    The same in both readings of ξ: the paper prices the service demand, not the cycles run.
    """
    return unit_price * np.asarray(demand, dtype=float)


def task_gcycles(cfg: ModelConfig, data_mb, demand):
    """Total Gcycles of task R_u = (d_u, ξ_u, τ_u), the numerator of eq. (2), over arrays: the
    rule is :func:`agent.config.task_gcycles` (once, numpy-free for the host programs); the
    result has the broadcast shape of ``data_mb`` and ``demand``."""
    d, xi = np.asarray(data_mb, dtype=float), np.asarray(demand, dtype=float)
    return config.task_gcycles(cfg, d, xi) * np.ones(np.broadcast_shapes(d.shape, xi.shape))


def task_capacity(cpu_ghz, hash_mhs, cpu_per_mhs: float):
    """CPU left for tasks on a server that mines at p_m: f_m - κ·p_m (GHz).

    Mining and task execution share the server's CPU; κ (GHz per MHash/s) is the coupling
    constant the testbed calibrates.
    """
    return np.asarray(cpu_ghz, dtype=float) - cpu_per_mhs * np.asarray(hash_mhs, dtype=float)


def execution_latency(gcycles, capacity_ghz):
    """Eq. (2): T_u^m = (Gcycles of the task, :func:`task_gcycles`) / f_u^m (s), for x_u^m = 1."""
    return np.asarray(gcycles, dtype=float) / np.asarray(capacity_ghz, dtype=float)


def latency_weight_threshold(cfg: ModelConfig) -> float:
    """w* (token/s): the utility (11) rises with the service demand ξ (Fig. 6) iff w < w*.

    Per served task, ∂(φ_u - w·T_u)/∂ξ_u = µ - w·∂T_u/∂ξ_u: with T = d·ξ/f (per_mb) that is
    µ - w·d/f, positive on average iff w < µ·f/d̄; with T = ξ/f (total) iff w < µ·f. f is the
    CPU left for tasks at an equal split of the hash budget, f_m - κ·P/M; d̄ the mean data size.
    """
    f = cfg.cpu_ghz - cfg.cpu_per_mhs * cfg.hash_budget_mhs / cfg.n_servers
    d_mean = sum(cfg.data_mb_range) / 2
    return float(cfg.unit_price * f / (d_mean if cfg.demand_reading == "per_mb" else 1.0))


def reputation(desired_s_sum, actual_s_sum, default: float = 1.0):
    """Eq. (3): Υ_m = Σ τ_u / Σ T_u^m over the tasks server m ran in the window (dimensionless).

    A server that ran nothing in the window has no evidence either way: Υ_m = ``default``.
    """
    desired = np.asarray(desired_s_sum, dtype=float)
    actual = np.asarray(actual_s_sum, dtype=float)
    out = np.full(np.broadcast(desired, actual).shape, float(default))
    ok = actual > 0
    np.divide(desired, actual, out=out, where=ok)
    return out


# --- Block mining (section III.B) ----------------------------------------------------------

def relative_hash(hash_mhs, network_hash_mhs: float):
    """Eq. (4): µ_m = p_m / H (share of the whole chain's hash power)."""
    return np.asarray(hash_mhs, dtype=float) / network_hash_mhs


def propagation_time(block_kb, base_s: float, s_per_kb: float):
    """φ(b): time for a block of b KB to reach the network (s), affine in b."""
    return base_s + s_per_kb * np.asarray(block_kb, dtype=float)


def orphan_probability(block_kb, eta_per_s: float, base_s: float, s_per_kb: float):
    """P_orphan = 1 - exp(-η·φ(b)): a competing block appears while ours propagates."""
    return -np.expm1(-eta_per_s * propagation_time(block_kb, base_s, s_per_kb))


def success_probability(mu_m, block_kb, eta_per_s: float, base_s: float, s_per_kb: float):
    """Eq. (5): P = µ_m·(1 - P_orphan) = µ_m·exp(-η·φ(b_m))."""
    return np.asarray(mu_m, dtype=float) * np.exp(-eta_per_s * propagation_time(block_kb, base_s, s_per_kb))


def mining_reward(cfg: ModelConfig, hash_mhs, block_kb=None):
    """Eq. (6): R_m = (R + r·b_m)·µ_m·exp(-η·φ(b_m)) (token per slot); r = 0 gives (6) as printed."""
    b = cfg.block_kb if block_kb is None else block_kb
    mu = relative_hash(hash_mhs, cfg.network_hash_mhs)
    prize = cfg.mining_reward + cfg.fee_per_kb * np.asarray(b, dtype=float)
    return prize * success_probability(mu, b, cfg.eta_per_s, cfg.prop_base_s, cfg.prop_s_per_kb)


# --- One slot of eq. (11) -------------------------------------------------------------------

@dataclass
class SlotTerms:
    """Per-server terms of eq. (11) for one slot; arrays shaped (..., M)."""
    mining: np.ndarray      # R_m, token
    revenue: np.ndarray     # φ_u of the UE served by m (0 if idle), token
    latency: np.ndarray     # T_u^m (0 if idle), s
    utility: np.ndarray     # R_m + φ_u - w·T_u^m, token

    @property
    def total(self) -> np.ndarray:
        return self.utility.sum(axis=-1)


def utility_terms(cfg: ModelConfig, hash_mhs, revenue, latency_s) -> SlotTerms:
    """Eq. (11) for one slot, the one place it is computed: per server m,
    R_m(p_m) + φ_m − w·T_m, with R_m the expected mining reward of eqs. (4)–(6).

    ``hash_mhs``: (..., M) hash power p_m over the slot (MHash/s): the action's levels in the
    simulator, the hash each miner really did on the live lab (:class:`scenario.units.LiveMapping`).
    ``revenue``: (..., M) tokens paid to m for the slot's tasks (φ_u); ``latency_s``: (..., M)
    execution time of eq. (2) of the tasks m ran (s). The simulator (:func:`slot_terms`), the live
    lab (:class:`testbed.live_env.LiveEnv`) and ``testbed fidelity`` all call this.
    """
    mining = mining_reward(cfg, np.asarray(hash_mhs, dtype=float))
    revenue = np.asarray(revenue, dtype=float)
    latency = np.asarray(latency_s, dtype=float)
    return SlotTerms(mining, revenue, latency, mining + revenue - cfg.latency_weight * latency)


def slot_terms(cfg: ModelConfig, data_mb, demand, users, levels) -> SlotTerms:
    """Evaluate eq. (11) for one slot and any batch of actions.

    ``data_mb``, ``demand``: (..., U) task of each UE. ``users``: (..., M) index of the UE
    server m serves, ``U`` for none. ``levels``: (..., M) index into ``cfg.hash_levels_mhs``.
    """
    data_mb = np.asarray(data_mb, dtype=float)
    demand = np.asarray(demand, dtype=float)
    users = np.asarray(users)
    levels = np.asarray(levels)
    U = data_mb.shape[-1]
    p = np.asarray(cfg.hash_levels_mhs)[levels]
    served = users < U
    idx = np.where(served, users, 0)
    d = np.take_along_axis(np.broadcast_to(data_mb, users.shape[:-1] + (U,)), idx, axis=-1)
    xi = np.take_along_axis(np.broadcast_to(demand, users.shape[:-1] + (U,)), idx, axis=-1)
    cap = task_capacity(cfg.cpu_ghz, p, cfg.cpu_per_mhs)
    latency = np.where(served, execution_latency(task_gcycles(cfg, d, xi), cap), 0.0)
    revenue = np.where(served, service_cost(cfg.unit_price, xi), 0.0)
    return utility_terms(cfg, p, revenue, latency)


def pair_values(cfg: ModelConfig, data_mb, demand):
    """Utility of server m serving UE u at level k, and of server m idle at level k.

    Returns ``serve`` (U, K) and ``idle`` (K,): with identical servers (Table I) these do not
    depend on m. Used by the oracle; the one-slot utility of an action is the sum over servers.
    """
    p = np.asarray(cfg.hash_levels_mhs)
    cap = task_capacity(cfg.cpu_ghz, p, cfg.cpu_per_mhs)                       # (K,)
    lat = execution_latency(task_gcycles(cfg, data_mb, demand)[:, None], cap[None, :])
    mine = mining_reward(cfg, p)                                               # (K,)
    serve = mine[None, :] + service_cost(cfg.unit_price, demand)[:, None] - cfg.latency_weight * lat
    return serve, mine


# --- Feasibility of an action (10) ---------------------------------------------------------

def action_problems(cfg: ModelConfig, users, levels, pending) -> list[str]:
    """Why an action is infeasible (empty list if feasible).

    Rules: each server serves at most one UE and each UE is served at most once; a served UE
    must have a task; a server idles only if no task is left unserved (the UEs have paid
    through the trading contract, so the ESP must serve as many as it can: Σ_u x_u^m = 1);
    Σ_m p_m <= budget.
    """
    users = np.asarray(users)
    levels = np.asarray(levels)
    pending = np.asarray(pending, dtype=bool)
    M, U, K = cfg.n_servers, cfg.n_users, cfg.n_levels
    problems = []
    if users.shape != (M,) or levels.shape != (M,):
        return [f"action must be two rows of {M} (users, hash levels), got shapes {users.shape}, {levels.shape}"]
    if users.min() < 0 or users.max() > U:
        problems.append(f"user index out of [0, {U}] ({U} = idle): {users.tolist()}")
        return problems
    if levels.min() < 0 or levels.max() >= K:
        problems.append(f"hash level index out of [0, {K - 1}]: {levels.tolist()}")
        return problems
    served = users[users < U]
    if len(np.unique(served)) != len(served):
        problems.append(f"a UE is served twice: {served.tolist()}")
    if len(served) and not pending[served].all():
        problems.append(f"UE(s) {served[~pending[served]].tolist()} have no task")
    n_expected = min(M, int(pending.sum()))
    if len(np.unique(served)) < n_expected:
        problems.append(f"{n_expected - len(np.unique(served))} server(s) idle while tasks wait "
                        f"({int(pending.sum())} pending, {len(served)} served)")
    total = float(np.asarray(cfg.hash_levels_mhs)[levels].sum())
    if total > cfg.hash_budget_mhs + 1e-9:
        problems.append(f"hash power {total} MHash/s exceeds the budget {cfg.hash_budget_mhs}")
    return problems


# --- Observation layout: [S_U, S_M] of eq. (9) -----------------------------------------------

@dataclass(frozen=True)
class ObsLayout:
    """Flat observation ``[ξ_u (U), d_u (U), age_u (U), has_task_u (U), Υ_m (M)]`` in model units.

    S_U carries ξ_u as in (7) plus d_u (eq. (2) needs it), the waiting age (slots) and whether
    the UE has a task; S_M is Υ_m as in (8).
    """
    n_users: int
    n_servers: int

    @property
    def size(self) -> int:
        return 4 * self.n_users + self.n_servers

    def split(self, obs):
        """Return (demand, data_mb, age, pending, reputation) views of ``obs`` (..., size)."""
        U = self.n_users
        obs = np.asarray(obs)
        return (obs[..., :U], obs[..., U:2 * U], obs[..., 2 * U:3 * U],
                obs[..., 3 * U:4 * U] > 0.5, obs[..., 4 * U:])

    def join(self, demand, data_mb, age, pending, reputation) -> np.ndarray:
        return np.concatenate([demand, data_mb, age, np.asarray(pending, dtype=float), reputation],
                              axis=-1).astype(np.float64)
