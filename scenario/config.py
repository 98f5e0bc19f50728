"""The one configuration object: a :class:`Scenario` loaded from a TOML file.

Every command of the lab (``python -m testbed VERB --scenario NAME --set a.b=value``) gets all
its settings from here; no part reads a file, an environment variable or a global of its own.
A scenario file has one table per part; each part owns the dataclass of its table and checks
its own fields::

    name = "lab"
    seed = 0

    [model]            # agent.config.ModelConfig: the paper's system (M, U, ξ_u, µ, p_m, ...)
    n_servers = 10
    [chain]            # chain.config.ChainConfig: the geth miners
    genesis_difficulty = 524288
    [network]          # topologies.config.NetworkConfig: Mininet, OVS, os-ken

**One name, one number.** A quantity that two parts both need is set in one place and copied
to the other when the scenario is loaded (:data:`LINKED`): the number of MEC servers M is
``model.n_servers`` (the chain's node count and the topology's MEC hosts follow it), the number
of UEs U is ``model.n_users`` (the chain funds exactly those UEs), the unit price µ is
``model.unit_price`` in token/Gcycle (the contract's wei/Gcycle is converted from it by
:mod:`scenario.units`). Setting the copy to another value is refused with a message naming both
fields.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from base.errors import ConfigError, is_int, is_number, require
from scenario.units import token_to_wei

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"

__all__ = ["ConfigError", "Scenario", "load_scenario", "SECTIONS", "ROOT", "SCENARIOS"]


@dataclass(kw_only=True)
class MiningCheckConfig:
    """``testbed mining-check``: do miners win blocks in proportion to their hash budget?
    One node per entry of ``ratio``, so ``len(ratio)`` must equal ``model.n_servers``."""
    ratio: tuple[int, ...] = (1, 2, 4)   # hash budgets, relative
    mode: str = "both"                   # "cpu_quota", "threads" or "both" (quota first)
    blocks: int = 150                    # canonical blocks measured per mode
    warmup_s: float = 15.0               # mining before the measurement starts, s
    cores: float = 1.4                   # cpu_quota mode: cores shared out by the ratio
    max_minutes: float = 20.0            # give up a mode after this long

    def __post_init__(self):
        try:
            self.ratio = tuple(int(r) for r in self.ratio)
        except (TypeError, ValueError):
            raise ConfigError(f"mining.ratio must be a list of positive integers, got {self.ratio!r}") from None
        require(len(self.ratio) >= 2 and min(self.ratio) >= 1, "mining.ratio",
                ">= 2 positive integers like [1, 2, 4]", list(self.ratio))
        require(self.mode in ("cpu_quota", "threads", "both"), "mining.mode",
                "cpu_quota, threads or both", self.mode)
        require(is_int(self.blocks) and self.blocks >= 1, "mining.blocks", ">= 1", self.blocks)
        require(is_number(self.warmup_s) and self.warmup_s >= 0, "mining.warmup_s", ">= 0 s", self.warmup_s)
        require(is_number(self.cores) and self.cores > 0, "mining.cores", "> 0 cores", self.cores)
        require(is_number(self.max_minutes) and self.max_minutes > 0, "mining.max_minutes", "> 0",
                self.max_minutes)


@dataclass(kw_only=True)
class BenchChainConfig:
    """``testbed bench-chain``: start-up of ``model.n_servers`` miners, a budget change."""
    settle_s: float = 10.0               # mining before memory is read, s
    budget_steps: tuple[int, ...] = (1, 0, 1, 2, 1)   # thread budgets applied in turn
    step_s: float = 25.0                 # seconds per budget step (>= 3 geth hashrate ticks)
    dag_run_s: float = 60.0              # dag: seconds each node profile mines

    def __post_init__(self):
        require(is_number(self.settle_s) and self.settle_s >= 0, "bench_chain.settle_s", ">= 0",
                self.settle_s)
        self.budget_steps = tuple(int(b) for b in self.budget_steps)
        require(len(self.budget_steps) >= 2, "bench_chain.budget_steps", ">= 2 steps",
                self.budget_steps)
        require(is_number(self.step_s) and self.step_s >= 5, "bench_chain.step_s",
                ">= 5 s (one hashrate tick)", self.step_s)


@dataclass(kw_only=True)
class CalibrateConfig:
    """``testbed calibrate``: how long each measurement of this machine runs."""
    kernel_seconds: float = 3.0          # work kernel, per measurement, s
    # geth CPU quotas measured, cores: the lab's miners run at a few hundredths of a core, where
    # geth's fixed work (block import, networking, GC) takes a large share, so the rate per core
    # is measured there and not extrapolated from a large quota
    hash_quotas: tuple[float, ...] = (0.04, 0.08, 0.16, 0.3)
    hash_seconds: float = 40.0           # all quotas at once, one node each: 8 hashrate ticks, the first dropped, s
    out: str = "results/calibration.json"

    def __post_init__(self):
        require(is_number(self.kernel_seconds) and self.kernel_seconds > 0, "calibrate.kernel_seconds",
                "> 0 s", self.kernel_seconds)
        self.hash_quotas = tuple(float(q) for q in self.hash_quotas)
        require(len(self.hash_quotas) >= 1 and min(self.hash_quotas) >= 0.01, "calibrate.hash_quotas",
                "cores >= 0.01", self.hash_quotas)
        require(is_number(self.hash_seconds) and self.hash_seconds >= 11, "calibrate.hash_seconds",
                ">= 11 s (two geth hashrate ticks)", self.hash_seconds)


@dataclass(kw_only=True)
class LabConfig:
    """The live lab (``testbed run``): how the model's system becomes processes on the
    emulated network. M, U, the slot length and the task distributions are the model's
    (``model.n_servers``, ``model.n_users``, ``model.slot_s``, Table I's ranges)."""
    slots: int = 30                      # time slots of a run
    policy: str = "greedy"               # who decides each slot: round_robin, greedy, agent:NAME,
                                         # file:PATH (testbed/policy.py)
    reputation_floor: float = 0.3        # greedy: no UE for a server below this x the best Υ_m
    learn_online: bool = False           # a learning agent keeps learning from the live slots
    mining_cores: float = 0.8            # CPU cores that the whole hash budget P stands for
    host_cores: float = 0.2              # one MEC host's CPU quota, f_m with no mining (cores)
    coupling: str = "shared"             # "shared": miner and executor share the host's quota (κ);
                                         # "separate": the executor keeps host_cores for itself
    executor_port: int = 7000            # TCP port of every MEC executor
    api_port: int = 8080                 # the controller's HTTP API on lab0
    max_upload_mb: float = 8.0           # an executor refuses a bigger upload
    header_timeout_s: float = 10.0       # a client that sends no request within this is dropped
    dishonest: tuple[str, ...] = ()      # MEC servers whose executor fakes results (fault injection)
    calibration: str = "results/calibration.json"
    drain_s: float = 150.0               # after the last slot: wait this long for tasks to settle
    block_interval_s: float = 2.5        # chain.outside = "none" only: the starting difficulty is set
                                         # for this mean block interval at the initial budgets (calibrated)
    genesis_setup: bool = True           # deploy, registrations and the UEs' channels run on a scratch
                                         # chain and start the lab's chain as its genesis (testbed.chain_setup);
                                         # false: sent on the lab's chain and waited for, block by block
    max_mining_share: float = 0.7        # all miners (MEC + chain.outside = "miner") together at most
                                         # this share of the machine's cores: the switches, the
                                         # controller and the executors need the rest
    host_cores_by_server: dict = field(default_factory=dict)   # e.g. {mec2 = 0.08}: a slower host
    trickle_api: int = 0                 # load test (docs/security.md): slow connections to the API and
    trickle_executor: int = 0            # to each executor, from the UE containers (testbed.experiments.trickle)
    ue_cpu_cores: float = 0.25           # each UE container's limits: CPU (cores), memory, processes
    ue_memory_mb: int = 512
    ue_pids: int = 128
    api_read_deadline_s: float = 5.0     # the controller API: a request must be in within this
    api_max_connections: int = 256       # ... at most this many open (lab0's own not counted)
    api_per_client: int = 32             # ... and this many from one address
    monitor_period_s: float = 0.5        # the controller's monitor: port stats, latency probes, miners
    control_nice: int = -5               # the controller's and the policy loop's nice: the control
                                         # plane ahead of the emulated hosts (OVS's own ctl runs it at -10)
    mec_uid_base: int = 20000            # MEC host i's executor and miner run as uid/gid base + i, owning
                                         # its key and datadir only (docs/security.md); 0: as root

    def __post_init__(self):
        require(is_int(self.slots) and self.slots >= 1, "lab.slots", "an integer >= 1", self.slots)
        require(is_number(self.api_read_deadline_s) and 0 < self.api_read_deadline_s <= 60,
                "lab.api_read_deadline_s", "in (0, 60] s", self.api_read_deadline_s)
        require(is_number(self.ue_cpu_cores) and 0 < self.ue_cpu_cores <= 64, "lab.ue_cpu_cores",
                "in (0, 64] cores", self.ue_cpu_cores)
        require(is_int(self.ue_memory_mb) and self.ue_memory_mb >= 64, "lab.ue_memory_mb", "an integer >= 64",
                self.ue_memory_mb)
        require(is_int(self.ue_pids) and self.ue_pids >= 16, "lab.ue_pids", "an integer >= 16", self.ue_pids)
        for name in ("trickle_api", "trickle_executor"):
            v = getattr(self, name)
            require(is_int(v) and 0 <= v <= 2000, f"lab.{name}", "an integer in [0, 2000]", v)
        require(is_int(self.control_nice) and -20 <= self.control_nice <= 19, "lab.control_nice",
                "an integer in [-20, 19]", self.control_nice)
        require(is_int(self.mec_uid_base) and (self.mec_uid_base == 0 or 1000 <= self.mec_uid_base <= 2 ** 31 - 2 ** 20),
                "lab.mec_uid_base", "0 (as root) or an integer in [1000, 2^31 - 2^20]", self.mec_uid_base)
        for name in ("api_max_connections", "api_per_client"):
            v = getattr(self, name)
            require(is_int(v) and 1 <= v <= 10_000, f"lab.{name}", "an integer in [1, 10000]", v)
        require(isinstance(self.policy, str) and self.policy, "lab.policy", "a policy name", self.policy)
        for name in ("mining_cores", "host_cores", "max_upload_mb", "header_timeout_s", "drain_s",
                     "block_interval_s", "monitor_period_s"):
            v = getattr(self, name)
            require(is_number(v) and v > 0, f"lab.{name}", "> 0", v)
        require(self.coupling in ("shared", "separate"), "lab.coupling", "shared or separate", self.coupling)
        require(isinstance(self.genesis_setup, bool), "lab.genesis_setup", "true or false", self.genesis_setup)
        require(is_number(self.max_mining_share) and 0 < self.max_mining_share <= 1, "lab.max_mining_share",
                "in (0, 1]", self.max_mining_share)
        for name in ("executor_port", "api_port"):
            v = getattr(self, name)
            require(is_int(v) and 1024 <= v <= 65535, f"lab.{name}", "a TCP port >= 1024", v)
        self.dishonest = tuple(str(x) for x in self.dishonest)
        require(isinstance(self.host_cores_by_server, dict) and all(
            is_number(v) and v > 0 for v in self.host_cores_by_server.values()),
            "lab.host_cores_by_server", "a table of server name = cores > 0", self.host_cores_by_server)


@dataclass(kw_only=True)
class DemoConfig:
    """``make demo`` (``python -m testbed demo``): the scenario's live lab run once per policy,
    on the same seed, and one report comparing them."""
    policies: list[str] = field(default_factory=lambda: ["ddqn", "greedy"])
    # "ddqn": the saved DDQN of this model (``model`` below), trained in simulation first when
    # there is none; or any lab.policy (round_robin, greedy, agent:NAME, file:PATH)
    model: str = ""                      # a saved DDQN; "" = results/models/ddqn-<model digest>.pt
    train_slots: int = 3000              # simulated training slots when no saved DDQN exists
    slots: int = 0                       # slots per policy; 0 = lab.slots (the demo stays one screen
                                         # and ~10 minutes: `compare` gives verdicts over runs)

    def __post_init__(self):
        require(isinstance(self.policies, list) and self.policies and all(isinstance(p, str) and p
                                                                          for p in self.policies),
                "demo.policies", "a non-empty list of policy names", self.policies)
        require(is_int(self.train_slots) and self.train_slots >= 1, "demo.train_slots", "an integer >= 1",
                self.train_slots)
        require(is_int(self.slots) and self.slots >= 0, "demo.slots", "an integer >= 0 (0 = lab.slots)", self.slots)


@dataclass(kw_only=True)
class CompareConfig:
    """``python -m testbed compare``: each policy ``runs`` times on the live lab, in ABBA order,
    pair i on seed ``seed + i`` for both policies (the same task streams), and a verdict per
    utility term over the run means."""
    policies: list[str] = field(default_factory=lambda: ["ddqn", "greedy"])   # exactly two, as demo.policies
    runs: int = 3                        # runs per policy (>= 2: an interval needs two)
    slots: int = 0                       # slots per run; 0 = lab.slots

    def __post_init__(self):
        require(isinstance(self.policies, list) and len(self.policies) == 2 and all(
            isinstance(p, str) and p for p in self.policies) and self.policies[0] != self.policies[1],
            "compare.policies", "two different policy names", self.policies)
        require(is_int(self.runs) and self.runs >= 2, "compare.runs",
                "an integer >= 2 (an interval over run means needs two runs of each policy)", self.runs)
        require(is_int(self.slots) and self.slots >= 0, "compare.slots", "an integer >= 0 (0 = lab.slots)",
                self.slots)


@dataclass(kw_only=True)
class SweepConfig:
    """A sweep: every combination of scenario x reading x grid point x algorithm x seed.

    The ``[sweep]`` section of a scenario (``python -m testbed sweep --scenario sweeps/readings``)::

        [sweep]
        scenarios = ["paper"]                 # names in scenarios/ or paths; [] = this scenario itself
        readings = ["total_w1", "per_mb_w1"]  # names in each scenario's [paper.readings]; [] = all
        algos = ["ddqn", "dqn", "greedy", "random", "oracle"]
        seeds = [0, 1, 2, 3, 4]
        train_slots = 600                     # 0 = the scenario's paper.train_slots
        eval_slots = 200                      # 0 = the scenario's paper.eval_slots
        [sweep.grid]                          # [model] or [learner] fields crossed with each other
        "model.n_users" = [10, 20, 30]
        "learner.lr" = [0.003, 0.01]
    """
    scenarios: list[str] = field(default_factory=list)
    readings: list[str] = field(default_factory=list)
    algos: list[str] = field(default_factory=lambda: ["ddqn", "dqn", "greedy", "random", "oracle"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_slots: int = 0
    eval_slots: int = 0
    grid: dict = field(default_factory=dict)

    def __post_init__(self):
        s = "sweep"
        for name in ("scenarios", "readings", "algos", "seeds"):
            if not isinstance(getattr(self, name), list):
                raise ConfigError(f"{s}.{name} must be a list, got {getattr(self, name)!r}")
        bad = [a for a in self.algos if a not in AGENTS]
        if not self.algos or bad:
            raise ConfigError(f"{s}.algos must be names among {', '.join(AGENTS)}, got {self.algos!r}")
        if not self.seeds or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in self.seeds):
            raise ConfigError(f"{s}.seeds must be a non-empty list of integers >= 0, got {self.seeds!r}")
        for name in ("train_slots", "eval_slots"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{s}.{name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.grid, dict):
            raise ConfigError(f"{s}.grid must be a table of \"section.field\" = [values], got {self.grid!r}")
        for key, values in self.grid.items():
            section, dot, leaf = key.partition(".")
            if section not in ("model", "learner") or not dot or not leaf:
                raise ConfigError(f"{s}.grid key {key!r} must be \"model.FIELD\" or \"learner.FIELD\"")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{s}.grid.\"{key}\" must be a non-empty list, got {values!r}")


# Imported here: each part owns its section's dataclass (they import base.errors only).
from agent.config import AGENT_NAMES as AGENTS, LearnerConfig, ModelConfig, PaperConfig  # noqa: E402
from contracts.config import ContractConfig  # noqa: E402
from chain.config import ChainConfig  # noqa: E402
from topologies.config import ClusterConfig, NetworkConfig, TopologyConfig  # noqa: E402

#: Section name -> dataclass. Each class validates its own fields.
#: The model comes first: the chain's and the contract's linked fields are copied from it, so
#: a bad model value is reported as itself, not as its copy.
SECTIONS: dict[str, type] = {
    "model": ModelConfig, "topology": TopologyConfig, "network": NetworkConfig, "chain": ChainConfig,
    "contract": ContractConfig, "learner": LearnerConfig, "paper": PaperConfig,
    "mining": MiningCheckConfig, "bench_chain": BenchChainConfig, "calibrate": CalibrateConfig,
    "lab": LabConfig, "demo": DemoConfig, "compare": CompareConfig, "sweep": SweepConfig,
    "cluster": ClusterConfig,
}


#: Fields :meth:`Scenario.digest` leaves out: what the scenario is called and where its files go
#: (results, chain datadirs), and how many processes compute the paper's runs; none changes a number.
NOT_DIGESTED = ("name", "results_dir", "paper.jobs", "chain.workdir")


def _field(data: dict, key: str) -> Any:
    """``data``'s section or field named ``key`` ("seed", "model", "demo.train_slots")."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(f"no field {key!r} in a scenario")
        data = data[part]
    return data


def _canonical(value: Any) -> Any:
    """Plain data with tuples as lists and 6.0 as 6 (a TOML file may write either for one number)."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass(kw_only=True)
class Scenario:
    name: str = "smoke"
    results_dir: str = "results"
    seed: int = 0
    topology: TopologyConfig = field(default_factory=TopologyConfig)   # what the network looks like
    network: NetworkConfig = field(default_factory=NetworkConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)        # the MEC servers' miners
    contract: ContractConfig = field(default_factory=ContractConfig)
    model: ModelConfig = field(default_factory=ModelConfig)        # the paper's system model
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # DDQN/DQN hyperparameters
    paper: PaperConfig = field(default_factory=PaperConfig)        # sizes of `make paper`
    mining: MiningCheckConfig = field(default_factory=MiningCheckConfig)
    bench_chain: BenchChainConfig = field(default_factory=BenchChainConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    lab: LabConfig = field(default_factory=LabConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)          # `make demo`
    compare: CompareConfig = field(default_factory=CompareConfig)  # `testbed compare`
    sweep: SweepConfig = field(default_factory=SweepConfig)       # `testbed sweep`
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # several servers; none = this machine

    def __post_init__(self):
        require(is_int(self.seed) and self.seed >= 0, "seed", "an integer >= 0", self.seed)

    @property
    def results_path(self) -> Path:
        p = Path(self.results_dir)
        return p if p.is_absolute() else ROOT / p

    def path(self, value: str) -> Path:
        """A path of the scenario, relative to the repository root unless absolute."""
        p = Path(value)
        return p if p.is_absolute() else ROOT / p

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for results files): every field of every section."""
        return dataclasses.asdict(self)

    def digest(self, only: Sequence[str] = ()) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`to_dict` (sorted keys), without the
        fields of :data:`NOT_DIGESTED` (and without ``[cluster]`` when it lists no servers, so a
        scenario of one machine keeps the digest it had before the table existed): every results
        file records it, and one read back for
        reuse is refused when it differs from the current scenario's, so a changed scenario
        cannot pass as the old one. The same for a scenario loaded again or rebuilt by
        :func:`scenario_from_dict`.

        ``only``: the sections and fields (``"model"``, ``"seed"``, ``"demo.train_slots"``)
        that alone decide a thing kept across scenarios (the demo's trained DDQN), as
        ``{name: value}``; every other field may change without changing the digest."""
        data = self.to_dict()
        if only:
            data = {key: _field(data, key) for key in only}
        else:
            if not self.cluster.enabled:   # one machine, as before the [cluster] table: the same digest
                data.pop("cluster")
            for key in NOT_DIGESTED:
                section, _, leaf = key.rpartition(".")
                (data[section] if section else data).pop(leaf)
        text = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------- linked fields


def _unit_price_wei(model: dict) -> int:
    return token_to_wei(model.get("unit_price", ModelConfig.unit_price))


#: (copy, source, converter): the copy is set from the source when a scenario is loaded. A
#: copy given explicitly with another value is refused, naming both fields.
LINKED: list[tuple[str, str, Callable[[dict], Any]]] = [
    ("chain.n_nodes", "model.n_servers", lambda m: m.get("n_servers", ModelConfig.n_servers)),
    ("chain.n_ues", "model.n_users", lambda m: m.get("n_users", ModelConfig.n_users)),
    ("contract.unit_price_wei_per_gcycle", "model.unit_price", _unit_price_wei),
]


def _link(data: dict[str, Any]) -> None:
    model = data.get("model", {})
    for copy, source, convert in LINKED:
        section, leaf = copy.split(".")
        want = convert(model)
        table = data.setdefault(section, {})
        if leaf in table and table[leaf] != want:
            raise ConfigError(
                f"{copy} = {table[leaf]!r} disagrees with {source} = "
                f"{model.get(source.split('.')[1], '(default)')!r} (= {want!r} in {copy}'s unit): "
                f"this quantity is one number, set it as {source} and leave {copy} out")
        table[leaf] = want


# ---------------------------------------------------------------------------- loading


def _build(cls: type, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"[{where.rstrip('.')}] must be a table, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(where + k for k in unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except TypeError as e:   # wrong type reaching a constructor
        raise ConfigError(f"{where.rstrip('.') or 'scenario'}: {e}") from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text   # a bare word is a string


def scenario_file(name_or_path: str | Path) -> Path:
    """``name`` in ``scenarios/`` or a path to a TOML file."""
    p = Path(name_or_path)
    if not p.exists() and (SCENARIOS / f"{name_or_path}.toml").exists():
        p = SCENARIOS / f"{name_or_path}.toml"
    if not p.exists():
        known = ", ".join(sorted(x.stem for x in SCENARIOS.glob("*.toml")))
        raise ConfigError(f"scenario file not found: {name_or_path} (scenarios: {known})")
    return p


def load_scenario(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Scenario:
    """Load a scenario: a path, or a name in ``scenarios/``; ``overrides`` are
    ``section.field=value`` (TOML values; a bare word is a string)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = scenario_file(path)
        with open(p, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{p}: {e}") from None
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.field=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[leaf] = _parse_value(text.strip())
    _link(data)
    top = {k: v for k, v in data.items() if k not in SECTIONS}
    sections = {k: _build(cls, data.get(k, {}), k + ".") for k, cls in SECTIONS.items()}
    return _build(Scenario, {**top, **sections}, "")


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    """A Scenario from :meth:`Scenario.to_dict` (how a running lab hands its one Scenario to
    the programs on its hosts), checked as a loaded one is."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    _link(data)
    top = {k: v for k, v in data.items() if k not in SECTIONS}
    sections = {k: _build(cls, data.get(k, {}), k + ".") for k, cls in SECTIONS.items()}
    return _build(Scenario, {**top, **sections}, "")
