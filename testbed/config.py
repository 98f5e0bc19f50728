"""The one configuration object: a :class:`Scenario` loaded from a TOML file.

Every part of the testbed gets its settings from here (no part reads environment variables
or globals of its own). A scenario file has one table per part::

    name = "smoke"
    results_dir = "results"

    [network]          # testbed.config.NetworkConfig
    link_bw_mbit = 50

Command-line overrides use dotted keys: ``--set network.link_bw_mbit=20``.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"


class ConfigError(ValueError):
    """A scenario value is missing, unknown or out of range; the message names the field."""


@dataclass(kw_only=True)
class NetworkConfig:
    """The emulated network (Mininet + Open vSwitch + os-ken)."""
    datapath: str = "auto"              # "auto" (from `testbed doctor`), "kernel" or "user"
    link_bw_mbit: float | None = 50.0   # per access link, Mbit/s (htb); None = unshaped
    link_delay_ms: float | None = None  # one-way per link (needs netem; refused without it)
    controller_ip: str = "127.0.0.1"
    controller_port: int = 6653         # OpenFlow 1.3
    ping_count: int = 5
    iperf_seconds: float = 3.0

    def __post_init__(self):
        if self.datapath not in ("auto", "kernel", "user"):
            raise ConfigError(f"network.datapath must be auto, kernel or user, got {self.datapath!r}")
        if self.link_bw_mbit is not None and not 0 < self.link_bw_mbit <= 10_000:
            raise ConfigError(f"network.link_bw_mbit must be in (0, 10000] Mbit/s, got {self.link_bw_mbit}")
        if self.link_delay_ms is not None and self.link_delay_ms < 0:
            raise ConfigError(f"network.link_delay_ms must be >= 0, got {self.link_delay_ms}")
        if not 1 <= self.controller_port <= 65535:
            raise ConfigError(f"network.controller_port must be a TCP port, got {self.controller_port}")
        if self.ping_count < 1:
            raise ConfigError(f"network.ping_count must be >= 1, got {self.ping_count}")
        if self.iperf_seconds <= 0:
            raise ConfigError(f"network.iperf_seconds must be > 0, got {self.iperf_seconds}")


from agent.config import LearnerConfig, ModelConfig, PaperConfig  # noqa: E402  (each part
from contracts.config import ContractConfig  # noqa: E402              owns its section)
from nodes.config import ChainConfig  # noqa: E402

# Section name -> dataclass. Each class validates its own fields.
SECTIONS: dict[str, type] = {"network": NetworkConfig, "chain": ChainConfig, "contract": ContractConfig,
                             "model": ModelConfig, "learner": LearnerConfig, "paper": PaperConfig}


@dataclass(kw_only=True)
class Scenario:
    name: str = "smoke"
    topology: str = "smoke"             # key of topologies.TOPOLOGIES
    results_dir: str = "results"
    seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)           # the MEC servers' miners
    contract: ContractConfig = field(default_factory=ContractConfig)
    model: ModelConfig = field(default_factory=ModelConfig)        # the paper's system model
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # DDQN/DQN hyperparameters
    paper: PaperConfig = field(default_factory=PaperConfig)        # sizes of `make paper`

    @property
    def results_path(self) -> Path:
        p = Path(self.results_dir)
        return p if p.is_absolute() else ROOT / p


def _build(cls: type, values: dict[str, Any], where: str):
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
    except ValueError as e:  # a part's own validation; its message names the field
        raise ConfigError(str(e)) from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text   # a bare word is a string


def load_scenario(path: str | Path | None = None, overrides: list[str] = ()) -> Scenario:
    """Load a scenario: a path, or a name in ``scenarios/``; ``overrides`` are ``a.b=value``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists() and (SCENARIOS / f"{path}.toml").exists():
            p = SCENARIOS / f"{path}.toml"
        if not p.exists():
            raise ConfigError(f"scenario file not found: {path}")
        with open(p, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{p}: {e}") from None
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse_value(text.strip())
    top = {k: v for k, v in data.items() if k not in SECTIONS}
    sections = {k: _build(cls, data.get(k, {}), k + ".") for k, cls in SECTIONS.items()}
    return _build(Scenario, {**top, **sections}, "")
