"""A generic RL library trains on the environment as it is: Stable-Baselines3 PPO on MecChain-v0."""
import gymnasium as gym
import numpy as np
import pytest

import agent  # noqa: F401  (registers MecChain-v0)
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
