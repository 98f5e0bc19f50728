"""Signing, sending and confirming transactions from local keys, on any JSON-RPC node.

Every transaction is signed here with the sender's local key (eth_account) and sent with
``eth_sendRawTransaction``; a node's ``personal`` API is never used, so the same code runs on
anvil and on the lab's geth chain.

    sender = TxSender(w3, config)                    # one per process and node: owns the nonces
    receipt, included_s, confirmed_s, resends = sender.transact(
        account, {"to": addr, "data": data, "value": 0}, function="trading",
        estimate=lambda tx: errors.estimate(w3, tx, "trading", config.gas_limit_margin))

Many concurrent senders are safe: :class:`TxSender` hands out nonces per account under a lock,
and a transaction that the node dropped is re-broadcast byte for byte (same hash), one stuck in
the pool is replaced by a copy with the same nonce and a higher fee, and only a nonce consumed
by a transaction we never signed leads to a new nonce. Same-nonce copies can't both be mined,
so a retry never pays twice.

:class:`ErrorTable` names a contract's custom errors from revert data (a doomed call is refused
at gas estimation with :class:`ContractRevert` naming the Solidity error, before anything is sent).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

import eth_abi
from eth_account.signers.local import LocalAccount
from eth_utils import function_signature_to_4byte_selector
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from contracts.config import ContractConfig


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


# ---------------------------------------------------------------------------- sending


class TxSender:
    """Signs, sends and confirms transactions for any number of local accounts on one node.

    One instance per process and node: it owns each account's next nonce, so every thread that
    sends through it gets a distinct nonce. Nonces are re-read from the node ('pending' count)
    when the node says one is too low (another process used the account).
    """

    def __init__(self, w3: Web3, config: ContractConfig):
        self.w3 = w3
        self.config = config
        self.chain_id = w3.eth.chain_id
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

    def _broadcast(self, account: LocalAccount, tx: dict, nonce: int | None) -> tuple[int, HexBytes, HexBytes]:
        """Sign `tx` with `nonce` (None: the account's next one) and send it; return (nonce, raw, hash)."""
        address = account.address
        with self._lock(address):
            for _ in range(5):
                use = nonce
                if use is None:
                    use = self._nonces.get(address)
                    if use is None:
                        use = self.w3.eth.get_transaction_count(address, "pending")
                signed = account.sign_transaction({**tx, "nonce": use, "chainId": self.chain_id})
                try:
                    self.w3.eth.send_raw_transaction(signed.raw_transaction)
                except Web3RPCError as exc:
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

    def _receipt(self, hashes: list[HexBytes]):
        for h in hashes:
            try:
                return self.w3.eth.get_transaction_receipt(h)
            except TransactionNotFound:
                continue
        return None

    def _known(self, tx_hash: HexBytes) -> bool:
        try:
            self.w3.eth.get_transaction(tx_hash)
            return True
        except TransactionNotFound:
            return False

    def transact(self, account: LocalAccount, tx: dict, *, function: str,
                 estimate: Callable[[dict], int]) -> tuple[Any, float, float, int]:
        """Send `tx` (to, data, value) from `account`, wait for confirmation.

        `estimate(tx)` returns the gas limit (and raises ContractRevert for a doomed call).
        Returns (receipt, inclusion latency s, confirmation latency s, resends).
        """
        cfg = self.config
        tx = {**tx, "from": account.address}
        explicit_gas = "gas" in tx
        if not explicit_gas:
            tx["gas"] = estimate(tx)
        tx["gasPrice"] = cfg.gas_price_wei or self.w3.eth.gas_price
        unsigned = {k: v for k, v in tx.items() if k != "from"}
        t0 = time.monotonic()
        nonce, raw, first = self._broadcast(account, unsigned, None)
        hashes = [first]
        resends, last_action = 0, t0
        while (receipt := self._receipt(hashes)) is None:
            now = time.monotonic()
            if now - t0 > cfg.receipt_timeout_s:
                raise TransactionTimeout(f"{function} from {account.address} (nonce {nonce}) not mined "
                                         f"after {cfg.receipt_timeout_s} s; sent as {[h.hex() for h in hashes]}")
            if now - last_action >= cfg.resend_after_s:
                if resends >= cfg.max_resends:
                    raise TransactionTimeout(f"{function} from {account.address} (nonce {nonce}) not mined "
                                             f"after {resends} resends")
                resends, last_action = resends + 1, now
                if self.w3.eth.get_transaction_count(account.address, "latest") > nonce:
                    if (receipt := self._receipt(hashes)) is not None:
                        break
                    # The nonce went to a transaction we never signed: ours can no longer run.
                    # Start afresh; re-estimating reverts if the call is no longer valid.
                    self.forget_nonce(account.address)
                    if not explicit_gas:
                        unsigned["gas"] = estimate(tx)
                    nonce, raw, new = self._broadcast(account, unsigned, None)
                    hashes.append(new)
                elif not self._known(hashes[-1]):
                    # Dropped by the node: the same bytes again (same hash, cannot run twice).
                    try:
                        self.w3.eth.send_raw_transaction(raw)
                    except Web3RPCError as exc:
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

    def _confirm(self, receipt, hashes: list[HexBytes], t0: float):
        """Wait until `confirmations` blocks hold the transaction (the including one counts).

        The receipt is re-read on every poll, so a re-org that moves or drops the transaction
        is followed: only a receipt of the canonical chain, deep enough, is returned.
        """
        need = self.config.confirmations
        if need <= 1:
            return receipt  # the including block is the one confirmation asked for
        while True:
            if time.monotonic() - t0 > self.config.receipt_timeout_s:
                raise TransactionTimeout(f"transaction {hashes[-1].hex()} not {need} blocks deep after "
                                         f"{self.config.receipt_timeout_s} s")
            fresh = self._receipt(hashes)
            if fresh is not None and self.w3.eth.block_number - fresh["blockNumber"] + 1 >= need:
                return fresh
            time.sleep(self.config.poll_interval_s)


# ---------------------------------------------------------------------------- errors


class ErrorTable:
    """A contract's custom errors, by 4-byte selector, to name a revert.

    ``decode(exc)`` -> (error name, arguments, revert data); ``estimate(w3, tx, function,
    margin)`` -> gas limit, or :class:`ContractRevert` naming the error if the call would revert.
    """

    def __init__(self, abi: list[dict]):
        self.by_selector: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for item in abi:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                sig = f"{item['name']}({','.join(types)})"
                self.by_selector[function_signature_to_4byte_selector(sig)] = (
                    item["name"], [i["name"] for i in item["inputs"]], types)

    def merged(self, other: "ErrorTable") -> "ErrorTable":
        """A table that knows the errors of both (a wrapper contract bubbling up another's)."""
        out = ErrorTable([])
        out.by_selector = {**self.by_selector, **other.by_selector}
        return out

    def decode(self, exc: ContractLogicError) -> tuple[str, dict, str]:
        data = exc.data if isinstance(exc.data, str) else None
        if not data or len(data) < 10:
            return type(exc).__name__, {"message": exc.message}, data or "0x"
        raw = bytes(HexBytes(data))
        if raw[:4] in self.by_selector:
            name, names, types = self.by_selector[raw[:4]]
            values = eth_abi.decode(types, raw[4:])
            return name, dict(zip(names, values)), data
        return "Unknown", {"data": data, "message": exc.message}, data

    def estimate(self, w3: Web3, tx: dict, function: str, margin: float) -> int:
        """eth_estimateGas × ``margin``; a reverting call raises :class:`ContractRevert`."""
        try:
            gas = w3.eth.estimate_gas({k: v for k, v in tx.items() if k in ("from", "to", "data", "value")})
        except ContractLogicError as exc:
            name, args, data = self.decode(exc)
            raise ContractRevert(function, name, args, data) from None
        return math.ceil(gas * margin)
