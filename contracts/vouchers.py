"""Signed cumulative vouchers of the trading contract's payment channels (EIP-712), without a node.

A UE pays a MEC server per task by signing, off chain, a voucher for everything it has paid on
their lane so far; the MEC server checks the voucher when the task arrives (:func:`voucher_signer`)
and later redeems the newest voucher of each lane in one transaction (``TradingContract.redeem``).

    v = sign_voucher(ue, chain_id=31337, contract=trade.address, mec=server.address, generation=0,
                     cumulative=3 * price_wei, nonce=3, task_id=17, request_digest=sha256(request).digest())
    assert voucher_signer(v, chain_id=31337, contract=trade.address) == ue.address
    wire = v.to_json()                      # JSON-safe dict; Voucher.from_json(wire) validates it back

The signed message is EIP-712 typed data, the same bytes the contract hashes (``_checkSignature``):

    domain  {name: "MecTrading", version: "1", chainId, verifyingContract}
    Voucher(address ue,address mec,uint32 generation,uint128 cumulative,uint64 nonce,uint64 taskId,bytes32 requestDigest)
    digest  keccak256(0x1901 || domainSeparator || keccak256(abi.encode(VOUCHER_TYPEHASH, fields...)))

The chain id and the contract's address are in the domain, so a voucher does not pay on another
deployment or chain; ``mec`` is in the message, so it does not pay another MEC server's lane.

Speed and weight (a task's critical path, in every UE and executor): the digest is built here
from 32-byte words + keccak (tests check it equals eth_account's ``encode_typed_data``) and the
domain separator is cached; signing and recovery are :mod:`chain.keys` (libsecp256k1), so a host
program that pays or checks vouchers does not load the eth stack. docs/channels.md has the
measured times.

JSON form: addresses as checksum strings, bytes as 0x-hex, integers as JSON numbers (Python's
json keeps them exact; wei amounts pass 2**53, so a JavaScript reader must parse them as BigInt).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from chain.keys import SignatureError, is_address, is_checksummed, keccak, key_of, recover_hash, to_checksum_address

__all__ = ["Voucher", "VoucherError", "sign_voucher", "voucher_signer", "voucher_digest",
           "domain_separator", "typed_data", "DOMAIN_NAME", "DOMAIN_VERSION", "VOUCHER_TYPES"]

DOMAIN_NAME = "MecTrading"
DOMAIN_VERSION = "1"
#: The EIP-712 types, as eth_account's ``encode_typed_data`` and wallets take them.
VOUCHER_TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                     {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
    "Voucher": [{"name": "ue", "type": "address"}, {"name": "mec", "type": "address"},
                {"name": "generation", "type": "uint32"}, {"name": "cumulative", "type": "uint128"},
                {"name": "nonce", "type": "uint64"}, {"name": "taskId", "type": "uint64"},
                {"name": "requestDigest", "type": "bytes32"}],
}
_DOMAIN_TYPEHASH = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
_VOUCHER_TYPEHASH = keccak(
    b"Voucher(address ue,address mec,uint32 generation,uint128 cumulative,uint64 nonce,uint64 taskId,"
    b"bytes32 requestDigest)")
#: The integers of a voucher -> their largest value (their Solidity widths).
_UINTS = {"generation": 2**32 - 1, "cumulative": 2**128 - 1, "nonce": 2**64 - 1, "task_id": 2**64 - 1}
_FIELDS = ("ue", "mec", "generation", "cumulative", "nonce", "task_id", "request_digest", "signature")


class VoucherError(ValueError):
    """A voucher that is malformed (types, ranges, lengths) or whose signature does not recover."""


@dataclass(frozen=True)
class Voucher:
    """One signed voucher: UE `ue` has paid MEC server `mec` `cumulative` wei on their lane so far.

    Attributes:
        ue, mec: checksum addresses of the paying UE (the signer) and the paid MEC server's account
            (the one registered with registerMec, which redeems).
        generation: the lane's generation (uint32; +1 each time the lane is settled).
        cumulative: wei paid on the lane in this generation, in total (uint128).
        nonce: strictly increasing per lane and generation (uint64).
        task_id: the UE's id of the task this voucher pays for (uint64).
        request_digest: 32-byte digest of the task's request, binding the voucher to it.
        signature: 65 bytes r || s || v, v in {27, 28}, low s.

    Built by :func:`sign_voucher` or validated by :meth:`from_json`; the constructor itself does
    not check (a test may build a malformed one on purpose).
    """
    ue: str
    mec: str
    generation: int
    cumulative: int
    nonce: int
    task_id: int
    request_digest: bytes
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict: addresses as strings, bytes as 0x-hex, integers as numbers."""
        return {"ue": self.ue, "mec": self.mec, "generation": self.generation, "cumulative": self.cumulative,
                "nonce": self.nonce, "task_id": self.task_id, "request_digest": "0x" + self.request_digest.hex(),
                "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, d: Any) -> "Voucher":
        """The voucher of a :meth:`to_json` dict; VoucherError naming what is malformed.

        Checks form only (types, ranges, lengths), not the signature: see :func:`voucher_signer`.
        """
        if not isinstance(d, dict):
            raise VoucherError(f"a voucher must be a JSON object, got {type(d).__name__}")
        missing, unknown = [k for k in _FIELDS if k not in d], sorted(set(d) - set(_FIELDS))
        if missing or unknown:
            raise VoucherError(f"voucher fields: missing {missing}, unknown {unknown}")
        return cls(ue=_address("ue", d["ue"]), mec=_address("mec", d["mec"]),
                   **{name: _uint(name, d[name]) for name in _UINTS},
                   request_digest=_hex("request_digest", d["request_digest"], 32),
                   signature=_hex("signature", d["signature"], 65))


# ---------------------------------------------------------------------------- signing


@functools.lru_cache(maxsize=64)
def domain_separator(chain_id: int, contract: str) -> bytes:
    """The EIP-712 domain separator of vouchers for `contract` on chain `chain_id` (32 bytes),
    equal to the contract's ``domainSeparator()``."""
    _uint("chain_id", chain_id, 2**256 - 1)
    return keccak(_DOMAIN_TYPEHASH + keccak(DOMAIN_NAME.encode()) + keccak(DOMAIN_VERSION.encode())
                  + _uint_word(chain_id) + _address_word(_address("contract", contract)))


def voucher_digest(*, chain_id: int, contract: str, ue: str, mec: str, generation: int, cumulative: int,
                   nonce: int, task_id: int, request_digest: bytes) -> bytes:
    """The 32-byte EIP-712 digest the UE signs (the contract's ``digest`` in _checkSignature)."""
    # abi.encode of static fields: one 32-byte word each
    struct = (_VOUCHER_TYPEHASH + _address_word(ue) + _address_word(mec) + _uint_word(generation)
              + _uint_word(cumulative) + _uint_word(nonce) + _uint_word(task_id) + bytes(request_digest))
    return keccak(b"\x19\x01" + domain_separator(chain_id, contract) + keccak(struct))


def typed_data(v: Voucher, *, chain_id: int, contract: str) -> dict:
    """The voucher as EIP-712 typed data (``eth_signTypedData_v4``'s input; eth_account's
    ``encode_typed_data(full_message=...)``), without its signature."""
    return {"types": VOUCHER_TYPES, "primaryType": "Voucher",
            "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id,
                       "verifyingContract": to_checksum_address(contract)},
            "message": {"ue": v.ue, "mec": v.mec, "generation": v.generation, "cumulative": v.cumulative,
                        "nonce": v.nonce, "taskId": v.task_id, "requestDigest": v.request_digest}}


def sign_voucher(account, *, chain_id: int, contract: str, mec: str, generation: int,
                 cumulative: int, nonce: int, task_id: int, request_digest: bytes) -> Voucher:
    """Sign, as UE `account`, a voucher paying MEC server `mec` `cumulative` wei in total on their
    lane's generation `generation` (see :class:`Voucher` for the fields). `account` is anything
    with the 32-byte ``.key`` (a :class:`chain.keys.Key`, an eth_account LocalAccount).
    VoucherError if a field is out of its Solidity range."""
    key = key_of(bytes(account.key))    # the public key derived once per account
    fields = dict(ue=key.address, mec=_address("mec", mec),
                  **{name: _uint(name, value) for name, value in
                     (("generation", generation), ("cumulative", cumulative), ("nonce", nonce),
                      ("task_id", task_id))},
                  request_digest=_bytes32("request_digest", request_digest))
    digest = voucher_digest(chain_id=chain_id, contract=contract, **fields)
    v, r, s = key.sign_hash(digest)        # RFC 6979 k, low s
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])
    return Voucher(**fields, signature=signature)


def voucher_signer(v: Voucher, *, chain_id: int, contract: str) -> str:
    """The checksum address that signed voucher `v` for `contract` on `chain_id`.

    The signature must be what the contract accepts (65 bytes, v in {27, 28}, 0 < r < n,
    0 < s <= n/2); anything else, or a signature that recovers no key, raises VoucherError.
    Compare the result with v.ue: a voucher signed by anyone else pays nothing on chain.
    """
    sig = v.signature
    if not isinstance(sig, (bytes, bytearray)) or len(sig) != 65:
        raise VoucherError(f"signature must be 65 bytes, got {sig!r}")
    digest = voucher_digest(chain_id=chain_id, contract=contract, ue=_address("ue", v.ue), mec=_address("mec", v.mec),
                            **{name: _uint(name, getattr(v, name)) for name in _UINTS},
                            request_digest=_bytes32("request_digest", v.request_digest))
    try:
        return recover_hash(digest, bytes(sig))   # v in {27, 28}, 0 < r < n, 0 < s <= n/2
    except SignatureError as exc:
        raise VoucherError(str(exc)) from None


def _uint_word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


# ---------------------------------------------------------------------------- validation


def _address(name: str, value: Any) -> str:
    # Mixed case must be a valid EIP-55 checksum (eth_utils' is_address does not check it).
    if not (isinstance(value, str) and is_address(value) and is_checksummed(value)):
        raise VoucherError(f"{name} must be a 20-byte hex address (checksummed if mixed case), got {value!r}")
    return to_checksum_address(value)


def _uint(name: str, value: Any, maximum: int | None = None) -> int:
    maximum = _UINTS[name] if maximum is None else maximum
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise VoucherError(f"{name} must be an integer in [0, {maximum}], got {value!r}")
    return value


def _bytes32(name: str, value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise VoucherError(f"{name} must be 32 bytes, got {value!r}")
    return bytes(value)


def _hex(name: str, value: Any, length: int) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise VoucherError(f"{name} must be a 0x-prefixed hex string, got {value!r}")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise VoucherError(f"{name} is not valid hex: {value!r}") from None
    if len(raw) != length:
        raise VoucherError(f"{name} must be {length} bytes, got {len(raw)}")
    return raw
