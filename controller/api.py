"""The controller's one HTTP API (JSON), as a WSGI application over :class:`LabState`.

    GET  /state                 the state s of eq. (9) as measured (anyone on the lab's networks)
    GET  /reputation            Υ_m per server, with the window's task counts
    GET  /reports?since=T       the reports received after wall time T (executors' and UEs')
    PUT  /assignment            the policy's decision for a slot: {"slot", "serve", "levels"}
                                (only the policy: ``Authorization: Bearer <token>``)
    PUT  /topology              the lab's hosts (IP, MAC, switch, port), the service and probe
                                addresses (only the lab, with the same token)
    POST /task                  a UE announces its waiting task, or cancels it (signed by that UE)
    GET  /assignment/<ue>?task=N&wait=S   long-poll: the server a UE's task was given
    POST /report                an executor's or a UE's report of a task (signed by the reporter)
    GET  /health

Who may speak: the API is reachable from UE containers (they announce tasks and report), so it
trusts none of them. Changing the assignment or a budget needs the policy's bearer token, which
only the lab's root-namespace processes hold. A task or a report counts only if it is signed
(EIP-191 ``personal_sign`` over the request body, ``X-Signer``/``X-Signature`` headers) by the
chain key of the UE or MEC server it names, and is about a (UE, task) the policy gave to the
server it names; its τ_u is the one the UE announced, never the reporter's figure. A UE's report
of a failure names its kind (:data:`FAILURE_KINDS`), counted per kind in ``GET /reputation``.
Every number is finite and within its range (a task's within Table I's ranges of the
scenario). Anything else is refused with a JSON error naming the field and changes nothing.
The server it runs on (:mod:`controller.api_server`) bounds the time, size and number of
requests.

``on_assignment(a)`` is called after an assignment is in force (the controller applies hash
budgets and steering flows there).
"""
from __future__ import annotations

import hmac
import json
import math
import time
from typing import Any, Callable
from urllib.parse import parse_qs

from chain.keys import recover_message
from controller.state import Assignment, LabState, Refused, Report
from nodes.wire import ack_bytes, receipt_bytes
from nodes.work import WorkResult, verify_from
from scenario.units import kernel_iterations

MAX_BODY = 64 * 1024
MAX_LATENCY_S = 86_400.0          # a report's measured latency: a day at most
# A UE's failure report: the outcome it names (nodes.ue_client) -> the kind counted
FAILURE_KINDS = {"wrong_result": "wrong_result", "hash_mismatch": "hash_mismatch",
                 "lost": "no_result", "protocol": "no_result", "not_completed": "no_result",
                 "refused": "refused", "refunded": "refunded"}


def number(value: Any, field: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``value`` as a finite float in [lo, hi], or :class:`Refused` naming ``field``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise Refused(f"{field} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise Refused(f"{field} must be a finite number in [{lo:g}, {hi:g}], got {str(value)[:40]}")
    return x


def failure_kind(outcome: Any) -> str:
    """The kind of a UE's failure outcome (``refunded:lost`` -> ``refunded``), or Refused."""
    base = str(outcome).split(":", 1)[0]
    if base not in FAILURE_KINDS:
        raise Refused(f"detail.outcome of a failure must be one of {', '.join(sorted(FAILURE_KINDS))} "
                      f"(optionally refunded:<why>), got {str(outcome)[:40]!r}")
    return FAILURE_KINDS[base]


def recover_signer(body: bytes, signature: str) -> str:
    """The address that signed ``body`` (EIP-191, low s), lower case; SignatureError if none."""
    return recover_message(body, signature).lower()


class Api:
    """WSGI app. ``accounts``: name (ue3, mec1) -> chain address; ``token``: the policy's."""

    def __init__(self, state: LabState, accounts: dict[str, str], token: str,
                 on_assignment: Callable[[Assignment], dict] | None = None,
                 long_poll_max_s: float = 30.0, page: Callable[[], bytes] | None = None,
                 extra: dict[str, Callable[[dict], dict]] | None = None, work: dict | None = None):
        """``extra``: more policy-only endpoints, ``"PUT name" -> handler(json body)``. ``work``:
        ``{"iterations_per_gcycle": {MEC server: its figure}, "demand_reading"}``, to check a UE's
        wrong_result claim (each server's own figure: its calibration, on a cluster)."""
        self.work = work
        self.state = state
        self.extra = extra or {}
        self.accounts = {k: v.lower() for k, v in accounts.items()}
        self.token = token
        self.on_assignment = on_assignment
        self.long_poll_max_s = long_poll_max_s
        self.page = page

    # ---- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        try:
            status, payload = self.route(method, path, environ)
        except Refused as e:
            status, payload = e.status, {"error": str(e)}
        except Exception as e:   # a bug here must not take the controller down
            status, payload = 500, {"error": f"internal error: {type(e).__name__}: {e}"}
        if isinstance(payload, bytes):
            body, ctype = payload, "text/html; charset=utf-8"
        else:
            body, ctype = json.dumps(payload).encode(), "application/json"
        start_response(f"{status} {_REASONS.get(status, 'OK')}",
                       [("Content-Type", ctype), ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store")])
        return [body]

    def route(self, method: str, path: str, environ) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["health"]:
            return 200, {"ok": True, "t": time.time()}
        if method == "GET" and parts == ["state"]:
            return 200, self.state.snapshot()
        if method == "GET" and parts == ["reputation"]:
            return 200, self.state.reputation()
        if method == "GET" and parts == ["reports"]:
            since = number(parse_qs(environ.get("QUERY_STRING", "")).get("since", ["0"])[0], "since", 0)
            return 200, self.state.reports_since(since)
        if method == "GET" and parts == [] and self.page is not None:
            return 200, self.page()
        if method == "PUT" and parts == ["assignment"]:
            return self.put_assignment(environ)
        if method == "POST" and parts == ["task"]:
            return self.post_task(environ)
        if method == "GET" and len(parts) == 2 and parts[0] == "assignment":
            return self.get_assignment(parts[1], environ)
        if method == "POST" and parts == ["report"]:
            return self.post_report(environ)
        if len(parts) == 1 and f"{method} {parts[0]}" in self.extra:
            self._policy_only(environ)
            return 200, self.extra[f"{method} {parts[0]}"](self._json(self._body(environ)))
        raise Refused(f"no such endpoint: {method} {path}", status=404)

    # ---- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _body(environ) -> bytes:
        raw = str(environ.get("CONTENT_LENGTH") or "0").strip()
        if not (raw.isascii() and raw.isdigit()):      # "-1", "+5", " 1e3": never a length
            raise Refused(f"bad Content-Length {raw[:20]!r}: digits only")
        n = int(raw)
        if n > MAX_BODY:
            raise Refused(f"body of {n} bytes is over the {MAX_BODY}-byte limit", status=413)
        return environ["wsgi.input"].read(n) if n else b""

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise Refused(f"malformed JSON: {e}") from None
        if not isinstance(data, dict):
            raise Refused("the body must be a JSON object")
        return data

    def _signed(self, environ) -> tuple[str, dict]:
        """(signer name, body) of a request signed by a known account, or Refused."""
        body = self._body(environ)
        name = environ.get("HTTP_X_SIGNER", "")
        sig = environ.get("HTTP_X_SIGNATURE", "")
        if name not in self.accounts:
            raise Refused(f"unknown signer {name!r}", status=403)
        try:
            who = recover_signer(body, sig)
        except Exception:
            raise Refused("bad signature", status=403) from None
        if who != self.accounts[name]:
            raise Refused(f"signature is not {name}'s", status=403)
        return name, self._json(body)

    # ---- endpoints -------------------------------------------------------------------------
    def _policy_only(self, environ) -> None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
            raise Refused("only the policy may change the assignment, a budget or the topology", status=403)

    def put_assignment(self, environ) -> tuple[int, Any]:
        self._policy_only(environ)
        data = self._json(self._body(environ))
        a = self.state.assign(data.get("slot"), data.get("serve"), data.get("levels"))
        applied = self.on_assignment(a) if self.on_assignment else {}
        self.state.release(a)          # the UEs learn their servers once the steering is in force
        return 200, {"slot": a.slot, "accepted_at": a.decided_at, "applied": applied}

    def post_task(self, environ) -> tuple[int, Any]:
        name, d = self._signed(environ)
        if d.get("ue") != name:
            raise Refused(f"{name} may announce only its own tasks", status=403)
        if d.get("cancel"):            # the UE gave up waiting (or was told to stop)
            self.state.drop_task(name, d.get("task_id"))
            return 200, {"ue": name, "task_id": d.get("task_id"), "cancelled": True}
        t = self.state.add_task(name, d.get("task_id"), d.get("data_mb"), d.get("demand"), d.get("desired_s"))
        return 200, {"ue": t.ue, "task_id": t.task_id}

    def get_assignment(self, ue: str, environ) -> tuple[int, Any]:
        q = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            task_id = int(q["task"][0])
        except (KeyError, ValueError):
            raise Refused("give ?task=<id>[&wait=<seconds>]") from None
        wait = number(q.get("wait", ["10"])[0], "wait", 0.0, self.long_poll_max_s)
        t = self.state.wait_assigned(ue, task_id, wait)
        if t is None:
            return 200, {"ue": ue, "task_id": task_id, "mec": None}
        return 200, {"ue": ue, "task_id": task_id, "mec": t.mec, "slot": t.assigned_slot,
                     "mec_address": self.accounts.get(t.mec)}

    def prove_wrong_result(self, r: Report, task: dict, evidence: Any) -> str:
        """A UE's claim that ``r.mec`` returned a wrong result, checked here: the server's receipt
        (its signature over the UE, the task, h_0 and the result's digest), then the result
        against the iteration count of the announced task and the segment the UE names (with
        segment 0 from h_0). The claim counts only if the result fails; else Refused."""
        if self.work is None:
            raise Refused("this controller cannot check a wrong_result claim (no work conversion configured)",
                          status=403)
        if not isinstance(evidence, dict):
            raise Refused("a wrong_result report carries detail.evidence: the server's receipt, the result, "
                          "h0 and the failing segment")
        try:
            res = WorkResult.from_bytes(bytes.fromhex(str(evidence["result"])))
            h0 = bytes.fromhex(str(evidence["h0"]))
            segment = int(evidence.get("segment", 0))
            if len(h0) != 32:
                raise ValueError("h0 is 32 bytes")
            signer = recover_signer(receipt_bytes(self.accounts[r.ue], r.task_id, h0, res.digest()),
                                    str(evidence["receipt"]))
        except Refused:
            raise
        except Exception as e:
            raise Refused(f"malformed wrong_result evidence: {type(e).__name__}: {e}") from None
        if signer != self.accounts[r.mec]:
            raise Refused(f"the receipt is not {r.mec}'s: no proof that it returned this result", status=403)
        gcycles = task["demand"] * (task["data_mb"] if self.work["demand_reading"] == "per_mb" else 1.0)
        need = kernel_iterations(gcycles, self.work["iterations_per_gcycle"][r.mec])
        ok, why = verify_from(h0, res, need, picks={segment})
        if ok:
            raise Refused(f"{r.mec}'s result for {r.ue}'s task {r.task_id} verifies (segment {segment}): "
                          "the claim is refused", status=403)
        return why

    def check_ack(self, r: Report, evidence: Any) -> str | None:
        """A UE's claim other than ``wrong_result``, against the server's signed answer to the
        request (:func:`nodes.wire.ack_bytes`). ``"accepted"`` when the server took the task
        (then the claim that nothing came back counts, unless the server reports the task
        served: :meth:`LabState.reputation` calls that a dispute); None when there is no
        evidence, or the server turned the task away (a refusal says the request or its payment
        was not good enough: it costs the server the task's revenue, not its reputation). An
        answer that is not the server's own is refused."""
        if evidence is None:
            return None
        try:
            verdict = str(evidence["verdict"])
            signer = recover_signer(ack_bytes(self.accounts[r.ue], r.task_id, verdict), str(evidence["ack"]))
        except Exception as e:
            raise Refused(f"malformed evidence (the server's signed answer): {type(e).__name__}: {e}") from None
        if signer != self.accounts[r.mec]:
            raise Refused(f"the answer is not {r.mec}'s: no proof of what it did with the task", status=403)
        if r.detail["kind"] == "refused":
            if f"refused:{verdict}" != str(r.detail.get("outcome")):
                raise Refused(f"{r.mec} answered {verdict!r}, the report says {r.detail.get('outcome')!r}",
                              status=403)
            return None
        return "accepted" if verdict == "accepted" else None

    def post_report(self, environ) -> tuple[int, Any]:
        name, d = self._signed(environ)
        try:
            r = Report(source=str(d["source"]), mec=str(d["mec"]), ue=str(d["ue"]), task_id=int(d["task_id"]),
                       desired_s=0.0, latency_s=number(d["latency_s"], "latency_s", 0.0, MAX_LATENCY_S),
                       ok=d["ok"], t=time.time(), detail=dict(d.get("detail") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise Refused(f"a report needs source, mec, ue, task_id, latency_s, ok: {e}") from None
        if not isinstance(r.ok, bool):
            raise Refused(f"ok must be true or false, got {r.ok!r}")
        if r.source not in ("executor", "ue"):
            raise Refused(f"source must be executor or ue, got {r.source!r}")
        if r.source == "executor" and name != r.mec:
            raise Refused(f"{name} may report only as itself, not for {r.mec}", status=403)
        if r.source == "ue" and name != r.ue:
            raise Refused(f"{name} may report only on its own tasks, not {r.ue}'s", status=403)
        task = self.state.announced(r.ue, r.mec, r.task_id)
        if task is None:               # only a task the policy gave to that server counts
            raise Refused(f"{r.ue}'s task {r.task_id} was never given to {r.mec}", status=403)
        r.desired_s = task["desired_s"]    # τ_u as announced (and checked against Table I's range)
        if r.source == "ue" and not r.ok:
            r.detail["kind"] = failure_kind(r.detail.get("outcome"))
            if r.detail["kind"] == "wrong_result":
                r.detail["proof"] = self.prove_wrong_result(r, task, r.detail.pop("evidence", None))
                r.detail["proven"] = "wrong_result"
            else:
                r.detail["proven"] = self.check_ack(r, r.detail.pop("evidence", None))
        self.state.add_report(r)
        if r.source == "ue":
            self.state.drop_task(r.ue, r.task_id)
        return 200, {"accepted": True}


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
            500: "Internal Server Error"}
