"""Score any policy on the project's evaluation stream: the one the paper runner uses.

    from agent.evaluate import evaluate
    evaluate(agent, cfg, seed=0, slots=500)                  # a project agent (act(obs, explore))
    evaluate(PPO.load("ppo.zip"), cfg, seed=0, slots=500)    # a Stable-Baselines3 model (predict)
    evaluate(lambda obs: my_action(obs), cfg, seed=0, slots=500)   # any callable obs -> action

The stream: the simulated system (:class:`agent.env.MecChainEnv`) reset with ``EVAL_SEED +
seed``, each ended episode reset with ``EVAL_SEED + seed * 1000 + episode``; so two policies
scored with the same ``seed`` meet the same arrivals, tasks and channel draws until their
actions make the states differ. A policy's action must be a member (2M,) of the env's action
space (a (2, M) array, row 0 users and row 1 levels, is read as one); an infeasible one (a UE
twice, a UE without a task, the budget exceeded) raises, unless ``repair=True`` (what a generic RL library trained with:
:class:`agent.env.RepairAction`).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from agent import actions, model
from agent.config import ModelConfig
from agent.env import MecChainEnv, RepairAction

EVAL_SEED = 1_000_000     # evaluation streams start here, far from any training seed


def as_policy(policy: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``obs -> action`` for a project agent (``act(obs, explore=False)``), a Stable-Baselines3
    model (``predict(obs, deterministic=True)``) or a plain callable."""
    if hasattr(policy, "act"):
        return lambda obs: policy.act(obs, explore=False)
    if hasattr(policy, "predict"):
        return lambda obs: policy.predict(obs, deterministic=True)[0]
    if callable(policy):
        return policy
    raise TypeError(f"a policy has act(obs, explore), predict(obs, deterministic) or is callable; "
                    f"got {type(policy).__name__}")


def evaluate(policy: Any, cfg: ModelConfig, seed: int, slots: int, *, repair: bool = False) -> dict:
    """``slots`` slots of ``policy`` on the evaluation stream ``seed``; the means per slot of
    the utility (eq. 11) and its terms, drops, the cycles of served and waiting tasks, and the
    decision latency (mean, p50, p99, ms)."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    decide = as_policy(policy)
    base = MecChainEnv(cfg)
    env = RepairAction(base) if repair else base
    M, U = cfg.n_servers, cfg.n_users
    obs, _ = env.reset(seed=EVAL_SEED + seed)
    util, ecl, mining, revenue, drops, served_gc, waiting_gc, dec = [], [], [], [], [], [], [], []
    episode = 0
    for _ in range(slots):
        demand, data, _, pending, _ = base.layout.split(obs)
        t0 = time.perf_counter()
        a = decide(obs)
        dec.append(time.perf_counter() - t0)
        flat = actions.join_action(*actions.split_action(a, M))
        if not env.action_space.contains(flat):
            raise ValueError(f"the policy's action {flat.tolist()} is not in the env's action space "
                             f"{env.action_space}")
        users = actions.split_action(env.action(flat) if repair else flat, M)[0]     # what the env will apply
        served = np.zeros(U, dtype=bool)
        served[users[users < U]] = True
        obs, r, term, trunc, info = env.step(flat)
        gc = model.task_gcycles(cfg, data, demand)
        served_gc.extend(gc[served].tolist())
        waiting_gc.extend(gc[pending & ~served].tolist())
        util.append(r)
        ecl.append(info["latency_s"])
        mining.append(info["mining_reward"])
        revenue.append(info["revenue"])
        drops.append(info["n_dropped"])
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=EVAL_SEED + seed * 1000 + episode)
    dec_ms = np.array(dec) * 1e3
    return {"slots": slots, "avg_utility": float(np.mean(util)), "ecl_s": float(np.mean(ecl)),
            "mining": float(np.mean(mining)), "revenue": float(np.mean(revenue)),
            "drops_per_slot": float(np.mean(drops)),
            "served_gcycles": float(np.mean(served_gc)) if served_gc else None,
            "waiting_gcycles": float(np.mean(waiting_gc)) if waiting_gc else None,
            "decision_ms": float(dec_ms.mean()), "decision_ms_p50": float(np.percentile(dec_ms, 50)),
            "decision_ms_p99": float(np.percentile(dec_ms, 99))}
