"""Learners: Double DQN (the paper's), classic DQN and tabular Q-learning."""
from agent.learners.base import Agent, Transition
from agent.learners.dqn import DDQNAgent, DQNAgent, QNetwork, q_target
from agent.learners.qlearning import QLearningAgent

__all__ = ["Agent", "Transition", "DDQNAgent", "DQNAgent", "QNetwork", "q_target", "QLearningAgent"]
