"""The one JSON-RPC client without web3.py: a node's HTTP endpoint over urllib, one call at a time.

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
import urllib.error
import urllib.request
from typing import Any, Sequence

__all__ = ["JsonRpc", "RpcError", "RpcRefused"]


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
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                reply = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RpcError(f"{method} to {self.url} failed: {e}") from None
        if "error" in reply:
            raise RpcRefused(f"{method} refused by {self.url}: {reply['error']}", reply["error"])
        return reply["result"]
