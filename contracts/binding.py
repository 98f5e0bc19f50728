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

Payment channels (docs/channels.md): one deposit per UE, a signed voucher per task, redeemed in
batches by each MEC server:

    trade.open_channel(ue, deposit_wei=20 * 10**18, cap_per_lane_wei=2 * 10**18, expiry=now + 86_400)
    v = sign_voucher(ue, **trade.domain, mec=mec.address, generation=0, cumulative=phi, nonce=1,
                     task_id=1, request_digest=digest)                  # off chain, per task
    trade.redeem(mec, [v, ...])                     # newest voucher per lane, one transfer to W_m
    trade.close_lane(ue, mec=mec.address)           # ... dispute window ... trade.withdraw_lane(...)

Every transaction returns a :class:`TxReport` (gas used, fee, inclusion and confirmation
latency); :attr:`TradingContract.reports` keeps them all for the gas report and the testbed.

Sending (nonces, retries, confirmation) is :class:`contracts.txsender.TxSender`'s job: a retry
never pays twice, and the contract itself refuses a second payment of one task (TaskExists,
AlreadyPaid, AlreadyRefunded).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_keys import keys
from eth_utils import event_abi_to_log_topic, to_checksum_address
from web3 import Web3

from contracts.build import load_artifact
from contracts.config import ContractConfig
from contracts.light import CHANNEL_EVENTS, LANE_EVENTS, TradeWriter
from contracts.reads import LANE_CLOSED, Channel, Escrow, EscrowState, Lane  # noqa: F401 (the binding's types)
from contracts.reads import check_address as _address, check_uint as _check_uint
from contracts.txsender import ContractRevert, ErrorTable, TransactionTimeout, TxReport, TxSender

__all__ = ["TradingContract", "Escrow", "EscrowState", "Channel", "Lane", "TxReport", "ContractRevert",
           "TransactionTimeout", "TxSender"]

CONTRACT_NAME = "TradingContract"
UINT40_MAX = 2**40 - 1
UINT64_MAX = 2**64 - 1
UINT128_MAX = 2**128 - 1
ZERO_ADDRESS = "0x" + "00" * 20


# ---------------------------------------------------------------------------- the contract


class TradingContract(TradeWriter):
    """A deployed TradingContract: the ESP's, UE's and MEC server's calls, and reads (the MEC
    server's ``complete`` and ``redeem``, and the sending, are :class:`contracts.light.TradeWriter`'s).

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
        """Deploy with the ESP `provider` as owner, mu = config.unit_price_wei_per_gcycle and the
        channels' dispute window config.dispute_window_s."""
        config = config or ContractConfig()
        artifact = load_artifact(CONTRACT_NAME)
        sender = sender or TxSender(w3, config)
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        data = factory.constructor(config.unit_price_wei_per_gcycle, config.dispute_window_s).data_in_transaction
        errors = ErrorTable(artifact["abi"])
        receipt, included, confirmed, resends = sender.transact(
            provider, {"data": data, "value": 0}, function="deploy",
            estimate=lambda tx: errors.estimate(sender.node, tx, "deploy", config.gas_limit_margin))
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
        return self.transact(ue, "createTrade", [_address("wallet", wallet or ue.address), _public_key(ue)], **kw)

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

    # ------------------------------------------------------------------ channel: UE

    def open_channel(self, ue: LocalAccount, *, deposit_wei: int, cap_per_lane_wei: int, expiry: int,
                     register: bool = True, wallet: str | None = None, **kw) -> TxReport:
        """Open UE `ue`'s payment channel: `deposit_wei` for one lane per registered MEC server,
        each paying at most `cap_per_lane_wei` per generation, vouchers redeemable until block
        time `expiry` (unix s). With `register` it also registers the UE as create_trade does
        (W_u = `wallet`, default its own address); without, the UE must be registered."""
        _check_uint("deposit_wei", deposit_wei, 2**256 - 1)  # above 2**128 - 1: the contract refuses
        _check_uint("cap_per_lane_wei", cap_per_lane_wei, UINT128_MAX)
        _check_uint("expiry", expiry, UINT40_MAX)
        if register:
            args = [_address("wallet", wallet or ue.address), _public_key(ue)]
        elif wallet is not None:
            raise ValueError("wallet is only used when registering (register=True)")
        else:
            args = [ZERO_ADDRESS, b""]
        return self.transact(ue, "openChannel", args + [expiry, cap_per_lane_wei], value=deposit_wei, **kw)

    def top_up(self, ue: LocalAccount, *, amount_wei: int, cap_per_lane_wei: int, expiry: int, **kw) -> TxReport:
        """Add `amount_wei` (may be 0) to UE `ue`'s channel, with the cap per lane and the expiry
        (unix s) from now on; neither may decrease."""
        _check_uint("amount_wei", amount_wei, 2**256 - 1)
        _check_uint("cap_per_lane_wei", cap_per_lane_wei, UINT128_MAX)
        _check_uint("expiry", expiry, UINT40_MAX)
        return self.transact(ue, "topUp", [expiry, cap_per_lane_wei], value=amount_wei, **kw)

    def close_lane(self, ue: LocalAccount, *, mec: str, **kw) -> TxReport:
        """Start closing UE `ue`'s lane with MEC server `mec`; the dispute window follows."""
        return self.transact(ue, "closeLane", [_address("mec", mec)], **kw)

    def withdraw_lane(self, ue: LocalAccount, *, mec: str, **kw) -> TxReport:
        """Settle a closing lane after its dispute window; its unpaid cap goes to W_u."""
        return self.transact(ue, "withdrawLane", [_address("mec", mec)], **kw)

    def reopen_lane(self, ue: LocalAccount, *, mec: str, **kw) -> TxReport:
        """Open a settled lane again (its new generation), from the channel's free balance."""
        return self.transact(ue, "reopenLane", [_address("mec", mec)], **kw)

    def withdraw_free(self, ue: LocalAccount, *, amount_wei: int, **kw) -> TxReport:
        """Withdraw `amount_wei` of the channel's free balance to W_u."""
        _check_uint("amount_wei", amount_wei, UINT128_MAX)
        return self.transact(ue, "withdrawFree", [amount_wei], **kw)

    def reclaim(self, ue: LocalAccount, **kw) -> TxReport:
        """After the channel's expiry, take its whole balance to W_u (the channel is then final)."""
        return self.transact(ue, "reclaim", [], **kw)

    # ------------------------------------------------------------------ channel: MEC

    def release_lane(self, mec: LocalAccount, *, ue: str, **kw) -> TxReport:
        """As MEC server `mec`, settle its lane of UE `ue` at once, giving up what it has not
        redeemed in this generation (redeem first): the lane's unpaid cap becomes free balance."""
        return self.transact(mec, "releaseLane", [_address("ue", ue)], **kw)

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

    def channel(self, ue: str, block: int | str = "latest") -> Channel | None:
        """UE `ue`'s payment channel (as of `block`), None if it never opened one."""
        ue = _address("ue", ue)
        return Channel.from_getter(ue, self.contract.functions.channels(ue).call(block_identifier=block))

    def lane(self, ue: str, mec: str, block: int | str = "latest") -> Lane:
        """The lane of UE `ue` with MEC server `mec`, as of `block` (ValueError if `mec` is not
        registered)."""
        ue, mec = _address("ue", ue), _address("mec", mec)
        registered = self.mec(mec)
        if registered is None:
            raise ValueError(f"mec {mec} is not a registered MEC server")
        index = registered[1]
        redeemed, nonce, generation, closes_at = self.contract.functions.lanes(ue, index).call(block_identifier=block)
        return Lane(ue, mec, index, redeemed, nonce, generation, closes_at)

    def block_number(self) -> int:
        """The head's number."""
        return self.w3.eth.block_number

    @property
    def domain(self) -> dict:
        """The vouchers' EIP-712 domain as sign_voucher/voucher_signer take it: chain_id, contract."""
        return {"chain_id": self.sender.chain_id, "contract": self.address}

    def dispute_window_s(self) -> int:
        """Seconds a MEC server has to redeem after a UE starts closing their lane."""
        return self.contract.functions.disputeWindow().call()

    def domain_separator(self) -> bytes:
        """The contract's EIP-712 domain separator (32 bytes)."""
        return bytes(self.contract.functions.domainSeparator().call())

    def latest_block_time(self) -> int:
        """Timestamp of the latest block, unix seconds (the clock the deadlines are kept in)."""
        # Raw request: web3's block formatter rejects clique's long extraData (geth --dev).
        reply = self.w3.provider.make_request("eth_getBlockByNumber", ["latest", False])
        if "error" in reply:
            raise RuntimeError(f"eth_getBlockByNumber failed: {reply['error']}")
        return int(reply["result"]["timestamp"], 16)

    def balance(self) -> int:
        """Ether held by the contract (open escrows + channel balances), wei."""
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

    def channel_events(self, *, ue: str | None = None, mec: str | None = None, from_block: int = 0,
                       to_block: int | str = "latest") -> list[dict]:
        """Every channel event (ChannelOpened, ChannelToppedUp, VoucherRedeemed, LaneClosing,
        LaneSettled, LaneReopened, FreeWithdrawn, ChannelReclaimed), optionally of one UE and/or
        one MEC server (then only the lane events), in chain order. Each is a dict of the event's
        arguments plus "event" (its name), "blockNumber", "transactionHash" (0x-hex), "logIndex".
        One eth_getLogs: UE and MEC are indexed topics, filtered by the node."""
        topic_of = {name: topic for topic, name in self._events.items()}
        topics = [["0x" + topic_of[n].hex() for n in (LANE_EVENTS if mec else CHANNEL_EVENTS)],
                  _address_topic(_address("ue", ue)) if ue else None,
                  _address_topic(_address("mec", mec)) if mec else None]
        logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": from_block, "toBlock": to_block,
                                     "topics": topics})
        out = []
        for log in logs:
            name = self._events[bytes(log["topics"][0])]
            args = dict(self.contract.events[name]().process_log(log)["args"])
            out.append({"event": name, **args, "blockNumber": log["blockNumber"],
                        "transactionHash": log["transactionHash"].to_0x_hex(), "logIndex": log["logIndex"]})
        return sorted(out, key=lambda e: (e["blockNumber"], e["logIndex"]))

    # ------------------------------------------------------------------ TradeWriter's means

    def encode_call(self, function: str, args: list) -> str:
        return self.contract.encode_abi(function, args=args)

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


def _public_key(ue: LocalAccount) -> bytes:
    """PK_u: the 64-byte uncompressed key without its 0x04 prefix (hashes to the address Id_u)."""
    return keys.PrivateKey(ue.key).public_key.to_bytes()


def _address_topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()
