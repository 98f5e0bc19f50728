"""`python -m nodes.mining_check` end to end on a short run (real geth nodes, both budget
modes, a few blocks): the files it writes and the figures in them. The 150-block check
itself is `make mining-check`, not a test."""
import json
import math

import pytest

from chain_ports import free_port_base
from nodes.mining_check import main

pytestmark = pytest.mark.chain


def test_mining_check_writes_json_csv_and_plot(tmp_path):
    base = free_port_base(3, span=100)
    rc = main(["--mode", "both", "--blocks", "6", "--warmup", "2", "--difficulty", "524288",
               "--max-minutes", "3", "--port-base", str(base), "--out", str(tmp_path)])
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


def test_mining_check_rejects_bad_arguments(tmp_path, capsys):
    for argv, word in ((["--ratio", "1,x"], "--ratio"), (["--ratio", "0,1"], "--ratio"),
                       (["--blocks", "0"], "--blocks"), (["--cores", "99"], "--cores")):
        with pytest.raises(SystemExit):
            main(argv + ["--out", str(tmp_path)])
        assert word in capsys.readouterr().err
