"""The agent benchmark printed by ``make bench-agent`` (``python -m testbed bench-agent``).

Speed, at M = ``model.n_servers`` and U = 30 and 100: environment steps/s, DDQN gradient
updates/s, DDQN decision latency p50/p99 and the oracle's decision time.

The learner target, under every reading of ``paper.readings``: DDQN trained for
``TARGET_SLOTS`` = 2000 slots at U = 20 on one core, then its frozen policy evaluated for
``paper.eval_slots`` slots beside random and the one-slot oracle on the same task stream; the
score is the share of the random-to-oracle gap it closes, (U_ddqn - U_random)/(U_oracle - U_random),
over ``TARGET_SEEDS`` seeds (ratio of the means; per seed as well). Target: >= 0.95 in < 5 s of
training. Nothing here is tuned to pass: the learner runs with the scenario's one ``[learner]``.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from testbed.experiments.paper.runner import execute, job

TARGET_USERS = 20
TARGET_SLOTS = 2000
TARGET_SEEDS = 3
TARGET_GAP = 0.95
TARGET_SECONDS = 5.0


def speed(scn, users: int) -> dict[str, Any]:
    """Env steps/s, DDQN updates/s, decision latency p50/p99 (ms) at U = ``users``."""
    import torch

    from agent import actions
    from agent.env import MecChainEnv
    from agent.learners import Transition
    from agent.registry import make_agent
    lcfg = scn.learner
    torch.set_num_threads(lcfg.torch_threads)
    cfg = type(scn.model).from_dict({**scn.model.to_dict(), "n_users": users, "horizon_slots": 10 ** 6})
    env = MecChainEnv(cfg)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = [actions.random_action(cfg, np.ones(users, bool), rng) for _ in range(200)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        env.step(acts[n % 200])
        n += 1
    r: dict[str, Any] = {"env_steps_per_s": round(n / (time.perf_counter() - t0))}
    agent = make_agent("ddqn", cfg, lcfg, seed=0)
    obs, _ = env.reset(seed=1)
    for _ in range(lcfg.batch_size + 10):
        a = agent.act(obs)
        nxt, rew, te, tr, info = env.step(a)
        agent.learn(Transition(obs, a, rew, info["server_utility"], nxt, te, tr))
        obs = nxt
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        agent.update()
        n += 1
    r["updates_per_s"] = round(n / (time.perf_counter() - t0), 1)
    lat = []
    for _ in range(300):
        t0 = time.perf_counter()
        a = agent.act(obs, explore=False)
        lat.append(time.perf_counter() - t0)
        obs, *_ = env.step(a)
    lat = np.array(lat[20:]) * 1e3
    r["decision_ms_p50"] = round(float(np.percentile(lat, 50)), 3)
    r["decision_ms_p99"] = round(float(np.percentile(lat, 99)), 3)
    oracle = make_agent("oracle", cfg, lcfg)
    t = []
    for _ in range(50):
        t0 = time.perf_counter()
        oracle.act(obs)
        t.append(time.perf_counter() - t0)
    r["oracle_decision_ms_p50"] = round(float(np.median(t) * 1e3), 3)
    return r


def learner_target(scn, reading: str, seeds: int = TARGET_SEEDS, slots: int = TARGET_SLOTS) -> dict[str, Any]:
    """DDQN's share of the random-to-oracle gap after ``slots`` training slots, on one core."""
    pc = scn.paper
    model = {**pc.reading_model(scn.model, reading).to_dict(), "n_users": TARGET_USERS}
    learner = {**scn.learner.to_dict(), "torch_threads": 1}
    jobs = [job(reading, "bench", algo, algo, TARGET_USERS, s, model, learner, slots, pc.eval_slots,
                conv_window=pc.convergence_window, conv_tol=pc.convergence_tolerance)
            for algo in ("ddqn", "dqn", "greedy", "random", "oracle") for s in range(seeds)]
    res = execute(jobs, None, engine="pool", workers=1, desc=f"bench {reading}")       # in-process: one core
    if res.failed:
        raise RuntimeError(f"bench runs failed: {res.failed}")
    u: dict[str, dict[int, float]] = {}
    secs: list[float] = []
    for r in res.rows:
        u.setdefault(r["algo"], {})[r["seed"]] = r["avg_utility"]
        if r["algo"] == "ddqn":
            secs.append(r["train_seconds"])
    mean = {a: float(np.mean(list(v.values()))) for a, v in u.items()}
    span = mean["oracle"] - mean["random"]
    gap = {a: (mean[a] - mean["random"]) / span for a in ("ddqn", "dqn", "greedy")}
    per_seed = [(u["ddqn"][s] - u["random"][s]) / (u["oracle"][s] - u["random"][s]) for s in sorted(u["ddqn"])]
    return {"users": TARGET_USERS, "train_slots": slots, "seeds": seeds, "eval_slots": pc.eval_slots,
            "gap_closed": round(gap["ddqn"], 4), "gap_closed_per_seed": [round(v, 4) for v in per_seed],
            "dqn_gap_closed": round(gap["dqn"], 4), "greedy_gap_closed": round(gap["greedy"], 4),
            "oracle_minus_random": round(span, 4), "utility": {a: round(v, 4) for a, v in mean.items()},
            "train_seconds_mean": round(float(np.mean(secs)), 2), "train_seconds_max": round(float(np.max(secs)), 2),
            "meets_gap": gap["ddqn"] >= TARGET_GAP, "meets_time": float(np.max(secs)) < TARGET_SECONDS}


def bench(scn) -> dict:
    """The JSON of ``make bench-agent``: speed at U = 30 and 100, and the learner target per reading."""
    out: dict[str, Any] = {"torch_threads": scn.learner.torch_threads, "cpus": os.cpu_count(),
                           "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
                           "target": {"gap_closed": TARGET_GAP, "train_seconds": TARGET_SECONDS,
                                      "users": TARGET_USERS, "train_slots": TARGET_SLOTS}}
    for users in (30, 100):
        out[f"speed_M{scn.model.n_servers}_U{users}"] = speed(scn, users)
    readings = [scn.paper.default_reading] + [r for r in scn.paper.readings if r != scn.paper.default_reading]
    out["learner_target"] = {r: learner_target(scn, r) for r in readings}
    d = out["learner_target"][scn.paper.default_reading]
    out["ddqn_gap_closed"] = d["gap_closed"]              # the headline score, the scenario's default reading
    out["ddqn_train_seconds"] = d["train_seconds_max"]
    out["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return out
