"""Helpers for the contract tests: deploy and drive the hostile ReentrancyAttacker wallet.

Nothing here is used by the testbed itself.
"""
from __future__ import annotations

import math

from eth_account.signers.local import LocalAccount
from web3.contract import Contract

from contracts.binding import TradingContract
from contracts.build import load_artifact


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
        estimate=lambda t: trade.errors.estimate(trade.w3, t, f"attacker.{function}",
                                                 trade.config.gas_limit_margin))
    assert receipt["status"] == 1, receipt
    return receipt


def encode_trading_call(trade: TradingContract, function: str, *args) -> bytes:
    """Calldata of trade.function(*args), for the attacker to replay from receive()."""
    return bytes.fromhex(trade.contract.encode_abi(function, args=list(args))[2:])
