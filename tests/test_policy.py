"""The live lab's decision side without a lab: the projection of infeasible actions, the
measured observation, the one training loop, and the fidelity fit on a trace with known
constants."""
from __future__ import annotations

import numpy as np
import pytest

from agent import model
from agent.config import ModelConfig
from testbed.policy import ReputationGreedy, observation, project, to_assignment


def snapshot(**kw):
    snap = {"t": 100.0, "servers": ["mec1", "mec2", "mec3"], "ues": ["ue1", "ue2", "ue3", "ue4"],
            "down": [], "reputation": {"mec1": 1.0, "mec2": 0.5, "mec3": 2.0},
            "pending": {"ue1": {"demand": 1.0, "data_mb": 2.0, "since": 80.0, "mec": None},
                        "ue2": {"demand": 1.5, "data_mb": 1.0, "since": 95.0, "mec": None},
                        "ue3": {"demand": 0.8, "data_mb": 3.0, "since": 99.0, "mec": "mec1"}}}
    snap.update(kw)
    return snap


CFG = ModelConfig(n_servers=3, n_users=4)


def test_a_feasible_action_is_left_alone():
    serve, levels, notes = project({"mec1": "ue1", "mec2": "ue2", "mec3": None},
                                   {"mec1": 0, "mec2": 1, "mec3": 2}, snapshot(), CFG)
    assert notes == [] and serve == {"mec1": "ue1", "mec2": "ue2", "mec3": None}
    assert levels == {"mec1": 0, "mec2": 1, "mec3": 2}


def test_infeasible_parts_are_projected_away_and_said():
    snap = snapshot(down=["mec2"])
    serve, levels, notes = project(
        {"mec1": "ue1", "mec2": "ue2", "mec3": "ue1", "mec9": "ue2"},
        {"mec1": 7, "mec2": -1, "mec3": 4}, snap, CFG)
    assert serve == {"mec1": "ue1", "mec2": None, "mec3": None}        # down; served twice
    text = " | ".join(notes)
    assert "mec2 is down" in text and "ue1 is already served" in text and "mec9 is not a server" in text
    assert "clipped" in text
    assert all(0 <= k < CFG.n_levels for k in levels.values())
    assert sum(CFG.hash_levels_mhs[k] for k in levels.values()) <= CFG.hash_budget_mhs
    # a UE whose task is already with a server (ue3) or has none (ue4) is not sent again
    serve, _, notes = project({"mec1": "ue3", "mec2": "ue4", "mec3": None}, {m: 0 for m in snap["servers"]},
                              snapshot(), CFG)
    assert serve == {"mec1": None, "mec2": None, "mec3": None} and len(notes) == 2


def test_a_budget_over_the_limit_is_lowered_to_it():
    cfg = ModelConfig(n_servers=3, n_users=4, hash_budget_mhs=200.0)
    top = cfg.n_levels - 1
    _, levels, notes = project({}, {"mec1": top, "mec2": top, "mec3": top}, snapshot(), cfg)
    total = sum(cfg.hash_levels_mhs[k] for k in levels.values())
    assert total <= 200.0 and total > 200.0 - max(np.diff(cfg.hash_levels_mhs))
    assert notes and all("over the budget" in n for n in notes)


def test_observation_counts_only_waiting_tasks_and_reads_back():
    obs, ues = observation(snapshot(), CFG)
    demand, data, age, pending, rep = model.ObsLayout(4, 3).split(obs)
    assert pending.tolist() == [True, True, False, False]        # ue3 is with mec1, ue4 has none
    assert demand.tolist()[:2] == [1.0, 1.5] and rep.tolist() == [1.0, 0.5, 2.0]
    assert age[0] == min(CFG.max_wait_slots, 20.0 // CFG.slot_s)
    serve, levels = to_assignment(np.array([1, 4, 0, 0, 1, 2]), ["mec1", "mec2", "mec3"], ues)
    assert serve == {"mec1": "ue2", "mec2": None, "mec3": "ue1"} and levels == {"mec1": 0, "mec2": 1, "mec3": 2}


def test_greedy_gives_no_ue_to_a_server_below_the_floor():
    snap = snapshot(reputation={"mec1": 1.0, "mec2": 0.1, "mec3": 2.0})
    serve, _, info = ReputationGreedy(CFG, 0.3).decide(snap)
    assert serve["mec2"] is None and info["excluded"] == ["mec2"]
    assert serve["mec3"] == "ue2" and serve["mec1"] == "ue1"           # biggest demand to the best
    # the floor is relative to the best server *in service*: with mec3 down, mec1 is the best
    snap = snapshot(reputation={"mec1": 0.5, "mec2": 0.1, "mec3": 5.0}, down=["mec3"])
    serve, _, info = ReputationGreedy(CFG, 0.3).decide(snap)
    assert serve["mec1"] == "ue2" and serve["mec3"] is None and info["excluded"] == ["mec2"]


def test_the_training_loop_is_the_papers():
    """agent.train.run_slots on the simulated env gives the utility a hand-written loop gives."""
    from agent.env import MecChainEnv
    from agent.registry import make_agent
    from agent.train import run_slots
    cfg = ModelConfig(n_servers=3, n_users=6)
    out = run_slots(make_agent("greedy", cfg), MecChainEnv(cfg), 50, seed=3)
    env, agent = MecChainEnv(cfg), make_agent("greedy", cfg)
    obs, _ = env.reset(seed=3)
    by_hand = []
    for _ in range(50):
        obs, r, *_ = env.step(agent.act(obs, explore=False))
        by_hand.append(r)
    assert np.allclose(out["curve"], by_hand) and len(out["decision_ms"]) == 50


def test_the_fidelity_fit_recovers_known_constants():
    """A trace made with κ = 0.02, work scale 1.6, 4 MB/s and 0.12 s of overhead (+ 2 % noise):
    the fit finds them, and the scenario's constants (κ = 0, no transfer) are reported off."""
    from testbed.experiments.fidelity import Constants, fit_latency, task_latency
    cfg = ModelConfig(n_servers=3, n_users=6, cpu_per_mhs=0.0)
    rng = np.random.default_rng(0)
    tasks = []
    for i in range(120):
        p = float(rng.choice(cfg.hash_levels_mhs))
        tasks.append({"gcycles": float(rng.uniform(0.5, 3.0)), "p_mhs": p, "data_mb": float(rng.uniform(0.2, 4.0))})
    truth = Constants(kappa=0.02, work=1.6, s_per_mb=0.25, overhead_s=0.12)
    y = task_latency(cfg, truth, tasks) * rng.normal(1.0, 0.02, len(tasks))
    for t, v in zip(tasks, y):
        t["measured_s"] = float(v)
    k, _ = fit_latency(cfg, tasks)
    assert k.kappa == pytest.approx(0.02, abs=0.004)
    assert k.work == pytest.approx(1.6, rel=0.1) and k.s_per_mb == pytest.approx(0.25, rel=0.1)
    assert k.overhead_s == pytest.approx(0.12, abs=0.05)
    before = task_latency(cfg, Constants(kappa=0.0), tasks).mean()
    assert abs(y.mean() / before - 1) > 0.15               # the unfitted simulator is off ...
    assert abs(y.mean() / task_latency(cfg, k, tasks).mean() - 1) < 0.02     # ... the fitted one is not


def test_the_policy_is_checked_before_the_lab_and_an_agent_in_a_child_process(tmp_path):
    """check_policy names the policy, refuses a bad one by its field, and checks an agent in a
    child process (the orchestrator itself never loads torch for it)."""
    import subprocess
    import sys
    from pathlib import Path

    from agent.registry import make_agent
    from base.errors import ConfigError
    from scenario.config import load_scenario
    from testbed.policy import check_policy

    assert check_policy(load_scenario("lab")) == "greedy"
    with pytest.raises(ConfigError, match="lab.policy must be"):
        check_policy(load_scenario("lab", ["lab.policy=agent:nonesuch"]))
    small = load_scenario("lab", ["model.n_servers=3", "model.n_users=4"])
    saved = tmp_path / "ddqn-3x4.pt"
    make_agent("ddqn", small.model, small.learner, seed=0).save(saved)
    with pytest.raises(ConfigError, match="the saved agent is for M = 3, U = 4"):
        check_policy(load_scenario("lab", [f"lab.policy=file:{saved}"]))
    code = ("import sys\n"
            "from scenario.config import load_scenario\n"
            "from testbed.policy import check_policy\n"
            "print(check_policy(load_scenario('lab', ['lab.policy=agent:ddqn'])))\n"
            "assert 'torch' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "agent:ddqn"


def test_one_round_robin_for_the_policy_and_the_controllers_fallback():
    """controller.state.round_robin is both the round_robin policy's and the fallback's: oldest
    waiting UE first, servers that are down skipped, the start rotating with the turn."""
    from controller.state import round_robin
    from scenario.config import load_scenario
    from testbed.policy import RoundRobin

    servers = ["mec1", "mec2", "mec3"]
    assert round_robin(servers, [], ["ue5", "ue2"]) == {"mec1": "ue5", "mec2": "ue2", "mec3": None}
    assert round_robin(servers, ["mec1"], ["ue5", "ue2"], turn=1) == {"mec1": None, "mec2": "ue2", "mec3": "ue5"}
    assert round_robin(servers, [], ["ue1", "ue2", "ue3", "ue4"], turn=4) == {"mec2": "ue1", "mec3": "ue2", "mec1": "ue3"}
    rr = RoundRobin(load_scenario("lab", ["model.n_servers=3"]).model)
    snap = {"servers": servers, "down": [], "pending": {"ue5": {"since": 1.0, "mec": None},
                                                       "ue2": {"since": 2.0, "mec": None},
                                                       "ue7": {"since": 0.5, "mec": "mec1"}}}
    first, second = rr.decide(snap)[0], rr.decide(snap)[0]
    assert first == round_robin(servers, [], ["ue5", "ue2"], turn=0)
    assert second == round_robin(servers, [], ["ue5", "ue2"], turn=1)
