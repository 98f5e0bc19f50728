"""The paper's equations against hand-computed values, and the environment's dynamics."""
import math

import numpy as np
import pytest

from agent import model
from agent.config import ModelConfig
from agent.env import MecChainEnv


def test_eq1_service_cost():
    # φ_u = µ ξ_u: 0.15 token/Gcycle x 1.2 Gcycles = 0.18 token
    assert model.service_cost(0.15, 1.2) == pytest.approx(0.18)
    assert np.allclose(model.service_cost(0.15, [0.6, 1.6]), [0.09, 0.24])


def test_eq2_execution_latency_with_cpu_coupling():
    # 60 MHash/s at κ = 0.02 GHz per MHash/s leaves 5 - 1.2 = 3.8 GHz for tasks
    assert model.task_capacity(5.0, 60.0, 0.02) == pytest.approx(3.8)
    # T = 3.3 Gcycles / 3.8 GHz = 0.868421 s
    assert model.execution_latency(3.3, 3.8) == pytest.approx(3.3 / 3.8)


def test_task_gcycles_under_both_readings():
    # total: the task needs ξ Gcycles whatever its data size; per_mb: d·ξ
    total, per_mb = ModelConfig(demand_reading="total"), ModelConfig(demand_reading="per_mb")
    assert model.task_gcycles(total, 3.0, 1.1) == pytest.approx(1.1)
    assert model.task_gcycles(per_mb, 3.0, 1.1) == pytest.approx(3.3)
    assert np.allclose(model.task_gcycles(total, [1.0, 5.0], [0.6, 1.6]), [0.6, 1.6])
    assert np.allclose(model.task_gcycles(per_mb, [1.0, 5.0], [0.6, 1.6]), [0.6, 8.0])
    # eq. (1) is µ·ξ in both readings
    for cfg in (total, per_mb):
        terms = model.slot_terms(cfg, np.array([3.0]), np.array([1.1]), np.array([0] + [1] * 9), np.zeros(10, int))
        assert terms.revenue[0] == pytest.approx(0.15 * 1.1)
    lat_total = model.slot_terms(total, np.array([3.0]), np.array([1.1]), np.array([0] + [1] * 9), np.zeros(10, int))
    lat_mb = model.slot_terms(per_mb, np.array([3.0]), np.array([1.1]), np.array([0] + [1] * 9), np.zeros(10, int))
    assert lat_total.latency[0] == pytest.approx(1.1 / 5.0) and lat_mb.latency[0] == pytest.approx(3.3 / 5.0)


def test_latency_weight_threshold_is_where_fig6_turns():
    # w* = µ f / d̄ = 0.15 x 5 / 3 = 0.25 (per MB), µ f = 0.75 (total); κ = 0.02 takes 1.2 GHz at 60 MHash/s
    assert model.latency_weight_threshold(ModelConfig(demand_reading="per_mb")) == pytest.approx(0.25)
    assert model.latency_weight_threshold(ModelConfig(demand_reading="total")) == pytest.approx(0.75)
    assert model.latency_weight_threshold(ModelConfig(demand_reading="per_mb", cpu_per_mhs=0.02)) == pytest.approx(0.19)
    # the derivative of one served task's utility in ξ changes sign at w*, at the mean data size
    for reading in ("per_mb", "total"):
        w_star = model.latency_weight_threshold(ModelConfig(demand_reading=reading))
        for w, sign in ((0.9 * w_star, 1), (1.1 * w_star, -1)):
            cfg = ModelConfig(demand_reading=reading, latency_weight=w)
            users, levels = np.array([0] + [1] * 9), np.full(10, 2)
            u = [model.slot_terms(cfg, np.array([3.0]), np.array([xi]), users, levels).utility[0] for xi in (1.0, 1.2)]
            assert np.sign(u[1] - u[0]) == sign


def test_eq3_reputation_and_empty_window():
    # Υ = Σ τ / Σ T: (1.0 + 2.0) / (0.5 + 1.0) = 2; no task in the window -> neutral 1
    assert model.reputation([3.0, 0.0], [1.5, 0.0]).tolist() == [2.0, 1.0]
    assert model.reputation(0.0, 0.0, default=0.5) == 0.5


def test_eq4_to_6_mining():
    assert model.relative_hash(60.0, 1000.0) == pytest.approx(0.06)
    assert model.propagation_time(5.0, 0.0, 0.08) == pytest.approx(0.4)
    assert model.orphan_probability(5.0, 1 / 600, 0.0, 0.08) == pytest.approx(1 - math.exp(-0.4 / 600))
    assert model.success_probability(0.06, 5.0, 1 / 600, 0.0, 0.08) == pytest.approx(0.06 * math.exp(-0.4 / 600))
    cfg = ModelConfig()                                # R = 30, H = 1000, b = 5 KB, η = 1/600, 80 ms/KB
    assert model.mining_reward(cfg, 60.0) == pytest.approx(30 * 0.06 * math.exp(-0.4 / 600))
    assert model.mining_reward(cfg, 60.0) == pytest.approx(1.798801, abs=1e-6)
    fee = ModelConfig(fee_per_kb=0.5)                  # reward (R + r b) = 32.5 token
    assert model.mining_reward(fee, 100.0, 5.0) == pytest.approx(32.5 * 0.1 * math.exp(-0.4 / 600))
    # a larger block is worth less under (6) as printed
    assert model.mining_reward(cfg, 60.0, 10.0) < model.mining_reward(cfg, 60.0, 1.0)


def test_eq11_one_slot_by_hand():
    cfg = ModelConfig(n_servers=2, n_users=3, hash_budget_mhs=200.0, demand_reading="per_mb", cpu_per_mhs=0.02)
    data = np.array([1.0, 2.0, 4.0])
    demand = np.array([1.0, 1.5, 0.8])
    # server 0 serves UE 1 at 20 MHash/s; server 1 idles (index 3 = U) at 60 MHash/s
    terms = model.slot_terms(cfg, data, demand, np.array([1, 3]), np.array([0, 2]))
    disc = math.exp(-0.4 / 600)
    r0 = 30 * 0.02 * disc + 0.15 * 1.5 - 2.0 * 1.5 / (5.0 - 0.4)     # 0.599600 + 0.225 - 0.652174
    r1 = 30 * 0.06 * disc
    assert terms.latency.tolist() == pytest.approx([3.0 / 4.6, 0.0])
    assert terms.revenue.tolist() == pytest.approx([0.225, 0.0])
    assert terms.utility.tolist() == pytest.approx([r0, r1])
    assert float(terms.total) == pytest.approx(r0 + r1)
    assert r0 + r1 == pytest.approx(1.971227, abs=1e-6)


def test_feasibility_rules():
    cfg = ModelConfig(n_servers=3, n_users=4, hash_budget_mhs=180.0)
    pending = np.array([True, True, True, False])
    assert model.action_problems(cfg, [0, 1, 2], [2, 2, 2], pending) == []
    assert any("twice" in p for p in model.action_problems(cfg, [0, 0, 1], [0, 0, 0], pending))
    assert any("no task" in p for p in model.action_problems(cfg, [0, 1, 3], [0, 0, 0], pending))
    assert any("idle while tasks wait" in p for p in model.action_problems(cfg, [0, 1, 4], [0, 0, 0], pending))
    assert any("budget" in p for p in model.action_problems(cfg, [0, 1, 2], [4, 4, 0], pending))
    # fewer tasks than servers: idling is then allowed
    assert model.action_problems(cfg, [0, 4, 4], [0, 0, 0], np.array([True, False, False, False])) == []


def test_env_rejects_infeasible_actions():
    env = MecChainEnv(ModelConfig(n_servers=2, n_users=3, hash_budget_mhs=100.0))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="served twice"):
        env.step(np.array([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="budget"):
        env.step(np.array([[0, 1], [4, 4]]))
    with pytest.raises(ValueError, match="2 x 2 entries"):
        env.step(np.array([0, 1, 0]))


def test_flat_and_two_row_actions_are_the_same_action():
    """The action space is the flat MultiDiscrete([U+1]*M + [K]*M); (2, M) arrays mean the same."""
    cfg = ModelConfig(n_servers=3, n_users=5, hash_budget_mhs=180.0)
    env = MecChainEnv(cfg)
    assert env.action_space.shape == (6,)
    assert env.action_space.nvec.tolist() == [6, 6, 6, 5, 5, 5]
    two_rows = np.array([[0, 1, 2], [2, 2, 2]])
    env.reset(seed=4)
    a = env.step(two_rows)
    env.reset(seed=4)
    b = env.step(two_rows.ravel())
    assert env.action_space.contains(two_rows.ravel())
    assert a[1] == b[1] and np.array_equal(a[0], b[0])


def test_registered_with_gymnasium():
    import gymnasium as gym

    import agent  # noqa: F401  (registers MecChain-v0)
    env = gym.make("MecChain-v0", cfg=ModelConfig(n_users=7), n_servers=4, hash_budget_mhs=240.0)
    assert env.unwrapped.cfg.n_users == 7 and env.unwrapped.cfg.n_servers == 4
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    repaired = gym.make("MecChain-v0", cfg={"n_users": 7}, repair=True)
    repaired.reset(seed=0)
    for _ in range(5):
        *_, info = repaired.step(repaired.action_space.sample())
        assert info["n_served"] == 7                     # every UE has a task (arrival_prob 1) and U < M


def test_env_reputation_window_and_aging():
    cfg = ModelConfig(n_servers=1, n_users=2, reputation_window=2, max_wait_slots=3, hash_budget_mhs=100.0,
                      demand_reading="per_mb", cpu_per_mhs=0.02)
    env = MecChainEnv(cfg)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    tau, d, xi = env.desired_s[0], env.data_mb[0], env.demand[0]
    obs, r, term, trunc, info = env.step(np.array([[0], [0]]))           # serve UE 0 at 20 MHash/s
    T = d * xi / (5.0 - 0.02 * 20.0)
    assert info["latency_s"] == pytest.approx(T)
    assert env.reputation[0] == pytest.approx(tau / T)                    # eq. (3) over the window
    demand, data, age, pending, rep = env.layout.split(obs)
    assert rep[0] == pytest.approx(tau / T) and age[1] == 1 and age[0] == 0  # UE 1 waited one slot
    waiting = (env.data_mb[1], env.demand[1])
    env.step(np.array([[0], [0]]))                                          # serve UE 0 again
    obs, *_ = env.step(np.array([[0], [0]]))
    assert env.reputation[0] > 0
    # UE 1 has now waited 3 slots = max_wait_slots: its task was dropped and a new one arrived
    assert (env.data_mb[1], env.demand[1]) != waiting
    assert env.layout.split(obs)[2][1] == 0


def test_env_same_seed_same_trajectory():
    from agent import actions

    def trajectory(seed):
        cfg = ModelConfig(n_users=12, arrival_prob=0.7)
        env = MecChainEnv(cfg)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = []
        for _ in range(50):
            a = actions.random_action(cfg, env.layout.split(obs)[3], rng)
            obs, r, *_ = env.step(a)
            out.append((r, obs.copy()))
        return out

    a, b, c = trajectory(3), trajectory(3), trajectory(4)
    assert all(ra == rb and np.array_equal(oa, ob) for (ra, oa), (rb, ob) in zip(a, b))
    assert any(ra != rc for (ra, _), (rc, _) in zip(a, c))


def test_env_steps_with_many_users():
    # 1000 UEs, 10 servers: the vectorised step handles any U.
    cfg = ModelConfig(n_users=1000)
    env = MecChainEnv(cfg)
    env.reset(seed=0)
    users = np.arange(10)
    _, r, *_ = env.step(np.stack([users, np.full(10, cfg.equal_hash_level)]))
    assert np.isfinite(r)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped")
def test_repaired_env_passes_gymnasium_checker():
    from gymnasium.utils.env_checker import check_env

    from agent.env import RepairAction
    for reading in ("total", "per_mb"):
        check_env(RepairAction(MecChainEnv(ModelConfig(n_users=6, demand_reading=reading))), skip_render_check=True)
    env = RepairAction(MecChainEnv(ModelConfig(n_users=6)))
    env.reset(seed=0)
    for _ in range(30):                          # arbitrary samples of the space are made feasible
        env.step(env.action_space.sample())
