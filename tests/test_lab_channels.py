"""The live lab as users run it by default: UEs pay by vouchers on payment channels
(``contract.payment = "channel"``) on the paper's chain (``chain.outside = "virtual"``: the MEC
servers' hash is 0.6 of the network's, one block race per slot), with the set-up in the genesis.
Real parts: 2 MEC hosts (geth miner + executor each), the RPC gateway, 3 UE containers (two run
the UE client; the test drives the third from the root namespace), the os-ken controller.
One lab for the module (the live view's run too: tests/test_live_view.py); the tests run in
order, the last closes the books on chain.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time

import pytest

from conftest import fault_free, SMALL_LAB, chain_overrides, drive, running_lab, served
from contracts.vouchers import sign_voucher
from nodes.ue_client import UEClient
from nodes.wire import Conn, read_line, request_digest, request_hash
from scenario import units
from testbed.experiments.live import audit, drain, finish_executors
from nodes.api_client import ApiClient
from base.processes import ManagedProcess, log_ready

pytestmark = [pytest.mark.network, pytest.mark.docker, pytest.mark.chain]

OVERRIDES = chain_overrides(SMALL_LAB + ["model.n_users=3", "model.slot_s=6", "lab.slots=4", "lab.header_timeout_s=2",
                                         "contract.confirmations=1", "contract.redeem_every_s=20", "lab.drain_s=90"],
                            "virtual")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, network_ready):
    with running_lab(tmp_path_factory.mktemp("channels") / "run", OVERRIDES, ("ue1", "ue2")) as lab:
        yield lab


@pytest.fixture(scope="module")
def ue3(lab):
    """The test's UE: the real UE client's code in the root namespace, with ue3's own key; its
    channel was opened by the set-up (in the genesis)."""
    out = lab.run_dir / "ues" / "ue3"
    out.mkdir(parents=True, exist_ok=True)
    client = UEClient(lab.lab_dir / "lab.json", "ue3", lab.accounts.ues[2].key.hex(), out)
    client.info.service_ip = None        # the root namespace is not steered: straight to the server
    client.open_channel()
    return client


@pytest.fixture(scope="module")
def api(lab):
    return ApiClient(lab.api_url, lab.token)


def test_the_chain_is_the_papers_and_the_setup_is_in_its_genesis(lab):
    assert lab.info.deploy_block == 0 and lab.chain_plan["outside"] == "virtual"
    genesis = json.loads(lab.chain.genesis_path.read_text())
    assert int(genesis["difficulty"], 16) == lab.chain_plan["difficulty"]
    code = genesis["alloc"][lab.trade.address.lower()]["code"]
    assert len(code) > 1000 and lab.trade.w3.eth.get_code(lab.trade.address, 0).hex().lstrip("0x") in code
    for ue in lab.info.ues.values():
        ch = lab.trade.channel(ue.address)
        assert ch is not None and ch.balance_wei == lab.scn.contract.channel_deposit_wei


def test_tasks_are_paid_by_vouchers_with_no_chain_call_on_their_path(lab):
    lab.start_policy(slots=4)
    assert lab.policy_proc.handle.wait(4 * lab.scn.model.slot_s + 60) == 0
    time.sleep(5)
    recs = [json.loads(x) for u in ("ue1", "ue2")
            for x in (lab.run_dir / "ues" / u / "tasks.jsonl").read_text().splitlines()]
    done = [r for r in recs if r.get("outcome") == "completed"]
    assert done, recs
    price = lambda r: units.task_price_wei(lab.scn.model, units.chain_task(lab.scn.model, r["data_mb"], r["demand"],
                                                                           r["desired_s"]))
    for r in done:
        assert r["paid_wei"] == price(r) and r["voucher_cumulative"] >= r["paid_wei"]
        assert "settlement_s" not in r and "trading_gas" not in r          # nothing waited on the chain
        # end to end = waiting for a server + the voucher's round trip + the service itself
        assert r["e2e_s"] <= r["wait_s"] + r["payment_s"] + r["service_s"] + 0.5, r
    earned = [json.loads(x) for m in lab.info.servers
              for x in (lab.lab_dir / "executors" / f"{m}-vouchers.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "earned" for e in earned) >= len(done)


def test_live_view_during_a_run(lab, tmp_path):
    """The live view (tests/test_live_view.py) read in headless Chromium while a policy runs on
    this lab: what the page shows equals the API's state of the same slot, twice."""
    from test_live_view import check_live_view_during_a_run
    check_live_view_during_a_run(lab, tmp_path)


def _send(lab, client, mec, *, task_id, demand=1_000_000_000, header=None, voucher="sign", v=None):
    """One request to ``mec``'s executor as ``client`` would send it, with a voucher built here
    (``v`` overrides its fields; ``v["signer"]`` signs it instead of the client); the reply."""
    hdr = {"ue": client.account.address, "task_id": task_id, "chain_id": lab.info.chain_id,
           "contract": lab.info.contract, "data_bytes": 100_000, "desired_s": 1.0, "payment": "channel",
           "demand": demand, **(header or {})}
    lane = client.lanes.lanes[mec]
    fields = dict(chain_id=lab.info.chain_id, contract=lab.info.contract, mec=lab.info.servers[mec].address,
                  generation=lane["generation"],
                  cumulative=lane["base"] + units.price_wei(client.unit_price, demand), nonce=lane["nonce"] + 1,
                  task_id=task_id, request_digest=request_hash(hdr))
    vkw = dict(v or {})
    signer = vkw.pop("signer", client.account)
    fields.update(vkw)
    line = {"header": hdr, "sig": client.account.sign_message(request_digest(hdr))}
    if voucher == "sign":
        # signed by `signer`, in the name of `client` (a forgery when they differ)
        line["voucher"] = dataclasses.replace(sign_voucher(signer, **fields), ue=client.account.address).to_json()
    elif voucher is not None:
        line["voucher"] = voucher
    with socket.create_connection((lab.info.servers[mec].ip, lab.info.executor_port), timeout=10) as raw:
        raw.sendall(json.dumps(line).encode() + b"\n")
        return json.loads(read_line(Conn(raw), 8192, 60))


def test_bad_vouchers_are_refused_by_name_and_no_work_is_done(lab, ue3, api):
    from eth_account import Account
    before = served(lab, "mec1")
    cap = lab.trade.channel(ue3.account.address).cap_per_lane_wei
    cases = {
        "malformed_voucher": dict(voucher=None),
        "malformed_voucher ": dict(voucher={"ue": "nope"}),
        "bad_voucher_signature": dict(v=dict(signer=Account.create())),
        "wrong_lane": dict(v=dict(mec=lab.info.servers["mec2"].address)),
        "wrong_task": dict(v=dict(task_id=999_999)),
        "wrong_amount": dict(v=dict(cumulative=ue3.lanes.lanes["mec1"]["base"] + 1)),
        "over_cap": dict(v=dict(cumulative=cap + 1)),
        "wrong_generation": dict(v=dict(generation=7)),
        "foreign_chain": dict(header={"chain_id": 1}),
    }
    for code, kw in cases.items():
        reply = _send(lab, ue3, "mec1", task_id=600, **kw)
        assert reply.get("code") == code.strip(), (code, reply)
        assert reply["error"]
    assert served(lab, "mec1") == before                                  # no work done
    rec = drive(lab, api, ue3, 601, "mec1")
    assert rec["outcome"] == "completed", rec
    # the same voucher again (a non-increasing nonce), then the same task again
    stale = _send(lab, ue3, "mec1", task_id=602, v=dict(nonce=ue3.lanes.lanes["mec1"]["nonce"]))
    assert stale["code"] == "stale_voucher" and stale["base"] == rec["voucher_cumulative"], stale
    assert _send(lab, ue3, "mec1", task_id=601)["code"] == "replayed"
    assert served(lab, "mec1") == before + 1


def _restart_executor(lab, mec, *extra):
    old = lab.executors[mec]
    old.stop()
    argv = fault_free(old.argv) + list(extra)
    p = ManagedProcess(f"executor {mec}", argv, old.log_path.with_name(f"executor-{mec}-{time.monotonic_ns()}.log"),
                       launcher=lab.launcher(mec), cwd=old.cwd, ready=log_ready(r"serving on"))
    lab.procs.start(p)
    lab.attach_kernel(mec, p)
    lab.executors[mec] = p


def test_executor_killed_between_voucher_and_result_nothing_is_lost(lab, ue3, api):
    """The executor dies after accepting a voucher and before the result: it never earned it
    (it never redeems it), and the UE's next voucher on that lane pays on from the same base."""
    base, nonce = ue3.lanes.lanes["mec1"]["base"], ue3.lanes.lanes["mec1"]["nonce"]
    _restart_executor(lab, "mec1", "--stall", "5")                        # a task takes 5 s more there
    box = {}
    th = threading.Thread(target=lambda: box.update(rec=drive(lab, api, ue3, 700, "mec1")), daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while ue3.lanes.lanes["mec1"]["nonce"] == nonce:                      # until the voucher is signed and sent
        assert time.monotonic() < deadline, "the task was never paid"
        time.sleep(0.1)
    time.sleep(2.0)                                                        # accepted, uploaded, computing
    lab.executors["mec1"].kill()
    th.join(timeout=120)
    rec = box["rec"]
    assert rec["outcome"] == "lost" and rec["paid_wei"] == 0, rec
    assert ue3.lanes.lanes["mec1"]["base"] == base                         # not earned: not paid
    _restart_executor(lab, "mec1")
    rec = drive(lab, api, ue3, 701, "mec1")
    assert rec["outcome"] == "completed", rec
    assert rec["voucher_cumulative"] == base + rec["paid_wei"]


def test_gateway_cut_for_a_slot_tasks_go_on(lab, ue3, api):
    """The chain's RPC gateway unreachable: no task waits on it (a voucher is checked locally)."""
    sw = lab.topo.plan.nodes["gw1"].switch
    lab.net.configLinkStatus(sw, "gw1", "down")
    try:
        rec = drive(lab, api, ue3, 800, "mec2")
        assert rec["outcome"] == "completed", rec
        assert rec["payment_s"] < 2.0
    finally:
        lab.net.configLinkStatus(sw, "gw1", "up")


def test_ue_container_stopped_with_unredeemed_vouchers(lab):
    """ue1's container stops for good while the servers hold its vouchers: they redeem them."""
    import docker
    earned = [json.loads(x) for m in lab.info.servers
              for x in (lab.lab_dir / "executors" / f"{m}-vouchers.jsonl").read_text().splitlines()]
    mine = lab.info.ues["ue1"].address.lower()
    assert any(e["event"] == "earned" and e["ue"] == mine for e in earned), "ue1 paid no task yet"
    docker.from_env().containers.get("mn.ue1").stop(timeout=0)


def test_books_close_after_the_run(lab):
    drain(lab, 60)
    res = finish_executors(lab, 150)
    assert not res["executors_still_running"], res
    books = audit(lab)
    ch = books["channels"]
    assert ch["books_close"] and not ch["unredeemed_lanes"], json.dumps(ch, indent=1)
    assert ch["redeemed_wei"] > 0 and books["contract_balance_wei"] == ch["locked_wei"]
    assert books["books_close"], json.dumps(books, indent=1)
    # ue1 (its container stopped) was paid for up to what the servers earned
    assert ch["ues"]["ue1"]["redeemed_wei"] > 0
