"""Configuration: malformed values give a clear error naming the field; TOML round trip."""
import tomllib
from pathlib import Path

import pytest

from agent.config import LearnerConfig, ModelConfig, PaperConfig
from scenario.config import load_scenario
from base.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kwargs,field", [
    ({"n_servers": 0}, "model.n_servers"),
    ({"n_users": -3}, "model.n_users"),
    ({"n_users": 2.5}, "model.n_users"),
    ({"data_mb_range": [-1.0, 5.0]}, "model.data_mb_range"),
    ({"data_mb_range": [5.0, 1.0]}, "model.data_mb_range"),
    ({"demand_gcycles_range": [0.6]}, "model.demand_gcycles_range"),
    ({"cpu_ghz": -5.0}, "model.cpu_ghz"),
    ({"block_kb": 0}, "model.block_kb"),
    ({"hash_budget_mhs": 150.0}, "model.hash_budget_mhs"),            # below 10 servers x 20 MHash/s
    ({"hash_levels_mhs": [40.0, 20.0]}, "model.hash_levels_mhs"),
    ({"network_hash_mhs": 500.0}, "model.network_hash_mhs"),          # below the 600 budget
    ({"cpu_per_mhs": 0.06}, "model.cpu_per_mhs"),                     # 100 MHash/s would take 6 GHz of 5
    ({"arrival_prob": 0.0}, "model.arrival_prob"),
    ({"reputation_window": 0}, "model.reputation_window"),
    ({"slot_s": 0.3}, "model.slot_s"),                                # 1.6 Gcycles at 5 GHz take 0.32 s
    ({"eta_per_s": -1.0}, "model.eta_per_s"),
    ({"demand_reading": "per_gb"}, "model.demand_reading"),
    ({"demand_reading": "per_mb", "slot_s": 1.5}, "model.slot_s"),     # 5 MB x 1.6 Gcycles/MB = 1.6 s at 5 GHz
])
def test_model_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs,field", [
    ({"gamma": 1.0}, "learner.gamma"),
    ({"lr": -0.01}, "learner.lr"),
    ({"batch_size": 0}, "learner.batch_size"),
    ({"replay_size": 10}, "learner.replay_size"),
    ({"hidden": []}, "learner.hidden"),
    ({"head": "dueling"}, "learner.head"),
    ({"eps_end": 0.5, "eps_start": 0.1}, "learner.eps_end"),
])
def test_learner_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        LearnerConfig(**kwargs)


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match=r"model\.n_miners"):
        ModelConfig.from_dict({"n_miners": 3})
    with pytest.raises(ConfigError, match=r"paper\.seeds"):
        PaperConfig(seeds=1)


def test_paper_scenario_loads_and_round_trips():
    scn = load_scenario(ROOT / "scenarios" / "paper.toml", ["model.n_users=30", "learner.lr=0.01"])
    mcfg, lcfg, pc = scn.model, scn.learner, scn.paper
    assert mcfg.n_users == 30 and lcfg.lr == 0.01 and pc.seeds >= 5
    assert ModelConfig.from_dict(mcfg.to_dict()) == mcfg
    assert LearnerConfig.from_dict(lcfg.to_dict()) == lcfg
    assert PaperConfig.from_dict(pc.to_dict()) == pc
    data = tomllib.loads((ROOT / "scenarios" / "paper.toml").read_text())
    assert set(data) >= {"model", "learner", "paper"}
    with pytest.raises(ConfigError, match=r"model\.n_servers"):
        load_scenario(None, ["model.n_servers=0"])


def test_paper_scenario_default_reading_is_its_model():
    """The paper scenario's [model] is its default reading: laying that reading over it changes nothing."""
    scn = load_scenario("paper")
    pc = scn.paper
    assert pc.default_reading in pc.readings
    assert pc.reading_model(scn.model, pc.default_reading) == scn.model
    assert scn.model.cpu_per_mhs == 0.0                               # κ is not in the paper
    units = {pc.reading_model(scn.model, r).demand_reading for r in pc.readings}
    assert units == {"total", "per_mb"}                               # both units of ξ are run


def test_readings_are_checked_and_named():
    with pytest.raises(ConfigError, match=r"paper\.readings\.bad: unknown \[model\] field\(s\) n_miners"):
        PaperConfig(readings={"bad": {"n_miners": 3}}, default_reading="bad")
    with pytest.raises(ConfigError, match=r"paper\.default_reading"):
        PaperConfig(readings={"a": {}}, default_reading="b")
    pc = PaperConfig(readings={"slow": {"demand_reading": "per_mb", "slot_s": 1.0}}, default_reading="slow")
    with pytest.raises(ConfigError, match=r"paper\.readings\.slow over \[model\]: model\.slot_s"):
        pc.reading_model(ModelConfig(), "slow")
    with pytest.raises(ConfigError, match=r"paper\.readings\.w"):
        load_scenario("paper", ["paper.readings.w=3"])
