"""Scenario loading: defaults, overrides and clear errors naming the field; the digest."""
import copy
import dataclasses
import json

import pytest

from scenario.config import NOT_DIGESTED, SECTIONS, ConfigError, load_scenario, scenario_from_dict


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


def test_the_digest_is_stable_and_leaves_out_only_names_places_and_workers():
    scn = load_scenario("lab")
    again = scenario_from_dict(json.loads(json.dumps(scn.to_dict())))          # as lab.json hands it on
    assert scn.digest() == load_scenario("lab").digest() == again.digest()
    assert len(scn.digest()) == 64 and scn.digest() != load_scenario("paper").digest()
    assert load_scenario("lab", ["model.slot_s=10"]).digest() == scn.digest()    # 10 and 10.0: one number
    elsewhere = ["name='other'", "results_dir='/tmp/elsewhere'", "paper.jobs=64", "chain.workdir='/tmp/dd'"]
    assert load_scenario("lab", elsewhere).digest() == scn.digest()


def _other(value):
    """Another value of the same kind (the digest reads plain data, so no check is needed)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, (list, tuple)):
        return [*value, "x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return f"{value}x"


def test_the_digest_changes_with_every_other_field():
    # with servers listed: without them the [cluster] table is left out (the digest of one machine)
    scn = load_scenario("lab", ["cluster.controller_address='192.168.50.1'",
                                "cluster.servers=[{name='a', address='192.168.50.11'}]"])
    same = []
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(scn, section)):
            if f"{section}.{f.name}" in NOT_DIGESTED:
                continue
            changed = copy.deepcopy(scn)
            part = getattr(changed, section)
            object.__setattr__(part, f.name, _other(getattr(part, f.name)))    # a frozen section too
            if changed.digest() == scn.digest():
                same.append(f"{section}.{f.name}")
    assert same == []
    assert load_scenario("lab", ["seed=1"]).digest() != load_scenario("lab").digest()
    assert load_scenario("lab", ["model.cpu_ghz=5.5"]).digest() != load_scenario("lab").digest()
