"""Helpers for the contract tests: a deployment with MEC servers, a rollback per test, calls mined
whatever their outcome, and the hostile ReentrancyAttacker wallet.

Nothing here is used by the testbed itself.
"""
from __future__ import annotations

import contextlib
import math
from collections import Counter
from typing import Callable, Iterator

from eth_account.signers.local import LocalAccount
from web3.contract import Contract

from contracts.binding import ContractRevert, TradingContract, TxReport, TxSender
from contracts.build import load_artifact
from contracts.config import ContractConfig
from chain.anvil import AnvilNode


def deploy_with_mecs(node: AnvilNode, esp: LocalAccount, config: ContractConfig,
                     mecs: list[tuple[LocalAccount, LocalAccount]], sender: TxSender | None = None) -> TradingContract:
    """A TradingContract deployed by `esp` with MEC servers registered in order: (server, wallet).
    Pass the `sender` of another binding that uses the same accounts (it owns their nonces)."""
    w3 = node.web3()
    trade, _ = TradingContract.deploy(w3, esp, config, sender=sender or TxSender(w3, config))
    for server, wallet in mecs:
        trade.register_mec(esp, server=server.address, wallet=wallet.address)
    return trade


@contextlib.contextmanager
def rolled_back(node: AnvilNode, trade: TradingContract) -> Iterator[None]:
    """Everything done inside is undone after (anvil snapshot and revert; nonces re-read)."""
    snap = node.snapshot()
    try:
        yield
    finally:
        node.revert(snap)
        trade.sender.reset_nonces()


def back_to_snapshot(world: dict) -> int:
    """Revert world["node"] to world["snapshot"] and take the snapshot again (anvil consumes one
    on revert), for a property test's next example; world["trade"] re-reads its nonces. Returns
    the number of the next block (where the example's events start)."""
    node = world["node"]
    node.revert(world["snapshot"], clock="chain")     # the examples' time is the chain's own
    world["snapshot"] = node.snapshot()
    world["trade"].sender.reset_nonces()
    return node.web3().eth.block_number + 1


def named_balances(node: AnvilNode, accounts: dict[str, LocalAccount], names: list[str],
                   *contracts: TradingContract) -> dict[str, int]:
    """Balance of each named account, wei, and of each contract ("contract", "contract2", ...)."""
    w3 = node.web3()
    out = {n: w3.eth.get_balance(accounts[n].address) for n in names}
    for i, c in enumerate(contracts):
        out["contract" if i == 0 else f"contract{i + 1}"] = c.balance()
    return out


def mined(call: Callable[..., TxReport], expected: str | None, *, gas: int,
          outcomes: Counter | None = None) -> tuple[TxReport | None, int]:
    """Run `call(gas=gas)`: with a fixed gas limit it is mined even if it reverts. Asserts it
    succeeded (`expected` None) or failed with the custom error `expected`; counts the outcome
    as (function, error or "ok") in `outcomes`. Returns (its report or None, the fee it cost)."""
    try:
        report = call(gas=gas)
    except ContractRevert as exc:
        assert exc.receipt is not None, "a fixed gas limit must put the call on chain"
        if outcomes is not None:
            outcomes[(exc.function, exc.error)] += 1
        assert exc.error == expected, f"expected {expected or 'success'}, got {exc}"
        return None, exc.receipt["gasUsed"] * exc.receipt["effectiveGasPrice"]
    if outcomes is not None:
        outcomes[(report.function, "ok")] += 1
    assert expected is None, f"expected {expected}, but {report.function} succeeded"
    return report, report.fee_wei


def deploy_attacker(trade: TradingContract, owner: LocalAccount) -> Contract:
    """Deploy a ReentrancyAttacker aimed at `trade`, through the binding's TxSender."""
    artifact = load_artifact("ReentrancyAttacker")
    factory = trade.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    data = factory.constructor(trade.address).data_in_transaction
    receipt, *_ = trade.sender.transact(owner, {"data": data, "value": 0}, function="deploy attacker",
                                        estimate=lambda tx: math.ceil(trade.w3.eth.estimate_gas(tx) * 1.25))
    assert receipt["status"] == 1, receipt
    return trade.w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])


def attacker_call(trade: TradingContract, account: LocalAccount, attacker: Contract, function: str,
                  *args, value: int = 0):
    """Send attacker.function(*args) from `account`; ContractRevert (decoded with the trading
    contract's errors, which the attacker bubbles up) if it reverts. Returns the receipt."""
    tx = {"to": attacker.address, "data": attacker.encode_abi(function, args=list(args)), "value": value}
    receipt, *_ = trade.sender.transact(
        account, tx, function=f"attacker.{function}",
        estimate=lambda t: trade.errors.estimate(trade.sender.node, t, f"attacker.{function}",
                                                 trade.config.gas_limit_margin))
    assert receipt["status"] == 1, receipt
    return receipt


def encode_trading_call(trade: TradingContract, function: str, *args) -> bytes:
    """Calldata of trade.function(*args), for the attacker to replay from receive()."""
    return bytes.fromhex(trade.contract.encode_abi(function, args=list(args))[2:])
