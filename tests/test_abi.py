"""contracts.abi (the host programs' ABI codec) gives eth_abi's bytes and values, and web3.py's
calldata, event arguments and error arguments for the trading contract. No node needed."""
from __future__ import annotations

import random

import eth_abi
import pytest
from eth_utils import to_checksum_address
from web3 import Web3

from contracts.abi import Abi, decode, encode
from contracts.build import load_artifact

ABI = load_artifact("TradingContract")["abi"]
VOUCHER = "(address,uint32,uint128,uint64,uint64,bytes32,bytes)"


def _address(rng: random.Random) -> str:
    return to_checksum_address("0x" + rng.randbytes(20).hex())


def _voucher(rng: random.Random) -> tuple:
    return (_address(rng), rng.randrange(2**32), rng.randrange(2**128), rng.randrange(2**64), rng.randrange(2**64),
            rng.randbytes(32), rng.randbytes(rng.choice([0, 1, 31, 32, 33, 65, 130])))


def _checksummed(values):
    """eth_abi's values with its lower-case addresses checksummed (as web3.py and contracts.abi give them)."""
    if isinstance(values, tuple):
        return tuple(_checksummed(v) for v in values)
    if isinstance(values, str) and len(values) == 42 and values.startswith("0x"):
        return to_checksum_address(values)
    return values


def test_values_encode_and_decode_as_eth_abi_does():
    rng = random.Random(3)
    cases = [(["uint8", "uint256", "int16", "bool", "address", "bytes32", "bytes4"],
              [255, 2**256 - 1, -300, True, _address(rng), rng.randbytes(32), b"\x01\x02\x03\x04"]),
             (["bytes", "string", "uint64"], [rng.randbytes(70), "µ per Gcycle", 7]),
             (["uint32[]", "address[2]", "bytes[]"], [[1, 2, 3], [_address(rng), _address(rng)], [b"", b"x" * 40]]),
             (["(uint8,bytes)[]", "(uint256,(bool,string))"], [[(1, b"a"), (2, b"b" * 33)], (5, (False, "s"))]),
             ([VOUCHER + "[]"], [[]]),
             ([], [])]
    for i in range(20):
        cases.append(([VOUCHER + "[]"], [[_voucher(rng) for _ in range(i)]]))
    for types, values in cases:
        data = encode(types, values)
        assert data == eth_abi.encode(types, values), types
        assert decode(types, data) == _checksummed(eth_abi.decode(types, data)), types


def test_out_of_range_values_and_short_data_are_refused_by_type():
    for types, values, why in [(["uint64"], [2**64], "a uint64 is an integer"), (["uint8"], [-1], "uint8"),
                               (["int8"], [128], "int8"), (["bool"], [1], "bool"), (["address"], ["0x12"], "address"),
                               (["bytes32"], [b"short"], "32 bytes"), (["uint8[2]"], [[1]], "list of 2"),
                               (["bytes"], ["0x00"], "bytes"), (["uint8", "uint8"], [1], "2 type")]:
        with pytest.raises(ValueError, match=why):
            encode(types, values)
    with pytest.raises(ValueError, match="ends before"):
        decode(["uint256", "uint256"], bytes(40))
    with pytest.raises(ValueError, match="runs past"):
        decode(["bytes"], (32).to_bytes(32, "big") + (100).to_bytes(32, "big") + bytes(32))


def test_calldata_is_web3s_and_the_redeem_batch_with_its_signatures_too():
    rng = random.Random(5)
    contract = Web3().eth.contract(abi=ABI)
    codec = Abi(ABI)
    batch = [_voucher(rng) for _ in range(7)]
    for name, args in [("redeem", [batch]), ("redeem", [batch[:1]]), ("complete", [_address(rng), 9, rng.randbytes(32)]),
                       ("openChannel", [_address(rng), rng.randbytes(64), 2**40 - 1, 2**128 - 1]),
                       ("quote", [123]), ("reclaim", [])]:
        assert "0x" + codec.encode_call(name, args).hex() == contract.encode_abi(name, args=args), name
    outputs = eth_abi.encode(["uint128", "uint40", "uint32", "uint8"], [5, 6, 7, 2])
    assert codec.decode_output("escrows", outputs) == (5, 6, 7, 2)
    with pytest.raises(ValueError, match="no function 'nope'"):
        codec.encode_call("nope", [])
    with pytest.raises(ValueError, match="takes 1 argument"):
        codec.encode_call("redeem", [])


def test_every_event_and_error_decodes_as_web3_decodes_it():
    """A log of every event of the contract, with random arguments, read by web3.py's
    process_log and by Abi.decode_log; the revert data of every custom error, by eth_abi."""
    rng = random.Random(9)
    contract = Web3().eth.contract(address="0x" + "11" * 20, abi=ABI)
    codec = Abi(ABI)

    def value(t):
        if t == "address":
            return _address(rng)
        if t.startswith("uint"):
            return rng.randrange(2 ** int(t[4:]))
        return {"bool": rng.random() < 0.5, "bytes32": rng.randbytes(32), "bytes": rng.randbytes(rng.randrange(90))}[t]

    events = [e for e in ABI if e["type"] == "event"]
    for event in events:
        for _ in range(3):
            args = {i["name"]: value(i["type"]) for i in event["inputs"]}
            indexed = [i for i in event["inputs"] if i["indexed"]]
            plain = [i for i in event["inputs"] if not i["indexed"]]
            topics = [codec.topics[event["name"]]] + [eth_abi.encode([i["type"]], [args[i["name"]]]) for i in indexed]
            data = eth_abi.encode([i["type"] for i in plain], [args[i["name"]] for i in plain])
            log = {"address": contract.address, "topics": topics, "data": data, "logIndex": 0, "transactionIndex": 0,
                   "transactionHash": bytes(32), "blockHash": bytes(32), "blockNumber": 1}
            theirs = dict(contract.events[event["name"]]().process_log(log)["args"])
            assert codec.decode_log(topics, data) == (event["name"], theirs) == (event["name"], args)
            assert codec.decode_log(["0x" + t.hex() for t in topics], "0x" + data.hex()) == (event["name"], args)
    assert codec.decode_log([bytes(32)], b"") is None and codec.decode_log([], b"") is None
    for error in (e for e in ABI if e["type"] == "error"):
        args = {i["name"]: value(i["type"]) for i in error["inputs"]}
        types = [i["type"] for i in error["inputs"]]
        data = Web3.keccak(text=f"{error['name']}({','.join(types)})")[:4] + eth_abi.encode(types, list(args.values()))
        assert codec.decode_error(data) == (error["name"], args)
        assert codec.decode_error("0x" + data.hex()) == (error["name"], args)
    assert codec.decode_error(b"\x00\x00\x00\x00") is None
