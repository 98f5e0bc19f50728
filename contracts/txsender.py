"""Signing, sending and confirming transactions from local keys, on any JSON-RPC node.

Every transaction is signed here with the sender's local key (a :class:`chain.keys.Key`, or an
eth_account account: the same bytes) and sent with ``eth_sendRawTransaction``; a node's
``personal`` API is never used, so the same code runs on anvil and on the lab's geth chain.

    sender = TxSender(node, config)                  # one per process and node: owns the nonces
    receipt, included_s, confirmed_s, resends = sender.transact(
        account, {"to": addr, "data": data, "value": 0}, function="trading",
        estimate=lambda tx: errors.estimate(node, tx, "trading", config.gas_limit_margin))

The node is a :class:`contracts.node.ChainNode`: :class:`contracts.web3node.Web3Node` over a web3.py connection
(a ``Web3`` given to TxSender is wrapped in one), :class:`contracts.light.RpcNode` over plain
JSON-RPC for a program that must not load web3.py (the MEC executor). This module loads neither.

Many concurrent senders are safe: :class:`TxSender` hands out nonces per account under a lock,
and a transaction that the node dropped is re-broadcast byte for byte (same hash), one stuck in
the pool is replaced by a copy with the same nonce and a higher fee, and only a nonce consumed
by a transaction we never signed leads to a new nonce. Same-nonce copies can't both be mined,
so a retry never pays twice.

:class:`ErrorTable` names a contract's custom errors from revert data (a doomed call is refused
at gas estimation with :class:`ContractRevert` naming the Solidity error, before anything is sent),
and :func:`name_revert` the error of one that failed on chain. :class:`TxReport` is what a
confirmed transaction cost.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from contracts.abi import Abi
from contracts.config import ContractConfig
from contracts.node import CallReverted, ChainNode, SendRefused  # noqa: F401  (the sender's node interface, re-exported)


class ContractRevert(Exception):
    """The contract rejected a call; `error` is the Solidity custom error's name.

    Raised before anything is sent when gas estimation reverts, or after mining (then
    `receipt` is set and the sender paid the gas of the failed transaction).
    """

    def __init__(self, function: str, error: str, args: dict, data: str, receipt: Any = None):
        self.function, self.error, self.error_args, self.data, self.receipt = function, error, args, data, receipt
        shown = ", ".join(f"{k}={v}" for k, v in args.items())
        where = f" in block {receipt['blockNumber']}" if receipt is not None else ""
        super().__init__(f"{function} reverted{where}: {error}({shown})")


class TransactionTimeout(Exception):
    """A transaction did not confirm within the configured time or number of resends."""


@dataclass(frozen=True)
class TxReport:
    """What one confirmed transaction cost and how long it took.

    Attributes:
        function: contract function (or "deploy").
        gas_used: gas units consumed.
        gas_price_wei: effective gas price, wei per gas.
        fee_wei: gas_used * gas_price_wei, wei.
        inclusion_latency_s: first broadcast -> receipt seen, seconds.
        confirmation_latency_s: first broadcast -> `confirmations` blocks seen, seconds.
        resends: re-broadcasts, fee bumps and fresh-nonce retries this transaction needed.
        events: decoded logs, as (event name, arguments) pairs.
    """
    function: str
    tx_hash: str
    sender: str
    nonce: int
    block_number: int
    gas_used: int
    gas_price_wei: int
    fee_wei: int
    inclusion_latency_s: float
    confirmation_latency_s: float
    resends: int
    events: tuple[tuple[str, dict], ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, node: ChainNode, function: str, sender: str, receipt, included: float, confirmed: float,
           resends: int, events: tuple[tuple[str, dict], ...]) -> "TxReport":
        """The report of a mined transaction, from its receipt and the node's copy of it."""
        sent = node.transaction(receipt["transactionHash"])
        price = receipt.get("effectiveGasPrice") or sent["gasPrice"]
        return cls(function=function, tx_hash=hex_hash(receipt["transactionHash"]), sender=sender, nonce=sent["nonce"],
                   block_number=receipt["blockNumber"], gas_used=receipt["gasUsed"], gas_price_wei=price,
                   fee_wei=receipt["gasUsed"] * price, inclusion_latency_s=included,
                   confirmation_latency_s=confirmed, resends=resends, events=events)

    def event(self, name: str) -> dict:
        """Arguments of the first event called `name` (KeyError if the transaction emitted none)."""
        for event_name, args in self.events:
            if event_name == name:
                return args
        raise KeyError(f"{self.function} emitted no {name} event (emitted: {[n for n, _ in self.events]})")


def hex_hash(h: bytes | str) -> str:
    """A hash as 0x-hex (bytes, HexBytes or a hex string)."""
    return h if isinstance(h, str) else "0x" + bytes(h).hex()


# ---------------------------------------------------------------------------- sending


class TxSender:
    """Signs, sends and confirms transactions for any number of local accounts on one node.

    One instance per process and node: it owns each account's next nonce, so every thread that
    sends through it gets a distinct nonce. Nonces are re-read from the node ('pending' count)
    when the node says one is too low (another process used the account).
    """

    def __init__(self, node: ChainNode, config: ContractConfig):
        if hasattr(node, "eth"):
            # a web3.py connection (the binding's callers): loaded only by those that have one
            from contracts.web3node import Web3Node
            node = Web3Node(node)
        self.node = node
        self.config = config
        self.chain_id = node.chain_id
        self._nonces: dict[str, int] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, address: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(address, threading.Lock())

    def reset_nonces(self) -> None:
        """Re-read every account's nonce from the node (after a node restart or a chain revert)."""
        with self._locks_guard:
            addresses = list(self._locks)
        for address in addresses:
            self.forget_nonce(address)

    def forget_nonce(self, address: str) -> None:
        """Re-read `address`'s nonce from the node before its next transaction."""
        with self._lock(address):
            self._nonces.pop(address, None)

    def _broadcast(self, account, tx: dict, nonce: int | None) -> tuple[int, bytes, bytes]:
        """Sign `tx` with `nonce` (None: the account's next one) and send it; return (nonce, raw, hash)."""
        address = account.address
        with self._lock(address):
            for _ in range(5):
                use = nonce
                if use is None:
                    use = self._nonces.get(address)
                    if use is None:
                        use = self.node.transaction_count(address, "pending")
                signed = account.sign_transaction({**tx, "nonce": use, "chainId": self.chain_id})
                try:
                    self.node.send_raw(signed.raw_transaction)
                except SendRefused as exc:
                    message = str(exc).lower()
                    if "already known" in message or "already imported" in message:
                        pass  # the node has these exact bytes already: sent
                    elif nonce is None and "nonce too low" in message:
                        self._nonces.pop(address, None)  # someone else used the account
                        continue
                    else:
                        raise
                if nonce is None:
                    self._nonces[address] = max(self._nonces.get(address, 0), use + 1)
                return use, signed.raw_transaction, signed.hash
            raise TransactionTimeout(f"could not find a free nonce for {address} in 5 attempts")

    def _receipt(self, hashes: list[bytes]):
        for h in hashes:
            if (receipt := self.node.receipt(h)) is not None:
                return receipt
        return None

    def transact(self, account, tx: dict, *, function: str,
                 estimate: Callable[[dict], int]) -> tuple[Any, float, float, int]:
        """Send `tx` (to, data, value) from `account` (a Key or an eth_account account), wait for
        confirmation.

        `estimate(tx)` returns the gas limit (and raises ContractRevert for a doomed call).
        Returns (receipt, inclusion latency s, confirmation latency s, resends).
        """
        cfg = self.config
        tx = {**tx, "from": account.address}
        explicit_gas = "gas" in tx
        if not explicit_gas:
            tx["gas"] = estimate(tx)
        tx["gasPrice"] = cfg.gas_price_wei or self.node.gas_price()
        unsigned = {k: v for k, v in tx.items() if k != "from"}
        t0 = time.monotonic()
        nonce, raw, first = self._broadcast(account, unsigned, None)
        hashes = [first]
        resends, last_action = 0, t0
        while (receipt := self._receipt(hashes)) is None:
            now = time.monotonic()
            if now - t0 > cfg.receipt_timeout_s:
                raise TransactionTimeout(f"{function} from {account.address} (nonce {nonce}) not mined "
                                         f"after {cfg.receipt_timeout_s} s; sent as {[hex_hash(h) for h in hashes]}")
            if now - last_action >= cfg.resend_after_s:
                if resends >= cfg.max_resends:
                    raise TransactionTimeout(f"{function} from {account.address} (nonce {nonce}) not mined "
                                             f"after {resends} resends")
                resends, last_action = resends + 1, now
                if self.node.transaction_count(account.address, "latest") > nonce:
                    if (receipt := self._receipt(hashes)) is not None:
                        break
                    # The nonce went to a transaction we never signed: ours can no longer run.
                    # Start afresh; re-estimating reverts if the call is no longer valid.
                    self.forget_nonce(account.address)
                    if not explicit_gas:
                        unsigned["gas"] = estimate(tx)
                    nonce, raw, new = self._broadcast(account, unsigned, None)
                    hashes.append(new)
                elif self.node.transaction(hashes[-1]) is None:
                    # Dropped by the node: the same bytes again (same hash, cannot run twice).
                    try:
                        self.node.send_raw(raw)
                    except SendRefused as exc:
                        if "nonce too low" not in str(exc).lower() and "already" not in str(exc).lower():
                            raise
                else:
                    # Stuck in the pool: replace with the same nonce and a higher fee.
                    unsigned["gasPrice"] = math.ceil(unsigned["gasPrice"] * cfg.fee_bump)
                    nonce, raw, new = self._broadcast(account, unsigned, nonce)
                    hashes.append(new)
            time.sleep(cfg.poll_interval_s)
        included = time.monotonic() - t0
        receipt = self._confirm(receipt, hashes, t0)
        return receipt, included, time.monotonic() - t0, resends

    def _confirm(self, receipt, hashes: list[bytes], t0: float):
        """Wait until `confirmations` blocks hold the transaction (the including one counts).

        The receipt is re-read on every poll, so a re-org that moves or drops the transaction
        is followed: only a receipt of the canonical chain, deep enough, is returned.
        """
        need = self.config.confirmations
        if need <= 1:
            return receipt  # the including block is the one confirmation asked for
        while True:
            if time.monotonic() - t0 > self.config.receipt_timeout_s:
                raise TransactionTimeout(f"transaction {hex_hash(hashes[-1])} not {need} blocks deep after "
                                         f"{self.config.receipt_timeout_s} s")
            fresh = self._receipt(hashes)
            if fresh is not None and self.node.block_number() - fresh["blockNumber"] + 1 >= need:
                return fresh
            time.sleep(self.config.poll_interval_s)


# ---------------------------------------------------------------------------- errors


class ErrorTable:
    """A contract's custom errors, by 4-byte selector, to name a revert.

    ``decode(reverted)`` -> (error name, arguments, revert data); ``estimate(node, tx, function,
    margin)`` -> gas limit, or :class:`ContractRevert` naming the error if the call would revert.
    """

    def __init__(self, abi: list[dict]):
        self.abi = Abi([item for item in abi if item["type"] == "error"])

    def decode(self, reverted: CallReverted) -> tuple[str, dict, str]:
        data = reverted.data
        if not data or len(data) < 10:
            return reverted.kind, {"message": reverted.message}, data or "0x"
        named = self.abi.decode_error(data)
        if named is not None:
            return named[0], named[1], data
        return "Unknown", {"data": data, "message": reverted.message}, data

    def estimate(self, node: ChainNode, tx: dict, function: str, margin: float) -> int:
        """eth_estimateGas × ``margin``; a reverting call raises :class:`ContractRevert`."""
        try:
            gas = node.estimate_gas({k: v for k, v in tx.items() if k in ("from", "to", "data", "value")})
        except CallReverted as exc:
            name, args, data = self.decode(exc)
            raise ContractRevert(function, name, args, data) from None
        return math.ceil(gas * margin)


def name_revert(node: ChainNode, errors: ErrorTable, function: str, sender: str, tx: dict,
                receipt) -> ContractRevert:
    """Name the error of a transaction that reverted on chain.

    From the node's call trace (debug_traceTransaction, callTracer: exact), else by replaying
    the call on the parent block's state (exact when no earlier transaction of the same block
    changed what it reads, and the deadline checks are not within a block interval).
    """
    try:
        data = node.trace_output(receipt["transactionHash"])
    except Exception:  # debug API not enabled on this node: replay instead
        data = None
    if data and len(data) >= 10:
        name, args, data = errors.decode(CallReverted("reverted", data))
        return ContractRevert(function, name, args, data, receipt)
    call = {"from": sender, "to": tx["to"], "data": tx["data"], "value": tx["value"],
            "gas": receipt["gasUsed"] * 2 + 50_000}
    try:
        node.call(call, receipt["blockNumber"] - 1)
    except CallReverted as exc:
        name, args, data = errors.decode(exc)
        return ContractRevert(function, name, args, data, receipt)
    return ContractRevert(function, "Unknown", {}, "0x", receipt)
