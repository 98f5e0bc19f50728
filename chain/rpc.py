"""The one JSON-RPC client without web3.py: a node's HTTP endpoint, one call at a time, and the
one HTTP exchange of the host programs (:func:`http_exchange`, also the controller API's client).

For what must stay light or must not wait long: the contract's reader of the host programs
(:class:`contracts.reads.ContractReader`, a UE client's reads), the MEC executor's node
(:class:`contracts.light.RpcNode`) and the controller's monitor, which polls every miner's head
and hash rate. Each call has a timeout (``timeout_s``, s): a node that does not answer costs
the caller that long, no more. The library's node owners (``geth.py``, ``anvil.py``) load
web3.py anyway and call through its provider.

    node = JsonRpc("http://10.0.1.1:8545", timeout_s=2)
    head = int(node("eth_blockNumber"), 16)
"""
from __future__ import annotations

import itertools
import json
import socket
from typing import Any, Sequence
from urllib.parse import urlsplit

__all__ = ["JsonRpc", "RpcError", "RpcRefused", "http_exchange"]


def http_exchange(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
                  timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 request to an ``http://`` URL on its own connection
    (``Connection: close``), as ``urllib.request.urlopen`` sends it: a Host header, a
    Content-Length with a body; the answer's body by its Content-Length, chunked or to the end.
    ``timeout``: per socket operation, as urllib's. OSError if the server cannot be reached or
    answers no HTTP. Over a socket, not urllib: urllib.request loads http.client, email and ssl,
    2 MiB of each host program's memory (issue 21), for plain HTTP to the lab's own addresses."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// URL: {url!r}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept-Encoding: identity",
             "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection((parts.hostname, port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    fields = status_line.split(None, 2)
    if not sep or len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise ConnectionError(f"{url}: not an HTTP answer: {raw[:80]!r}")
    answer = {k.strip().lower(): v.strip() for k, _, v in (h.decode("latin-1").partition(":") for h in header_lines)}
    if "chunked" in answer.get("transfer-encoding", "").lower():
        rest = _unchunk(rest, url)
    elif answer.get("content-length", "").isdigit():
        rest = rest[:int(answer["content-length"])]
    return int(fields[1]), rest


def _unchunk(data: bytes, url: str) -> bytes:
    """A chunked body (RFC 9112 7.1) joined, up to its last (empty) chunk."""
    out, i = [], 0
    while True:
        end = data.find(b"\r\n", i)
        if end < 0:
            raise ConnectionError(f"{url}: chunked answer cut short")
        try:
            size = int(data[i:end].split(b";")[0], 16)
        except ValueError:
            raise ConnectionError(f"{url}: bad chunk size {data[i:end][:20]!r}") from None
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        i = end + 2 + size + 2


class RpcError(RuntimeError):
    """The node did not answer a call (unreachable, timed out, not JSON), or refused it."""


class RpcRefused(RpcError):
    """The node answered with a JSON-RPC error: ``error`` is its object (code, message, data)."""

    def __init__(self, message: str, error: dict):
        super().__init__(message)
        self.error = error


class JsonRpc:
    """Calls of one node's HTTP JSON-RPC endpoint ``url``; ``timeout_s``: per call (s).
    Safe to share between threads."""

    def __init__(self, url: str, *, timeout_s: float = 10.0):
        self.url, self.timeout_s = url, timeout_s
        self._ids = itertools.count(1)

    def __call__(self, method: str, params: Sequence = ()) -> Any:
        """The call's ``result``; :class:`RpcError` when the node does not answer within
        ``timeout_s``, :class:`RpcRefused` with the node's error reply."""
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                           "params": list(params)}).encode()
        try:
            status, answer = http_exchange(self.url, "POST", body, {"Content-Type": "application/json"},
                                           self.timeout_s)
            if not 200 <= status < 300:
                raise RpcError(f"HTTP Error {status}: {answer[:200]!r}")
            reply = json.loads(answer)
        except (RpcError, OSError, ValueError) as e:
            raise RpcError(f"{method} to {self.url} failed: {e}") from None
        if "error" in reply:
            raise RpcRefused(f"{method} refused by {self.url}: {reply['error']}", reply["error"])
        return reply["result"]
