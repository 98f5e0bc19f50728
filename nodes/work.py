"""The MEC executor's work kernel: real CPU work whose result a UE can check cheaply.

A task of ``n`` iterations over data ``D`` is a SHA-256 hash chain::

    h_0 = SHA256(D),   h_i = SHA256(h_{i-1})  (i = 1 .. n),   result = h_n

with ``k`` checkpoints h_{⌈j·n/k⌉} (j = 1 .. k) returned beside the result. The work is
sequential (no shortcut, no parallel speed-up), proportional to ``n`` and calibrated per core
(``testbed calibrate``: iterations per CPU-second; :mod:`scenario.units` turns a task's model
Gcycles into ``n``).

A UE checks a result in 1/k of the work: it recomputes h_0 from its own data and one random
segment between two consecutive checkpoints (:func:`verify`). A server that did not do the
work cannot produce a chain that passes: a fabricated result fails at a segment it was not
able to compute. A server that computed honestly but returns something else is caught by the
result hash it committed on chain (the UE compares both).
"""
from __future__ import annotations

import hashlib
import os
import random
from collections import namedtuple

CHECKPOINTS = 32


class WorkResult(namedtuple("WorkResult", "iterations result checkpoints")):
    """``result`` = h_n; ``checkpoints`` = h at the end of each of the k segments (the last is
    h_n); ``iterations`` = n. Immutable, compared by value (a named tuple, not a dataclass: the
    kernel process imports this module, and dataclasses' imports were a third of its memory)."""
    __slots__ = ()

    def digest(self) -> bytes:
        """The 32-byte commitment a MEC server records on chain (``complete``'s resultHash):
        SHA-256 over n, the result and every checkpoint."""
        h = hashlib.sha256(self.iterations.to_bytes(8, "big"))
        for c in self.checkpoints:
            h.update(c)
        return h.digest()

    def to_bytes(self) -> bytes:
        return self.iterations.to_bytes(8, "big") + b"".join(self.checkpoints)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "WorkResult":
        if len(raw) < 8 + 32 or (len(raw) - 8) % 32:
            raise ValueError(f"a work result is 8 + 32·k bytes, got {len(raw)}")
        n = int.from_bytes(raw[:8], "big")
        cps = tuple(raw[8 + 32 * i: 8 + 32 * (i + 1)] for i in range((len(raw) - 8) // 32))
        return cls(iterations=n, result=cps[-1], checkpoints=cps)


def segment_bounds(n: int, k: int = CHECKPOINTS) -> list[int]:
    """Iteration index at the end of each segment (strictly increasing, last = n)."""
    k = max(1, min(k, n))
    return [(j * n + k - 1) // k for j in range(1, k + 1)]


def _chain(h: bytes, steps: int) -> bytes:
    sha = hashlib.sha256
    for _ in range(steps):
        h = sha(h).digest()
    return h


def compute(data: bytes, iterations: int, k: int = CHECKPOINTS) -> WorkResult:
    """Do the work: ``iterations`` SHA-256 steps over ``data``, with checkpoints."""
    return compute_from(hashlib.sha256(data).digest(), iterations, k)


def compute_from(h0: bytes, iterations: int, k: int = CHECKPOINTS) -> WorkResult:
    """The chain from h_0 = SHA256(data): what the kernel process computes (the executor hashes
    the data as it arrives, so the task's cycles are the chain's alone, as eq. (2) counts them)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    h, done, cps = h0, 0, []
    for end in segment_bounds(iterations, k):
        h = _chain(h, end - done)
        done = end
        cps.append(h)
    return WorkResult(iterations=iterations, result=h, checkpoints=tuple(cps))


def verify(data: bytes, res: WorkResult, iterations: int, rng: random.Random | None = None,
           segments: int = 2, found: dict | None = None) -> tuple[bool, str]:
    """Check ``res`` against the UE's own ``data`` by recomputing ``segments`` random segments
    (the first one always starts from h_0 = SHA256(data)). Returns (ok, why-not); the failing
    segment's index goes into ``found["segment"]`` (the evidence a UE's report carries)."""
    return verify_from(hashlib.sha256(data).digest(), res, iterations, rng, segments, found)


def verify_from(h0: bytes, res: WorkResult, iterations: int, rng: random.Random | None = None,
                segments: int = 2, found: dict | None = None, picks: set[int] | None = None) -> tuple[bool, str]:
    """:func:`verify` from h_0 (the controller checks a UE's claim this way, from the h_0 the
    executor signed); ``picks``: exactly these segments (with 0) instead of random ones."""
    found = found if found is not None else {}
    if res.iterations != iterations:
        return False, f"result covers {res.iterations} iterations, the task needs {iterations}"
    bounds = segment_bounds(iterations, len(res.checkpoints))
    if len(bounds) != len(res.checkpoints):
        return False, f"{len(res.checkpoints)} checkpoints do not fit {iterations} iterations"
    if res.result != res.checkpoints[-1]:
        return False, "result is not the last checkpoint"
    rng = rng or random.Random()
    if picks is None:
        picks = {rng.randrange(len(bounds)) for _ in range(max(0, segments - 1))}
    for j in sorted({0} | {j for j in picks if 0 <= j < len(bounds)}):
        start_h = h0 if j == 0 else res.checkpoints[j - 1]
        start_i = 0 if j == 0 else bounds[j - 1]
        if _chain(start_h, bounds[j] - start_i) != res.checkpoints[j]:
            found["segment"] = j
            return False, f"segment {j} (iterations {start_i}..{bounds[j]}) does not hash to its checkpoint"
    return True, ""


def fabricate(iterations: int, k: int = CHECKPOINTS, seed: int = 0) -> WorkResult:
    """A result that did no work (what a dishonest executor returns): random checkpoints."""
    rnd = random.Random(seed)
    cps = tuple(rnd.randbytes(32) for _ in segment_bounds(iterations, k))
    return WorkResult(iterations=iterations, result=cps[-1], checkpoints=cps)


# ---------------------------------------------------------------------------- the kernel in its own process
def serve(inp=None, out=None) -> None:
    """``python -m nodes.work``: compute tasks read from stdin, one at a time, and write each
    result to stdout. A request is ``iterations`` (8 bytes) + h_0 = SHA256(data) (32 bytes); a
    reply is ``len(result)`` (8 bytes) + :meth:`WorkResult.to_bytes`. The MEC executor runs its
    kernel so (:class:`Kernel`): only this process sits in the host's CPU quota (f_m), while the
    executor's own work (the network, the data's hash, payment checks, reports) does not take a
    task's cycles."""
    import sys          # lazy: the kernel process (python -m nodes.work) loads only what it computes with
    inp = inp or sys.stdin.buffer
    out = out or sys.stdout.buffer
    while True:
        head = inp.read(40)
        if len(head) < 40:
            return                                   # the executor is gone: so are we
        blob = compute_from(head[8:], int.from_bytes(head[:8], "big")).to_bytes()
        out.write(len(blob).to_bytes(8, "big") + blob)
        out.flush()


class Kernel:
    """The work kernel in a child process (``python -m nodes.work``) that dies with its parent.
    The lab moves it into the MEC host's executor CPU group (:meth:`testbed.lab.Lab.attach_kernel`:
    a Mininet host does not see the cgroup file system)."""

    def __init__(self, python: str):
        import ctypes       # lazy: the kernel process (python -m nodes.work) need not load
        import subprocess   # lazy: (the same) what only its parent uses
        import threading    # lazy: (the same)

        def die_with_parent():                       # PR_SET_PDEATHSIG = 1, SIGKILL = 9
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)
        # -S: no site (the venv's .pth files, the editable install's finder: 2 MB of a process
        # that needs only the standard library), so the project is found from its own folder
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen([python, "-S", "-m", "nodes.work"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, preexec_fn=die_with_parent, cwd=root)
        self.lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def compute(self, data: bytes, iterations: int) -> WorkResult:
        return self.compute_from(hashlib.sha256(data).digest(), iterations)

    def compute_from(self, h0: bytes, iterations: int) -> WorkResult:
        with self.lock:
            self.proc.stdin.write(iterations.to_bytes(8, "big") + h0)
            self.proc.stdin.flush()
            size = int.from_bytes(self.proc.stdout.read(8), "big")
            return WorkResult.from_bytes(self.proc.stdout.read(size))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except Exception:
            self.proc.kill()


if __name__ == "__main__":
    serve()
