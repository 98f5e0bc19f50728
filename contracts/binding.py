"""Python binding (web3.py) of the trading contract, for the UE client, the MEC executor and the testbed.

Works against any JSON-RPC node (anvil in tests, geth 1.11.6 in the testbed): every
transaction is signed here with the sender's local key (eth_account) and sent with
eth_sendRawTransaction; the node's `personal` API is never used.

    sender = TxSender(w3, config)                  # one per process and node: owns the nonces
    trade, _ = TradingContract.deploy(w3, esp, config, sender=sender)
    trade.register_mec(esp, server=mec.address, wallet=mec.address)
    trade.create_trade(ue)                                        # the paper's CreationTrade()
    trade.trading(ue, mec=mec.address, task_id=1, data_size_bits=8_000_000,
                  service_demand_cycles=1_200_000_000, execution_time_s=2.0)   # Trading()
    trade.complete(mec, ue=ue.address, task_id=1, result_hash=digest)           # MEC paid
    # or, once the deadline has passed without a result:
    trade.refund(ue, task_id=1)

Every transaction returns a :class:`TxReport` (gas used, fee, inclusion and confirmation
latency); :attr:`TradingContract.reports` keeps them all for the gas report and the testbed.

Sending (nonces, retries, confirmation) is :class:`contracts.txsender.TxSender`'s job: a retry
never pays twice, and the contract itself refuses a second payment of one task (TaskExists,
AlreadyPaid, AlreadyRefunded).
"""
from __future__ import annotations

import enum
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_keys import keys
from eth_utils import event_abi_to_log_topic, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError

from contracts.build import load_artifact
from contracts.config import ContractConfig
from contracts.txsender import ContractRevert, ErrorTable, TransactionTimeout, TxSender

__all__ = ["TradingContract", "Escrow", "EscrowState", "TxReport", "ContractRevert",
           "TransactionTimeout", "TxSender"]

CONTRACT_NAME = "TradingContract"
UINT64_MAX = 2**64 - 1
UINT40_MAX = 2**40 - 1


class EscrowState(enum.IntEnum):
    """State of one escrow, as the contract's `State` enum."""
    NONE = 0       # the (UE, task id) pair was never used
    OPEN = 1       # phi_u held by the contract
    PAID = 2       # released to the MEC server's wallet W_m
    REFUNDED = 3   # returned to the UE's wallet W_u


@dataclass(frozen=True)
class Escrow:
    """One escrowed payment read from the chain.

    Attributes: amount_wei (phi_u), deadline (tau_u as block time, unix seconds), mec (the MEC
    server's account, None if the escrow does not exist), state.
    """
    ue: str
    task_id: int
    amount_wei: int
    deadline: int
    mec: str | None
    state: EscrowState


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

    def event(self, name: str) -> dict:
        """Arguments of the first event called `name` (KeyError if the transaction emitted none)."""
        for event_name, args in self.events:
            if event_name == name:
                return args
        raise KeyError(f"{self.function} emitted no {name} event (emitted: {[n for n, _ in self.events]})")


# ---------------------------------------------------------------------------- the contract


class TradingContract:
    """A deployed TradingContract: the ESP's, UE's and MEC server's calls, and reads.

    Args:
        w3: connection to the node.
        address: the contract's address.
        config: ContractConfig (unit price, deadlines, gas policy).
        sender: the process's TxSender (one is made if None; share it between bindings that
            use the same accounts, so their nonces stay consistent).
    """

    def __init__(self, w3: Web3, address: str, config: ContractConfig | None = None, *,
                 sender: TxSender | None = None, artifact: dict | None = None):
        self.w3 = w3
        self.config = config or ContractConfig()
        self.artifact = artifact or load_artifact(CONTRACT_NAME)
        self.address = to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=self.artifact["abi"])
        self.sender = sender or TxSender(w3, self.config)
        self.reports: list[TxReport] = []
        self._reports_lock = threading.Lock()
        self.errors = ErrorTable(self.artifact["abi"])
        self._events = {event_abi_to_log_topic(e): e["name"] for e in self.artifact["abi"] if e["type"] == "event"}

    # ------------------------------------------------------------------ deploy

    @classmethod
    def deploy(cls, w3: Web3, provider: LocalAccount, config: ContractConfig | None = None, *,
               sender: TxSender | None = None) -> tuple["TradingContract", TxReport]:
        """Deploy with the ESP `provider` as owner and mu = config.unit_price_wei_per_gcycle."""
        config = config or ContractConfig()
        artifact = load_artifact(CONTRACT_NAME)
        sender = sender or TxSender(w3, config)
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        data = factory.constructor(config.unit_price_wei_per_gcycle).data_in_transaction
        errors = ErrorTable(artifact["abi"])
        receipt, included, confirmed, resends = sender.transact(
            provider, {"data": data, "value": 0}, function="deploy",
            estimate=lambda tx: errors.estimate(w3, tx, "deploy", config.gas_limit_margin))
        if receipt["status"] != 1 or not receipt.get("contractAddress"):
            raise ContractRevert("deploy", "DeployFailed", {}, "0x", receipt)
        trade = cls(w3, receipt["contractAddress"], config, sender=sender, artifact=artifact)
        report = trade._report("deploy", provider, receipt, included, confirmed, resends)
        return trade, report

    # ------------------------------------------------------------------ ESP

    def set_unit_price(self, provider: LocalAccount, unit_price_wei_per_gcycle: int, **kw) -> TxReport:
        """Set mu, wei per Gcycle (ESP only)."""
        _check_uint("unit_price_wei_per_gcycle", unit_price_wei_per_gcycle, 2**128 - 1)
        return self.transact(provider, "setUnitPrice", [unit_price_wei_per_gcycle], **kw)

    def register_mec(self, provider: LocalAccount, *, server: str, wallet: str | None = None, **kw) -> TxReport:
        """Register MEC server `server` (its account), paid into `wallet` W_m (default: the server)."""
        server = _address("server", server)
        wallet = _address("wallet", wallet or server)
        return self.transact(provider, "registerMec", [server, wallet], **kw)

    # ------------------------------------------------------------------ UE

    def create_trade(self, ue: LocalAccount, *, wallet: str | None = None, **kw) -> TxReport:
        """The paper's CreationTrade(): register UE u (Id_u = its address, PK_u from its key,
        W_u = `wallet`, default its own address, where refunds go)."""
        public_key = keys.PrivateKey(ue.key).public_key.to_bytes()  # 64 bytes, hashes to Id_u
        return self.transact(ue, "createTrade", [_address("wallet", wallet or ue.address), public_key], **kw)

    def trading(self, ue: LocalAccount, *, mec: str, task_id: int, data_size_bits: int,
                service_demand_cycles: int, execution_time_s: float | None = None,
                deadline: int | None = None, value_wei: int | None = None, **kw) -> TxReport:
        """The paper's Trading(): escrow phi_u = mu * xi_u for task R_u = (d_u, xi_u, tau_u) on MEC `mec`.

        Args:
            task_id: the UE's own id of the task (unique per UE), 0 .. 2**64-1.
            data_size_bits: d_u, bits.
            service_demand_cycles: xi_u, CPU cycles.
            execution_time_s: tau_u, seconds; the on-chain deadline is then the later of the
                latest block's time and the clock, + ceil(tau_u) + config.settlement_grace_s.
            deadline: absolute on-chain deadline (unix seconds), instead of execution_time_s.
            value_wei: ether sent; default phi_u from the contract's current mu (tests send
                wrong amounts on purpose).
        """
        mec = _address("mec", mec)
        _check_uint("task_id", task_id, UINT64_MAX)
        _check_uint("data_size_bits", data_size_bits, UINT64_MAX)
        _check_uint("service_demand_cycles", service_demand_cycles, UINT64_MAX)
        if (execution_time_s is None) == (deadline is None):
            raise ValueError("give exactly one of execution_time_s (tau_u, seconds) and deadline (unix seconds)")
        if deadline is None:
            if not (isinstance(execution_time_s, (int, float)) and math.isfinite(execution_time_s)
                    and execution_time_s >= 0):
                raise ValueError(f"execution_time_s must be a finite number >= 0, got {execution_time_s!r}")
            # From the later of the head's time and the clock: on a slow chain the head can be
            # tens of seconds old, and the block that takes the payment gets the clock's time.
            now = max(self.latest_block_time(), int(time.time()))
            deadline = now + math.ceil(execution_time_s) + self.config.settlement_grace_s
        _check_uint("deadline", deadline, UINT40_MAX)
        if value_wei is None:
            value_wei = self.quote(service_demand_cycles)
        _check_uint("value_wei", value_wei, 2**256 - 1)
        return self.transact(ue, "trading", [mec, task_id, data_size_bits, service_demand_cycles, deadline],
                              value=value_wei, **kw)

    def refund(self, ue: LocalAccount, *, task_id: int, **kw) -> TxReport:
        """Take back the escrow of task `task_id` after its deadline (paid to W_u)."""
        _check_uint("task_id", task_id, UINT64_MAX)
        return self.transact(ue, "refund", [task_id], **kw)

    # ------------------------------------------------------------------ MEC

    def complete(self, mec: LocalAccount, *, ue: str, task_id: int, result_hash: bytes, **kw) -> TxReport:
        """Record completion of UE `ue`'s task `task_id` (result_hash: 32-byte digest of the
        result) before its deadline; phi_u goes to the MEC server's wallet W_m."""
        _check_uint("task_id", task_id, UINT64_MAX)
        result_hash = bytes(HexBytes(result_hash))
        if len(result_hash) != 32:
            raise ValueError(f"result_hash must be 32 bytes, got {len(result_hash)}")
        return self.transact(mec, "complete", [_address("ue", ue), task_id, result_hash], **kw)

    # ------------------------------------------------------------------ reads

    def unit_price(self) -> int:
        """mu, wei per Gcycle."""
        return self.contract.functions.unitPrice().call()

    def quote(self, service_demand_cycles: int) -> int:
        """phi_u in wei for xi_u CPU cycles at the current mu."""
        _check_uint("service_demand_cycles", service_demand_cycles, UINT64_MAX)
        return self.contract.functions.quote(service_demand_cycles).call()

    def provider(self) -> str:
        return self.contract.functions.provider().call()

    def ue_wallet(self, ue: str) -> str | None:
        """W_u of UE `ue`, None if it never ran createTrade."""
        wallet = self.contract.functions.ueWallet(_address("ue", ue)).call()
        return None if int(wallet, 16) == 0 else wallet

    def mec(self, server: str) -> tuple[str, int] | None:
        """(wallet W_m, index) of MEC server `server`, None if not registered."""
        wallet, index = self.contract.functions.mecs(_address("server", server)).call()
        return None if index == 0 else (wallet, index)

    def escrow(self, ue: str, task_id: int) -> Escrow:
        ue = _address("ue", ue)
        amount, deadline, mec_index, state = self.contract.functions.escrows(ue, task_id).call()
        mec = self.contract.functions.mecServer(mec_index).call() if mec_index else None
        return Escrow(ue, task_id, amount, deadline, mec, EscrowState(state))

    def latest_block_time(self) -> int:
        """Timestamp of the latest block, unix seconds (the clock the deadlines are kept in)."""
        # Raw request: web3's block formatter rejects clique's long extraData (geth --dev).
        reply = self.w3.provider.make_request("eth_getBlockByNumber", ["latest", False])
        if "error" in reply:
            raise RuntimeError(f"eth_getBlockByNumber failed: {reply['error']}")
        return int(reply["result"]["timestamp"], 16)

    def balance(self) -> int:
        """Ether held by the contract (the sum of open escrows), wei."""
        return self.w3.eth.get_balance(self.address)

    def opened_escrows(self, *, mec: str | None = None, ue: str | None = None, task_id: int | None = None,
                       from_block: int = 0, to_block: int | str = "latest") -> list[dict]:
        """EscrowOpened events, optionally for one MEC server, one UE and one of its task ids
        (all three are indexed: the node filters them by topic)."""
        filters: dict[str, Any] = {}
        if mec:
            filters["mec"] = _address("mec", mec)
        if ue:
            filters["ue"] = _address("ue", ue)
        if task_id is not None:
            _check_uint("task_id", task_id, UINT64_MAX)
            filters["taskId"] = task_id
        logs = self.contract.events.EscrowOpened().get_logs(from_block=from_block, to_block=to_block,
                                                             argument_filters=filters or None)
        return [dict(log["args"]) for log in logs]

    def paid_escrows(self, *, ue: str | None = None, task_id: int | None = None, from_block: int = 0,
                     to_block: int | str = "latest") -> list[dict]:
        """EscrowPaid events (with the resultHash each MEC server committed to)."""
        filters: dict[str, Any] = {}
        if ue:
            filters["ue"] = _address("ue", ue)
        if task_id is not None:
            filters["taskId"] = task_id
        logs = self.contract.events.EscrowPaid().get_logs(from_block=from_block, to_block=to_block,
                                                           argument_filters=filters or None)
        return [dict(log["args"]) | {"blockNumber": log["blockNumber"]} for log in logs]

    # ------------------------------------------------------------------ internals

    def transact(self, account: LocalAccount, function: str, args: list, *, value: int = 0,
                 gas: int | None = None) -> TxReport:
        """Send one call of any contract function with raw arguments (the named methods above
        check their arguments first; this does not). `gas` skips estimation, so a doomed call
        is mined and fails on chain."""
        tx = {"to": self.address, "data": self.contract.encode_abi(function, args=args), "value": value}
        if gas is not None:
            tx["gas"] = gas
        receipt, included, confirmed, resends = self.sender.transact(
            account, tx, function=function,
            estimate=lambda t: self.errors.estimate(self.w3, t, function, self.config.gas_limit_margin))
        if receipt["status"] != 1:
            raise self._failed(function, account, tx, receipt)
        return self._report(function, account, receipt, included, confirmed, resends)

    def _failed(self, function: str, account: LocalAccount, tx: dict, receipt) -> ContractRevert:
        """Name the error of a transaction that reverted on chain.

        From the node's call trace (debug_traceTransaction, callTracer: exact), else by replaying
        the call on the parent block's state (exact when no earlier transaction of the same block
        changed what it reads, and the deadline checks are not within a block interval).
        """
        data = None
        try:
            trace = self.w3.provider.make_request(
                "debug_traceTransaction", [receipt["transactionHash"].to_0x_hex(), {"tracer": "callTracer"}])
            data = (trace.get("result") or {}).get("output")
        except Exception:  # debug API not enabled on this node: replay instead
            data = None
        if data and len(data) >= 10:
            name, args, data = self.errors.decode(ContractLogicError("reverted", data=data))
            return ContractRevert(function, name, args, data, receipt)
        call = {"from": account.address, "to": tx["to"], "data": tx["data"], "value": tx["value"],
                "gas": receipt["gasUsed"] * 2 + 50_000}
        try:
            self.w3.eth.call(call, block_identifier=receipt["blockNumber"] - 1)
        except ContractLogicError as exc:
            name, args, data = self.errors.decode(exc)
            return ContractRevert(function, name, args, data, receipt)
        return ContractRevert(function, "Unknown", {}, "0x", receipt)

    def _report(self, function: str, account: LocalAccount, receipt, included: float,
                confirmed: float, resends: int) -> TxReport:
        sent = self.w3.eth.get_transaction(receipt["transactionHash"])
        price = receipt.get("effectiveGasPrice") or sent["gasPrice"]
        report = TxReport(
            function=function, tx_hash=receipt["transactionHash"].to_0x_hex(), sender=account.address,
            nonce=sent["nonce"],
            block_number=receipt["blockNumber"], gas_used=receipt["gasUsed"], gas_price_wei=price,
            fee_wei=receipt["gasUsed"] * price, inclusion_latency_s=included,
            confirmation_latency_s=confirmed, resends=resends, events=self._decode_logs(receipt))
        with self._reports_lock:
            self.reports.append(report)
        return report

    def _decode_logs(self, receipt) -> tuple[tuple[str, dict], ...]:
        out = []
        for log in receipt["logs"]:
            if log["address"] != self.address or not log["topics"]:
                continue
            name = self._events.get(bytes(log["topics"][0]))
            if name:
                out.append((name, dict(self.contract.events[name]().process_log(log)["args"])))
        return tuple(out)


# ---------------------------------------------------------------------------- helpers


def _address(name: str, value: Any) -> str:
    if not isinstance(value, str) or not Web3.is_address(value):
        raise ValueError(f"{name} must be a 20-byte hex address, got {value!r}")
    return to_checksum_address(value)


def _check_uint(name: str, value: Any, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [0, {maximum}], got {value!r}")
