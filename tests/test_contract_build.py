"""Build artifacts (fresh, reproducible, London opcodes only), ContractConfig validation, and the
anvil owner's life cycle."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import psutil
import pytest

import contracts.build as build
from chain.anvil import AnvilNode
from contracts.config import ContractConfig
from scenario.config import ConfigError, load_scenario

ROOT = build.ROOT
NAMES = ["TradingContract", "ReentrancyAttacker"]
# Opcodes that London does not have: PUSH0 (Shanghai), TLOAD/TSTORE/MCOPY/BLOBHASH/BLOBBASEFEE (Cancun).
NOT_IN_LONDON = {0x5F: "PUSH0", 0x5C: "TLOAD", 0x5D: "TSTORE", 0x5E: "MCOPY", 0x49: "BLOBHASH", 0x4A: "BLOBBASEFEE"}


def opcodes(code_hex: str) -> list[int]:
    """Opcodes of EVM bytecode, skipping PUSH data and the trailing CBOR metadata."""
    code = bytes.fromhex(code_hex.removeprefix("0x"))
    code = code[: len(code) - 2 - int.from_bytes(code[-2:], "big")]  # metadata length is the last 2 bytes
    out, i = [], 0
    while i < len(code):
        op = code[i]
        out.append(op)
        i += 1 + (op - 0x5F if 0x60 <= op <= 0x7F else 0)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_artifacts_are_fresh_and_hold_abi_and_bytecode(name):
    artifact = build.load_artifact(name)
    assert artifact["compiler"].startswith(build.SOLC_VERSION + "+")
    assert artifact["settings"]["evmVersion"] == "london"
    assert len(artifact["bytecode"]) > 1000 and artifact["abi"]


@pytest.mark.parametrize("name", NAMES)
def test_bytecode_uses_only_london_opcodes(name):
    artifact = build.load_artifact(name)
    for kind in ("bytecode", "deployedBytecode"):
        found = {NOT_IN_LONDON[op] for op in opcodes(artifact[kind]) if op in NOT_IN_LONDON}
        assert not found, f"{name} {kind} uses {found}: geth 1.11.6's PoW chain would reject it"


def test_rebuild_reproduces_the_artifacts_byte_for_byte():
    fresh = build.compile_all()
    assert set(NAMES) <= set(fresh)
    for name in NAMES:
        stored = json.loads((build.BUILD_DIR / f"{name}.json").read_text())
        for key in ("abi", "bytecode", "deployedBytecode", "inputHash", "compiler"):
            assert fresh[name][key] == stored[key], f"{name}.{key} differs from a fresh build"


def test_stale_or_missing_artifact_is_refused(tmp_path, monkeypatch):
    # A copy of the project's contracts/ in tmp_path, so the sources can be edited safely.
    shutil.copytree(build.CONTRACTS_DIR, tmp_path / "contracts",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "CONTRACTS_DIR", tmp_path / "contracts")
    monkeypatch.setattr(build, "BUILD_DIR", tmp_path / "contracts" / "build")
    out = tmp_path / "contracts" / "build"
    assert build.load_artifact("TradingContract", out)["contractName"] == "TradingContract"

    source = tmp_path / "contracts" / "TradingContract.sol"
    source.write_text(source.read_text() + "\n// edited after the build\n")
    with pytest.raises(build.StaleArtifactError, match="stale"):
        build.load_artifact("TradingContract", out)
    with pytest.raises(build.StaleArtifactError, match="no artifact"):
        build.load_artifact("NoSuchContract", out)


def test_build_check_command_reports_fresh_artifacts():
    proc = subprocess.run([sys.executable, "-m", "testbed", "build-contracts", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


# ---------------------------------------------------------------------------- config

@pytest.mark.parametrize("field,value", [
    ("unit_price_wei_per_gcycle", 0), ("unit_price_wei_per_gcycle", 0.15), ("unit_price_wei_per_gcycle", 2**128),
    ("settlement_grace_s", -1), ("gas_price_wei", 0), ("gas_limit_margin", 0.9), ("fee_bump", 1.05),
    ("confirmations", 0), ("confirmations", True), ("receipt_timeout_s", 0), ("poll_interval_s", float("inf")),
    ("resend_after_s", -1.0), ("max_resends", -1), ("rpc_timeout_s", "30"),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"contract.{field}"):
        ContractConfig(**{field: value})


def test_config_is_keyword_only_and_loads_from_the_scenario():
    with pytest.raises(TypeError):
        ContractConfig(10**17)  # positional: refused
    cfg = load_scenario(None, ["model.unit_price=0.1", "contract.confirmations=3"]).contract
    assert cfg.unit_price_wei_per_gcycle == 10**17 and cfg.confirmations == 3
    assert cfg.payment_wei(1_500_000_000) == 15 * 10**16
    with pytest.raises(ConfigError, match=r"contract\.unit_price"):
        load_scenario(None, ["contract.unit_price=1"])


# ---------------------------------------------------------------------------- anvil owner

@pytest.mark.chain
def test_anvil_node_starts_on_a_free_port_and_always_stops():
    a, b = AnvilNode(accounts=2).start(), AnvilNode(accounts=2).start()
    try:
        assert a.port != b.port
        w3 = a.web3()
        assert w3.eth.chain_id == 31337
        assert w3.eth.get_balance(a.accounts[1].address) == 10_000 * 10**18  # derived keys are the funded ones
        pids = _tree(a.proc.pid) + _tree(b.proc.pid)
    finally:
        a.stop()
        b.stop()
    b.stop()  # twice is harmless
    assert not _alive(pids)
    with pytest.raises(ValueError, match="accounts"):
        AnvilNode(accounts=0)


@pytest.mark.chain
def test_anvil_node_stops_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with AnvilNode(accounts=1) as node:
            pids = _tree(node.proc.pid)
            raise RuntimeError("boom")
    assert node.proc is None
    assert not _alive(pids)


@pytest.mark.chain
def test_anvil_revert_rolls_back_the_chain_but_not_the_clock():
    """evm_revert alone sets anvil's clock back to the snapshot block's time, so the chain lags
    the host clock by the time since the snapshot (the CI failure of the refund tests)."""
    with AnvilNode(accounts=1) as node:
        node.rpc("evm_mine")
        snap = node.snapshot()
        time.sleep(2.2)
        node.rpc("evm_mine")
        node.revert(snap)
        before = int(time.time())
        node.rpc("evm_mine")
        latest = node.rpc("eth_getBlockByNumber", "latest", False)
        assert int(latest["number"], 16) == 2  # the block mined after the snapshot is gone
        assert int(latest["timestamp"], 16) >= before
        # clock="chain": anvil's own revert, the next block counts from the snapshot block's time
        # (what the property tests with a block timestamp interval count on)
        node.rpc("anvil_setBlockTimestampInterval", 1)
        snap = node.snapshot()
        t_snap = int(latest["timestamp"], 16)
        time.sleep(2.2)
        node.rpc("evm_mine")
        node.revert(snap, clock="chain")
        node.rpc("evm_mine")
        again = node.rpc("eth_getBlockByNumber", "latest", False)
        assert int(again["number"], 16) == 3 and int(again["timestamp"], 16) <= t_snap + 1
        with pytest.raises(ValueError, match="clock"):
            node.revert(node.snapshot(), clock="wall")

def _tree(pid: int) -> list[int]:
    """The process and its descendants (the npm wrapper starts the anvil binary as a child)."""
    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out
