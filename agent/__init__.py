"""The paper's model, its Gymnasium environment, the learners, the baselines and the experiments.

- :mod:`agent.config`: ModelConfig, LearnerConfig, PaperConfig (TOML sections [model] [learner] [paper])
- :mod:`agent.model`: eqs. (1)-(6), (11) as pure numpy functions (reused by the live testbed)
- :mod:`agent.env`: ``MecChainEnv``, the system as a ``gymnasium.Env``
- :mod:`agent.learners`: Double DQN, classic DQN, tabular Q-learning
- :mod:`agent.baselines`, :mod:`agent.oracle`: random, greedy, genetic algorithm, one-slot oracle
- :mod:`agent.experiments`: ``python -m agent paper`` (Figs. 4-7, Table II) and ``python -m agent bench``
"""
from agent.config import ConfigError, LearnerConfig, ModelConfig, PaperConfig
from agent.env import MecChainEnv

__all__ = ["ConfigError", "LearnerConfig", "ModelConfig", "PaperConfig", "MecChainEnv"]
