"""The trading contract for the MEC executor, without web3.py: what it reads and the two
transactions it sends, over plain JSON-RPC.

A MEC server's executor reads escrows and their EscrowOpened events, the price, the channels,
their lanes and events, and sends ``complete`` (escrow mode) and ``redeem`` (channel mode).
Loading web3.py, eth_account and eth_abi for that made each executor ~87 MB resident; with
:mod:`contracts.abi`, :class:`chain.keys.Key` (legacy transactions) and the node below it is
about half.

    trade = LightTrade(gateway_url, contract_address, config)     # same method names as TradingContract
    report = trade.redeem(key, vouchers)                          # TxReport, or ContractRevert naming the bad voucher
    events = trade.channel_events(from_block=n + 1, to_block=head)

:class:`TradeWriter` (sending one call, naming a revert, a redeem batch's bad voucher, the report)
is shared with the web3 binding (:class:`contracts.binding.TradingContract`), which only encodes
calldata and decodes logs its own way; :class:`RpcNode` is :class:`contracts.txsender.TxSender`'s
node over JSON-RPC. ``tests/test_contract_light.py`` checks both clients agree on anvil.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from chain.rpc import RpcRefused
from contracts.config import ContractConfig
from contracts.node import CallReverted, SendRefused
from contracts.reads import ContractReader, Escrow, EscrowState, check_address, check_uint
from contracts.txsender import ContractRevert, ErrorTable, TxReport, TxSender, hex_hash, name_revert
from contracts.vouchers import Voucher

__all__ = ["LightTrade", "RpcNode", "TradeWriter", "CHANNEL_EVENTS", "LANE_EVENTS", "BATCH_ERRORS"]

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
UINT128_MAX = 2**128 - 1
CHANNEL_EVENTS = ("ChannelOpened", "ChannelToppedUp", "VoucherRedeemed", "LaneClosing", "LaneSettled",
                  "LaneReopened", "FreeWithdrawn", "ChannelReclaimed")
LANE_EVENTS = ("VoucherRedeemed", "LaneClosing", "LaneSettled", "LaneReopened")   # those naming a MEC
#: Errors of a redeem batch as a whole, not of one of its vouchers.
BATCH_ERRORS = ("UnknownMec", "TransferFailed")


# ---------------------------------------------------------------------------- sending, shared


class TradeWriter:
    """Sending calls of the trading contract: the MEC server's two (``complete``, ``redeem``)
    and any other through :meth:`transact`.

    The class that mixes it in has ``sender`` (TxSender), ``errors`` (ErrorTable), ``config``,
    ``address``, ``reports`` and ``_reports_lock``, and implements ``encode_call(function, args)``
    (0x-hex calldata) and ``_decode_logs(receipt)`` ((event name, arguments) pairs).
    """

    sender: TxSender
    errors: ErrorTable
    config: ContractConfig
    address: str
    reports: list[TxReport]
    _reports_lock: threading.Lock

    def encode_call(self, function: str, args: list) -> str:
        raise NotImplementedError

    def _decode_logs(self, receipt) -> tuple[tuple[str, dict], ...]:
        raise NotImplementedError

    # ------------------------------------------------------------------ MEC

    def complete(self, mec, *, ue: str, task_id: int, result_hash: bytes | str, **kw) -> TxReport:
        """Record completion of UE `ue`'s task `task_id` (result_hash: 32-byte digest of the
        result) before its deadline; phi_u goes to the MEC server's wallet W_m."""
        check_uint("task_id", task_id, UINT64_MAX)
        if isinstance(result_hash, str):
            result_hash = bytes.fromhex(result_hash[2:] if result_hash[:2] in ("0x", "0X") else result_hash)
        result_hash = bytes(result_hash)
        if len(result_hash) != 32:
            raise ValueError(f"result_hash must be 32 bytes, got {len(result_hash)}")
        return self.transact(mec, "complete", [check_address("ue", ue), task_id, result_hash], **kw)

    def redeem(self, mec, vouchers: Sequence[Voucher], **kw) -> TxReport:
        """Redeem `vouchers` (in order) as MEC server `mec`, paid in one transfer to its wallet W_m.

        Before sending, a batch whose gas estimate fails is taken apart: the ContractRevert raised
        names the error and the first bad voucher (its error arguments plus voucher_index,
        voucher_ue, voucher_nonce), and nothing is sent. With `gas=` nothing is estimated.
        """
        vouchers = list(vouchers)
        if not vouchers:
            raise ValueError("vouchers must not be empty")
        for i, v in enumerate(vouchers):
            _check_voucher(i, v)
        return self.transact(mec, "redeem", [[_voucher_args(v) for v in vouchers]],
                             estimate=lambda tx: self._estimate_redeem(tx, vouchers), **kw)

    # ------------------------------------------------------------------ the means

    def transact(self, account, function: str, args: list, *, value: int = 0,
                 gas: int | None = None, estimate: Callable[[dict], int] | None = None) -> TxReport:
        """Send one call of any contract function with raw arguments (the named methods check
        their arguments first; this does not). `gas` skips estimation, so a doomed call is
        mined and fails on chain; `estimate(tx)` replaces the plain gas estimate."""
        tx = {"to": self.address, "data": self.encode_call(function, args), "value": value}
        if gas is not None:
            tx["gas"] = gas
        receipt, included, confirmed, resends = self.sender.transact(
            account, tx, function=function, estimate=estimate or (lambda t: self._estimate(t, function)))
        if receipt["status"] != 1:
            raise self._failed(function, account, tx, receipt)
        return self._report(function, account, receipt, included, confirmed, resends)

    def _estimate(self, tx: dict, function: str) -> int:
        return self.errors.estimate(self.sender.node, tx, function, self.config.gas_limit_margin)

    def _estimate_redeem(self, tx: dict, vouchers: list[Voucher]) -> int:
        """Gas of a redeem batch; if it would revert, ContractRevert naming the first bad voucher:
        the first that fails alone, else (it fails only after others, e.g. an older voucher of a
        lane behind a newer one) the last of the shortest failing prefix."""
        try:
            return self._estimate(tx, "redeem")
        except ContractRevert as batch:
            if batch.error in BATCH_ERRORS:
                raise

            def failure(part: list[Voucher]) -> ContractRevert | None:
                data = self.encode_call("redeem", [[_voucher_args(v) for v in part]])
                try:
                    self._estimate({**tx, "data": data}, "redeem")
                    return None
                except ContractRevert as exc:
                    return exc

            found = next(((i, exc) for i, v in enumerate(vouchers) if (exc := failure([v])) is not None), None)
            if found is None:
                # Failing prefixes are monotone (vouchers run in order): bisect for the shortest.
                lo, hi, exc = 1, len(vouchers), batch
                while lo < hi:
                    mid = (lo + hi) // 2
                    if (at_mid := failure(vouchers[:mid])) is not None:
                        hi, exc = mid, at_mid
                    else:
                        lo = mid + 1
                found = (hi - 1, exc)
            i, exc = found
            v = vouchers[i]
            raise ContractRevert("redeem", exc.error, {**exc.error_args, "voucher_index": i, "voucher_ue": v.ue,
                                                      "voucher_nonce": v.nonce}, exc.data) from None

    def _failed(self, function: str, account, tx: dict, receipt) -> ContractRevert:
        return name_revert(self.sender.node, self.errors, function, account.address, tx, receipt)

    def _report(self, function: str, account, receipt, included: float, confirmed: float,
                resends: int) -> TxReport:
        report = TxReport.of(self.sender.node, function, account.address, receipt, included, confirmed, resends,
                             self._decode_logs(receipt))
        with self._reports_lock:
            self.reports.append(report)
        return report


def _check_voucher(i: int, v: Any) -> None:
    """A voucher the ABI can encode (ranges and types); whether it pays is the contract's call."""
    if not isinstance(v, Voucher):
        raise ValueError(f"vouchers[{i}] must be a Voucher, got {type(v).__name__}")
    check_address(f"vouchers[{i}].ue", v.ue)
    for name, maximum in (("generation", UINT32_MAX), ("cumulative", UINT128_MAX), ("nonce", UINT64_MAX),
                          ("task_id", UINT64_MAX)):
        check_uint(f"vouchers[{i}].{name}", getattr(v, name), maximum)
    if not isinstance(v.request_digest, (bytes, bytearray)) or len(v.request_digest) != 32:
        raise ValueError(f"vouchers[{i}].request_digest must be 32 bytes, got {v.request_digest!r}")
    if not isinstance(v.signature, (bytes, bytearray)):
        raise ValueError(f"vouchers[{i}].signature must be bytes, got {v.signature!r}")


def _voucher_args(v: Voucher) -> tuple:
    """The contract's calldata Voucher struct (the MEC server is the caller, not a field)."""
    return (v.ue, v.generation, v.cumulative, v.nonce, v.task_id, bytes(v.request_digest),
            bytes(v.signature))


# ---------------------------------------------------------------------------- the node over JSON-RPC


class RpcNode:
    """:class:`contracts.txsender.ChainNode` over JSON-RPC: `rpc(method, params)` -> result, raising
    :class:`chain.rpc.RpcRefused` for the node's error replies (a :class:`chain.rpc.JsonRpc`).
    Receipts and transactions are dicts with int fields; hashes stay 0x-hex."""

    def __init__(self, rpc: Callable[[str, list], Any]):
        self.rpc = rpc
        self.chain_id = int(rpc("eth_chainId", []), 16)

    def gas_price(self) -> int:
        return int(self.rpc("eth_gasPrice", []), 16)

    def transaction_count(self, address: str, block: str) -> int:
        return int(self.rpc("eth_getTransactionCount", [address, block]), 16)

    def send_raw(self, raw: bytes) -> None:
        try:
            self.rpc("eth_sendRawTransaction", ["0x" + bytes(raw).hex()])
        except RpcRefused as exc:
            raise SendRefused(str(exc.error.get("message", exc))) from None

    def receipt(self, tx_hash: bytes | str) -> dict | None:
        return _ints(self.rpc("eth_getTransactionReceipt", [hex_hash(tx_hash)]))

    def transaction(self, tx_hash: bytes | str) -> dict | None:
        return _ints(self.rpc("eth_getTransactionByHash", [hex_hash(tx_hash)]))

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber", []), 16)

    def estimate_gas(self, tx: dict) -> int:
        try:
            return int(self.rpc("eth_estimateGas", [_quantities(tx)]), 16)
        except RpcRefused as exc:
            raise _reverted(exc) from None

    def call(self, tx: dict, block: int | str) -> bytes:
        try:
            out = self.rpc("eth_call", [_quantities(tx), hex(block) if isinstance(block, int) else block])
        except RpcRefused as exc:
            raise _reverted(exc) from None
        return bytes.fromhex(out[2:])

    def trace_output(self, tx_hash: bytes | str) -> str | None:
        trace = self.rpc("debug_traceTransaction", [hex_hash(tx_hash), {"tracer": "callTracer"}])
        return (trace or {}).get("output")


_INT_FIELDS = {"blockNumber", "gasUsed", "cumulativeGasUsed", "effectiveGasPrice", "status", "transactionIndex",
               "logIndex", "nonce", "gas", "gasPrice", "value", "type", "chainId", "v"}


def _ints(reply: Any) -> Any:
    """A receipt or transaction with its quantities as ints (its logs' too)."""
    if reply is None:
        return None
    out = {k: int(v, 16) if k in _INT_FIELDS and isinstance(v, str) else v for k, v in reply.items()}
    if "logs" in out:
        out["logs"] = [_ints(log) for log in out["logs"]]
    return out


def _quantities(tx: dict) -> dict:
    return {k: hex(v) if isinstance(v, int) else v for k, v in tx.items()}


def _reverted(exc: RpcRefused) -> CallReverted:
    """The node's error reply as a revert (web3.py's reading), or the error itself if it is none."""
    error = exc.error if isinstance(exc.error, dict) else {}
    message, data = str(error.get("message") or "execution reverted"), error.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return CallReverted(message, data)
    if error.get("code") == 3 or "revert" in message.lower():
        return CallReverted(message, None)
    raise exc


# ---------------------------------------------------------------------------- the executor's client


class LightTrade(ContractReader, TradeWriter):
    """The trading contract as a MEC executor uses it, over JSON-RPC (no web3.py).

    Args:
        url: the node's (the lab's RPC gateway's) HTTP JSON-RPC address.
        address: the contract's.
        config: ContractConfig (gas policy, confirmations, RPC timeout).
        abi: the contract's ABI (default: the built artifact).
    """

    def __init__(self, url: str, address: str, config: ContractConfig | None = None, *,
                 abi: list | None = None):
        self.config = config or ContractConfig()
        super().__init__(url, address, timeout_s=self.config.rpc_timeout_s, abi=abi)
        self.sender = TxSender(RpcNode(self.rpc), self.config)
        self.errors = ErrorTable(self.abi.items)
        self.reports: list[TxReport] = []
        self._reports_lock = threading.Lock()

    # ------------------------------------------------------------------ reads

    def block_number(self) -> int:
        """The head's number."""
        return self.sender.node.block_number()

    def escrow(self, ue: str, task_id: int) -> Escrow:
        ue = check_address("ue", ue)
        amount, deadline, mec_index, state = self.call("escrows", ue, task_id)
        mec = self.call("mecServer", mec_index)[0] if mec_index else None
        return Escrow(ue, task_id, amount, deadline, mec, EscrowState(state))

    def opened_escrows(self, *, mec: str | None = None, ue: str | None = None, task_id: int | None = None,
                       from_block: int = 0, to_block: int | str = "latest") -> list[dict]:
        """EscrowOpened events, optionally for one MEC server, one UE and one of its task ids
        (all three are indexed: the node filters them by topic)."""
        if task_id is not None:
            check_uint("task_id", task_id, UINT64_MAX)
        topics = [["0x" + self.abi.topics["EscrowOpened"].hex()],
                  self.abi.topic("address", check_address("ue", ue)) if ue else None,
                  self.abi.topic("uint64", task_id) if task_id is not None else None,
                  self.abi.topic("address", check_address("mec", mec)) if mec else None]
        return [args for _, args, _ in self._logs(topics, from_block, to_block)]

    def channel_events(self, *, ue: str | None = None, mec: str | None = None, from_block: int = 0,
                       to_block: int | str = "latest") -> list[dict]:
        """Every channel event, optionally of one UE and/or one MEC server, in chain order: as
        :meth:`contracts.binding.TradingContract.channel_events` gives them."""
        names = LANE_EVENTS if mec else CHANNEL_EVENTS
        topics = [["0x" + self.abi.topics[n].hex() for n in names],
                  self.abi.topic("address", check_address("ue", ue)) if ue else None,
                  self.abi.topic("address", check_address("mec", mec)) if mec else None]
        out = [{"event": name, **args, "blockNumber": log["blockNumber"], "transactionHash": log["transactionHash"],
                "logIndex": log["logIndex"]} for name, args, log in self._logs(topics, from_block, to_block)]
        return sorted(out, key=lambda e: (e["blockNumber"], e["logIndex"]))

    def _logs(self, topics: list, from_block: int, to_block: int | str) -> list[tuple[str, dict, dict]]:
        while topics and topics[-1] is None:
            topics = topics[:-1]
        logs = self.rpc("eth_getLogs", [{"address": self.address, "topics": topics,
                                         "fromBlock": hex(from_block) if isinstance(from_block, int) else from_block,
                                         "toBlock": hex(to_block) if isinstance(to_block, int) else to_block}])
        out = []
        for log in map(_ints, logs):
            decoded = self.abi.decode_log(log["topics"], log["data"])
            if decoded is not None:
                out.append((decoded[0], decoded[1], log))
        return out

    # ------------------------------------------------------------------ TradeWriter's means

    def encode_call(self, function: str, args: list) -> str:
        return "0x" + self.abi.encode_call(function, args).hex()

    def _decode_logs(self, receipt) -> tuple[tuple[str, dict], ...]:
        return tuple(decoded for log in receipt["logs"]
                     if log["address"].lower() == self.address.lower() and log["topics"]
                     and (decoded := self.abi.decode_log(log["topics"], log["data"])) is not None)
