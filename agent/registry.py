"""Every decision maker by name, built from the scenario's sections, and saved agents read back.

    from agent.registry import AGENTS, make_agent, load_agent
    agent = make_agent("ddqn", scn.model, scn.learner, seed=0)
    ...train...
    agent.save("ddqn.pt")                  # name, variant, [model], [learner], weights
    agent = load_agent("ddqn.pt")          # the same policy, ready to act (e.g. on the live testbed)

Fig. 7's ablations are *variants* of the DQN family: ``"no_ra_equal"`` (no resource
allocation: every server at the equal split of the budget), ``"no_ra_random"`` (no resource
allocation as the paper's prior practice: random hash levels, repaired to the budget) and
``"no_us"`` (no user selection: random UEs).
"""
from __future__ import annotations

from pathlib import Path

from agent.baselines import GAAgent, GreedyAgent, RandomAgent
from agent.config import AGENT_NAMES, LearnerConfig, ModelConfig
from agent.learners import DDQNAgent, DQNAgent, QLearningAgent
from agent.learners.base import FILE_FORMAT, FILE_VERSION, Agent
from agent.oracle import OracleAgent

AGENTS: dict[str, type[Agent]] = {
    "ddqn": DDQNAgent, "dqn": DQNAgent, "qlearning": QLearningAgent,
    "ga": GAAgent, "greedy": GreedyAgent, "random": RandomAgent, "oracle": OracleAgent,
}
assert tuple(AGENTS) == AGENT_NAMES, "agent.config.AGENT_NAMES must list agent.registry.AGENTS"
LEARNERS = tuple(name for name, cls in AGENTS.items() if cls.trains)      # ddqn, dqn, qlearning
# variant -> (user_mode, hash_mode) of the DQN family
VARIANTS = {"full": ("learned", "learned"), "no_ra_equal": ("learned", "equal"),
            "no_ra_random": ("learned", "random"), "no_us": ("random", "learned")}


def make_agent(name: str, model_cfg: ModelConfig, learner_cfg: LearnerConfig | None = None, seed: int = 0,
               variant: str = "full") -> Agent:
    """A fresh agent ``name`` (a key of :data:`AGENTS`) for the system ``model_cfg``."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; known: {', '.join(AGENTS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    cls = AGENTS[name]
    if issubclass(cls, DQNAgent):
        user_mode, hash_mode = VARIANTS[variant]
        return cls(model_cfg, learner_cfg, seed=seed, user_mode=user_mode, hash_mode=hash_mode)
    if variant != "full":
        raise ValueError(f"variant {variant!r} exists only for ddqn and dqn, not {name!r}")
    return cls(model_cfg, learner_cfg, seed=seed)


def load_agent(path: str | Path) -> Agent:
    """Read a file written by ``Agent.save``: the same agent, configuration and learnt state."""
    import torch
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not a saved MEC-chain agent (no format {FILE_FORMAT!r})")
    if data.get("version") != FILE_VERSION:
        raise ValueError(f"{path}: saved with format version {data.get('version')}, this code reads {FILE_VERSION}")
    agent = make_agent(data["agent"], ModelConfig.from_dict(data["model"]), LearnerConfig.from_dict(data["learner"]),
                       seed=int(data["seed"]), variant=data["variant"])
    agent.load_state(data["state"])
    return agent
