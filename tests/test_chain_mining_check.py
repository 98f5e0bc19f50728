"""`python -m testbed mining-check` end to end on a short run (real geth nodes, both budget
modes, a few blocks): the files it writes and the figures in them. The 150-block check
itself is `make mining-check`, not a test."""
import json
import math

import pytest

from chain_ports import free_port_base, port_kwargs
from testbed.cli import main
from scenario.config import ConfigError, load_scenario
from testbed.experiments.mining_check import run

# Beside the machine worker under make test: the nodes' quotas nest under conftest's
# beside_cgroup (chain.cgroup_parent), not the lab's mec-chain, and listen on ports of their own
pytestmark = [pytest.mark.chain]


def test_mining_check_writes_json_csv_and_plot(tmp_path, beside_cgroup):
    ports = [f"chain.{k}={v}" for k, v in port_kwargs(free_port_base(3, span=100)).items()]
    rc = main(["mining-check", "--set", "mining.blocks=6", "--set", "mining.warmup_s=2",
               "--set", "mining.max_minutes=3", "--set", "chain.genesis_difficulty=524288",
               "--set", f"chain.cgroup_parent='{beside_cgroup}'",
               "--out", str(tmp_path)] + [a for p in ports for a in ("--set", p)])
    assert rc == 0
    res = json.loads((tmp_path / "mining.json").read_text())
    assert set(res["runs"]) == {"cpu_quota", "threads"} and res["mode"] == "cpu_quota"
    for mode, run in res["runs"].items():
        nodes = run["nodes"]
        assert list(nodes) == ["mec1", "mec2", "mec3"]
        assert [round(p["budget_share"], 3) for p in nodes.values()] == [0.143, 0.286, 0.571]
        assert sum(p["blocks"] for p in nodes.values()) + run["blocks_by_unknown_miner"] \
            == run["blocks"] == 6
        assert math.isclose(sum(p["hash_share"] for p in nodes.values()), 1.0, rel_tol=1e-9)
        assert 0 <= run["chi2_vs_budget"]["p_value"] <= 1
        assert 0 <= run["uncle_rate"] <= 2
        assert run["measure_s"] > 0 and run["startup"]["mining_s"] > 0
        lines = (tmp_path / f"mining_{mode}_blocks.csv").read_text().splitlines()
        assert len(lines) == 7
    assert res["runs"]["cpu_quota"]["nodes"]["mec3"]["cpu_quota_cores"] == pytest.approx(0.8)
    assert res["runs"]["threads"]["nodes"]["mec3"]["threads"] == 4
    assert (tmp_path / "mining.png").stat().st_size > 10_000


@pytest.mark.parametrize("override, field", [
    ("mining.ratio=[1, 'x', 2]", "mining.ratio"), ("mining.ratio=[0, 1, 2]", "mining.ratio"),
    ("mining.blocks=0", "mining.blocks"),
])
def test_mining_check_rejects_bad_settings(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_scenario("mining", [override])


def test_mining_check_refuses_more_cores_than_the_machine_and_a_ratio_not_per_server(tmp_path):
    with pytest.raises(ConfigError, match=r"mining\.cores"):
        run(load_scenario("mining", ["mining.cores=99"]), tmp_path)
    with pytest.raises(ConfigError, match=r"mining\.ratio.*model\.n_servers"):
        run(load_scenario("mining", ["mining.ratio=[1, 2]"]), tmp_path)
