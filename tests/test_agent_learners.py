"""Agents: feasibility of every action, the double-Q target, the oracle, determinism, learning."""
import itertools

import numpy as np
import pytest
import torch

from agent import actions, model
from agent.baselines import GAAgent, GreedyAgent, RandomAgent
from agent.config import LearnerConfig, ModelConfig
from agent.env import MecChainEnv
from agent.learners import DDQNAgent, DQNAgent, QNetwork, Transition, q_target
from agent.learners.dqn import greedy_selector
from agent.oracle import OracleAgent, solve_slot, solve_slot_milp
from agent.registry import AGENTS, VARIANTS, load_agent, make_agent

SMALL_LEARNER = LearnerConfig(batch_size=16, learning_starts=16, replay_size=1000, eps_decay_slots=30)


def run(agent, cfg, slots, seed=0, explore=True, learn=True):
    """Drive agent for `slots`; every action is checked to be a member of the env's action space
    and feasible before the env sees it."""
    env = MecChainEnv(cfg)
    obs, _ = env.reset(seed=seed)
    rewards, acts = [], []
    for _ in range(slots):
        a = agent.act(obs, explore=explore)
        assert env.action_space.contains(a), (agent.name, a)
        assert model.action_problems(cfg, *actions.split_action(a, cfg.n_servers), env.pending) == [], (agent.name, a)
        nxt, r, term, trunc, info = env.step(a)
        if learn:
            agent.learn(Transition(obs, a, r, info["server_utility"], nxt, term, trunc))
        rewards.append(r)
        acts.append(a.copy())
        obs = nxt
        if trunc:
            obs, _ = env.reset(seed=seed + 1)
    return np.array(rewards), acts


SMALL_GA = dict(ga_population=8, ga_generations=4)
CASES = {name: (lambda c, name=name: make_agent(name, c, LearnerConfig(**{**SMALL_LEARNER.to_dict(), **SMALL_GA}),
                                                 seed=0)) for name in AGENTS}
CASES.update({f"ddqn_{v}": (lambda c, v=v: make_agent("ddqn", c, SMALL_LEARNER, seed=0, variant=v))
              for v in VARIANTS if v != "full"})
CASES["ddqn_flat"] = lambda c: make_agent("ddqn", c, LearnerConfig(batch_size=16, learning_starts=16, head="flat"))


def test_registry_names_every_agent():
    assert set(AGENTS) == {"ddqn", "dqn", "qlearning", "ga", "greedy", "random", "oracle"}
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("ppo", ModelConfig())
    with pytest.raises(ValueError, match="only for ddqn and dqn"):
        make_agent("greedy", ModelConfig(), variant="no_us")


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("users,arrival", [(7, 0.5), (2, 1.0)])
def test_every_agent_emits_feasible_members_of_the_action_space(name, users, arrival):
    """Every agent of agent.registry (and the DQN variants), exploring and greedy."""
    # a binding budget (minimum 3 x 20 = 60) and, with arrival 0.5 or U < M, slots with fewer tasks than servers
    cfg = ModelConfig(n_servers=3, n_users=users, hash_budget_mhs=130.0, arrival_prob=arrival, horizon_slots=25,
                      demand_reading="per_mb", cpu_per_mhs=0.02)
    agent = CASES[name](cfg)
    run(agent, cfg, 60)
    run(agent, cfg, 10, seed=5, explore=False, learn=False)


def test_matching_and_knapsack_are_exact_against_brute_force():
    rng = np.random.default_rng(1)
    cfg = ModelConfig(n_servers=3, n_users=4, hash_budget_mhs=160.0)
    levels = np.asarray(cfg.hash_levels_mhs)
    for _ in range(20):
        scores = rng.normal(size=(3, 5))
        pending = rng.random(4) < 0.6
        users = actions.match_users(scores, pending)
        best = -np.inf
        cand = list(np.flatnonzero(pending)) + [4] * 3
        for perm in itertools.permutations(cand, 3):
            served = [u for u in perm if u < 4]
            if len(set(served)) == len(served) and len(served) == min(3, pending.sum()):
                best = max(best, sum(scores[m, u] for m, u in enumerate(perm)))
        assert sum(scores[m, u] for m, u in enumerate(users)) == pytest.approx(best)
        values = rng.normal(size=(3, 5))
        got = actions.knapsack_levels(values, cfg)
        best = max(sum(values[m, k] for m, k in enumerate(ks)) for ks in itertools.product(range(5), repeat=3)
                   if levels[list(ks)].sum() <= 160.0)
        assert levels[got].sum() <= 160.0
        assert sum(values[m, k] for m, k in enumerate(got)) == pytest.approx(best)


def test_oracle_dp_equals_integer_programme_and_bounds_every_agent():
    rng = np.random.default_rng(2)
    for trial in range(12):
        U = int(rng.integers(2, 16))
        cfg = ModelConfig(n_users=U, hash_budget_mhs=float(rng.choice([200, 500, 600, 1000])),
                          cpu_per_mhs=float(rng.choice([0.0, 0.02, 0.03])), slot_s=6.0)
        d, xi = rng.uniform(1, 5, U), rng.uniform(0.6, 1.6, U)
        pending = rng.random(U) < 0.8
        a, b = solve_slot(cfg, d, xi, pending), solve_slot_milp(cfg, d, xi, pending)
        a, b = (actions.split_action(x, cfg.n_servers) for x in (a, b))
        assert model.action_problems(cfg, *a, pending) == []
        va = model.slot_terms(cfg, d, xi, *a).total
        assert va == pytest.approx(model.slot_terms(cfg, d, xi, *b).total, abs=1e-9)
        # no feasible action does better in this slot
        obs = model.ObsLayout(U, cfg.n_servers).join(xi, d, np.zeros(U), pending, np.ones(cfg.n_servers))
        for agent in (RandomAgent(cfg, seed=trial), GreedyAgent(cfg), GAAgent(cfg, seed=trial)):
            act = actions.split_action(agent.act(obs), cfg.n_servers)
            assert model.slot_terms(cfg, d, xi, *act).total <= va + 1e-9


def _tiny_flat_net(cfg, a_bias, b_bias):
    """A network whose output ignores the state: A and B are exactly the given biases."""
    net = QNetwork(cfg, LearnerConfig(head="flat", hidden=(4,)))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.out.bias.copy_(torch.tensor(np.concatenate([np.ravel(a_bias), np.ravel(b_bias)]), dtype=torch.float32))
    return net


# M = 2 servers, U = 2 UEs, levels 20/40 MHash/s and a 60 MHash/s budget: one server at most at 40.
TINY = dict(n_servers=2, n_users=2, hash_levels_mhs=[20.0, 40.0], hash_budget_mhs=60.0)
A_ONLINE, B_ONLINE = [[1, 5, 0], [4, 2, 0]], [[0, 3], [0, 2]]              # argmax: users (1, 0), levels (1, 0)
A_TARGET, B_TARGET = [[10, 1, 0], [2, 10, 0]], [[7, 0.5], [0.25, 1]]      # argmax: users (0, 1), levels (0, 1)
R, GAMMA = np.array([1.0, -0.5]), 0.85
Y_DOUBLE = R + GAMMA * np.array([1 + 0.5, 2 + 0.25])                    # target net at the online argmax
Y_CLASSIC = R + GAMMA * np.array([10 + 7, 10 + 1])                      # target net at its own argmax


def test_double_q_target_uses_online_argmax_and_target_evaluation():
    cfg = ModelConfig(**TINY)
    online = _tiny_flat_net(cfg, A_ONLINE, B_ONLINE)
    target = _tiny_flat_net(cfg, A_TARGET, B_TARGET)
    nxt = torch.zeros(1, 4 * 2 + 2)
    args = (nxt, torch.tensor(R[None], dtype=torch.float32), torch.zeros(1), GAMMA, np.ones((1, 2), bool),
            greedy_selector(cfg))
    y = q_target(online, target, *args, double=True)
    assert y.numpy()[0] == pytest.approx(Y_DOUBLE)                          # [2.275, 1.4125]
    y = q_target(online, target, *args, double=False)
    assert y.numpy()[0] == pytest.approx(Y_CLASSIC)                         # [15.45, 8.85]


@pytest.mark.parametrize("cls,y", [(DDQNAgent, Y_DOUBLE), (DQNAgent, Y_CLASSIC)])
def test_agent_update_regresses_on_its_target(cls, y):
    cfg = ModelConfig(**TINY)
    agent = cls(cfg, LearnerConfig(batch_size=1, replay_size=1, learning_starts=0, train_every=1, head="flat", hidden=(4,),
                                   gamma=GAMMA), seed=0)
    agent.q = _tiny_flat_net(cfg, A_ONLINE, B_ONLINE)
    agent.q_target = _tiny_flat_net(cfg, A_TARGET, B_TARGET)
    agent.opt = torch.optim.SGD(agent.q.parameters(), lr=0.0)
    obs = np.zeros(10)
    obs[6:8] = 1.0                                                          # both UEs have a task
    a = np.array([0, 1, 0, 0])                        # users (0, 1), levels (0, 0): Q_online(s, a) = [1 + 0, 2 + 0]
    out = agent.learn(Transition(obs, a, float(R.sum()), R, obs, False, False))
    assert out["loss"] == pytest.approx(np.mean((np.array([1.0, 2.0]) - y) ** 2), rel=1e-5)


def test_same_seed_same_learning_trajectory():
    cfg = ModelConfig(n_servers=4, n_users=8, hash_budget_mhs=240.0)
    r1, a1 = run(DDQNAgent(cfg, SMALL_LEARNER, seed=7), cfg, 80, seed=3)
    r2, a2 = run(DDQNAgent(cfg, SMALL_LEARNER, seed=7), cfg, 80, seed=3)
    r3, _ = run(DDQNAgent(cfg, SMALL_LEARNER, seed=8), cfg, 80, seed=3)
    assert np.array_equal(r1, r2) and all(np.array_equal(x, y) for x, y in zip(a1, a2))
    assert not np.array_equal(r1, r3)


@pytest.mark.parametrize("name", ["ddqn", "dqn", "qlearning", "ga", "greedy", "random", "oracle"])
def test_saved_agent_acts_the_same_after_loading(tmp_path, name):
    """save -> load_agent gives the same configuration, variant and greedy actions."""
    cfg = ModelConfig(n_servers=3, n_users=6, hash_budget_mhs=180.0, demand_reading="per_mb", latency_weight=0.1)
    variant = "no_ra_random" if name == "dqn" else "full"
    agent = make_agent(name, cfg, LearnerConfig(**{**SMALL_LEARNER.to_dict(), **SMALL_GA}), seed=3, variant=variant)
    run(agent, cfg, 40)
    path = agent.save(tmp_path / f"{name}.pt")
    back = load_agent(path)
    assert type(back) is type(agent) and back.cfg == cfg and back.lcfg == agent.lcfg and back.variant == variant
    if name in ("ddqn", "dqn"):
        for (k, v), (k2, v2) in zip(agent.q.state_dict().items(), back.q.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
        assert back.slot == agent.slot and back.updates == agent.updates > 0
    if name == "qlearning":
        assert np.array_equal(back.QA, agent.QA) and np.abs(agent.QA).sum() > 0
    if name in ("ddqn", "qlearning", "greedy", "oracle"):     # deterministic greedy policies
        env = MecChainEnv(cfg)
        obs, _ = env.reset(seed=11)
        for _ in range(15):
            a, b = agent.act(obs, explore=False), back.act(obs, explore=False)
            assert np.array_equal(a, b)
            obs, *_ = env.step(a)
    with pytest.raises(ValueError, match="not a saved MEC-chain agent"):
        torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
        load_agent(tmp_path / "other.pt")


def test_ddqn_learns_to_beat_random():
    cfg = ModelConfig(n_users=20, demand_reading="per_mb")
    agent = DDQNAgent(cfg, LearnerConfig(eps_decay_slots=150), seed=0)
    run(agent, cfg, 300)
    learned, _ = run(agent, cfg, 100, seed=99, explore=False, learn=False)
    baseline, _ = run(RandomAgent(cfg, seed=0), cfg, 100, seed=99, learn=False)
    best, _ = run(OracleAgent(cfg), cfg, 100, seed=99, learn=False)
    # DDQN should close at least half of the gap between random and the one-slot oracle
    assert learned.mean() > baseline.mean() + 0.5 * (best.mean() - baseline.mean())


def test_run_slots_logs_the_learners_loss_q_and_speed():
    """The training curve carries what a researcher watches (issue 20): each update's loss and
    mean Q-value (None before the first update), and the slots per second."""
    from agent.config import LearnerConfig
    from agent.env import MecChainEnv
    from agent.registry import make_agent
    from agent.train import run_slots
    cfg = ModelConfig(n_servers=3, n_users=6, hash_budget_mhs=180.0, horizon_slots=40)
    agent = make_agent("ddqn", cfg, LearnerConfig(batch_size=8, replay_size=200, learning_starts=10, train_every=2), seed=0)
    out = run_slots(agent, MecChainEnv(cfg), 60, seed=0)
    assert len(out["loss"]) == len(out["q_mean"]) == len(out["curve"]) == 60
    updated = [k for k, v in enumerate(out["loss"]) if v is not None]
    assert out["loss"][0] is None and len(updated) >= 5, out["loss"]            # updates after warm-up
    assert all(np.isfinite(out["loss"][k]) and np.isfinite(out["q_mean"][k]) for k in updated)
    assert out["steps_per_s"] > 0
