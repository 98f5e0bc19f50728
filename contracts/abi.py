"""The contract ABI's codec in a few kilobytes: calldata, return values, event logs and custom
errors, for the programs that must not load web3.py and eth_abi (:mod:`contracts.reads`,
:mod:`contracts.light`, :class:`contracts.txsender.ErrorTable`).

Types are the ABI's canonical strings, as eth_abi takes them: ``uint64``, ``address``, ``bool``,
``bytes32``, ``bytes``, ``string``, tuples ``(address,bytes)`` and arrays ``T[]``, ``T[k]``. Values
come back as web3.py gives them (checksummed addresses, bytes, tuples for tuples and arrays):
``tests/test_abi.py`` checks encodings and decodings against eth_abi, the logs against web3.py.

    codec = Abi(load_artifact("TradingContract")["abi"])
    data = codec.encode_call("redeem", [[(ue, 0, phi, 1, 7, digest, signature)]])
    name, args = codec.decode_log(log["topics"], log["data"])       # ("VoucherRedeemed", {...})
"""
from __future__ import annotations

from typing import Any, Sequence

from chain.keys import is_address, keccak, to_checksum_address

__all__ = ["Abi", "encode", "decode", "canonical", "selector", "is_dynamic"]


# ---------------------------------------------------------------------------- types


def canonical(param: dict) -> str:
    """The canonical type string of an ABI parameter (a tuple's components spelled out)."""
    t = param["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(canonical(c) for c in param["components"]) + ")" + t[len("tuple"):]
    return t


def signature(item: dict) -> str:
    """``name(type,...)`` of a function, event or error."""
    return f"{item['name']}({','.join(canonical(i) for i in item['inputs'])})"


def selector(item: dict) -> bytes:
    """The 4-byte selector of a function or error."""
    return keccak(signature(item).encode())[:4]


def _array(t: str) -> tuple[str, int | None] | None:
    """(element type, length or None) of an array type, None if `t` is not one."""
    if not t.endswith("]"):
        return None
    i = t.rindex("[")
    size = t[i + 1:-1]
    return t[:i], int(size) if size else None


def _components(t: str) -> list[str]:
    """The component types of a tuple type ``(a,b,...)``."""
    out, depth, start = [], 0, 1
    for i, c in enumerate(t[1:-1], 1):
        depth += (c == "(") - (c == ")")
        if c == "," and depth == 0:
            out.append(t[start:i])
            start = i + 1
    if t != "()":
        out.append(t[start:-1])
    return out


def is_dynamic(t: str) -> bool:
    if t in ("bytes", "string"):
        return True
    if (arr := _array(t)) is not None:
        return arr[1] is None or is_dynamic(arr[0])
    if t.startswith("("):
        return any(is_dynamic(c) for c in _components(t))
    return False


def _static_size(t: str) -> int:
    if (arr := _array(t)) is not None:
        return arr[1] * _static_size(arr[0])
    if t.startswith("("):
        return sum(_static_size(c) for c in _components(t))
    return 32


def _head_size(t: str) -> int:
    return 32 if is_dynamic(t) else _static_size(t)


# ---------------------------------------------------------------------------- encoding


def encode(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """ABI encoding of `values` as `types` (eth_abi.encode's bytes); ValueError naming the type
    of a value out of its range."""
    if len(types) != len(values):
        raise ValueError(f"{len(types)} type(s) ({', '.join(types)}), {len(values)} value(s)")
    heads, tails = [], []
    offset = sum(_head_size(t) for t in types)
    for t, v in zip(types, values):
        if is_dynamic(t):
            heads.append(offset.to_bytes(32, "big"))
            tail = _encode_one(t, v)
            tails.append(tail)
            offset += len(tail)
        else:
            heads.append(_encode_one(t, v))
    return b"".join(heads) + b"".join(tails)


def _encode_one(t: str, value: Any) -> bytes:
    if (arr := _array(t)) is not None:
        element, size = arr
        if not isinstance(value, (list, tuple)) or (size is not None and len(value) != size):
            raise ValueError(f"a {t} is a list{f' of {size}' if size is not None else ''}, got {value!r}"[:200])
        body = encode([element] * len(value), value)
        return body if size is not None else len(value).to_bytes(32, "big") + body
    if t.startswith("("):
        components = _components(t)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"a {t} is a tuple, got {value!r}"[:200])
        return encode(components, value)
    if t == "address":
        if not is_address(value):
            raise ValueError(f"an address is a 20-byte hex string, got {value!r}")
        return bytes(12) + bytes.fromhex(value[2:])
    if t.startswith(("uint", "int")):
        signed = t.startswith("int")
        bits = int(t[4 - signed:] or 256)
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
            raise ValueError(f"a {t} is an integer in [{'-2**' + str(bits - 1) if signed else 0}, "
                             f"2**{bits - signed}), got {value!r}")
        return value.to_bytes(32, "big", signed=signed)
    if t == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"a bool is True or False, got {value!r}")
        return int(value).to_bytes(32, "big")
    if t in ("bytes", "string"):
        raw = value.encode() if t == "string" and isinstance(value, str) else value
        if not isinstance(raw, (bytes, bytearray)):
            raise ValueError(f"a {t} is {'str' if t == 'string' else 'bytes'}, got {value!r}"[:200])
        padded = bytes(raw) + bytes(-len(raw) % 32)
        return len(raw).to_bytes(32, "big") + padded
    if t.startswith("bytes"):
        size = int(t[5:])
        if not isinstance(value, (bytes, bytearray)) or len(value) != size:
            raise ValueError(f"a {t} is {size} bytes, got {value!r}")
        return bytes(value) + bytes(32 - size)
    raise ValueError(f"the ABI type {t} is not supported here")


# ---------------------------------------------------------------------------- decoding


def decode(types: Sequence[str], data: bytes) -> tuple:
    """The values `data` encodes as `types` (eth_abi.decode's, addresses checksummed); ValueError if it is short."""
    return _decode_seq(list(types), bytes(data), 0)


def _decode_seq(types: list[str], data: bytes, base: int) -> tuple:
    out, pos = [], base
    for t in types:
        if is_dynamic(t):
            out.append(_decode_one(t, data, base + _word(data, pos)))
            pos += 32
        else:
            out.append(_decode_one(t, data, pos))
            pos += _static_size(t)
    return tuple(out)


def _word(data: bytes, pos: int) -> int:
    if pos + 32 > len(data):
        raise ValueError(f"ABI data of {len(data)} bytes ends before byte {pos + 32}")
    return int.from_bytes(data[pos:pos + 32], "big")


def _decode_one(t: str, data: bytes, pos: int) -> Any:
    if (arr := _array(t)) is not None:
        element, size = arr
        if size is None:
            size, pos = _word(data, pos), pos + 32
        return _decode_seq([element] * size, data, pos)
    if t.startswith("("):
        return _decode_seq(_components(t), data, pos)
    word = _word(data, pos)
    if t == "address":
        return to_checksum_address(word.to_bytes(32, "big")[12:])
    if t.startswith("uint"):
        return word
    if t.startswith("int"):
        return int.from_bytes(data[pos:pos + 32], "big", signed=True)
    if t == "bool":
        return word != 0
    if t in ("bytes", "string"):
        if pos + 32 + word > len(data):
            raise ValueError(f"a {t} of {word} bytes runs past the data's end")
        raw = data[pos + 32:pos + 32 + word]
        return raw.decode() if t == "string" else raw
    if t.startswith("bytes"):
        return data[pos:pos + int(t[5:])]
    raise ValueError(f"the ABI type {t} is not supported here")


# ---------------------------------------------------------------------------- a contract's ABI


class Abi:
    """One contract's functions, events and errors, by name, topic and selector."""

    def __init__(self, abi: list[dict]):
        self.items = list(abi)
        self.functions = {f["name"]: f for f in abi if f.get("type") == "function"}
        self.events = {keccak(signature(e).encode()): e for e in abi if e.get("type") == "event"}
        self.topics = {e["name"]: topic for topic, e in self.events.items()}
        self.errors = {selector(e): e for e in abi if e.get("type") == "error"}

    def function(self, name: str) -> dict:
        f = self.functions.get(name)
        if f is None:
            raise ValueError(f"the contract has no function {name!r}")
        return f

    def encode_call(self, name: str, args: Sequence[Any]) -> bytes:
        """Calldata of function `name` with `args` (selector + arguments)."""
        f = self.function(name)
        types = [canonical(i) for i in f["inputs"]]
        if len(args) != len(types):
            raise ValueError(f"{name} takes {len(types)} argument(s) ({', '.join(types)}), got {len(args)}")
        return selector(f) + encode(types, args)

    def decode_output(self, name: str, data: bytes) -> tuple:
        return decode([canonical(o) for o in self.function(name)["outputs"]], data)

    def decode_log(self, topics: Sequence[bytes | str], data: bytes | str) -> tuple[str, dict] | None:
        """(event name, arguments) of a log of this contract, None for an event it does not
        declare. Indexed static arguments come from the topics; an indexed dynamic one is its
        topic (the hash of its value), as web3.py gives it."""
        topics = [_bytes(t) for t in topics]
        event = self.events.get(topics[0]) if topics else None
        if event is None:
            return None
        indexed = [i for i in event["inputs"] if i.get("indexed")]
        plain = [i for i in event["inputs"] if not i.get("indexed")]
        values = dict(zip([i["name"] for i in plain], decode([canonical(i) for i in plain], _bytes(data))))
        for param, topic in zip(indexed, topics[1:]):
            t = canonical(param)
            values[param["name"]] = topic if is_dynamic(t) else _decode_one(t, topic, 0)
        return event["name"], {i["name"]: values[i["name"]] for i in event["inputs"]}

    def topic(self, t: str, value: Any) -> str:
        """The 0x-hex topic that filters an indexed static argument of type `t` by `value`."""
        return "0x" + _encode_one(t, value).hex()

    def decode_error(self, data: bytes | str) -> tuple[str, dict] | None:
        """(error name, arguments) of revert data carrying one of this contract's custom errors."""
        raw = _bytes(data)
        error = self.errors.get(raw[:4])
        if error is None:
            return None
        values = decode([canonical(i) for i in error["inputs"]], raw[4:])
        return error["name"], dict(zip([i["name"] for i in error["inputs"]], values))


def _bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value[2:] if value[:2] in ("0x", "0X") else value)
    return bytes(value)
