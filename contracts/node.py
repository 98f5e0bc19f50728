"""What sending a transaction and naming a revert need of a chain node (:class:`ChainNode`),
and the two refusals a node reports: implemented by :class:`contracts.web3node.Web3Node` (web3.py)
and :class:`contracts.light.RpcNode` (plain JSON-RPC), used by :mod:`contracts.txsender`."""
from __future__ import annotations

from typing import Any, Protocol


class SendRefused(RuntimeError):
    """The node refused a raw transaction (its message: "nonce too low", "already known", ...)."""


class CallReverted(Exception):
    """The node refused a call or a gas estimate because the contract reverted.

    ``data``: the revert data (0x-hex), None if the node gave none; ``kind``: what web3.py would
    call the error (the name of a revert without data).
    """

    def __init__(self, message: str, data: str | None, kind: str = "ContractLogicError"):
        super().__init__(message)
        self.message, self.data, self.kind = message, data, kind


class ChainNode(Protocol):
    """What sending and naming a revert need of a node. Hashes are bytes; receipts and
    transactions are mappings with int fields (blockNumber, gasUsed, status, nonce, gasPrice, ...)."""
    chain_id: int

    def gas_price(self) -> int: ...
    def transaction_count(self, address: str, block: str) -> int: ...
    def send_raw(self, raw: bytes) -> None: ...                       # SendRefused
    def receipt(self, tx_hash: bytes) -> Any | None: ...
    def transaction(self, tx_hash: bytes) -> Any | None: ...
    def block_number(self) -> int: ...
    def estimate_gas(self, tx: dict) -> int: ...                      # CallReverted
    def call(self, tx: dict, block: int | str) -> bytes: ...          # CallReverted
    def trace_output(self, tx_hash: bytes) -> str | None: ...         # None: no debug API
