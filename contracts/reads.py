"""What the trading contract holds, as Python values, and a light reader of it for the host programs.

The data types (:class:`Escrow`, :class:`Channel`, :class:`Lane`) are the binding's
(``contracts.binding`` re-exports them). :class:`ContractReader` reads them over plain JSON-RPC
(``eth_call``) with the compiled ABI, for a program that must not load web3.py for a handful of
reads: a UE client on a payment channel reads the unit price, its channel and now and then a
lane, and signs vouchers (:mod:`contracts.vouchers`); it loads the web3 binding only to send a
transaction (a top-up, an escrow). It decodes the static ABI types the contract's getters return
(uintN, address, bool, bytes32); ``tests/test_contract_channels.py`` checks every read against
the web3 binding on a live anvil.

    reader = ContractReader(gateway_url, contract_address, timeout_s=10)
    mu = reader.unit_price()
    ch = reader.channel(ue_address)               # Channel | None
"""
from __future__ import annotations

import enum
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from chain.keys import is_address, keccak, to_checksum_address

__all__ = ["EscrowState", "Escrow", "Channel", "Lane", "LANE_CLOSED", "ContractReader", "ReadError"]

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


class ReadError(RuntimeError):
    """The node did not answer a read, or refused it (its JSON-RPC error is in the message)."""


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
            from contracts.build import load_artifact
            abi = load_artifact("TradingContract")["abi"]
        self.url, self.address, self.timeout_s = url, to_checksum_address(address), timeout_s
        self._functions = {f["name"]: f for f in abi if f.get("type") == "function"}
        self._id = 0

    # ------------------------------------------------------------------ the contract's reads

    def unit_price(self) -> int:
        """mu, wei per Gcycle."""
        return self.call("unitPrice")[0]

    def quote(self, service_demand_cycles: int) -> int:
        """phi_u in wei for xi_u CPU cycles at the current mu."""
        return self.call("quote", service_demand_cycles)[0]

    def mec(self, server: str) -> tuple[str, int] | None:
        """(wallet W_m, index) of MEC server `server`, None if not registered."""
        wallet, index = self.call("mecs", _address("server", server))
        return None if index == 0 else (wallet, index)

    def channel(self, ue: str, block: int | str = "latest") -> Channel | None:
        """UE `ue`'s payment channel (as of `block`), None if it never opened one."""
        ue = _address("ue", ue)
        return Channel.from_getter(ue, self.call("channels", ue, block=block))

    def lane(self, ue: str, mec: str, block: int | str = "latest") -> Lane:
        """The lane of UE `ue` with MEC server `mec` (ValueError if `mec` is not registered)."""
        ue, mec = _address("ue", ue), _address("mec", mec)
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
        """The outputs of the contract's view function `name` called with `args` (static types)."""
        f = self._functions.get(name)
        if f is None:
            raise ValueError(f"the contract has no function {name!r}")
        types_in = [i["type"] for i in f["inputs"]]
        if len(args) != len(types_in):
            raise ValueError(f"{name} takes {len(types_in)} argument(s) ({', '.join(types_in)}), got {len(args)}")
        selector = keccak(f"{name}({','.join(types_in)})".encode())[:4]
        data = selector + b"".join(_encode(t, a) for t, a in zip(types_in, args))
        tag = hex(block) if isinstance(block, int) else block
        out = bytes.fromhex(self.rpc("eth_call", [{"to": self.address, "data": "0x" + data.hex()}, tag])[2:])
        types_out = [o["type"] for o in f["outputs"]]
        if len(out) != 32 * len(types_out):
            raise ReadError(f"{name}: {len(out)} bytes returned, {32 * len(types_out)} expected "
                            f"(is {self.address} the trading contract?)")
        return tuple(_decode(t, out[32 * i:32 * i + 32]) for i, t in enumerate(types_out))

    def rpc(self, method: str, params: list) -> Any:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                reply = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ReadError(f"{method} to {self.url} failed: {e}") from None
        if "error" in reply:
            raise ReadError(f"{method} refused by {self.url}: {reply['error']}")
        return reply["result"]


# ---------------------------------------------------------------------------- the static ABI


def _address(name: str, value: Any) -> str:
    if not is_address(value):
        raise ValueError(f"{name} must be a 20-byte hex address, got {value!r}")
    return to_checksum_address(value)


def _encode(abi_type: str, value: Any) -> bytes:
    if abi_type == "address":
        return bytes(12) + bytes.fromhex(_address("argument", value)[2:])
    if abi_type.startswith("uint"):
        bits = int(abi_type[4:] or 256)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**bits:
            raise ValueError(f"a {abi_type} is an integer in [0, 2**{bits}), got {value!r}")
        return value.to_bytes(32, "big")
    if abi_type == "bool":
        return int(bool(value)).to_bytes(32, "big")
    if abi_type == "bytes32":
        if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
            raise ValueError(f"a bytes32 is 32 bytes, got {value!r}")
        return bytes(value)
    raise ValueError(f"the light reader encodes static types only, not {abi_type}")


def _decode(abi_type: str, word: bytes) -> Any:
    if abi_type == "address":
        return to_checksum_address(word[12:])
    if abi_type.startswith("uint"):
        return int.from_bytes(word, "big")
    if abi_type == "bool":
        return word[-1] == 1
    if abi_type == "bytes32":
        return word
    raise ValueError(f"the light reader decodes static types only, not {abi_type}")
