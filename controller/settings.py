"""The controller's configuration for one lab run, read once from ``--lab-config PATH``.

``python -m controller`` stores the path here before os-ken starts the apps; the apps read
:func:`lab`: a :class:`LabSettings` the lab built from its Scenario (``Lab._write_controller_config``)
and wrote as JSON. Every field is required: no period, window or limit has a default of the
controller's own, so the controller runs with the scenario's numbers or does not start.
Without ``--lab-config`` the controller is a plain L2 switch (the smoke demo) and :func:`lab`
is None.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LabSettings:
    servers: list[str]                 # mec1..mecM
    ues: list[str]                     # ue1..ueU
    accounts: dict[str, str]           # name -> chain address (signed reports and tasks)
    levels_mhs: list[float]            # the model's hash levels (MHash/s)
    budget_mhs: float                  # the model's hash budget P (MHash/s)
    levels_cores: list[float]          # each level as a miner CPU quota (cores; scenario.units)
    window_s: float                    # the reputation window: model.reputation_window x slot_s (s)
    slot_s: float                      # the model's slot (s)
    equal_level: int                   # the model's equal hash level (the fallback's)
    monitor_period_s: float            # lab.monitor_period_s: port stats, probes, miners (s)
    nice: int                          # lab.control_nice: this process's nice
    api_host: str                      # the API on lab0's data address
    api_port: int
    api_read_deadline_s: float         # lab.api_*: the API server's limits
    api_max_connections: int
    api_per_client: int
    token_file: str                    # the policy's bearer token
    budget_log: str                    # budgets.jsonl in the run folder
    state_file: str                    # the state kept across a controller restart
    task_ranges: dict[str, list[float]]   # Table I's ranges of an announced task
    work: dict                         # iterations per Gcycle and the demand reading (proofs)
    miners: dict[str, dict]            # per server: its host cgroup, period, host cores, coupling
    miner_rpc: dict[str, str]          # per server: its miner's RPC URL (management network)
    agents: dict[str, dict]            # per cluster server with miners ("server" in miners): its
                                       # agent's "address" (host:port) and "secret_file"; {} on one machine

    @classmethod
    def from_dict(cls, d: dict) -> "LabSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(names - set(d)), sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(f"controller settings: missing {missing}, unknown {unknown}")
        return cls(**d)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        path.chmod(0o600)


_PATH: Path | None = None
_LAB: LabSettings | None = None


def set_path(path: str | Path | None) -> None:
    global _PATH, _LAB
    _PATH, _LAB = (Path(path) if path else None), None


def lab() -> LabSettings | None:
    """The lab's settings, or None when the controller runs without a lab."""
    global _LAB
    if _LAB is None and _PATH is not None:
        _LAB = LabSettings.from_dict(json.loads(_PATH.read_text()))
    return _LAB


def required(who: str) -> LabSettings:
    """The lab's settings for a part that has no job without a lab (``who`` names it)."""
    cfg = lab()
    if cfg is None:
        raise RuntimeError(f"{who}: no lab settings (python -m controller --lab-config PATH)")
    return cfg
