"""Configuration of the paper's model, of the learners and of the paper's experiments.

Three keyword-only dataclasses with plain-typed fields, so that a TOML scenario can build
them directly (``ModelConfig(**toml["model"])``); ``scenario.config`` composes them into a
Scenario under the sections ``[model]``, ``[learner]`` and ``[paper]``. Every field is checked
in ``__post_init__`` and a bad value raises :class:`ConfigError` naming the field.

Symbols are the paper's (Nguyen et al., blockchain-empowered MEC with double DQN); units
are in the field comments. Defaults are Table I where Table I has a value; every other default
is a reading explained in ``docs/model.md``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


from base.errors import ConfigError  # noqa: E402  (the lab's one configuration error)


def _range(section: str, name: str, value, lo_min: float, strict: bool = False) -> tuple[float, float]:
    """Validate a [lo, hi] pair (TOML gives lists) and return it as a tuple of floats."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{name} must be a pair [lo, hi], got {value!r}") from None
    if not (lo > lo_min if strict else lo >= lo_min) or hi < lo:
        bound = f"lo {'>' if strict else '>='} {lo_min:g}"
        raise ConfigError(f"{section}.{name} must be a pair [lo, hi] with {bound} and hi >= lo, got {value!r}")
    return lo, hi


def _positive(section: str, obj, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise ConfigError(f"{section}.{name} must be a number, got {v!r}")
        if v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"{section}.{name} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


def _integer(section: str, obj, name: str, minimum: int) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{section}.{name} must be an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(f"{section}.{name} must be >= {minimum}, got {v}")


class _TomlMixin:
    @classmethod
    def from_dict(cls, values: dict[str, Any] | None):
        """Build from a TOML table; unknown keys are an error naming them."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(f'{cls._section}.{k}' for k in unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEMAND_READINGS = ("total", "per_mb")
#: Every decision maker's name (agent.registry.AGENTS builds them). Here, without importing the
#: learners, so that checking a scenario does not load torch (~540 MB in each process).
AGENT_NAMES = ("ddqn", "dqn", "qlearning", "ga", "greedy", "random", "oracle")


@dataclass(kw_only=True)
class ModelConfig(_TomlMixin):
    """The system model of the paper (sections III-IV, Table I) plus the readings we chose.

    M MEC servers (miners) serve U UEs in discrete time slots. Per slot each server executes
    at most one task and gets a hash-power level p_m; see docs/model.md for every equation.
    """
    _section = "model"

    n_servers: int = 10                                   # M
    n_users: int = 20                                     # U (Table I: 5-30; up to 100)
    data_mb_range: tuple[float, float] = (1.0, 5.0)       # d_u, MB (Table I)
    demand_gcycles_range: tuple[float, float] = (0.6, 1.6)  # ξ_u (Table I): Gcycles of the task, or per MB (demand_reading)
    demand_reading: str = "total"                         # "total": task needs ξ_u Gcycles; "per_mb": d_u·ξ_u Gcycles
    desired_time_s_range: tuple[float, float] = (0.5, 2.0)  # τ_u, s (not in Table I)
    cpu_ghz: float = 5.0                                  # f_m, GHz = Gcycles/s (Table I)
    unit_price: float = 0.15                              # µ, token per Gcycle of demand ξ_u (Table I); φ_u = µ·ξ_u
    hash_levels_mhs: tuple[float, ...] = (20.0, 40.0, 60.0, 80.0, 100.0)  # allowed p_m, MHash/s (Table I range)
    hash_budget_mhs: float = 600.0                        # Σ_m p_m <= budget, MHash/s
    network_hash_mhs: float = 1000.0                      # H, total hash power of the chain, MHash/s
    block_kb: float = 5.0                                 # b_m, KB (Table I: 1-10), same for every server
    mining_reward: float = 30.0                           # R, token (Table I)
    fee_per_kb: float = 0.0                               # r, token/KB: reward R + r·b (0 = eq. (6) as printed)
    eta_per_s: float = 1.0 / 600.0                        # η, 1/s (paper: 1/600 s)
    prop_base_s: float = 0.0                              # φ(b) = prop_base_s + prop_s_per_kb·b, s
    prop_s_per_kb: float = 0.08                           # s/KB (Decker & Wattenhofer's ~80 ms/KB)
    cpu_per_mhs: float = 0.0                              # κ, GHz of task capacity used per MHash/s mined (0: not in the paper)
    latency_weight: float = 1.0                           # w, token per second of latency in (11)
    reputation_window: int = 10                           # W, slots in the sliding window of (3)
    max_wait_slots: int = 10                              # a task waiting this long is dropped
    arrival_prob: float = 1.0                             # P(new task) per slot for a UE without one
    slot_s: float = 3.0                                   # slot length, s (>= longest execution)
    horizon_slots: int = 200                              # episode length T of (11), slots

    def __post_init__(self):
        s = self._section
        _integer(s, self, "n_servers", 1)
        _integer(s, self, "n_users", 1)
        self.data_mb_range = _range(s, "data_mb_range", self.data_mb_range, 0.0, strict=True)
        self.demand_gcycles_range = _range(s, "demand_gcycles_range", self.demand_gcycles_range, 0.0, strict=True)
        self.desired_time_s_range = _range(s, "desired_time_s_range", self.desired_time_s_range, 0.0, strict=True)
        if self.demand_reading not in DEMAND_READINGS:
            raise ConfigError(f"{s}.demand_reading must be one of {', '.join(DEMAND_READINGS)}, got {self.demand_reading!r}")
        _positive(s, self, "cpu_ghz", "unit_price", "hash_budget_mhs", "network_hash_mhs", "block_kb",
                  "slot_s", allow_zero=False)
        _positive(s, self, "mining_reward", "fee_per_kb", "eta_per_s", "prop_base_s", "prop_s_per_kb",
                  "cpu_per_mhs", "latency_weight", allow_zero=True)
        try:
            levels = tuple(float(v) for v in self.hash_levels_mhs)
        except (TypeError, ValueError):
            raise ConfigError(f"{s}.hash_levels_mhs must be a list of numbers, got {self.hash_levels_mhs!r}") from None
        if not levels or any(v <= 0 for v in levels) or list(levels) != sorted(set(levels)):
            raise ConfigError(f"{s}.hash_levels_mhs must be positive and strictly increasing, got {self.hash_levels_mhs!r}")
        self.hash_levels_mhs = levels
        # Every server mines at least the lowest level (Table I's range starts at 20 MHash/s).
        need = self.n_servers * levels[0]
        if self.hash_budget_mhs < need:
            raise ConfigError(f"{s}.hash_budget_mhs = {self.hash_budget_mhs} is below the minimum hash level "
                              f"for all servers (n_servers x hash_levels_mhs[0] = {need})")
        if self.network_hash_mhs < self.hash_budget_mhs:
            raise ConfigError(f"{s}.network_hash_mhs = {self.network_hash_mhs} must be >= hash_budget_mhs = "
                              f"{self.hash_budget_mhs} (the MEC servers are part of the network, Σ µ_m <= 1)")
        if self.cpu_per_mhs * levels[-1] >= self.cpu_ghz:
            raise ConfigError(f"{s}.cpu_per_mhs = {self.cpu_per_mhs} GHz per MHash/s leaves no CPU for tasks at the "
                              f"top hash level {levels[-1]} MHash/s (cpu_ghz = {self.cpu_ghz})")
        _integer(s, self, "reputation_window", 1)
        _integer(s, self, "max_wait_slots", 1)
        _integer(s, self, "horizon_slots", 1)
        if not 0.0 < self.arrival_prob <= 1.0:
            raise ConfigError(f"{s}.arrival_prob must be in (0, 1], got {self.arrival_prob!r}")
        if self.max_execution_s > self.slot_s:
            raise ConfigError(f"{s}.slot_s = {self.slot_s} s is shorter than the longest execution time "
                              f"{self.max_execution_s:.3f} s (largest task on a server at the top hash level)")

    # Derived quantities used by the model, the agents and the validation above.
    @property
    def n_levels(self) -> int:
        return len(self.hash_levels_mhs)

    @property
    def max_execution_s(self) -> float:
        """Longest execution time of eq. (2): largest task, top hash level (s)."""
        cycles = task_gcycles(self, self.data_mb_range[1], self.demand_gcycles_range[1])
        return float(cycles) / (self.cpu_ghz - self.cpu_per_mhs * self.hash_levels_mhs[-1])

    @property
    def equal_hash_level(self) -> int:
        """Index of the largest level an equal split of the budget allows ("no resource allocation")."""
        share = self.hash_budget_mhs / self.n_servers
        return max(i for i, v in enumerate(self.hash_levels_mhs) if v <= share + 1e-9)


def task_gcycles(cfg: ModelConfig, data_mb, demand):
    """Total Gcycles of task R_u = (d_u, ξ_u, τ_u): the numerator of eq. (2).

    ``cfg.demand_reading == "total"``: ξ_u is "the number of CPU cycles of the task" (the
    paper's words, Table I in Gcycles), so the task needs ξ_u Gcycles and d_u does not enter.
    ``"per_mb"``: ξ_u is Gcycles per MB of data, as the product d_u·ξ_u of eq. (2) implies.
    The one place where the two readings differ: eq. (2), the oracle, the environment, the
    genetic algorithm and the live testbed's unit conversion all call this (floats here, in the
    host programs without numpy; arrays through :func:`agent.model.task_gcycles`).
    """
    return data_mb * demand if cfg.demand_reading == "per_mb" else demand


@dataclass(kw_only=True)
class LearnerConfig(_TomlMixin):
    """Hyper-parameters of every learner and baseline, in one place (CleanRL style)."""
    _section = "learner"

    gamma: float = 0.85                      # γ (paper)
    lr: float = 3e-3                         # Adam learning rate (paper: 0.01; tuned, see docs/model.md)
    batch_size: int = 128                    # paper
    replay_size: int = 100_000               # paper: 10^5
    hidden: tuple[int, ...] = (64, 32, 32)   # paper's ReLU trunk
    head: str = "shared"                     # "shared": one scorer per (server, UE) pair; "flat": one linear layer
    pair_hidden: int = 32                    # width of the shared per-UE embedding ("shared" head)
    pair_rank: int = 8                       # rank of the server-UE interaction term ("shared" head)
    target_update_every: int = 50            # hard copy θ' <- θ every this many gradient steps
    learning_starts: int = 128               # transitions before the first update
    train_every: int = 4                     # slots per gradient step (Algorithm 1: 1; see docs/model.md §6)
    eps_start: float = 1.0                   # ε-greedy schedule, linear in slots
    eps_end: float = 0.02
    eps_decay_slots: int = 300
    grad_clip: float = 10.0                  # max gradient norm
    torch_threads: int = 1                   # per process; `paper` runs one process per core
    # Tabular Q-learning on discretised features
    q_alpha: float = 0.1
    q_bins: int = 4                          # bins per UE feature (ξ_u, d_u) and for Υ_m
    # Genetic algorithm: population x generations evaluations of (11) per slot
    ga_population: int = 20
    ga_generations: int = 10
    ga_mutation: float = 0.2

    def __post_init__(self):
        s = self._section
        if not 0.0 <= self.gamma < 1.0:
            raise ConfigError(f"{s}.gamma must be in [0, 1), got {self.gamma!r}")
        _positive(s, self, "lr", "grad_clip", "q_alpha")
        for name in ("batch_size", "replay_size", "target_update_every", "train_every", "eps_decay_slots",
                     "torch_threads", "q_bins", "ga_population", "ga_generations", "pair_hidden",
                     "pair_rank"):
            _integer(s, self, name, 1)
        _integer(s, self, "learning_starts", 0)
        if self.replay_size < self.batch_size:
            raise ConfigError(f"{s}.replay_size = {self.replay_size} must be >= batch_size = {self.batch_size}")
        try:
            self.hidden = tuple(int(h) for h in self.hidden)
        except (TypeError, ValueError):
            raise ConfigError(f"{s}.hidden must be a list of layer widths, got {self.hidden!r}") from None
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"{s}.hidden must be non-empty positive widths, got {self.hidden!r}")
        if self.head not in ("shared", "flat"):
            raise ConfigError(f"{s}.head must be 'shared' or 'flat', got {self.head!r}")
        for name in ("eps_start", "eps_end", "ga_mutation"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{s}.{name} must be in [0, 1], got {v!r}")
        if self.eps_end > self.eps_start:
            raise ConfigError(f"{s}.eps_end = {self.eps_end} must be <= eps_start = {self.eps_start}")


# The readings `make paper` runs by default: the two units of ξ x a latency weight above (w = 1)
# and below (w = 0.1) the threshold w* of Fig. 6 (docs/model.md §5). Each is a set of [model]
# fields laid over the scenario's [model]; the first is the paper scenario's own (closest to the
# paper's text). Names avoid dots so that `--set paper.readings.NAME.field=value` works.
DEFAULT_READINGS: dict[str, dict[str, Any]] = {
    "total_w1": {"demand_reading": "total", "latency_weight": 1.0},
    "total_w01": {"demand_reading": "total", "latency_weight": 0.1},
    "per_mb_w1": {"demand_reading": "per_mb", "latency_weight": 1.0},
    "per_mb_w01": {"demand_reading": "per_mb", "latency_weight": 0.1},
}


@dataclass(kw_only=True)
class PaperConfig(_TomlMixin):
    """Sizes of the experiments of `make paper` (Figs. 4-7, Table II) and the readings they run under."""
    _section = "paper"

    seeds: int = 5
    jobs: int = 2                                         # worker processes / Ray CPUs on this machine
    fig4_slots: int = 2000
    fig4_users: int = 20
    train_slots: int = 2000                               # Figs. 5-7 / Table II: training (as Fig. 4), then ...
    eval_slots: int = 200                                 # ... frozen-policy evaluation
    users_grid: tuple[int, ...] = (5, 10, 20, 30)         # Fig. 5 (must hold 10, 20, 30 for Table II)
    demand_grid: tuple[float, ...] = (0.6, 1.0, 1.3, 1.6)  # Fig. 6, ξ in the unit of model.demand_reading
    block_grid: tuple[float, ...] = (1.0, 5.0, 10.0)      # Fig. 7, KB
    fee_reading_per_kb: float = 0.5                       # r of Fig. 7's fee reading (every series), token/KB
    convergence_window: int = 100                         # moving average (slots)
    convergence_tolerance: float = 0.05                   # within 5 % of the final value
    # name -> [model] fields laid over the scenario's [model]; every figure runs under each.
    readings: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_READINGS.items()})
    default_reading: str = "total_w1"                     # the reading closest to the paper's text

    def __post_init__(self):
        s = self._section
        for name in ("seeds", "jobs", "fig4_slots", "fig4_users", "train_slots", "eval_slots", "convergence_window"):
            _integer(s, self, name, 1)
        if self.seeds < 2:
            raise ConfigError(f"{s}.seeds must be >= 2 for a 95% interval, got {self.seeds}")
        self.users_grid = tuple(int(v) for v in self.users_grid)
        self.demand_grid = tuple(float(v) for v in self.demand_grid)
        self.block_grid = tuple(float(v) for v in self.block_grid)
        for name in ("users_grid", "demand_grid", "block_grid"):
            if not getattr(self, name) or min(getattr(self, name)) <= 0:
                raise ConfigError(f"{s}.{name} must be a non-empty list of positive values")
        _positive(s, self, "fee_reading_per_kb", allow_zero=True)
        if not 0 < self.convergence_tolerance < 1:
            raise ConfigError(f"{s}.convergence_tolerance must be in (0, 1), got {self.convergence_tolerance}")
        if not isinstance(self.readings, dict) or not self.readings:
            raise ConfigError(f"{s}.readings must be a non-empty table of name = {{model field = value}}, "
                              f"got {self.readings!r}")
        known = {f.name for f in fields(ModelConfig)}
        for name, over in self.readings.items():
            if not isinstance(over, dict):
                raise ConfigError(f"{s}.readings.{name} must be a table of [model] fields, got {over!r}")
            unknown = sorted(set(over) - known)
            if unknown:
                raise ConfigError(f"{s}.readings.{name}: unknown [model] field(s) {', '.join(unknown)}")
        if self.default_reading not in self.readings:
            raise ConfigError(f"{s}.default_reading must be one of paper.readings ({', '.join(self.readings)}), "
                              f"got {self.default_reading!r}")

    def reading_model(self, base: ModelConfig, name: str) -> ModelConfig:
        """The scenario's [model] with reading ``name`` laid over it."""
        try:
            return ModelConfig.from_dict({**base.to_dict(), **self.readings[name]})
        except ConfigError as e:
            raise ConfigError(f"{self._section}.readings.{name} over [model]: {e}") from None
