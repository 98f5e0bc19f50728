"""Scenario loading: defaults, overrides and clear errors naming the field."""
import pytest

from scenario.config import ConfigError, load_scenario


def test_smoke_scenario_loads_with_override():
    scn = load_scenario("smoke", ["network.link_bw_mbit=20", "seed=3"])
    assert scn.network.link_bw_mbit == 20 and scn.seed == 3 and scn.topology.kind == "smoke"


@pytest.mark.parametrize("override, field", [
    ("network.link_bw_mbit=-1", "network.link_bw_mbit"),
    ("network.datapath='warp'", "network.datapath"),
    ("network.colour=1", "network.colour"),
    ("network.controller_port=70000", "network.controller_port"),
    ("nosuchfield=1", "nosuchfield"),
    ("contract.confirmations=0", "contract.confirmations"),
    ("chain.n_nodes=0", "chain.n_nodes"),
    ("model.n_servers=0", "model.n_servers"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_scenario("smoke", [override])


def test_missing_scenario_file():
    with pytest.raises(ConfigError, match="not found"):
        load_scenario("/nonexistent/scenario.toml")
