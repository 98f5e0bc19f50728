"""chain.keys (the host programs' signer) gives eth_account's bytes: addresses, EIP-191
signatures, recovery; and refuses what the contract refuses (high s, v not 27/28, bad lengths).
No node needed."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import to_checksum_address as eth_checksum

from chain.keys import HALF_N, N, Key, SignatureError, keccak, recover_hash, recover_message, to_checksum_address

ROOT = Path(__file__).resolve().parents[1]


def test_addresses_and_signatures_are_eth_accounts_bytes():
    rng = random.Random(7)
    for i in range(100):
        secret = rng.randbytes(32)
        ours, theirs = Key(secret), Account.from_key(secret)
        assert ours.address == theirs.address
        assert Key("0x" + secret.hex()).address == Key(secret.hex()).address == theirs.address
        message = rng.randbytes(i * 3)
        sig = ours.sign_message(message)
        assert sig == theirs.sign_message(encode_defunct(primitive=message)).signature.to_0x_hex()
        assert recover_message(message, sig) == theirs.address
        digest = keccak(message)
        v, r, s = ours.sign_hash(digest)
        signed = theirs.unsafe_sign_hash(digest)
        assert (v, r, s) == (signed.v, signed.r, signed.s) and s <= HALF_N
        assert recover_hash(digest, r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])) == theirs.address
        low = rng.randbytes(20).hex()
        assert to_checksum_address("0x" + low) == eth_checksum("0x" + low) == to_checksum_address(bytes.fromhex(low))
    assert "0x" not in repr(Key(bytes(31) + b"\x01"))[5:] and "Key(0x" in repr(Key(bytes(31) + b"\x01"))


def test_keccak_is_pycryptodomes_and_eth_hashs():
    """chain.keys.keccak calls pycryptodome's compiled Keccak through ctypes: the same digest as
    its cffi wrapper and eth_hash, at every length around the 136-byte rate and beyond."""
    from Crypto.Hash import keccak as pycryptodome_keccak
    from eth_hash.auto import keccak as eth_keccak
    rng = random.Random(5)
    for n in (0, 1, 31, 32, 33, 135, 136, 137, 271, 272, 273, 1000, 65_536, 1_000_001):
        data = rng.randbytes(n)
        assert keccak(data) == pycryptodome_keccak.new(digest_bits=256, data=data).digest() == eth_keccak(data), n
        assert keccak(bytearray(data)) == keccak(memoryview(data)) == keccak(data)
    assert keccak(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


def test_signed_transactions_are_eth_accounts_bytes():
    """Legacy (EIP-155) transactions as TxSender sends them: with and without data and value, a
    contract creation (no `to`), large and zero fields, chain ids of one byte and several."""
    rng = random.Random(11)
    to = "0x" + rng.randbytes(20).hex()
    cases = [dict(to=eth_checksum(to), value=0, data="0x", gas=21_000, gasPrice=1, nonce=0, chainId=1),
             dict(to=eth_checksum(to), value=10**18 + 1, data="0x" + rng.randbytes(68).hex(), gas=90_000,
                  gasPrice=2_000_000_000, nonce=127, chainId=1337),
             dict(to=to, value=2**128, data=rng.randbytes(4000), gas=3_000_000, gasPrice=2**64, nonce=2**20,
                  chainId=31337),
             dict(value=0, data="0x" + rng.randbytes(300).hex(), gas=5_000_000, gasPrice=10**9, nonce=1, chainId=90_001),
             dict(to=eth_checksum(to), value=0, data="0x00", gas=50_000, gasPrice=0, nonce=128, chainId=2**40)]
    for i, tx in enumerate(cases):
        secret = rng.randbytes(32)
        ours, theirs = Key(secret).sign_transaction(tx), Account.sign_transaction(
            {**tx, "to": eth_checksum(tx["to"])} if "to" in tx else tx, secret)
        assert (ours.raw_transaction, ours.hash) == (bytes(theirs.raw_transaction), bytes(theirs.hash)), i
        assert Account.recover_transaction(ours.raw_transaction) == Key(secret).address


def test_malformed_keys_and_signatures_are_refused_by_name():
    key = Key(bytes(31) + b"\x07")
    sig = bytes.fromhex(key.sign_message(b"body")[2:])
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    malleated = sig[:32] + (N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    for bad, why in [(malleated, "high s"), (sig[:64] + b"\x1d", "v must be 27 or 28"), (sig[:64] + b"\x00",
                     "v must be 27 or 28"), (bytes(32) + sig[32:], "r must be in"), (sig[:64], "65 bytes"),
                     ("0xzz", "65 bytes of hex"), (N.to_bytes(32, "big") + sig[32:], "r must be in")]:
        with pytest.raises(SignatureError, match=why):
            recover_message(b"body", bad)
    assert recover_message(b"body", sig) == key.address != recover_message(b"another body", sig)
    for secret, why in [(bytes(32), r"in \[1, n\)"), (N.to_bytes(32, "big"), r"in \[1, n\)"), (b"\x01" * 31, "32 bytes"),
                        ("0xnothex", "hex")]:
        with pytest.raises(SignatureError, match=why):
            Key(secret)
    with pytest.raises(SignatureError, match="not a 20-byte hex address"):
        to_checksum_address("0x12")


def test_a_host_program_pays_by_voucher_without_loading_web3():
    """The UE client's path on a payment channel (sign the request and the voucher, read the
    contract, load the scenario) imports neither web3.py nor eth_account nor Gymnasium, nor cffi's
    C parser (keccak calls pycryptodome's library through ctypes): the weight issue 21 measured per UE."""
    code = (
        "import sys, hashlib\n"
        "import nodes.ue_client, nodes.channels, contracts.reads\n"
        "from chain.keys import Key\n"
        "from contracts.vouchers import sign_voucher, voucher_signer\n"
        "k = Key(bytes(31) + b'\\x05')\n"
        "v = sign_voucher(k, chain_id=1, contract='0x' + '11' * 20, mec='0x' + '22' * 20, generation=0,\n"
        "                 cumulative=5, nonce=1, task_id=1, request_digest=hashlib.sha256(b'r').digest())\n"
        "assert voucher_signer(v, chain_id=1, contract='0x' + '11' * 20) == k.address\n"
        "contracts.reads.ContractReader('http://127.0.0.1:9/', '0x' + '11' * 20, abi=[])\n"
        "from scenario.config import load_scenario\n"
        "load_scenario('lab').model\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('web3', 'eth_account', 'eth_abi', 'pydantic', 'gymnasium', 'torch',\n"
        "                                      'cffi', 'pycparser'))\n"
        "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
