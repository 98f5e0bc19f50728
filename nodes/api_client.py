"""The one client of the controller's HTTP API (:mod:`controller.api`).

Two kinds of caller: the operator's side (the policy loop, the lab, the experiments) holds the
bearer token; a host program (a UE client, an executor) holds its name and its key, and signs
every body it sends (EIP-191 over the exact bytes, ``X-Signer``/``X-Signature``; a GET carries no
body and no signature). Nothing else of the project is needed to call the API::

    api = ApiClient(url, token)                                   # the operator's side
    api = ApiClient(url, signer="ue3", key=Key(private_key))      # a UE or a MEC server
    status, answer = api.call("GET", "/state")                    # any status, as answered
    answer = api.request("POST", "/report", {...})                # ApiError unless 2xx
"""
from __future__ import annotations

import json

from chain.keys import key_of
from chain.rpc import http_exchange

__all__ = ["ApiClient", "ApiError", "sign_body"]


class ApiError(RuntimeError):
    """The controller answered a call with an error status (in ``status``, its answer in the message)."""

    def __init__(self, method: str, path: str, status: int, answer: dict):
        super().__init__(f"controller refused {method} {path}: {status} {json.dumps(answer)}")
        self.status, self.answer = status, answer


def sign_body(account, body: bytes) -> str:
    """The ``X-Signature`` of ``body`` by ``account`` (a :class:`chain.keys.Key` or anything with
    its 32-byte ``.key``, such as an eth_account LocalAccount)."""
    return key_of(bytes(account.key)).sign_message(body)


class ApiClient:
    """A caller of the controller's API: ``token`` (the operator's), or ``signer`` (its name in
    ``lab.json``) and ``key`` (its account's key). ``timeout_s``: per call unless given."""

    def __init__(self, url: str, token: str | None = None, *, signer: str | None = None, key=None,
                 timeout_s: float = 10.0):
        if (token is None) == (signer is None or key is None):
            raise ValueError("an API client holds the bearer token or a signer's name and key, exactly one")
        self.url, self.token, self.signer, self.key, self.timeout_s = url, token, signer, key, timeout_s

    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float | None = None) -> tuple[int, dict]:
        """(status, answer) as the controller answered; OSError if it could not be reached."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        elif data is not None:
            headers.update({"X-Signer": self.signer, "X-Signature": sign_body(self.key, data)})
        status, raw = http_exchange(self.url + path, method, data, headers, timeout or self.timeout_s)
        if 200 <= status < 300:
            return status, json.loads(raw)
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {"error": raw.decode(errors="replace")}

    def request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        """The answer of a call that succeeded (2xx); :class:`ApiError` with the status and the
        controller's answer otherwise."""
        status, answer = self.call(method, path, body, timeout)
        if not 200 <= status < 300:
            raise ApiError(method, path, status, answer)
        return answer

    def state(self) -> dict:
        """``GET /state``: the controller's whole view (the operator's call)."""
        return self.request("GET", "/state")
