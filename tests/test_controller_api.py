"""The controller's API on its real server (:mod:`controller.api_server`), attacked over real
sockets as a UE container would: a body limit bypass, non-finite numbers, tasks outside
Table I's ranges, trickling and piling connections, reports about tasks never given, τ_u from
the reporter, failure reports without a kind. Each attack is refused and changes nothing."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from eth_account import Account

from controller.api import Api
from nodes.api_client import sign_body
from controller.api_server import make_api_server
from controller.state import LabState

RANGES = {"data_mb": (1.0, 5.0), "demand": (0.6, 1.6), "desired_s": (0.5, 2.0)}
TOKEN = "t0ken"
ITERATIONS_PER_GCYCLE = 2000.0       # the announced tasks have ξ = 1.0 Gcycles: 2,000 iterations
# per MEC server: mec2 as on another server of a cluster whose calibration makes it twice as many
WORK = {"iterations_per_gcycle": {"mec1": ITERATIONS_PER_GCYCLE, "mec2": 2 * ITERATIONS_PER_GCYCLE},
        "demand_reading": "total"}


@pytest.fixture
def api():
    keys = {"mec1": Account.create(), "mec2": Account.create(), "ue1": Account.create(), "ue2": Account.create()}
    state = LabState(["mec1", "mec2"], ["ue1", "ue2"], [20.0, 40.0], 80.0, window_s=60.0, task_ranges=RANGES)
    app = Api(state, {k: a.address for k, a in keys.items()}, TOKEN, long_poll_max_s=5.0,
              work=WORK)
    server = make_api_server("127.0.0.1", 0, app, trusted=("127.0.0.2",), read_deadline_s=1.0,
                             max_connections=40, per_client=8)
    th = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()

    class Client:
        port = server.server_address[1]

        def __init__(self):
            self.keys, self.state, self.server = keys, state, server

        def call(self, method, path, body=None, signer=None, token=None, source="127.0.0.1", headers=None):
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(source, 0))
            raw = json.dumps(body).encode() if body is not None else b""
            h = dict(headers or {})
            if signer:
                h.update({"X-Signer": signer, "X-Signature": sign_body(keys[signer], raw)})
            if token:
                h["Authorization"] = f"Bearer {token}"
            c.request(method, path, body=raw or None, headers=h)
            r = c.getresponse()
            out = r.status, json.loads(r.read() or b"{}")
            c.close()
            return out

        def raw(self, data: bytes) -> bytes:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            s.sendall(data)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            s.close()
            return got

        def give(self, ue: str, mec: str, task_id: int, desired_s: float = 1.0, slot=[0]) -> None:
            """Announce ``ue``'s task and assign it to ``mec`` as the policy would."""
            st, _ = self.call("POST", "/task", {"ue": ue, "task_id": task_id, "data_mb": 2.0, "demand": 1.0,
                                                "desired_s": desired_s}, signer=ue)
            assert st == 200
            slot[0] += 1
            st, body = self.call("PUT", "/assignment", {"slot": slot[0], "serve": {mec: ue},
                                                        "levels": {"mec1": 0, "mec2": 0}}, token=TOKEN)
            assert st == 200, body

    yield Client()
    server.shutdown()
    server.server_close()


def test_a_negative_or_signed_content_length_is_refused_and_the_body_limit_holds(api):
    for length in (b"-1", b"+5", b"1e3", b" 0x10"):
        got = api.raw(b"POST /task HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}")
        assert got.startswith(b"HTTP/1.0 400") and b"digits only" in got, got
    got = api.raw(b"POST /task HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n")
    assert got.startswith(b"HTTP/1.0 413"), got
    assert api.call("GET", "/health")[0] == 200 and api.state.counters["tasks"] == 0


@pytest.mark.parametrize("query,field", [("wait=nan", "wait"), ("wait=inf", "wait"), ("wait=-1", "wait"),
                                         ("wait=1e308", "wait")])
def test_a_long_poll_with_a_non_finite_or_out_of_range_wait_is_refused(api, query, field):
    api.give("ue1", "mec1", 1)
    t0 = time.monotonic()
    st, body = api.call("GET", f"/assignment/ue1?task=1&{query}")
    assert st == 400 and field in body["error"], body
    assert time.monotonic() - t0 < 1.0                 # refused at once, no thread left spinning


def test_reports_since_nan_is_refused(api):
    st, body = api.call("GET", "/reports?since=nan")
    assert st == 400 and "since" in body["error"]


@pytest.mark.parametrize("field,value", [("demand", float("inf")), ("demand", 1e308), ("data_mb", float("nan")),
                                         ("desired_s", 1e9), ("desired_s", 0.01), ("data_mb", 50.0)])
def test_a_task_outside_table_i_is_refused_naming_the_field(api, field, value):
    task = {"ue": "ue1", "task_id": 7, "data_mb": 2.0, "demand": 1.0, "desired_s": 1.0, field: value}
    st, body = api.call("POST", "/task", task, signer="ue1")
    assert st == 400 and field in body["error"], body
    assert "ue1" not in api.state.pending and api.state.counters["tasks"] == 0


def test_trickling_connections_are_capped_and_cut_while_the_policy_is_served(api):
    """A UE opens connections and trickles headers byte by byte: past its per-client cap the
    next is answered 503 at once; each is cut at the read deadline; lab0's own (trusted)
    connections are answered throughout."""
    socks = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", api.port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\n")
        socks.append(s)
    time.sleep(0.2)
    extra = socket.create_connection(("127.0.0.1", api.port), timeout=5)
    assert extra.recv(100).startswith(b"HTTP/1.0 503")
    extra.close()
    t0 = time.monotonic()
    st, _ = api.call("GET", "/state", source="127.0.0.2")           # the policy, from lab0
    assert st == 200 and time.monotonic() - t0 < 0.5
    for s in socks:                                  # trickle one byte every 0.3 s
        try:
            s.sendall(b"X")
        except OSError:
            pass
    deadline = time.monotonic() + 3.0
    while api.server.open_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.server.open_connections() == 0        # all cut at the 1-s read deadline
    for s in socks:
        s.close()
    assert api.call("GET", "/health")[0] == 200       # and the client may come back


def test_a_report_about_a_task_never_given_is_refused(api):
    st, body = api.call("POST", "/report", {"source": "executor", "mec": "mec1", "ue": "ue1", "task_id": 3,
                                            "latency_s": 0.1, "ok": True}, signer="mec1")
    assert st == 403 and "never given to mec1" in body["error"]
    api.give("ue1", "mec2", 3)
    st, body = api.call("POST", "/report", {"source": "executor", "mec": "mec1", "ue": "ue1", "task_id": 3,
                                            "latency_s": 0.1, "ok": True}, signer="mec1")
    assert st == 403                                  # given, but to mec2
    assert api.state.reputation()["mec1"]["tasks"] == 0


def test_tau_is_the_announced_one_not_the_reporters(api):
    api.give("ue1", "mec1", 4, desired_s=1.5)
    st, _ = api.call("POST", "/report", {"source": "executor", "mec": "mec1", "ue": "ue1", "task_id": 4,
                                         "desired_s": float("inf"), "latency_s": 0.5, "ok": True}, signer="mec1")
    assert st == 200
    rep = api.call("GET", "/reputation")[1]["mec1"]
    assert rep["reputation"] == pytest.approx(1.5 / 0.5) and rep["desired_s"] == pytest.approx(1.5)


def test_a_ue_failure_report_needs_a_kind_and_is_counted_by_kind(api):
    api.give("ue1", "mec1", 5)
    st, body = api.call("POST", "/report", {"source": "ue", "mec": "mec1", "ue": "ue1", "task_id": 5,
                                            "latency_s": 1.0, "ok": False, "detail": {}}, signer="ue1")
    assert st == 400 and "detail.outcome" in body["error"]
    assert api.state.reputation()["mec1"]["failed"] == 0
    st, _ = api.call("POST", "/report", {"source": "ue", "mec": "mec1", "ue": "ue1", "task_id": 5, "latency_s": 1.0,
                                         "ok": False, "detail": {"outcome": "refunded:lost"}}, signer="ue1")
    assert st == 200                       # recorded by kind; without evidence it changes nothing
    rep = api.call("GET", "/reputation")[1]["mec1"]
    assert rep["failed"] == 0 and rep["unproven_by_kind"] == {"refunded": 1} and rep["reputation"] == 1.0
    # a UE cannot report on another UE's task, nor a number that is not finite
    st, _ = api.call("POST", "/report", {"source": "ue", "mec": "mec1", "ue": "ue1", "task_id": 5, "latency_s": 1.0,
                                         "ok": False, "detail": {"outcome": "lost"}}, signer="ue2")
    assert st == 403
    st, body = api.call("POST", "/report", {"source": "ue", "mec": "mec1", "ue": "ue1", "task_id": 5,
                                            "latency_s": "NaN", "ok": False, "detail": {"outcome": "lost"}},
                        signer="ue1")
    assert st == 400 and "latency_s" in body["error"]


def _claim(api, task_id: int, res, data: bytes, signer_key, segment: int = 0, evidence=True, mec="mec1"):
    """ue1's wrong_result report against ``mec`` on ``res`` (a WorkResult) for ``data``, with a
    receipt signed by ``signer_key`` (None: no evidence at all)."""
    import hashlib

    from nodes.wire import receipt_bytes
    h0 = hashlib.sha256(data).digest()
    receipt = sign_body(signer_key, receipt_bytes(api.keys["ue1"].address, task_id, h0, res.digest()))
    detail = {"outcome": "wrong_result"}
    if evidence:
        detail["evidence"] = {"receipt": receipt, "result": res.to_bytes().hex(), "h0": h0.hex(), "segment": segment}
    return api.call("POST", "/report", {"source": "ue", "mec": mec, "ue": "ue1", "task_id": task_id,
                                        "latency_s": 1.0, "ok": False, "detail": detail}, signer="ue1")


def test_a_wrong_result_claim_counts_only_when_the_servers_signed_result_fails(api):
    """The controller checks a UE's wrong_result claim itself: the server's receipt over the
    result, the iteration count of the announced task, the segment the UE names."""
    from nodes.work import compute, fabricate, verify
    data = b"task data" * 100
    need = round(1.0 * ITERATIONS_PER_GCYCLE)
    honest, lazy, fake = compute(data, need), compute(data, 1), fabricate(need, seed=3)
    found = {}
    assert not verify(data, fake, need, segments=32, found=found)[0]
    for tid in (11, 12, 13, 14, 15, 16):
        api.give("ue1", "mec1", tid)
    st, body = _claim(api, 11, honest, data, api.keys["mec1"], segment=5)          # a false claim
    assert st == 403 and "verifies" in body["error"], body
    st, body = _claim(api, 12, fake, data, api.keys["mec2"])                      # not mec1's receipt
    assert st == 403 and "not mec1's" in body["error"], body
    st, body = _claim(api, 13, fake, data, api.keys["mec1"], evidence=False)
    assert st == 400 and "evidence" in body["error"], body
    assert api.state.reputation()["mec1"]["failed"] == 0                       # nothing counted yet
    assert _claim(api, 14, fake, data, api.keys["mec1"], segment=found["segment"])[0] == 200
    assert _claim(api, 15, lazy, data, api.keys["mec1"])[0] == 200             # 1 iteration, not 2,000
    rep = api.call("GET", "/reputation")[1]["mec1"]
    assert rep["failed"] == 2 and rep["failed_by_kind"] == {"wrong_result": 2}, rep


def test_a_wrong_result_claim_is_checked_with_the_serving_servers_own_iteration_count(api):
    """On a cluster each server's work kernel runs its own calibration's iterations per Gcycle
    (issue 22): mec2's figure is twice mec1's here, so mec1's honest count is short at mec2."""
    from nodes.work import compute
    data = b"task data" * 100
    for tid in (21, 22):
        api.give("ue1", "mec2", tid)
    own = compute(data, round(1.0 * WORK["iterations_per_gcycle"]["mec2"]))
    st, body = _claim(api, 21, own, data, api.keys["mec2"], mec="mec2")
    assert st == 403 and "verifies" in body["error"], body
    short = compute(data, round(1.0 * ITERATIONS_PER_GCYCLE))
    assert _claim(api, 22, short, data, api.keys["mec2"], mec="mec2")[0] == 200
    assert api.call("GET", "/reputation")[1]["mec2"]["failed_by_kind"] == {"wrong_result": 1}


def test_an_assignment_or_a_task_is_journaled_before_anyone_sees_it():
    """The controller may be killed (SIGKILL) at any moment: every assignment and announced
    task is handed to the journal while the state's lock is held, so a state() that shows it
    was taken after it was saved, and a restored state carries it."""
    state = LabState(["mec1", "mec2"], ["ue1", "ue2"], [20.0, 40.0], 80.0, window_s=60.0, task_ranges=RANGES)
    saved: list[dict] = []
    state.journal = lambda: saved.append(json.loads(json.dumps(state.dump())))
    state.add_task("ue1", 7, 1.0, 1.0, 2.0)
    assert saved[-1]["pending"]["ue1"]["task_id"] == 7
    state.assign(41, {"mec1": "ue1", "mec2": None}, {"mec1": 1, "mec2": 0})
    assert saved[-1]["assignment"]["slot"] == 41 and saved[-1]["assignment"]["serve"]["mec1"] == "ue1"
    state.drop_task("ue1", 7)
    assert "ue1" not in saved[-1]["pending"]
    again = LabState(["mec1", "mec2"], ["ue1", "ue2"], [20.0, 40.0], 80.0, window_s=60.0, task_ranges=RANGES)
    again.restore(saved[-1])
    assert again.assignment.slot == 41 and again.counters["restored"] == 1


def _ack_claim(api, task_id: int, outcome: str, verdict: str, signer: str):
    """ue1's report that its task failed with ``outcome``, carrying an answer (``verdict``)
    signed by ``signer``'s key, as an executor signs it."""
    from nodes.wire import ack_bytes
    ack = sign_body(api.keys[signer], ack_bytes(api.keys["ue1"].address, task_id, verdict))
    return api.call("POST", "/report", {"source": "ue", "mec": "mec1", "ue": "ue1", "task_id": task_id,
                                        "latency_s": 1.0, "ok": False,
                                        "detail": {"outcome": outcome, "evidence": {"ack": ack, "verdict": verdict}}},
                    signer="ue1")


def _served(api, task_id: int):
    return api.call("POST", "/report", {"source": "executor", "mec": "mec1", "ue": "ue1", "task_id": task_id,
                                        "latency_s": 0.8, "ok": True}, signer="mec1")


def test_a_claim_that_an_accepted_task_never_came_back_needs_the_servers_acceptance(api):
    """Reputation from evidence only (issue 19): a UE's no_result claim counts when it carries
    mec1's signed acceptance of that very task and mec1 does not report it served; if mec1 does,
    the two disagree and neither counts (disputed). An acceptance signed by another key, or for
    another task, is refused; a signed refusal is recorded and costs no reputation."""
    api.give("ue1", "mec1", 11)
    st, body = _ack_claim(api, 11, "lost", "accepted", signer="mec2")          # not mec1's answer
    assert st == 403 and "not mec1's" in body["error"], body
    st, body = _ack_claim(api, 11, "lost", "accepted", signer="ue1")           # forged by the UE
    assert st == 403, body
    assert api.state.reputation()["mec1"]["failed"] == 0
    st, body = _ack_claim(api, 11, "lost", "accepted", signer="mec1")
    assert st == 200, body
    rep = api.call("GET", "/reputation")[1]["mec1"]
    assert rep["failed"] == 1 and rep["failed_by_kind"] == {"no_result": 1} and rep["reputation"] < 0.1, rep
    # the same claim on a task mec1 reports served: disputed, the server's latency counts
    api.give("ue1", "mec1", 12)
    assert _served(api, 12)[0] == 200
    assert _ack_claim(api, 12, "lost", "accepted", signer="mec1")[0] == 200
    rep = api.call("GET", "/reputation")[1]["mec1"]
    assert rep["failed"] == 1 and rep["disputed"] == 1 and rep["tasks"] == 1, rep
    # a refusal signed by mec1: recorded, never counted; a refusal it did not give: refused
    api.give("ue1", "mec1", 13)
    st, body = _ack_claim(api, 13, "refused:underpaid", "replayed", signer="mec1")
    assert st == 403 and "answered" in body["error"], body
    assert _ack_claim(api, 13, "refused:underpaid", "underpaid", signer="mec1")[0] == 200
    rep = api.call("GET", "/reputation")[1]["mec1"]
    assert rep["failed"] == 1 and rep["unproven_by_kind"] == {"refused": 1}, rep


def test_an_acceptance_for_another_task_proves_nothing(api):
    from nodes.wire import ack_bytes
    api.give("ue1", "mec1", 21)
    ack = sign_body(api.keys["mec1"], ack_bytes(api.keys["ue1"].address, 20, "accepted"))   # task 20's
    st, body = api.call("POST", "/report", {"source": "ue", "mec": "mec1", "ue": "ue1", "task_id": 21,
                                            "latency_s": 1.0, "ok": False,
                                            "detail": {"outcome": "lost", "evidence": {"ack": ack,
                                                                                       "verdict": "accepted"}}},
                        signer="ue1")
    assert st == 403, body
    assert api.state.reputation()["mec1"]["failed"] == 0


def test_the_controller_settings_are_all_the_scenarios():
    """The controller has no default of its own (issue 20): a settings file missing a field, or
    with one it does not know, is refused by name."""
    import dataclasses

    from controller.settings import LabSettings
    names = [f.name for f in dataclasses.fields(LabSettings)]
    full = {n: 0 for n in names}
    assert LabSettings.from_dict(full).slot_s == 0
    with pytest.raises(ValueError, match="missing \\['slot_s'\\]"):
        LabSettings.from_dict({k: v for k, v in full.items() if k != "slot_s"})
    with pytest.raises(ValueError, match="unknown \\['slot_length'\\]"):
        LabSettings.from_dict({**full, "slot_length": 10.0})


def test_the_one_api_client_calls_as_the_operator_or_as_a_signed_host(api):
    """nodes.api_client.ApiClient is the policy's, the UE client's and the executor's client:
    the bearer token, or a host's name and key signing each body; refusals come back as ApiError
    with the controller's status, and a key that is not the named host's is refused."""
    from nodes.api_client import ApiClient, ApiError
    url = f"http://127.0.0.1:{api.port}"
    operator = ApiClient(url, TOKEN)
    assert set(operator.state()["servers"]) == {"mec1", "mec2"}
    ue1 = ApiClient(url, signer="ue1", key=api.keys["ue1"])
    assert ue1.request("POST", "/task", {"ue": "ue1", "task_id": 7, "data_mb": 2.0, "demand": 1.0,
                                         "desired_s": 1.0})
    assert "ue1" in operator.state()["pending"]
    status, _ = ue1.call("PUT", "/assignment", {"slot": 1, "serve": {"mec1": "ue1"},
                                               "levels": {"mec1": 0, "mec2": 0}})   # the operator's only
    assert status in (401, 403)
    forger = ApiClient(url, signer="ue2", key=api.keys["ue1"])
    with pytest.raises(ApiError) as e:
        forger.request("POST", "/task", {"ue": "ue2", "task_id": 8, "data_mb": 2.0, "demand": 1.0, "desired_s": 1.0})
    assert e.value.status in (401, 403)
    assert "ue2" not in operator.state()["pending"]
    with pytest.raises(ValueError, match="exactly one"):
        ApiClient(url, TOKEN, signer="ue1", key=api.keys["ue1"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(tmp_path, keys: dict, port: int, miners: dict, agents: dict | None = None) -> None:
    """A lab's controller settings (``controller.json``) for mec1, mec2, ue1, ue2 (``keys``), the
    API on 127.0.0.1:``port``, the budgets app's ``miners`` and ``agents``."""
    from controller.settings import LabSettings
    (tmp_path / "token").write_text(TOKEN)
    LabSettings(servers=["mec1", "mec2"], ues=["ue1", "ue2"], accounts={k: a.address for k, a in keys.items()},
                levels_mhs=[20.0, 40.0], budget_mhs=80.0, levels_cores=[0.1, 0.2], window_s=60.0, slot_s=1.0,
                equal_level=1, monitor_period_s=0.5, nice=0, api_host="127.0.0.1", api_port=port,
                api_read_deadline_s=1.0, api_max_connections=40, api_per_client=8,
                token_file=str(tmp_path / "token"), budget_log=str(tmp_path / "budgets.jsonl"),
                state_file=str(tmp_path / "state.json"), task_ranges={k: list(v) for k, v in RANGES.items()},
                work=WORK,
                miners=miners, miner_rpc={}, agents=agents or {}).write(tmp_path / "controller.json")


def start_controller(tmp_path, n: int, operator):
    """``python -m controller`` with the lab's apps on ``controller.json``; (process, first state)."""
    import subprocess
    import sys
    from pathlib import Path

    from testbed.lab import CONTROLLER_APPS           # the lab's apps, in the lab's order
    log = open(tmp_path / f"controller-{n}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "controller", "--listen", "127.0.0.1",
                             "--port", str(_free_port()), "--lab-config", str(tmp_path / "controller.json"),
                             *[a for app in CONTROLLER_APPS for a in ("--app", app)]],
                            cwd=Path(__file__).resolve().parents[1], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            return proc, operator.state()
        except OSError:
            assert proc.poll() is None, (tmp_path / f"controller-{n}.log").read_text()
            assert time.monotonic() < deadline, "the API never answered"
            time.sleep(0.2)


def test_the_controller_apps_decide_apply_fall_back_and_survive_a_restart(tmp_path):
    """The lab's os-ken apps in a real ``python -m controller`` process, without a network: the
    API app puts a policy's assignment in force (the budgets app answers, its miners' cgroups
    absent here), the fallback app decides round-robin after 1.5 slots of silence, both are
    logged in budgets.jsonl, and after a restart the journal app gives the state back."""
    from nodes.api_client import ApiClient

    keys = {n: Account.create() for n in ("mec1", "mec2", "ue1", "ue2")}
    port = _free_port()
    write_settings(tmp_path, keys, port, {m: {"host_group": f"no-such-lab-{port}/{m}", "period_us": 100_000,
                                              "host_cores": 1.0, "coupling": "shared"} for m in ("mec1", "mec2")})
    url = f"http://127.0.0.1:{port}"
    operator = ApiClient(url, TOKEN, timeout_s=5.0)

    def start(n: int):
        return start_controller(tmp_path, n, operator)

    def announce(ue: str, task_id: int):
        ApiClient(url, signer=ue, key=keys[ue]).request(
            "POST", "/task", {"ue": ue, "task_id": task_id, "data_mb": 2.0, "demand": 1.0, "desired_s": 1.0})

    proc, _ = start(1)
    try:
        announce("ue1", 1)
        got = operator.request("PUT", "/assignment", {"slot": 0, "serve": {"mec1": "ue1"},
                                                       "levels": {"mec1": 1, "mec2": 1}})
        assert "budgets_applied_s" in got["applied"], got       # the budgets app is the first applier
        announce("ue2", 2)
        deadline = time.monotonic() + 5
        while not (a := operator.state()["assignment"])["fallback"]:
            assert time.monotonic() < deadline, a
            time.sleep(0.1)
        # round-robin from the slot's turn (mec2 first in slot 1), the budget split equally
        assert a["slot"] == 1 and a["serve"] == {"mec1": None, "mec2": "ue2"}, a
        assert a["levels"] == {"mec1": 1, "mec2": 1} and a["decided_at"] - got["accepted_at"] >= 1.5, a
        logged = [json.loads(x) for x in (tmp_path / "budgets.jsonl").read_text().splitlines()]
        assert [(r["slot"], r["fallback"]) for r in logged[:2]] == [(0, False), (1, True)], logged
        assert all("budgets_applied_s" in r for r in logged)
    finally:
        proc.terminate()
        proc.wait(10)
    proc, st = start(2)
    try:
        assert st["counters"]["restored"] == 1
        assert st["assignment"]["slot"] >= 1 and {"ue1", "ue2"} <= set(st["pending"])
    finally:
        proc.terminate()
        proc.wait(10)
    log = (tmp_path / "controller-1.log").read_text() + (tmp_path / "controller-2.log").read_text()
    assert "fallback round-robin" in log and "state restored from" in log
    assert "Traceback" not in log, log
