"""The one loop that runs an agent slot after slot, on the simulated or the live environment.

    from agent.train import run_slots
    out = run_slots(agent, MecChainEnv(cfg), 2000, seed=0)                   # train in simulation
    out = run_slots(agent, LiveEnv(lab_json, token), 30, explore=False,      # the live testbed,
                    learn=True)                                              # fine-tuning online

Each slot: observe, ``act`` (timed: the decision latency), ``env.step``, ``learn`` from the
transition when the agent trains and ``learn`` is set. The environment only needs Gymnasium's
interface and ``info["server_utility"]`` (the M per-server terms of eq. (11)); a simulated
episode that ends is reset with the next seed, a live one never ends.
"""
from __future__ import annotations

import time
from typing import Callable

from agent.learners.base import Agent, Transition


def run_slots(agent: Agent, env, slots: int, *, seed: int | None = None, explore: bool = True,
              learn: bool = True, on_slot: Callable[[int, dict], None] | None = None,
              stop: Callable[[], bool] | None = None) -> dict:
    """Run ``slots`` slots; returns the utility per slot (``curve``), the wall clock after each
    slot (``clock``, s), each decision's latency (``decision_ms``), the learner's loss and mean
    Q-value of each slot's update (``loss``, ``q_mean``: None where it did not update), the
    seconds in all and the slots per second (``steps_per_s``).
    ``on_slot(k, record)`` sees each slot's obs, action, reward, info and decision latency;
    ``stop()`` true ends the run after the current slot."""
    learn = learn and agent.trains
    obs, _ = env.reset(seed=seed)
    curve, clock, decision_ms, loss, q_mean = [], [], [], [], []
    episode = 0
    t0 = time.perf_counter()
    for k in range(slots):
        t_act, c_act = time.perf_counter(), time.thread_time()
        action = agent.act(obs, explore=explore)
        decision_ms.append((time.perf_counter() - t_act) * 1e3)
        cpu_ms = (time.thread_time() - c_act) * 1e3       # the same, less waiting for a CPU
        nxt, reward, term, trunc, info = env.step(action)
        got = None
        if learn:
            got = agent.learn(Transition(obs, action, reward, info["server_utility"],
                                         nxt, term, trunc))
        loss.append((got or {}).get("loss"))
        q_mean.append((got or {}).get("q"))
        curve.append(reward)
        clock.append(time.perf_counter() - t0)
        if on_slot is not None:
            on_slot(k, {"obs": obs, "action": action, "reward": reward, "info": info,
                        "decision_ms": decision_ms[-1], "decision_cpu_ms": cpu_ms})
        obs = nxt
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=None if seed is None else seed * 1000 + episode)
        if stop is not None and stop():
            break
    seconds = time.perf_counter() - t0
    return {"curve": curve, "clock": clock, "decision_ms": decision_ms, "loss": loss, "q_mean": q_mean,
            "seconds": seconds, "steps_per_s": len(curve) / seconds if seconds > 0 else None}
