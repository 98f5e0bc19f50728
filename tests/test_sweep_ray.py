"""Sweeps on an embedded Ray give exactly the process pool's numbers."""
import json

import pytest

from scenario.config import load_scenario
from base.errors import ConfigError
from testbed.experiments.paper import run_sweep

pytest.importorskip("ray")

SWEEP = ["sweep.readings=['total_w1', 'per_mb_w01']", "sweep.algos=['ddqn', 'qlearning', 'ga', 'random', 'oracle']",
         "sweep.seeds=[0, 1]", "sweep.train_slots=40", "sweep.eval_slots=10",
         "sweep.grid={'model.n_users' = [4, 7]}"]
TIMING = {"train_seconds", "train_steps_per_s", "seconds_to_convergence", "decision_ms", "decision_ms_p50", "decision_ms_p99"}


def test_sweep_on_embedded_ray_equals_the_process_pool(tmp_path):
    scn = load_scenario("paper", ["model.n_servers=3", "model.hash_budget_mhs=180", "learner.batch_size=16",
                                  "learner.learning_starts=16", "learner.eps_decay_slots=20",
                                  "learner.ga_population=6", "learner.ga_generations=3", *SWEEP])
    pool = run_sweep(scn, tmp_path / "pool", engine="pool", jobs=2)
    ray = run_sweep(scn, tmp_path / "ray", engine="ray", jobs=2)
    assert pool["failed"] == ray["failed"] == [] and pool["runs"] == ray["runs"] == 2 * 2 * 5 * 2
    rows = {}
    for name in ("pool", "ray"):
        rows[name] = {}
        for line in (tmp_path / name / "runs.jsonl").read_text().splitlines():
            r = json.loads(line)
            rows[name][r["key"]] = {k: v for k, v in r.items() if k not in TIMING}
    assert rows["pool"] == rows["ray"]                      # every number, every run, bit for bit
    assert pool["cells"] == ray["cells"]
    assert (tmp_path / "ray" / "sweep.md").read_text().count("| ") > 20


def test_sweep_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"sweep\.algos"):
        load_scenario("sweeps/readings", ["sweep.algos=['ppo']"])
    with pytest.raises(ConfigError, match=r"sweep\.grid key 'chain\.n_nodes'"):
        load_scenario("sweeps/readings", ["sweep.grid={'chain.n_nodes' = [3]}"])
    with pytest.raises(ConfigError, match=r"sweep\.colour"):
        load_scenario("sweeps/readings", ["sweep.colour=1"])
