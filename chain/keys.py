"""A chain key in a few megabytes: addresses, EIP-191 messages and 32-byte hashes signed and
recovered with libsecp256k1 (``coincurve``) and keccak (``pycryptodome``'s compiled Keccak,
called through ctypes: its Python wrapper loads cffi and cffi's C parser, pycparser, 2.4 MB
more in each of a lab's U + 2M host programs, issue 21).

The host programs sign on every task (the request, the controller API's bodies, a channel
voucher, an executor's answer); eth_account does the same but loads the whole eth stack (its
BLS curves, pydantic, eth_abi), about 30 MB per process, 20 UE processes in a lab. The
signatures are the same bytes as eth_account's (RFC 6979 nonces, low s, v in {27, 28}):
``tests/test_keys.py`` checks them against eth_account and eth_keys.

    key = Key("0x59c6...")                       # a UE's, from its secret file
    sig = key.sign_message(body)                  # == Account.sign_message(encode_defunct(primitive=body))
    assert recover_message(body, sig) == key.address
    v, r, s = key.sign_hash(digest)              # an EIP-712 digest (vouchers)

    signed = key.sign_transaction({"to": contract, "data": calldata, "value": 0, "gas": 90_000,
                                   "gasPrice": 10**9, "nonce": 4, "chainId": 1337})
    signed.raw_transaction, signed.hash          # == Account.sign_transaction(...)'s (legacy, EIP-155)

A transaction is signed as a legacy (EIP-155) one, RLP-encoded here in a few lines: the only
kind the lab's senders send (a ``gasPrice``, no access list), on geth and anvil alike.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any, NamedTuple

import coincurve
import Crypto

__all__ = ["Key", "SignedTransaction", "SignatureError", "keccak", "to_checksum_address", "is_address", "recover_hash",
           "recover_message", "message_hash"]

#: secp256k1's group order, and half of it (a signature's s must be at most this: EIP-2).
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = N // 2


class SignatureError(ValueError):
    """A malformed key, address or signature, or one that recovers no key."""


def _keccak_library() -> ctypes.CDLL:
    """pycryptodome's ``Crypto/Hash/_keccak`` library with the C signatures its
    ``Crypto.Hash.keccak`` declares (init, absorb, digest, destroy)."""
    lib = ctypes.CDLL(str(next((Path(Crypto.__file__).parent / "Hash").glob("_keccak*.so"))))
    lib.keccak_init.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint8]
    lib.keccak_absorb.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.keccak_digest.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint8]
    lib.keccak_destroy.argtypes = [ctypes.c_void_p]
    return lib


_KECCAK = _keccak_library()


def keccak(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's, not NIST SHA3-256): ``Crypto.Hash.keccak.new(digest_bits=256)``'s
    calls (capacity 64 bytes, 24 rounds, padding 0x01), the same bytes (``tests/test_keys.py``)."""
    data = bytes(data)
    state, out = ctypes.c_void_p(), ctypes.create_string_buffer(32)
    if _KECCAK.keccak_init(ctypes.byref(state), 64, 24):
        raise MemoryError("keccak_init failed")
    try:
        if _KECCAK.keccak_absorb(state, data, len(data)) or _KECCAK.keccak_digest(state, out, 32, 0x01):
            raise ValueError("keccak failed")
    finally:
        _KECCAK.keccak_destroy(state)
    return out.raw


def to_checksum_address(address: str | bytes) -> str:
    """EIP-55 checksum form of a 20-byte address (hex string of any case, or 20 bytes)."""
    if isinstance(address, (bytes, bytearray)):
        if len(address) != 20:
            raise SignatureError(f"an address is 20 bytes, got {len(address)}")
        low = bytes(address).hex()
    else:
        if not is_address(address):
            raise SignatureError(f"not a 20-byte hex address: {address!r}")
        low = address[2:].lower()
    h = keccak(low.encode()).hex()
    return "0x" + "".join(c.upper() if int(h[i], 16) >= 8 else c for i, c in enumerate(low))


def is_address(value: Any) -> bool:
    """A 0x-prefixed 40-digit hex string (any case; see :func:`is_checksummed`)."""
    if not (isinstance(value, str) and len(value) == 42 and value[:2] in ("0x", "0X")):
        return False
    try:
        int(value[2:], 16)
    except ValueError:
        return False
    return True


def is_checksummed(value: str) -> bool:
    """True unless `value` is mixed case with a wrong EIP-55 checksum (one case is unchecked)."""
    body = value[2:]
    if body == body.lower() or body == body.upper():
        return True
    return to_checksum_address(value) == value


def message_hash(message: bytes) -> bytes:
    """The EIP-191 (version 0x45, ``personal_sign``) hash of `message`."""
    message = bytes(message)
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


class SignedTransaction(NamedTuple):
    """A signed transaction as eth_account names its parts: the bytes to send, and their keccak."""
    raw_transaction: bytes
    hash: bytes


def rlp(item: bytes | list) -> bytes:
    """Recursive-length-prefix encoding of bytes and (nested) lists of them (Ethereum yellow paper, app. B)."""
    if isinstance(item, list):
        body = b"".join(rlp(i) for i in item)
        return _rlp_length(len(body), 0xC0) + body
    if len(item) == 1 and item[0] < 0x80:
        return bytes(item)
    return _rlp_length(len(item), 0x80) + bytes(item)


def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(size)]) + size


def _rlp_int(value: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a transaction's integer field is an int >= 0, got {value!r}")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _hex_bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value[2:] if value[:2] in ("0x", "0X") else value)
    return bytes(value)


def _address_of(public: coincurve.PublicKey) -> str:
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[12:])


class Key:
    """One private key: ``.key`` (32 bytes), ``.address`` (checksummed)."""

    def __init__(self, private_key: str | bytes):
        raw = private_key
        if isinstance(raw, str):
            text = raw.strip()
            try:
                raw = bytes.fromhex(text[2:] if text[:2] in ("0x", "0X") else text)
            except ValueError:
                raise SignatureError("a private key is 32 bytes of hex") from None
        raw = bytes(raw)
        if len(raw) != 32 or not 0 < int.from_bytes(raw, "big") < N:
            raise SignatureError("a private key is 32 bytes, in [1, n)")
        self.key = raw
        self._secret = coincurve.PrivateKey(raw)
        self.address = _address_of(self._secret.public_key)

    def __repr__(self) -> str:          # never the secret
        return f"Key({self.address})"

    def sign_hash(self, digest: bytes) -> tuple[int, int, int]:
        """(v, r, s) of a 32-byte hash, v in {27, 28}, low s."""
        if len(digest) != 32:
            raise SignatureError(f"a hash to sign is 32 bytes, got {len(digest)}")
        sig = self._secret.sign_recoverable(bytes(digest), hasher=None)
        return 27 + sig[64], int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")

    def sign_transaction(self, tx: dict) -> SignedTransaction:
        """Sign a legacy transaction (EIP-155) given as eth_account takes it: nonce, gasPrice, gas,
        to (absent: a contract creation), value, data, chainId; the same bytes as
        ``Account.sign_transaction``."""
        to = _hex_bytes(tx["to"]) if tx.get("to") else b""
        fields = [_rlp_int(tx["nonce"]), _rlp_int(tx["gasPrice"]), _rlp_int(tx["gas"]), to,
                  _rlp_int(tx.get("value", 0)), _hex_bytes(tx.get("data", b""))]
        chain_id = tx["chainId"]
        v, r, s = self.sign_hash(keccak(rlp(fields + [_rlp_int(chain_id), b"", b""])))
        raw = rlp(fields + [_rlp_int(v - 27 + 35 + 2 * chain_id), _rlp_int(r), _rlp_int(s)])
        return SignedTransaction(raw, keccak(raw))

    def sign_message(self, message: bytes) -> str:
        """The 0x-hex 65-byte EIP-191 signature of `message` (r || s || v)."""
        v, r, s = self.sign_hash(message_hash(message))
        return "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])).hex()


def recover_hash(digest: bytes, signature: bytes | str) -> str:
    """The checksummed address whose key signed the 32-byte `digest`; SignatureError if the signature
    is not 65 bytes r || s || v with v in {27, 28}, 0 < r < n, 0 < s <= n/2, or recovers no key."""
    sig = _signature_bytes(signature)
    r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    if v not in (27, 28):
        raise SignatureError(f"signature v must be 27 or 28, got {v}")
    if not 0 < r < N or not 0 < s <= HALF_N:
        raise SignatureError("signature r must be in [1, n) and s in [1, n/2] (a high s is a malleated signature)")
    try:
        public = coincurve.PublicKey.from_signature_and_message(sig[:64] + bytes([v - 27]), bytes(digest),
                                                                hasher=None)
    except Exception as e:        # libsecp256k1: no point for this r
        raise SignatureError(f"signature does not recover a key: {e}") from None
    return _address_of(public)


def recover_message(message: bytes, signature: bytes | str) -> str:
    """The checksummed address that signed `message` with EIP-191 (:meth:`Key.sign_message`)."""
    return recover_hash(message_hash(message), signature)


def _signature_bytes(signature: bytes | str) -> bytes:
    if isinstance(signature, str):
        text = signature[2:] if signature[:2] in ("0x", "0X") else signature
        try:
            signature = bytes.fromhex(text)
        except ValueError:
            raise SignatureError("a signature is 65 bytes of hex") from None
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 65:
        raise SignatureError(f"a signature is 65 bytes, got {signature!r}"[:120])
    return bytes(signature)


@functools.lru_cache(maxsize=256)
def key_of(private_key: bytes) -> Key:
    """The :class:`Key` of 32 raw bytes, built once (deriving the public key is the slow part)."""
    return Key(private_key)
