"""Learners: Double DQN (the paper's), classic DQN and tabular Q-learning.

``agent.learners.base`` (the :class:`Agent` interface the baselines and the oracle share) loads
no torch; the torch learners load it when first named here or imported from
``agent.learners.dqn``."""
import importlib

from agent.learners.base import Agent, Transition

__all__ = ["Agent", "Transition", "DDQNAgent", "DQNAgent", "QNetwork", "q_target", "QLearningAgent"]

_LAZY = {"DDQNAgent": "dqn", "DQNAgent": "dqn", "QNetwork": "dqn", "q_target": "dqn", "QLearningAgent": "qlearning"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"agent.learners.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'agent.learners' has no attribute {name!r}")
