"""`paper`: every figure under every reading, the claim table, resume, failures named."""
import json
from pathlib import Path

import numpy as np
import pytest

from scenario.config import ConfigError, load_scenario
from testbed.experiments.paper import paper_jobs, run_paper
from testbed.experiments.paper.runner import convergence_slot, execute, job

TINY = """
name = "tiny"
[model]
n_servers = 3
hash_budget_mhs = 180.0
[learner]
batch_size = 16
learning_starts = 16
eps_decay_slots = 20
ga_population = 6
ga_generations = 3
[paper]
seeds = 2
jobs = 1
fig4_slots = 40
fig4_users = 6
train_slots = 30
eval_slots = 8
users_grid = [4, 8]
demand_grid = [0.6, 1.6]
block_grid = [1.0, 10.0]
convergence_window = 10
default_reading = "total_w1"
[paper.readings]
total_w1 = { demand_reading = "total", latency_weight = 1.0 }
per_mb_w01 = { demand_reading = "per_mb", latency_weight = 0.1 }
"""


def test_convergence_slot_on_known_curves():
    rng = np.random.default_rng(0)
    step = np.concatenate([np.zeros(300), np.full(700, 10.0)]) + rng.normal(0, 0.1, 1000)
    # the 50-slot moving average is within 5 % of 10 once 48 of its 50 slots are past slot 300
    assert 340 <= convergence_slot(step, 50, 0.05) <= 350
    assert convergence_slot(np.full(400, 5.0), 50, 0.05) == 50
    assert convergence_slot(np.linspace(0, 100, 1000), 50, 0.05) > 900
    assert convergence_slot(np.ones(60), 50, 0.05) is None          # too short to say
    # a short lucky stretch before the ramp does not count, a brief late dip does not reset it
    lucky = np.concatenate([np.zeros(200), np.full(60, 10.0), np.zeros(200), np.full(540, 10.0)])
    assert 500 <= convergence_slot(lucky, 50, 0.05) <= 520
    dip = np.concatenate([np.zeros(200), np.full(800, 10.0)])
    dip[700:730] = 5.0
    assert convergence_slot(dip, 50, 0.05) < 300


def test_paper_scenario_runs_every_figure_under_every_reading():
    scn = load_scenario("paper")
    jobs = paper_jobs(scn)
    cells = {(j.reading, j.figure) for j in jobs}
    assert cells == {(r, f) for r in scn.paper.readings for f in ("fig4", "fig5", "fig6", "fig7", "fig7_fee")}
    # Fig. 7's fee reading applies to every series, learners included; r = 0 in the plain one
    fee = {(j.series, j.model["fee_per_kb"]) for j in jobs if j.figure.startswith("fig7")}
    for series in ("full", "no_ra_equal", "no_ra_random", "no_us", "oracle"):
        assert (series, 0.0) in fee and (series, scn.paper.fee_reading_per_kb) in fee


def test_paper_writes_every_output_and_the_claim_table(tmp_path):
    scen = tmp_path / "tiny.toml"
    scen.write_text(TINY)
    scn = load_scenario(scen)
    out = tmp_path / "out"
    res = run_paper(scn, out, engine="pool", jobs=1)
    assert res["failed"] == [] and res["ran"] == res["runs"] > 0
    assert res["w_star"] == pytest.approx({"total_w1": 0.75, "per_mb_w01": 0.25})
    for name in ("runs.csv", "runs.jsonl", "summary.md", "summary.json", "fig4.png", "fig5.png", "fig6.png",
                 "fig7.png", "fig7_fee.png"):
        assert (out / name).stat().st_size > 0, name
    for reading in ("total_w1", "per_mb_w01"):
        for name in ("fig4.csv", "fig5.csv", "fig6.csv", "fig7.csv", "fig7_fee.csv", "table2.csv"):
            assert (out / reading / name).stat().st_size > 0, (reading, name)
    s = json.loads((out / "summary.json").read_text())
    assert set(s["readings"]) == {"total_w1", "per_mb_w01"}
    r = s["readings"]["per_mb_w01"]
    assert set(r["fig5"]) == {"ddqn", "dqn", "qlearning", "ga", "greedy", "random", "oracle"}
    assert set(r["fig7"]) == set(r["fig7_fee"]) == {"full", "no_ra_equal", "no_ra_random", "no_us", "oracle"}
    # the fee reading lifts every series with the block size; eq. (6) as printed lowers the oracle's
    for series in ("full", "no_us", "oracle"):
        assert r["fig7_fee"][series]["mean"][1] > r["fig7_fee"][series]["mean"][0], series
    assert r["fig7"]["oracle"]["mean"][1] < r["fig7"]["oracle"]["mean"][0]
    # Fig. 6 under the oracle: falls when w > w* (total, w = 1), rises when w < w* (per MB, w = 0.1)
    claims = {c["id"]: c for c in s["claims"]}
    assert claims["C10"]["readings"]["total_w1"]["verdict"] == "no"
    assert claims["C10"]["readings"]["per_mb_w01"]["verdict"] == "yes"
    md = (out / "summary.md").read_text()
    assert "## Claim by claim" in md and "C10. Fig. 6" in md and "w* = threshold" in md
    # a second call resumes everything from runs.jsonl and writes the same numbers
    again = run_paper(scn, out, engine="pool", jobs=1)
    assert again["ran"] == 0 and again["resumed"] == res["runs"]
    assert json.loads((out / "summary.json").read_text())["readings"]["per_mb_w01"]["fig5"] == r["fig5"]
    # every file records the scenario's digest; a changed scenario does not resume these runs
    stored = {json.loads(x)["scenario_digest"] for x in (out / "runs.jsonl").read_text().splitlines()}
    assert stored == {s["meta"]["scenario_digest"]} == {scn.digest()}
    changed = load_scenario(scen, ["model.cpu_ghz=6.0"])
    with pytest.raises(ConfigError, match=f"{out / 'runs.jsonl'}.*{scn.digest()}.*{changed.digest()}"):
        run_paper(changed, out, engine="pool", jobs=1)


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    scn = load_scenario("paper", ["model.n_servers=3", "model.hash_budget_mhs=180", "model.n_users=5"])
    model, learner = scn.model.to_dict(), scn.learner.to_dict()
    jobs = [job("r", "f", a, a, 5, s, model, learner, 0, 5) for a in ("greedy", "random", "oracle") for s in range(3)]
    first = execute(jobs, tmp_path, engine="pool", workers=1)
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert first.ran == 9 and len(lines) == 9
    (tmp_path / "runs.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])   # killed mid-write
    second = execute(jobs, tmp_path, engine="pool", workers=1)
    assert second.resumed == 4 and second.ran == 5
    assert [r["avg_utility"] for r in second.rows] == [r["avg_utility"] for r in first.rows]


@pytest.mark.parametrize("engine", ["pool", "ray"])
def test_a_failing_run_is_named_and_the_others_finish(tmp_path, engine):
    scn = load_scenario("paper", ["model.n_servers=3", "model.hash_budget_mhs=180", "model.n_users=5"])
    good = scn.model.to_dict()
    bad = {**good, "n_users": -1}                            # refused inside the worker
    jobs = [job("r", "f", "greedy", "greedy", 5, s, good, scn.learner.to_dict(), 0, 5) for s in range(3)]
    jobs.append(job("r", "f", "oracle", "oracle", 5, 0, bad, scn.learner.to_dict(), 0, 5))
    res = execute(jobs, tmp_path, engine=engine, workers=2)
    assert list(res.failed) == ["r/f/oracle/x=5/seed=0"]
    assert "model.n_users" in res.failed["r/f/oracle/x=5/seed=0"]
    assert len(res.rows) == 3 and len(Path(tmp_path / "runs.jsonl").read_text().splitlines()) == 3
