"""A UE's task stream without numpy: ``numpy.random.default_rng(seed)``'s draws in pure Python.

A UE client draws each task's d_u, ξ_u and τ_u with ``uniform`` and the task's data with
``bytes``, from a generator seeded with ``[scenario seed, UE index]``. It used numpy's
``default_rng`` for that, and numpy is 13 MB of each UE process's 47 (issue 21). This module is
the same generator (SeedSequence -> PCG64, numpy's ``Generator.uniform``), so a scenario's seed
still gives each UE the tasks it gave before, checked against numpy in ``tests/test_units.py``.

``bytes(n)`` advances the generator exactly as numpy's does (``ceil(n/4)`` 32-bit draws, numpy's
half-word buffer included), so every later ``uniform`` equals numpy's; the bytes themselves come
from a Mersenne Twister seeded with the generator's state (fast in C; generating megabytes
through a 128-bit LCG in Python would cost a UE seconds per task), not from PCG64's output:
the uploaded data is opaque filler whose content no figure depends on.

``data(n)`` is the same draw as ``bytes(n)`` without the bytes: a :class:`TaskData` that makes
them again piece by piece (``chunks()``), so a UE uploads a 5-MB task holding 256 KB of it at a
time (the whole bytes were up to three copies of d_u at once in each of a lab's U processes,
issue 21), and hashes what it sent instead of keeping it.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import NamedTuple

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_MASK128 = (1 << 128) - 1

# SeedSequence (numpy/random/bit_generator.pyx), pool of 4 words
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = 16

#: bytes per piece of a task's data (a multiple of 4: the Mersenne Twister's pieces then join
#: into exactly its whole ``randbytes(n)``)
DATA_CHUNK = 256 * 1024

# PCG64 (numpy/random/src/pcg64): the 128-bit LCG and its XSL-RR output
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341


def _words(value: int) -> list[int]:
    """An entropy integer as numpy's little-endian 32-bit words (0 is one word)."""
    if value < 0:
        raise ValueError(f"a seed must be a non-negative integer, got {value}")
    out = []
    while True:
        out.append(value & _MASK32)
        value >>= 32
        if not value:
            return out


def _seed_words(entropy: int | Iterable[int], n_words: int) -> list[int]:
    """``SeedSequence(entropy).generate_state(n_words, uint32)``."""
    ent = _words(entropy) if isinstance(entropy, int) else [w for v in entropy for w in _words(int(v))]
    hash_const = _INIT_A

    def hashmix(value: int) -> int:
        nonlocal hash_const
        value = (value ^ hash_const) & _MASK32
        hash_const = (hash_const * _MULT_A) & _MASK32
        value = (value * hash_const) & _MASK32
        return value ^ (value >> _XSHIFT)

    def mix(x: int, y: int) -> int:
        r = (_MIX_L * x - _MIX_R * y) & _MASK32
        return r ^ (r >> _XSHIFT)

    pool = [hashmix(ent[i] if i < len(ent) else 0) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(ent)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(ent[src]))
    out, hc = [], _INIT_B
    for i in range(n_words):
        v = (pool[i % _POOL] ^ hc) & _MASK32
        hc = (hc * _MULT_B) & _MASK32
        v = (v * hc) & _MASK32
        out.append(v ^ (v >> _XSHIFT))
    return out


class TaskData(NamedTuple):
    """A task's ``size`` bytes of filler, not held: ``chunks()`` makes them, in order, from the
    Mersenne Twister seeded with ``seed``; joined they are ``random.Random(seed).randbytes(size)``
    (``getrandbits`` fills 32-bit words from the lowest byte up, so pieces of a multiple of 4
    bytes continue one another)."""
    seed: int
    size: int

    def chunks(self, piece: int = DATA_CHUNK) -> Iterator[bytes]:
        if piece <= 0 or piece % 4:
            raise ValueError(f"a piece is a positive multiple of 4 bytes, got {piece}")
        mt, left = random.Random(self.seed), self.size
        while left > 0:
            part = mt.randbytes(min(piece, left))
            left -= len(part)
            yield part


class TaskRng:
    """``numpy.random.default_rng(seed)``'s ``uniform(low, high)`` and the advance of its
    ``bytes(n)`` (see the module docstring)."""

    def __init__(self, seed: int | Iterable[int]):
        w = _seed_words(seed, 8)
        v = [w[2 * i] | (w[2 * i + 1] << 32) for i in range(4)]        # generate_state(4, uint64)
        init_state, init_seq = (v[0] << 64) | v[1], (v[2] << 64) | v[3]
        self._inc = ((init_seq << 1) | 1) & _MASK128
        self._state = 0
        self._step()
        self._state = (self._state + init_state) & _MASK128
        self._step()
        self._half = False           # numpy's has_uint32: the upper half of a draw is buffered

    def _step(self) -> None:
        self._state = (self._state * _PCG_MULT + self._inc) & _MASK128

    def next_uint64(self) -> int:
        self._step()
        s = self._state
        x, rot = ((s >> 64) ^ s) & _MASK64, s >> 122
        return ((x >> rot) | (x << (64 - rot))) & _MASK64

    def random(self) -> float:
        """A double in [0, 1): numpy's ``next_double``."""
        return (self.next_uint64() >> 11) * (1.0 / 9007199254740992.0)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def _advance(self, steps: int) -> None:
        """The LCG ``steps`` draws ahead in O(log steps) (Brown's jump-ahead)."""
        acc_mult, acc_plus, mult, plus = 1, 0, _PCG_MULT, self._inc
        while steps:
            if steps & 1:
                acc_mult = acc_mult * mult & _MASK128
                acc_plus = (acc_plus * mult + plus) & _MASK128
            plus = (mult + 1) * plus & _MASK128
            mult = mult * mult & _MASK128
            steps >>= 1
        self._state = (acc_mult * self._state + acc_plus) & _MASK128

    def bytes(self, n: int) -> bytes:
        """``n`` bytes of filler, leaving the generator where numpy's ``bytes(n)`` leaves it."""
        return b"".join(self.data(n).chunks())

    def data(self, n: int) -> TaskData:
        """The draw of :meth:`bytes` (the generator advanced as numpy's ``bytes(n)``), its bytes
        left to :meth:`TaskData.chunks`."""
        if n < 0:
            raise ValueError(f"cannot draw {n} bytes")
        seed = self._state
        words = (n - 1) // 4 + 1 if n else 1         # numpy's 32-bit draws (C division: 1 for 0 bytes)
        if self._half:
            words -= 1
            self._half = False
        self._advance((words + 1) // 2)
        self._half = bool(words % 2)
        return TaskData(seed, n)
