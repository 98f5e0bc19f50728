"""Jobs of the paper's experiments and of sweeps, and the engines that run them.

A job is one independent run: train an agent on its own task stream (seed s) for
``train_slots``, then evaluate its frozen greedy policy on a second stream (seed
``EVAL_SEED + s``, :func:`agent.evaluate.evaluate`, which scores any policy, a saved agent or a
Stable-Baselines3 model alike) that is the same for every algorithm, so algorithms are compared
on identical tasks (paired by seed). :func:`run_job` is a pure function of the job: the same job
gives the same numbers in any process, on any engine (timings aside).

:func:`execute` runs a list of jobs

- on an embedded **Ray** (``engine="ray"``, the default: ``ray.init`` starts a local Ray with
  ``workers`` CPUs, nothing to set up), or on an existing Ray cluster (``address="HOST:6379"``,
  or ``RAY_ADDRESS`` in the environment, which Ray itself reads);
- or on a local **process pool** (``engine="pool"``; one worker runs in-process);

with a progress bar, each finished run appended at once to ``runs.jsonl`` in the output folder
(so an interrupted run resumes where it stopped: jobs already there are not run again), and a
job that raises reported by name without stopping the others. Each stored run records the
digest of the scenario it was run for (:meth:`scenario.config.Scenario.digest`); a store holding
runs of another scenario is refused, not resumed.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from agent.config import LearnerConfig, ModelConfig
from base.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
ENGINES = ("ray", "pool")
STORE = "runs.jsonl"                      # one finished run per line, in the output folder


@dataclass(frozen=True)
class Job:
    """One run. ``model``/``learner`` are full ``[model]``/``[learner]`` dicts (plain data, so a
    job pickles to any worker and hashes to the same key everywhere)."""
    reading: str                          # name of the reading (paper.readings) or sweep cell
    figure: str                           # "fig4", "fig5", ... or "sweep"
    series: str                           # the curve this run belongs to (algo, or a Fig. 7 variant)
    algo: str                             # key of agent.registry.AGENTS
    variant: str                          # agent variant: "full", "no_ra_equal", "no_ra_random", "no_us"
    x: float                              # the figure's x value
    seed: int
    model: dict[str, Any]
    learner: dict[str, Any]
    train_slots: int
    eval_slots: int
    keep_curve: bool = False
    conv_window: int = 100
    conv_tol: float = 0.05

    @property
    def name(self) -> str:
        """Readable and unique within one experiment: reading/figure/series/x/seed."""
        return f"{self.reading}/{self.figure}/{self.series}/x={self.x:g}/seed={self.seed}"

    @property
    def key(self) -> str:
        """What is computed, not where it is shown: two jobs with one key are run once."""
        what = [self.algo, self.variant, self.model, self.learner, self.seed, self.train_slots, self.eval_slots,
                self.conv_window, self.conv_tol]
        return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def cost(self) -> float:
        """Rough CPU cost, to order the runs."""
        per = {"ddqn": 6.0, "dqn": 6.0, "qlearning": 1.5, "ga": 8.0, "oracle": 2.0}.get(self.algo, 0.5)
        users = self.model.get("n_users", 20)
        return per * (users / 20 + 0.5) * (self.train_slots + self.eval_slots)


def convergence_slot(curve: np.ndarray, window: int, tol: float, hold: int | None = None) -> int | None:
    """First slot at which the moving average (``window`` slots) is within ``tol`` x |final| of
    the final value (mean of the last 10 % of the curve, at least ``window`` slots) and stays
    there for ``hold`` slots (default 2 x window, or to the end of the curve); None if never.

    The hold makes one lucky window not count, without letting a late dip caused by a hard
    batch of tasks (the utility's slot-to-slot noise) push the answer to the end of the run.
    """
    curve = np.asarray(curve, dtype=float)
    if len(curve) < 2 * window:
        return None
    hold = 2 * window if hold is None else hold
    ma = np.convolve(curve, np.ones(window) / window, mode="valid")      # ma[i] ends at slot i + window
    final = curve[-max(window, len(curve) // 10):].mean()
    inside = np.abs(ma - final) <= tol * abs(final)
    run = np.zeros(len(ma) + 1, dtype=np.int64)                           # run[i]: consecutive inside from i
    for i in range(len(ma) - 1, -1, -1):
        run[i] = run[i + 1] + 1 if inside[i] else 0
    ok = np.flatnonzero((run[:-1] >= hold) | (run[:-1] == len(ma) - np.arange(len(ma))) & inside)
    return int(ok[0] + window) if len(ok) else None


def run_job(job: Job) -> dict[str, Any]:
    """Train (if the algorithm learns) then evaluate; one row of results (plain JSON data)."""
    import torch

    from agent.env import MecChainEnv
    from agent.evaluate import evaluate
    from agent.registry import make_agent
    from agent.train import run_slots
    lcfg = LearnerConfig.from_dict(job.learner)
    torch.set_num_threads(lcfg.torch_threads)
    mcfg = ModelConfig.from_dict(job.model)
    agent = make_agent(job.algo, mcfg, lcfg, seed=job.seed, variant=job.variant)
    row: dict[str, Any] = {"key": job.key, "name": job.name, "reading": job.reading, "figure": job.figure,
                           "series": job.series, "algo": job.algo, "variant": job.variant, "x": job.x,
                           "seed": job.seed, "n_users": mcfg.n_users}
    t_train = 0.0
    if agent.trains and job.train_slots:
        out = run_slots(agent, MecChainEnv(mcfg), job.train_slots, seed=job.seed)
        curve, clock, t_train = out["curve"], out["clock"], out["seconds"]
        conv = convergence_slot(np.array(curve), job.conv_window, job.conv_tol)
        row.update(convergence_slot=conv, seconds_to_convergence=None if conv is None else clock[conv - 1],
                   train_final_utility=float(np.mean(curve[-max(1, len(curve) // 10):])),
                   train_steps_per_s=out["steps_per_s"])
        losses = [v for v in out["loss"] if v is not None]
        if losses:
            row["train_final_loss"] = float(np.mean(losses[-max(1, len(losses) // 10):]))
        if job.keep_curve:
            row["curve"] = [float(v) for v in curve]
    row["train_seconds"] = t_train
    row["updates"] = int(getattr(agent, "updates", 0))
    if job.eval_slots:
        row.update(evaluate(agent, mcfg, job.seed, job.eval_slots))
        row.pop("slots")
    return row


def run_job_safely(job: Job) -> dict[str, Any]:
    """:func:`run_job`, with an exception turned into a row that names the job and says why."""
    try:
        return run_job(job)
    except Exception:                                    # noqa: BLE001 (reported, never swallowed)
        return {"key": job.key, "name": job.name, "error": traceback.format_exc(limit=8)}


# --- resume store ----------------------------------------------------------------------------

def read_store(out_dir: Path, scenario_digest: str | None = None) -> dict[str, dict]:
    """Finished runs already in ``out_dir/runs.jsonl``, by key (a torn last line is ignored).
    ConfigError, naming both digests and the file, when a run there was recorded for another
    scenario than ``scenario_digest``."""
    path = Path(out_dir) / STORE
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("scenario_digest") != scenario_digest:
                raise ConfigError(f"{path} holds runs of scenario digest {row.get('scenario_digest')}, this "
                                  f"scenario's is {scenario_digest}: a changed scenario does not resume another's "
                                  f"runs; give another --out, or delete {path.parent} to start afresh")
            if "error" not in row and "key" in row:
                done[row["key"]] = row
    return done


class _Store:
    """Appends each finished run to ``runs.jsonl`` as it arrives (flushed and fsynced), with
    the scenario's digest."""

    def __init__(self, out_dir: Path | None, scenario_digest: str | None):
        self.f = None
        self.stamp = {} if scenario_digest is None else {"scenario_digest": scenario_digest}
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            self.f = open(Path(out_dir) / STORE, "a")

    def add(self, row: dict) -> None:
        if self.f is not None and "error" not in row:
            self.f.write(json.dumps({**row, **self.stamp}, default=lambda o: None) + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


# --- engines ---------------------------------------------------------------------------------

@dataclass
class Outcome:
    rows: list[dict]                      # one row per job given, in the order given (failed jobs left out)
    failed: dict[str, str]                # job name -> traceback
    ran: int                              # runs computed now
    resumed: int                          # runs found in runs.jsonl
    engine: str
    workers: int
    seconds: float


def _worker_init():
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _on_pool(todo: list[Job], workers: int) -> Iterable[dict]:
    if workers <= 1:
        for job in todo:
            yield run_job_safely(job)
        return
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap_unordered(run_job_safely, todo)


def _on_ray(todo: list[Job], workers: int, address: str | None) -> Iterable[dict]:
    import ray
    started = False
    if not ray.is_initialized():
        # Workers import `agent` and `testbed` from this checkout: on a cluster every node has the
        # clone (and its .venv) at the same path (docs/model.md, "Sweeps on a Ray cluster").
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                            "OMP_NUM_THREADS": "1"}}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                     runtime_env=env)
        else:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False, runtime_env=env)
        started = True
    pending: dict = {}
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(run_job_safely)
        pending.update((task.remote(job), job) for job in todo)
        while pending:
            # A timeout, so that Ctrl-C / SIGTERM reach Python between waits (ray.wait blocks in C++).
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as e:                   # the worker died (OOM, node lost): name the job
                    yield {"key": job.key, "name": job.name, "error": f"{type(e).__name__}: {e}"}
    finally:
        if started:
            for ref in pending:
                ray.cancel(ref, force=True)
            ray.shutdown()


def execute(jobs: list[Job], out_dir: Path | None = None, *, scenario_digest: str | None = None,
            engine: str = "ray", workers: int = 2, address: str | None = None, desc: str = "runs") -> Outcome:
    """Run every distinct job once (cheapest first), resuming from ``out_dir/runs.jsonl``, which
    must hold runs of the scenario ``scenario_digest`` only (None: jobs of no scenario)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    t0 = time.perf_counter()
    unique: dict[str, Job] = {}
    for j in jobs:
        first = unique.setdefault(j.key, j)
        if j.keep_curve and not first.keep_curve:
            unique[j.key] = replace(first, keep_curve=True)
    done = {k: v for k, v in (read_store(out_dir, scenario_digest) if out_dir is not None else {}).items()
            if k in unique and (not unique[k].keep_curve or "curve" in v)}
    # Cheapest first: an interrupted run then has every baseline and the cheap learners, and the
    # longest runs (which decide the makespan only by one run's length at the end) come last.
    todo = sorted((j for k, j in unique.items() if k not in done), key=lambda j: j.cost)
    failed: dict[str, str] = {}
    store = _Store(out_dir, scenario_digest)
    try:
        runs = _on_ray(todo, workers, address) if engine == "ray" and todo else _on_pool(todo, workers)
        bar = tqdm(runs, total=len(todo), desc=f"{desc} ({engine})", unit="run", file=sys.stderr,
                   initial=0, disable=not todo)
        for row in bar:
            if "error" in row:
                failed[row["name"]] = row["error"]
                bar.write(f"FAILED {row['name']}: {row['error'].strip().splitlines()[-1]}", file=sys.stderr)
                continue
            done[row["key"]] = row
            store.add(row)
    finally:
        store.close()
    rows = []
    for j in jobs:
        if j.key in done:
            r = dict(done[j.key])
            r.update(name=j.name, reading=j.reading, figure=j.figure, series=j.series, x=j.x)
            rows.append(r)
    return Outcome(rows, failed, ran=len(todo) - len(failed), resumed=len(unique) - len(todo), engine=engine,
                   workers=workers, seconds=time.perf_counter() - t0)


def job(reading: str, figure: str, series: str, algo: str, x: float, seed: int, model: dict, learner: dict,
        train_slots: int, eval_slots: int, variant: str = "full", **kw) -> Job:
    """A :class:`Job`; a non-learning algorithm never trains, whatever ``train_slots`` says."""
    from agent.registry import AGENTS
    trains = AGENTS[algo].trains
    return Job(reading, figure, series, algo, variant, float(x), int(seed), dict(model), dict(learner),
               train_slots if trains else 0, eval_slots, **kw)
