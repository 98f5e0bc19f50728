"""One set of units: how a quantity of the paper's model becomes a quantity of the live lab.

The model (:mod:`agent.model`) counts money in tokens, data in MB, service demand ξ_u in the
unit of Table I, CPU in GHz and hash power in MHash/s. The chain counts wei, bits and cycles;
the machine counts CPU-quota cores, hashes per second and iterations of the executor's work
kernel. Every conversion is here, once; docs/units.md says why each one is what it is.

Money and data (fixed):
    1 token = 1 ether = 10^18 wei            (µ, φ_u, R)
    1 MB = 10^6 bytes = 8·10^6 bits           (d_u)
    ξ_u on chain = ξ_u of eq. (1) × 10^9, an integer (the contract's ``serviceDemand``)
    φ_u on chain = µ_wei · serviceDemand // 10^9  (the contract's ``quote``), = µ·ξ_u tokens

Machine (measured by ``testbed calibrate`` into ``results/calibration.json``, mapped by
:class:`LiveMapping` with the scenario's ``[lab]`` budget):
    p_m MHash/s  -> CPU quota of the miner   = p_m / P · mining_cores        (cores)
    1 MHash/s    =  X real H/s, X = the calibrated rate at P/M over P/M   (hps_per_mhs)
    p̂_m          =  calibrated H/s at the CPU the miner really used / X  (measured_hash_mhs)
    difficulty   =  H · X · interval: the network H finds one block per interval
    f_m GHz      -> CPU quota of the executor = executor_cores               (cores)
    a task of C Gcycles (eq. (2)'s d_u·ξ_u or ξ_u) -> C · work_scale · 10^9 real cycles
                    = that / cycles_per_iteration iterations of the work kernel,
    with work_scale chosen so that C Gcycles at executor_cores take C / f_m seconds.

numpy is imported by the functions that take arrays (the hash-power mappings), not here: the UE
clients, twenty processes of a lab, use the money, task and work conversions without it (13 MB
each, issue 21).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from agent.config import task_gcycles

TOKEN_WEI = 10**18          # wei per token (1 token = 1 ether on the lab chain)
CYCLES_PER_GCYCLE = 10**9
BYTES_PER_MB = 10**6
BITS_PER_MB = 8 * BYTES_PER_MB
UINT64_MAX = 2**64 - 1


# ---------------------------------------------------------------------------- money


def token_to_wei(tokens: float | int | str | Fraction) -> int:
    """Tokens -> wei, exactly for decimal inputs (0.15 -> 150000000000000000)."""
    value = Fraction(str(tokens)) if isinstance(tokens, float) else Fraction(tokens)
    if value < 0:
        raise ValueError(f"a price or amount cannot be negative, got {tokens!r}")
    return math.floor(value * TOKEN_WEI)


def wei_to_token(wei: int) -> float:
    return wei / TOKEN_WEI


def price_wei(unit_price_wei_per_gcycle: int, service_demand: int) -> int:
    """φ_u in wei, the contract's own rule: µ_wei · ξ_u / 10^9 rounded down."""
    return unit_price_wei_per_gcycle * service_demand // CYCLES_PER_GCYCLE


# ---------------------------------------------------------------------------- one task


@dataclass(frozen=True)
class ChainTask:
    """Task R_u = (d_u, ξ_u, τ_u) of the model in the units of the chain and the executor.

    Attributes:
        data_mb, demand, desired_s: the model's d_u (MB), ξ_u (Table I's unit, as quantized
            here: a whole number of cycles), τ_u (s).
        data_bytes: d_u in bytes (what the UE uploads).
        data_bits: d_u in bits (the contract's ``dataSize``).
        service_demand: ξ_u × 10^9, the contract's ``serviceDemand`` (uint64).
        gcycles: the task's computation in model Gcycles (eq. (2)'s numerator, by the
            scenario's reading of ξ: ``agent.config.task_gcycles``).
    """
    data_mb: float
    demand: float
    desired_s: float
    data_bytes: int
    data_bits: int
    service_demand: int
    gcycles: float


def kernel_iterations(gcycles: float, iterations_per_gcycle: float) -> int:
    """Iterations of the work kernel for ``gcycles`` model Gcycles (>= 1), at
    :attr:`LiveMapping.iterations_per_gcycle` (passed as a number to the controller)."""
    return max(1, int(round(gcycles * iterations_per_gcycle)))


def chain_task(model_cfg, data_mb: float, demand: float, desired_s: float) -> ChainTask:
    """The model's task in chain units. ξ_u is quantized to whole cycles first, so the model's
    price of the returned task and the contract's are the same number (:func:`task_price_wei`)."""
    service_demand = int(round(float(demand) * CYCLES_PER_GCYCLE))
    if not 0 < service_demand <= UINT64_MAX:
        raise ValueError(f"service demand {demand!r} Gcycles does not fit the contract's uint64 cycles")
    xi = service_demand / CYCLES_PER_GCYCLE
    data_bytes = int(round(float(data_mb) * BYTES_PER_MB))
    return ChainTask(data_mb=data_bytes / BYTES_PER_MB, demand=xi, desired_s=float(desired_s),
                     data_bytes=data_bytes, data_bits=8 * data_bytes, service_demand=service_demand,
                     gcycles=float(task_gcycles(model_cfg, data_bytes / BYTES_PER_MB, xi)))


def task_price_wei(model_cfg, task: ChainTask) -> int:
    """φ_u = µ·ξ_u of the task, in wei, as the contract computes it (equal to
    ``TradingContract.quote(task.service_demand)`` at µ = token_to_wei(model.unit_price))."""
    return price_wei(token_to_wei(model_cfg.unit_price), task.service_demand)


# ---------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """What ``testbed calibrate`` measured on this machine (``results/calibration.json``).

    Attributes:
        date: when (ISO 8601, UTC); machine: host, CPU model, cores.
        core_hz: clock of one core, Hz (``perf`` cycles if it counts here, else /proc/cpuinfo).
        kernel_iterations_per_core_s: the executor's work kernel, iterations per CPU-second.
        cycles_per_iteration: core_hz / kernel_iterations_per_core_s.
        kernel_quota_linearity: iterations per quota-core at a partial quota over the same at
            a full core (1.0 = a quota of q cores gives q × the rate).
        hashrate_hps_per_core: one geth node's ethash rate (test-size DAG) per quota core at the
            largest quota measured (the best case: a small quota gets less per core).
        hashrate_points: the measurements, ``{quota_cores, hashrate_hps, ...}`` each; the rate at
            any quota is interpolated between them (:meth:`hashrate_at`).
    """
    date: str
    machine: dict
    core_hz: float
    core_hz_source: str
    kernel_iterations_per_core_s: float
    cycles_per_iteration: float
    kernel_quota_linearity: float | None
    hashrate_hps_per_core: float
    hashrate_points: list
    pow_mode: str = "test"

    def hashrate_at(self, cores) -> np.ndarray | float:
        """Expected hash rate (H/s) of one geth miner under a CPU quota of ``cores``: linear
        between the measured points (and 0 at 0), proportional beyond the largest."""
        import numpy as np
        curve = self._curve()
        if curve is None:
            return np.asarray(cores, dtype=float) * self.hashrate_hps_per_core
        xs, ys = curve
        c = np.asarray(cores, dtype=float)
        return np.where(c <= xs[-1], np.interp(c, xs, ys), c * ys[-1] / xs[-1])

    def _curve(self) -> tuple[list[float], list[float]] | None:
        """The measured (quota cores, H/s) points by quota, from (0, 0); None without any."""
        pts = sorted((p["quota_cores"], p["hashrate_hps"]) for p in self.hashrate_points
                     if p.get("hashrate_hps") is not None and math.isfinite(p["hashrate_hps"]))
        return ([0.0] + [q for q, _ in pts], [0.0] + [h for _, h in pts]) if pts else None

    def cores_at(self, hps) -> np.ndarray | float:
        """The CPU quota (cores) at which one geth miner hashes ``hps`` H/s: :meth:`hashrate_at`
        inverted (linear between the measured points, proportional beyond the largest)."""
        import numpy as np
        curve = self._curve()
        if curve is None:
            return np.asarray(hps, dtype=float) / self.hashrate_hps_per_core
        xs, ys = curve
        ys = np.maximum.accumulate(ys)                  # a noisy dip: not a second answer
        h = np.asarray(hps, dtype=float)
        return np.where(h <= ys[-1], np.interp(h, ys, xs), h * xs[-1] / ys[-1])

    def same_as(self, other: "Calibration") -> bool:
        """The same measurements (the date aside): the same mapping follows from both."""
        a, b = asdict(self), asdict(other)
        return {k: v for k, v in a.items() if k != "date"} == {k: v for k, v in b.items() if k != "date"}

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        if not Path(path).exists():
            raise FileNotFoundError(f"no calibration at {path}: run `python -m testbed calibrate` "
                                    "(about a minute) first")
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @staticmethod
    def now() -> str:
        return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# ---------------------------------------------------------------------------- model <-> lab


class LiveMapping:
    """The model's hash levels and CPU in the lab's CPU quotas, for one scenario.

    Args:
        model: the scenario's ``ModelConfig`` (P = hash_budget_mhs, f_m = cpu_ghz).
        mining_cores: cores that the whole hash budget P stands for (all miners together).
        executor_cores: the CPU quota that stands for one server's f_m.
        cal: this machine's :class:`Calibration`.
        reference: on a cluster (issue 22), the lab's own mapping (the orchestrator's
            calibration) when ``cal`` is another server's: see :meth:`for_server`.
    """

    def __init__(self, model, mining_cores: float, executor_cores: float, cal: Calibration,
                 reference: "LiveMapping | None" = None):
        if mining_cores <= 0 or executor_cores <= 0:
            raise ValueError("mining_cores and executor_cores must be > 0")
        self.model, self.cal, self.reference = model, cal, reference
        self.mining_cores, self.executor_cores = mining_cores, executor_cores

    def for_server(self, cal: Calibration) -> "LiveMapping":
        """The mapping of a MEC server on another server of a cluster, whose own calibration is
        ``cal``: one exchange rate X for the whole lab (this mapping's, so the chain's
        difficulty holds), each level's quota where that server's miner hashes what this
        mapping's does at it (its own rate curve, inverted), and the work kernel's iterations
        from its own clock and kernel rate. The same measurements: this very mapping."""
        if cal.same_as(self.cal):
            return self
        return LiveMapping(self.model, self.mining_cores, self.executor_cores, cal, reference=self)

    # hash power
    def miner_cores(self, p_mhs) -> np.ndarray | float:
        """CPU quota (cores) of a miner given p_m MHash/s of the model: a share of
        ``mining_cores``; on another server (:meth:`for_server`), the quota at which its miner
        hashes what the lab's reference miner does at that share."""
        import numpy as np
        if self.reference is not None:
            return self.cal.cores_at(self.reference.real_hashrate(p_mhs))
        return np.asarray(p_mhs, dtype=float) / self.model.hash_budget_mhs * self.mining_cores

    def real_hashrate(self, p_mhs) -> np.ndarray | float:
        """Expected real hash rate (H/s) of a miner at p_m, from the calibration (interpolated
        at its quota: geth's fixed work makes the rate per core smaller at small quotas)."""
        return self.cal.hashrate_at(self.miner_cores(p_mhs))

    @property
    def hps_per_mhs(self) -> float:
        """X, real hashes per second that one model MHash/s stands for: the calibrated rate of
        one miner at an equal split of the budget (P/M each, ``mining_cores``/M cores) over P/M.
        The exchange rate of hash power between the model and the lab, set once here."""
        if self.reference is not None:
            return self.reference.hps_per_mhs
        m = self.model
        share = m.hash_budget_mhs / m.n_servers
        return float(self.real_hashrate(share)) / share

    def measured_hash_mhs(self, cores) -> np.ndarray | float:
        """p̂_m: the hash power a miner really did, in the model's MHash/s, from the CPU it
        really used (cores, averaged over a slot from its cgroup's CPU time): the calibrated
        rate at that CPU (hashes per core-second, interpolated) over X (:attr:`hps_per_mhs`)."""
        import numpy as np
        return np.asarray(self.cal.hashrate_at(np.asarray(cores, dtype=float)), dtype=float) / self.hps_per_mhs

    def difficulty(self, network_hash_mhs: float, block_interval_s: float) -> int:
        """ethash difficulty (expected hashes per block) at which a network of
        ``network_hash_mhs`` model MHash/s finds one block per ``block_interval_s`` seconds."""
        return int(round(network_hash_mhs * self.hps_per_mhs * block_interval_s))

    def outside_cores(self, hash_mhs: float) -> float:
        """CPU quota (cores) at which one geth miner hashes ``hash_mhs`` model MHash/s: the
        calibration's rate curve inverted (linear between its points, proportional beyond)."""
        return float(self.cal.cores_at(hash_mhs * self.hps_per_mhs))

    # computation
    @property
    def work_scale(self) -> float:
        """Real cycles per model cycle: executor_cores × core_hz / f_m."""
        return self.executor_cores * self.cal.core_hz / (self.model.cpu_ghz * CYCLES_PER_GCYCLE)

    @property
    def iterations_per_gcycle(self) -> float:
        """Work-kernel iterations per model Gcycle (the executors', the UEs' and the controller's
        one figure: :func:`kernel_iterations`)."""
        return CYCLES_PER_GCYCLE * self.work_scale / self.cal.cycles_per_iteration

    def kernel_iterations(self, gcycles: float) -> int:
        """Iterations of the work kernel for a task of ``gcycles`` model Gcycles (>= 1)."""
        return kernel_iterations(gcycles, self.iterations_per_gcycle)

    def nominal_seconds(self, gcycles: float) -> float:
        """Execution time the model predicts without mining (eq. (2) with κ = 0): C / f_m."""
        return gcycles / self.model.cpu_ghz

    def as_dict(self) -> dict:
        import numpy as np
        levels = list(self.model.hash_levels_mhs)
        return {"mining_cores": self.mining_cores, "executor_cores": self.executor_cores,
                "hash_budget_mhs": self.model.hash_budget_mhs,
                "levels_mhs": levels,
                "levels_cores": [float(x) for x in self.miner_cores(levels)],
                "levels_real_hps": [float(x) for x in np.atleast_1d(self.real_hashrate(levels))],
                "hps_per_mhs": self.hps_per_mhs,
                "work_scale": self.work_scale, "cpu_ghz": self.model.cpu_ghz,
                "core_hz": self.cal.core_hz, "cycles_per_iteration": self.cal.cycles_per_iteration}
