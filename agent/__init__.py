"""The paper's model, its Gymnasium environment, the learners and the baselines.

- :mod:`agent.config`: ModelConfig, LearnerConfig, PaperConfig (scenario sections [model] [learner] [paper])
- :mod:`agent.model`: eqs. (1)-(6), (11) as pure numpy functions (reused by the live testbed)
- :mod:`agent.env`: ``MecChainEnv``, the system as a ``gymnasium.Env``, registered as ``"MecChain-v0"``
- :mod:`agent.learners`: Double DQN, classic DQN, tabular Q-learning
- :mod:`agent.baselines`, :mod:`agent.oracle`: random, greedy, genetic algorithm, one-slot oracle
- :mod:`agent.registry`: every agent by name (``make_agent``), saved agents read back (``load_agent``)

The experiments that use them (``python -m testbed paper|sweep|bench-agent``) are in
:mod:`testbed.experiments`.

Importing ``agent`` (or ``agent.model``, the equations the host programs use) does not load
Gymnasium; ``import agent.env`` registers ``MecChain-v0`` (``gymnasium.make("agent.env:MecChain-v0")``
imports it for you), and ``agent.MecChainEnv`` loads it on first use.
"""
from agent.config import ConfigError, LearnerConfig, ModelConfig, PaperConfig

__all__ = ["ConfigError", "LearnerConfig", "ModelConfig", "PaperConfig", "MecChainEnv", "ENV_ID"]


def __getattr__(name: str):
    if name in ("MecChainEnv", "ENV_ID"):
        from agent import env
        return getattr(env, name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
