"""The wire protocol between a UE client and a MEC executor (one TCP connection per task).

    UE  -> executor   one JSON line: {"header": {...}, "sig": <EIP-191 signature of the header>,
                                      "voucher": {...}}            (the voucher in channel mode)
    executor -> UE    one JSON line: {"accepted": true, "iterations": N} or
                                     {"accepted": false, "code": <why>, "error": <message>}
    UE  -> executor   d_u bytes of data
    executor -> UE    {"received": true}, then {"ok": true, "queue_s", "compute_s", "iterations",
                      "result_bytes": n} and n bytes of the result (:class:`nodes.work.WorkResult`)

Every malformed, stalled or oversized exchange ends in a :class:`Refusal` naming its code.
"""
from __future__ import annotations

import hashlib
import json
import socket
import time

READ_CHUNK = 256 * 1024


class Refusal(Exception):
    """A request the executor does not serve; ``code`` names why; ``detail`` goes back to the
    UE with the refusal (e.g. what a server has earned on a lane, when a voucher disagrees)."""

    def __init__(self, code: str, message: str, **detail):
        super().__init__(message)
        self.code, self.detail = code, detail


class Conn:
    """A socket with what :func:`read_line` read past the end of its line kept for the next read."""

    def __init__(self, sock: socket.socket):
        self.sock, self.pending = sock, b""

    def __getattr__(self, name):          # settimeout, recv, sendall, close ...
        return getattr(self.sock, name)


def read_line(sock: Conn, limit: int, timeout: float) -> bytes:
    """One newline-terminated line, at most ``limit`` bytes, within ``timeout`` seconds."""
    buf = sock.pending
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refusal("timeout", f"no complete request line within {timeout:.0f} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            raise Refusal("timeout", f"no complete request line within {timeout:.0f} s") from None
        if not chunk:
            raise Refusal("malformed", "connection closed before the request line ended")
        buf += chunk
        if len(buf) > limit and b"\n" not in buf[:limit]:
            raise Refusal("malformed", f"request line over {limit} bytes")
    line, _, rest = buf.partition(b"\n")
    sock.pending = rest                                    # data sent right after the line
    return line


def read_exact(sock: Conn, n: int, timeout: float) -> bytes:
    """Exactly ``n`` bytes (after what :func:`read_line` over-read), within ``timeout``."""
    parts: list[bytes] = []
    _read(sock, n, timeout, parts.append)
    return b"".join(parts)


def read_digest(sock: Conn, n: int, timeout: float) -> bytes:
    """SHA-256 of exactly ``n`` bytes read as :func:`read_exact` reads them, hashed as they
    arrive and not kept: an executor needs only h_0 of a task's data, and holding a 5-MB upload
    (twice, joined) in each of a lab's M executors was memory the lab paid for (issue 21)."""
    h = hashlib.sha256()
    _read(sock, n, timeout, h.update)
    return h.digest()


def _read(sock: Conn, n: int, timeout: float, take) -> None:
    """Feed ``take`` exactly ``n`` bytes, the over-read first; Refusal ``timeout`` if they do
    not come within ``timeout``, ``malformed`` if the connection ends first, ``oversized`` if
    more than ``n`` came with the line."""
    pending, sock.pending = sock.pending, b""
    if len(pending) > n:
        raise Refusal("oversized", f"upload longer than the {n} bytes paid for")
    take(pending)
    have = len(pending)
    deadline = time.monotonic() + timeout
    while have < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refusal("timeout", f"upload stalled: {have} of {n} bytes after {timeout:.0f} s")
        sock.settimeout(min(left, 10.0))
        try:
            chunk = sock.recv(min(READ_CHUNK, n - have))
        except socket.timeout:
            continue
        if not chunk:
            raise Refusal("malformed", f"upload ended at {have} of {n} bytes")
        take(chunk)
        have += len(chunk)


def send_stream(sock: Conn, parts, timeout: float) -> bytes:
    """Send the byte strings of ``parts`` in order within ``timeout`` seconds in all (as one
    ``sendall`` with that socket timeout would), and return the SHA-256 of what was sent: a UE
    uploads its data piece by piece (:meth:`nodes.rng.TaskData.chunks`) and keeps only h_0."""
    h = hashlib.sha256()
    deadline = time.monotonic() + timeout
    for part in parts:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)
        sock.sendall(part)
        h.update(part)
    return h.digest()


def send_line(sock: socket.socket, obj: dict) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def request_digest(header: dict) -> bytes:
    """The bytes a UE signs: the request header as canonical JSON."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def receipt_bytes(ue: str, task_id: int, h0: bytes, digest: bytes) -> bytes:
    """What an executor signs (EIP-191) beside a result it returns: the UE's address, the task,
    h_0 = SHA256 of the data it received and the result's digest (:meth:`WorkResult.digest`).
    With it a UE's claim that the result was wrong can be checked by anyone (the controller)."""
    return b"mec-receipt:%s:%d:%s:%s" % (ue.lower().encode(), int(task_id), h0.hex().encode(), digest.hex().encode())


def ack_bytes(ue: str, task_id: int, verdict: str) -> bytes:
    """What an executor signs (EIP-191) in its answer to a request: the UE's address, the task
    and ``accepted`` or the refusal's code. A UE's claim that an accepted task never came back
    (or that it was refused) carries it, so the controller knows the server took (or turned
    away) that task, not the UE's word alone."""
    return b"mec-ack:%s:%d:%s" % (ue.lower().encode(), int(task_id), verdict.encode())


def request_hash(header: dict) -> bytes:
    """The 32 bytes a voucher commits to: sha256 of :func:`request_digest` (the signed header)."""
    return hashlib.sha256(request_digest(header)).digest()
