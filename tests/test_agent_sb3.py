"""A generic RL library trains on the environment as it is: Stable-Baselines3 PPO on MecChain-v0."""
import gymnasium as gym
import numpy as np
import pytest

import agent.env  # noqa: F401  (registers MecChain-v0)
from agent.config import ModelConfig

sb3 = pytest.importorskip("stable_baselines3")


def test_sb3_ppo_trains_and_evaluates_on_the_registered_env():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    cfg = ModelConfig(n_servers=4, n_users=8, hash_budget_mhs=240.0, horizon_slots=50)
    env = gym.make("MecChain-v0", cfg=cfg, repair=True)
    check_env(env, warn=True, skip_render_check=True)                               # SB3's own checker
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=384)
    assert model.num_timesteps >= 384
    eval_env = Monitor(gym.make("MecChain-v0", cfg=cfg, repair=True))
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=2, deterministic=True)
    # a slot's utility is about 4 x 1.8 token of mining minus latency: an episode of 50 slots is positive
    assert np.isfinite(mean) and mean > 0
    action, _ = model.predict(eval_env.reset(seed=0)[0], deterministic=True)
    assert action.shape == (2 * cfg.n_servers,) and eval_env.action_space.contains(action)


def test_evaluate_scores_a_ppo_model_and_the_ddqn_on_the_same_stream():
    """``agent.evaluate`` takes any policy: a Stable-Baselines3 PPO model (``predict``) and the
    project's DDQN (``act``) are scored on the same stream; one policy given as an agent or as a
    plain callable gets the very same numbers; an action outside the action space is refused
    by name."""
    from stable_baselines3 import PPO

    from agent.config import LearnerConfig
    from agent.evaluate import evaluate
    from agent.registry import make_agent

    cfg = ModelConfig(n_servers=4, n_users=8, hash_budget_mhs=240.0, horizon_slots=50)
    ppo = PPO("MlpPolicy", gym.make("MecChain-v0", cfg=cfg, repair=True), n_steps=64, batch_size=32,
              n_epochs=1, seed=0, device="cpu", verbose=0)
    ppo.learn(total_timesteps=64)
    ddqn = make_agent("ddqn", cfg, LearnerConfig(), seed=0)
    a = evaluate(ppo, cfg, seed=3, slots=60, repair=True)
    b = evaluate(ddqn, cfg, seed=3, slots=60)
    for r in (a, b):
        assert r["slots"] == 60 and np.isfinite(r["avg_utility"]) and r["decision_ms_p99"] > 0
    greedy = make_agent("greedy", cfg, LearnerConfig(), seed=0)
    x = evaluate(greedy, cfg, seed=3, slots=60)                                  # act(obs, explore)
    y = evaluate(lambda obs: greedy.act(obs, explore=False).reshape(2, -1), cfg, seed=3, slots=60)   # a callable, (2, M)
    assert x["avg_utility"] == y["avg_utility"] and x["served_gcycles"] == y["served_gcycles"]
    with pytest.raises(ValueError, match="not in the env's action space"):
        evaluate(lambda obs: np.full(2 * cfg.n_servers, 99), cfg, seed=3, slots=1)
