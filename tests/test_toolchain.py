"""Issue 2's toolchain smoke tests: the pinned tools are the ones installed, and each works.

- geth is v1.11.6 and a one-node private ethash chain seals real PoW blocks;
- the pinned solc compiles a contract and anvil executes it.
"""
import json
import subprocess
import time

import pytest

from chain.anvil import AnvilNode
from chain.network import Chain
from chain.config import ChainConfig
from topologies.platform import GETH, SOLCJS
from chain_ports import free_port_base, port_kwargs

pytestmark = pytest.mark.chain

ADDER = """// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;
contract Adder { uint256 public total; function add(uint256 x) external { total += x; } }
"""


def test_geth_is_v1_11_6():
    out = subprocess.run([str(GETH), "version"], capture_output=True, text=True, check=True).stdout
    assert "Version: 1.11.6" in out, out


def test_one_node_ethash_chain_mines_a_real_pow_block(capsys):
    t0 = time.monotonic()
    with Chain(ChainConfig(n_nodes=1, **port_kwargs(free_port_base(1))), budgets=[1]) as chain:
        node = chain.nodes[0]
        deadline = time.monotonic() + 120
        while node.block_number() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        first_block_s = time.monotonic() - t0
        assert node.block_number() >= 1, f"no block in 120 s:\n{node.log_tail()}"
        block = node.rpc("eth_getBlockByNumber", "0x1", False)
        # A sealed ethash block: nonzero nonce and mixHash, difficulty at least ethash's minimum,
        # mined by this node's etherbase (the MEC server's account).
        assert int(block["nonce"], 16) != 0 and int(block["mixHash"], 16) != 0
        assert int(block["difficulty"], 16) >= 131_072
        assert block["miner"].lower() == chain.accounts.mec_servers[0].address.lower()
    with capsys.disabled():
        print(f"\n  first PoW block after {first_block_s:.1f} s (pow_mode={chain.cfg.pow_mode})")


def test_solc_compiles_and_anvil_executes(tmp_path):
    (tmp_path / "Adder.sol").write_text(ADDER)
    std_in = {"language": "Solidity", "sources": {"Adder.sol": {"content": ADDER}},
              "settings": {"evmVersion": "london",
                           "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}}}
    out = subprocess.run([str(SOLCJS), "--standard-json"], input=json.dumps(std_in),
                         capture_output=True, text=True, check=True).stdout
    art = json.loads(out[out.index("{"):])["contracts"]["Adder.sol"]["Adder"]
    with AnvilNode(accounts=1) as node:
        w3 = node.web3()
        acct = node.accounts[0]
        w3.eth.default_account = acct.address
        Adder = w3.eth.contract(abi=art["abi"], bytecode=art["evm"]["bytecode"]["object"])

        def send(tx):
            signed = acct.sign_transaction(tx)
            return w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))

        base = {"from": acct.address, "chainId": w3.eth.chain_id, "gas": 300_000,
                "gasPrice": w3.eth.gas_price}
        receipt = send(Adder.constructor().build_transaction({**base, "nonce": 0}))
        adder = w3.eth.contract(address=receipt.contractAddress, abi=art["abi"])
        send(adder.functions.add(41).build_transaction({**base, "nonce": 1}))
        send(adder.functions.add(1).build_transaction({**base, "nonce": 2}))
        assert adder.functions.total().call() == 42
