"""What the trading contract holds, as Python values, and a light reader of it for the host programs.

The data types (:class:`Escrow`, :class:`Channel`, :class:`Lane`) are the binding's
(``contracts.binding`` re-exports them). :class:`ContractReader` reads them over plain JSON-RPC
(``eth_call``) with the compiled ABI, for a program that must not load web3.py for a handful of
reads: a UE client on a payment channel reads the unit price, its channel and now and then a
lane, and signs vouchers (:mod:`contracts.vouchers`); it loads the web3 binding only to send a
transaction (a top-up, an escrow); the MEC executor reads and writes through its subclass
:class:`contracts.light.LightTrade`. The ABI is :mod:`contracts.abi`'s;
``tests/test_contract_channels.py`` checks every read against the web3 binding on a live anvil.

    reader = ContractReader(gateway_url, contract_address, timeout_s=10)
    mu = reader.unit_price()
    ch = reader.channel(ue_address)               # Channel | None
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from chain.keys import is_address, is_checksummed, to_checksum_address
from chain.rpc import JsonRpc, RpcError, RpcRefused
from contracts.abi import Abi
from contracts.build import load_artifact

__all__ = ["EscrowState", "Escrow", "Channel", "Lane", "LANE_CLOSED", "ContractReader", "ReadError", "RpcRefused",
           "check_address", "check_uint"]

LANE_CLOSED = 2**32 - 1   # Lane.closesAt of a settled lane


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
class Channel:
    """A UE's payment channel read from the chain (amounts in wei, expiry in unix seconds).

    Attributes: balance_wei (held for the UE), cap_per_lane_wei (the most one lane pays per
    generation), redeemed_open_wei (paid so far by the lanes not settled), expiry, lane_count
    (lanes are MEC indexes 1..lane_count), open_lanes (not settled), reclaimed (final).
    """
    ue: str
    balance_wei: int
    cap_per_lane_wei: int
    redeemed_open_wei: int
    expiry: int
    lane_count: int
    open_lanes: int
    reclaimed: bool

    @classmethod
    def from_getter(cls, ue: str, values) -> "Channel | None":
        """The channel of the contract's ``channels(ue)`` getter's values, None if never opened."""
        balance, redeemed_open, cap, expiry, lane_count, open_lanes, reclaimed = values
        if lane_count == 0:
            return None
        return cls(ue, balance, cap, redeemed_open, expiry, lane_count, open_lanes, bool(reclaimed))

    @property
    def free_wei(self) -> int:
        """What no unsettled lane can claim: the UE may withdraw it or reopen lanes with it."""
        return self.balance_wei - (self.open_lanes * self.cap_per_lane_wei - self.redeemed_open_wei)


@dataclass(frozen=True)
class Lane:
    """One (UE, MEC server) lane of a channel read from the chain.

    Attributes: index (the MEC server's), redeemed_wei (paid in this generation), nonce (highest
    redeemed voucher nonce), generation (the one vouchers must name), closes_at (0 open; block
    time, unix s, that ends the dispute window while closing; 2**32 - 1 settled).
    """
    ue: str
    mec: str
    index: int
    redeemed_wei: int
    nonce: int
    generation: int
    closes_at: int

    @property
    def state(self) -> str:
        """"open" (vouchers pay), "closing" (the UE closed it: the MEC may redeem until
        closes_at) or "closed" (settled until the UE reopens it)."""
        if self.closes_at == 0:
            return "open"
        return "closed" if self.closes_at == LANE_CLOSED else "closing"


#: The node did not answer a read, refused it (:class:`chain.rpc.RpcRefused`), or answered
#: something that is not the function's outputs.
ReadError = RpcError


class ContractReader:
    """The trading contract's reads over JSON-RPC ``eth_call``, without web3.py.

    Args:
        url: the node's (the lab's RPC gateway's) HTTP JSON-RPC address.
        address: the contract's.
        timeout_s: per request.
        abi: the contract's ABI (default: the built artifact, checked fresh).
    """

    def __init__(self, url: str, address: str, *, timeout_s: float = 10.0, abi: list | None = None):
        if abi is None:
            abi = load_artifact("TradingContract")["abi"]
        self.url, self.address, self.timeout_s = url, to_checksum_address(address), timeout_s
        self.abi = Abi(abi)
        #: ``rpc(method, params)``: the node's answer (:class:`chain.rpc.JsonRpc`, the one client)
        self.rpc = JsonRpc(url, timeout_s=timeout_s)

    # ------------------------------------------------------------------ the contract's reads

    def unit_price(self) -> int:
        """mu, wei per Gcycle."""
        return self.call("unitPrice")[0]

    def quote(self, service_demand_cycles: int) -> int:
        """phi_u in wei for xi_u CPU cycles at the current mu."""
        return self.call("quote", service_demand_cycles)[0]

    def mec(self, server: str) -> tuple[str, int] | None:
        """(wallet W_m, index) of MEC server `server`, None if not registered."""
        wallet, index = self.call("mecs", check_address("server", server))
        return None if index == 0 else (wallet, index)

    def channel(self, ue: str, block: int | str = "latest") -> Channel | None:
        """UE `ue`'s payment channel (as of `block`), None if it never opened one."""
        ue = check_address("ue", ue)
        return Channel.from_getter(ue, self.call("channels", ue, block=block))

    def lane(self, ue: str, mec: str, block: int | str = "latest") -> Lane:
        """The lane of UE `ue` with MEC server `mec` (ValueError if `mec` is not registered)."""
        ue, mec = check_address("ue", ue), check_address("mec", mec)
        registered = self.mec(mec)
        if registered is None:
            raise ValueError(f"mec {mec} is not a registered MEC server")
        redeemed, nonce, generation, closes_at = self.call("lanes", ue, registered[1], block=block)
        return Lane(ue, mec, registered[1], redeemed, nonce, generation, closes_at)

    def latest_block_time(self) -> int:
        """Timestamp of the latest block, unix seconds."""
        return int(self.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    # ------------------------------------------------------------------ the means

    def call(self, name: str, *args, block: int | str = "latest") -> tuple:
        """The outputs of the contract's view function `name` called with `args`."""
        data = self.abi.encode_call(name, args)
        tag = hex(block) if isinstance(block, int) else block
        out = bytes.fromhex(self.rpc("eth_call", [{"to": self.address, "data": "0x" + data.hex()}, tag])[2:])
        try:
            return self.abi.decode_output(name, out)
        except ValueError:
            raise ReadError(f"{name}: {len(out)} bytes returned, not its outputs "
                            f"(is {self.address} the trading contract?)") from None


# ---------------------------------------------------------------------------- arguments


def check_address(name: str, value: Any) -> str:
    """`value` checksummed; ValueError naming the argument if it is no address (or a mixed-case
    one with a wrong checksum)."""
    if not (is_address(value) and is_checksummed(value)):
        raise ValueError(f"{name} must be a 20-byte hex address, got {value!r}")
    return to_checksum_address(value)


def check_uint(name: str, value: Any, maximum: int) -> None:
    """ValueError naming the argument unless `value` is an int in [0, maximum]."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [0, {maximum}], got {value!r}")
