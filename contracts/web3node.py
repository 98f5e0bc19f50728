"""A node over a web3.py connection, as :class:`contracts.txsender.TxSender` uses one
(:class:`contracts.txsender.ChainNode`): the binding's, the testbed's and the tests' senders.
The light one, over plain JSON-RPC, is :class:`contracts.light.RpcNode`."""
from __future__ import annotations

from typing import Any

from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from contracts.node import CallReverted, SendRefused


class Web3Node:
    """:class:`contracts.txsender.ChainNode` over `w3` (receipts and transactions as web3.py gives them)."""

    def __init__(self, w3: Web3):
        self.w3 = w3
        self.chain_id = w3.eth.chain_id

    def gas_price(self) -> int:
        return self.w3.eth.gas_price

    def transaction_count(self, address: str, block: str) -> int:
        return self.w3.eth.get_transaction_count(address, block)

    def send_raw(self, raw: bytes) -> None:
        try:
            self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            raise SendRefused(str(exc)) from None

    def receipt(self, tx_hash: bytes) -> Any | None:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def transaction(self, tx_hash: bytes) -> Any | None:
        try:
            return self.w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return None

    def block_number(self) -> int:
        return self.w3.eth.block_number

    def estimate_gas(self, tx: dict) -> int:
        try:
            return self.w3.eth.estimate_gas(tx)
        except ContractLogicError as exc:
            raise _reverted(exc) from None

    def call(self, tx: dict, block: int | str) -> bytes:
        try:
            return bytes(self.w3.eth.call(tx, block_identifier=block))
        except ContractLogicError as exc:
            raise _reverted(exc) from None

    def trace_output(self, tx_hash: bytes) -> str | None:
        trace = self.w3.provider.make_request("debug_traceTransaction",
                                              ["0x" + bytes(tx_hash).hex(), {"tracer": "callTracer"}])
        return (trace.get("result") or {}).get("output")


def _reverted(exc: ContractLogicError) -> CallReverted:
    return CallReverted(exc.message, exc.data if isinstance(exc.data, str) else None, type(exc).__name__)
