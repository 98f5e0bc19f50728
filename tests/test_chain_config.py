"""The chain's pure parts: config validation, genesis, accounts, hashrate recovery, summaries.
No geth here (see test_chain_geth.py)."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.network import ChainAccounts, make_genesis, node_key
from chain.config import MIN_DIFFICULTY, ChainConfig
from base.errors import ConfigError
from chain.geth import HTTP_APIS, write_toml
from testbed.experiments.metrics import EWMA_ALPHA, instant_hashrate, summarize
from testbed.experiments.mining_check import budgets_for


@pytest.mark.parametrize("kwargs, field", [
    ({"n_nodes": 0}, "chain.n_nodes"),
    ({"n_nodes": 2.5}, "chain.n_nodes"),
    ({"pow_mode": "fake"}, "chain.pow_mode"),
    ({"budget_mode": "magic"}, "chain.budget_mode"),
    ({"genesis_difficulty": MIN_DIFFICULTY - 1}, "chain.genesis_difficulty"),
    ({"host": "0.0.0.0"}, "chain.host"),
    ({"host": "::"}, "chain.host"),
    ({"host": "localhost"}, "chain.host"),
    ({"threads": -1}, "chain.threads"),
    ({"threads": 9, "max_threads": 8}, "chain.threads"),
    ({"http_port": 65535}, "chain.http_port"),
    ({"ws_port": 8601}, "chain.ws_port"),   # overlaps http_port 8600 + n_nodes
    ({"mnemonic": "too short"}, "chain.mnemonic"),
    ({"start_timeout_s": 0}, "chain.start_timeout_s"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ChainConfig(**kwargs)


def test_config_is_keyword_only_with_valid_defaults():
    cfg = ChainConfig()
    assert cfg.pow_mode == "test" and cfg.host == "127.0.0.1" and cfg.n_nodes >= 1
    with pytest.raises(TypeError):
        ChainConfig(3)


def test_genesis_is_ethash_to_london_without_merge_or_shanghai():
    cfg = ChainConfig(n_nodes=3, n_ues=4, genesis_difficulty=2**18)
    acc = ChainAccounts.derive(cfg.mnemonic, 3, 4)
    g = make_genesis(cfg, acc, timestamp=1_700_000_000)
    c = g["config"]
    assert c["ethash"] == {} and c["chainId"] == cfg.chain_id
    assert c["londonBlock"] == 0 and c["berlinBlock"] == 0 and c["grayGlacierBlock"] == 0
    for forbidden in ("terminalTotalDifficulty", "shanghaiTime", "cancunTime", "clique"):
        assert forbidden not in c
    assert int(g["difficulty"], 16) == 2**18
    assert set(g["alloc"]) == {a.address for a in acc.all} and len(g["alloc"]) == 1 + 3 + 4


def test_accounts_are_deterministic_and_match_the_dev_mnemonic():
    a = ChainAccounts.derive(ChainConfig().mnemonic, 2, 3)
    b = ChainAccounts.derive(ChainConfig().mnemonic, 2, 3)
    assert [x.address for x in a.all] == [x.address for x in b.all]
    # anvil's first dev account: the contract tests and this chain share the same keys
    assert a.esp.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert len({x.address for x in a.all}) == 6
    assert node_key(1, 0) != node_key(1, 1) == node_key(1, 1)


def test_rpc_namespaces_never_include_personal():
    assert "personal" not in HTTP_APIS


def test_geth_toml_writer(tmp_path):
    p = tmp_path / "c.toml"
    write_toml(p, {"Eth.Ethash": {"PowMode": 2, "DatasetDir": ""},
                   "Node.P2P": {"StaticNodes": ["enode://a@1.2.3.4:1"], "NoDiscovery": True}})
    import tomllib
    d = tomllib.loads(p.read_text())
    assert d["Eth"]["Ethash"]["PowMode"] == 2
    assert d["Node"]["P2P"]["StaticNodes"] == ["enode://a@1.2.3.4:1"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e7), min_size=2, max_size=30),
       st.floats(min_value=0, max_value=1e7))
def test_instant_hashrate_inverts_geths_ewma(rates, r0):
    """Feed per-tick rates through go-metrics' EWMA (read 5x per tick), recover them."""
    ewma, times, values, visible = r0, [-1.0], [r0], []
    t = 0.0
    for x in rates:
        new = ewma + EWMA_ALPHA * (x - ewma)
        if new != ewma:   # a tick that leaves the reading unchanged cannot be seen
            visible.append(x)
        ewma = new
        for _ in range(5):
            times.append(t)
            values.append(ewma)
            t += 1.0
    got = [r for _, r in instant_hashrate(times, values)]
    assert len(got) == len(visible)
    for g, x in zip(got, visible):
        assert math.isclose(g, x, rel_tol=1e-6, abs_tol=1e-2)


def test_instant_hashrate_sees_a_stop_at_the_next_tick():
    r = 100_000.0
    seq = [r, r, r, r * (1 - EWMA_ALPHA)]   # miner stopped: next tick counts zero hashes
    got = instant_hashrate([0, 1, 2, 3], seq)
    assert len(got) == 1 and got[0][0] == 3 and got[0][1] == pytest.approx(0, abs=1e-6)


def test_summarize_counts_blocks_uncles_and_shares():
    miners = {"0xa": "mec1", "0xb": "mec2"}
    blocks = [{"number": i, "hash": f"h{i}", "miner": m, "timestamp": 100 + 2 * i,
               "difficulty": 131072, "gas_used": 0, "uncles": u}
              for i, (m, u) in enumerate([("0xa", []), ("0xb", [{"miner": "0xa", "hash": "x",
                                                                  "number": 0}]),
                                          ("0xb", []), ("0xb", [])])]
    s = summarize(blocks, miners)
    assert s["blocks"] == 4 and s["uncles"] == 1 and s["uncle_rate"] == 0.25
    assert s["nodes"]["mec1"]["blocks"] == 1 and s["nodes"]["mec2"]["block_share"] == 0.75
    assert s["nodes"]["mec1"]["uncles_mined"] == 1 and s["interval_mean_s"] == 2.0


def test_budgets_for_modes():
    assert budgets_for("threads", [1, 2, 4], 1.4) == ([1, 2, 4], [None, None, None])
    threads, quotas = budgets_for("cpu_quota", [1, 2, 4], 1.4)
    assert threads == [1, 1, 1] and quotas == pytest.approx([0.2, 0.4, 0.8])
    assert budgets_for("cpu_quota", [1, 3], 2.0)[0] == [1, 2]


def test_wilson_interval_contains_the_share_even_at_the_edges():
    from testbed.experiments.mining_check import _wilson
    for k, n in ((0, 6), (6, 6), (3, 6), (19, 150)):
        lo, hi = _wilson(k, n)
        assert 0 <= lo <= k / n <= hi <= 1
    lo, hi = _wilson(19, 150)
    assert lo == pytest.approx(0.0829, abs=1e-3) and hi == pytest.approx(0.1899, abs=1e-3)


def test_the_one_quota_writer_writes_v1_and_v2_as_the_group_says(tmp_path):
    """chain.cgroup.write_quota is the lab's and the controller's one CPU-quota writer: v1 files
    where the group has them, v2 otherwise; a quota the kernel would not enforce is refused;
    and on this machine's real CPU controller the quota reads back."""
    import os

    from chain.cgroup import CpuQuota, QuotaError, available, write_quota
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("-1")
    write_quota(v1, 0.25, 100_000)
    assert [(v1 / f).read_text() for f in ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares")] == \
        ["100000", "25000", "256"]
    write_quota(v1, None)
    assert ((v1 / "cpu.cfs_quota_us").read_text(), (v1 / "cpu.shares").read_text()) == ("-1", "1024")
    v2 = tmp_path / "v2"
    v2.mkdir()
    write_quota(v2, 0.25, 100_000, weight=0.5)
    assert ((v2 / "cpu.max").read_text(), (v2 / "cpu.weight").read_text()) == ("25000 100000", "50")
    with pytest.raises(QuotaError, match="below the kernel's minimum"):
        write_quota(v2, 0.001, 100_000)
    assert (v2 / "cpu.max").read_text() == "25000 100000"          # nothing written
    if available() is None or os.geteuid() != 0:
        pytest.skip("no writable cgroup CPU controller here")
    q = CpuQuota(f"quota-test-{os.getpid()}", parent="mec-test")
    try:
        q.set(0.3)
        f = q.dir / ("cpu.cfs_quota_us" if (q.dir / "cpu.cfs_quota_us").exists() else "cpu.max")
        assert f.read_text().split()[0] == "30000"
    finally:
        q.remove()
