"""One Scenario, one set of units: a value set once reaches every part; a copy that disagrees is
refused naming both fields; a task of the model costs on chain exactly what the model says."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent import model
from contracts.binding import TradingContract
from contracts.txsender import TxSender
from chain.anvil import AnvilNode
from nodes.work import compute, fabricate, verify
from scenario import units
from scenario.config import ConfigError, load_scenario
from scenario.units import Calibration, LiveMapping


def test_one_number_reaches_every_part():
    scn = load_scenario("smoke", ["model.n_servers=7", "model.n_users=25"])
    assert scn.model.n_servers == 7 and scn.model.n_users == 25
    assert scn.chain.n_nodes == 7 and scn.chain.n_ues == 25        # the miners and the funding


@pytest.mark.parametrize("overrides, both", [
    (["model.n_servers=7", "chain.n_nodes=3"], ("chain.n_nodes", "model.n_servers")),
    (["model.n_users=25", "chain.n_ues=10"], ("chain.n_ues", "model.n_users")),
    (["model.unit_price=0.2", "contract.unit_price_wei_per_gcycle=150000000000000000"],
     ("contract.unit_price_wei_per_gcycle", "model.unit_price")),
])
def test_two_parts_that_disagree_are_refused_naming_both(overrides, both):
    with pytest.raises(ConfigError) as exc:
        load_scenario("smoke", overrides)
    for name in both:
        assert name in str(exc.value)


def test_a_copy_that_agrees_is_accepted():
    scn = load_scenario("smoke", ["model.n_servers=4", "chain.n_nodes=4",
                                  "contract.unit_price_wei_per_gcycle=150000000000000000"])
    assert scn.chain.n_nodes == 4 and scn.contract.unit_price_wei_per_gcycle == 15 * 10**16


def test_token_and_wei_convert_exactly():
    assert units.token_to_wei(0.15) == 150_000_000_000_000_000
    assert units.token_to_wei("30") == 30 * 10**18
    assert units.wei_to_token(units.token_to_wei(0.1)) == 0.1
    with pytest.raises(ValueError, match="negative"):
        units.token_to_wei(-1)


@pytest.mark.parametrize("reading", ["per_mb", "total"])
def test_task_cycles_follow_the_reading_of_xi(reading):
    cfg = load_scenario(None, [f"model.demand_reading='{reading}'"]).model
    t = units.chain_task(cfg, 3.0, 1.2, 1.0)
    assert t.data_bytes == 3_000_000 and t.data_bits == 24_000_000
    assert t.service_demand == 1_200_000_000
    assert t.gcycles == pytest.approx(3.6 if reading == "per_mb" else 1.2)


@pytest.mark.chain
@pytest.mark.parametrize("reading", ["per_mb", "total"])
def test_a_model_task_costs_on_chain_what_the_model_says(reading):
    """The model's φ_u = µ·ξ_u of a task, converted to wei, is the contract's quote() for the
    same task: exactly in wei, and equal in tokens to float precision."""
    scn = load_scenario(None, [f"model.demand_reading='{reading}'"])
    rng = np.random.default_rng(7)
    tasks = [units.chain_task(scn.model, rng.uniform(*scn.model.data_mb_range),
                              rng.uniform(*scn.model.demand_gcycles_range), 1.0) for _ in range(20)]
    with AnvilNode(accounts=1) as node:
        w3 = node.web3()
        trade, _ = TradingContract.deploy(w3, node.accounts[0], scn.contract,
                                          sender=TxSender(w3, scn.contract))
        assert trade.unit_price() == units.token_to_wei(scn.model.unit_price)
        for t in tasks:
            wei = trade.quote(t.service_demand)
            assert wei == units.task_price_wei(scn.model, t)
            assert math.isclose(units.wei_to_token(wei), float(model.service_cost(scn.model.unit_price, t.demand)),
                                rel_tol=1e-12)


def _calibration(**kw) -> Calibration:
    base = dict(date="2026-01-01T00:00:00+00:00", machine={}, core_hz=2.6e9, core_hz_source="test",
                kernel_iterations_per_core_s=3e6, cycles_per_iteration=2.6e9 / 3e6,
                kernel_quota_linearity=1.0, hashrate_hps_per_core=2e5, hashrate_points=[])
    return Calibration(**{**base, **kw})


def test_live_mapping_of_hash_levels_and_cpu():
    cfg = load_scenario(None).model          # P = 600 MHash/s, f = 5 GHz
    m = LiveMapping(cfg, mining_cores=0.6, executor_cores=0.06, cal=_calibration())
    assert m.miner_cores(600.0) == pytest.approx(0.6)
    assert m.miner_cores(20.0) == pytest.approx(0.02)
    assert m.real_hashrate(100.0) == pytest.approx(0.1 * 2e5)       # proportional: no points measured
    pts = _calibration(hashrate_points=[{"quota_cores": 0.05, "hashrate_hps": 1000.0},
                                        {"quota_cores": 0.1, "hashrate_hps": 15000.0}])
    m2 = LiveMapping(cfg, mining_cores=0.6, executor_cores=0.06, cal=pts)
    assert m2.real_hashrate(50.0) == pytest.approx(1000.0)           # 0.05 cores: a measured point
    assert m2.real_hashrate(75.0) == pytest.approx(8000.0)           # half way between the points
    assert m2.real_hashrate(200.0) == pytest.approx(30000.0)         # beyond: proportional
    # a task of C Gcycles takes C / f seconds on the executor's quota
    iters = m.kernel_iterations(3.3)
    seconds = iters / (3e6 * 0.06)
    assert seconds == pytest.approx(m.nominal_seconds(3.3), rel=1e-3)
    assert json.dumps(m.as_dict())


def test_calibration_round_trips(tmp_path):
    cal = _calibration()
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == cal
    with pytest.raises(FileNotFoundError, match="testbed calibrate"):
        Calibration.load(tmp_path / "missing.json")


def test_calibration_refuses_quotas_that_would_wait_for_the_cpu():
    """The hash-rate quotas are measured at once, one geth node each: that measures what each
    would hash alone only while they fit in half the machine's cores; more is refused before
    any node starts."""
    import os
    from scenario.config import load_scenario
    from testbed.experiments.calibrate import hashrate_per_core
    cores = os.cpu_count() or 1
    with pytest.raises(ValueError, match="more than half of this machine"):
        hashrate_per_core(load_scenario(None, []), (cores / 4, cores / 4 + 0.01), 11.0)


def test_work_kernel_result_is_checkable_and_a_fabricated_one_is_caught():
    data = b"task data" * 1000
    res = compute(data, 5_000)
    ok, why = verify(data, res, 5_000)
    assert ok, why
    assert res.digest() != compute(data, 5_001).digest()
    bad = fabricate(5_000)
    ok, why = verify(data, bad, 5_000)
    assert not ok and "segment 0" in why
    ok, why = verify(b"other data", res, 5_000)
    assert not ok
    assert res == type(res).from_bytes(res.to_bytes())


def test_programs_on_the_hosts_do_not_load_torch():
    """The UE clients and executors (30 processes at the paper's scale) read the Scenario: doing
    so must not import torch or scipy (~540 MB each: 12 GB of the 24 at M = 10, U = 20)."""
    import subprocess
    import sys
    code = ("import sys, nodes.ue_client, nodes.executor; from scenario.config import load_scenario; "
            "load_scenario('lab', ['sweep.algos=[\"ddqn\", \"oracle\"]']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'ray', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_a_ue_draws_numpys_task_stream_without_numpy():
    """nodes.rng.TaskRng is numpy's default_rng([seed, index]) for what a UE draws: every
    uniform equals numpy's, also after bytes() of any length (numpy's half-word buffer, the
    C division that draws one word for 0 bytes), for seeds of one and several words."""
    import random
    from nodes.rng import TaskRng
    pick = random.Random(3)
    for seed in ([7, 1], [0, 0], 5, [2**70 + 11, 3], [2**32, 17, 4, 9, 11]):
        ours, theirs = TaskRng(seed), np.random.default_rng(seed)
        for _ in range(400):
            if pick.random() < 0.3:
                n = pick.choice([0, 1, 3, 4, 5, 8, 9, 1001, 4_558_955])
                theirs.bytes(n)
                assert len(ours.bytes(n)) == n
            else:
                low, high = pick.uniform(0, 2), pick.uniform(2, 9)
                assert ours.uniform(low, high) == theirs.uniform(low, high)
    assert TaskRng([1, 2]).bytes(64) == TaskRng([1, 2]).bytes(64) != TaskRng([1, 3]).bytes(64)



def test_a_tasks_data_streamed_is_the_data_it_drew_and_its_hash_arrives_alone():
    """A UE draws its data as a TaskData and sends it piece by piece (nodes.rng, nodes.wire):
    the pieces join into the bytes the whole draw gave before (Random(seed).randbytes(n), the
    generator left where numpy leaves it), and the executor's read_digest gets their SHA-256
    without keeping them, with the line's over-read counted and the same refusals as read_exact."""
    import hashlib
    import random
    import socket
    import threading
    from nodes.rng import TaskRng
    from nodes.wire import Conn, Refusal, read_digest, read_exact, read_line, send_stream
    for n in (0, 1, 3, 4, 5, 262_143, 262_144, 262_147, 1_000_003, 4_558_955):
        a, b = TaskRng([7, 2]), TaskRng([7, 2])
        d = a.data(n)
        assert d.size == n and random.Random(d.seed).randbytes(n) == b"".join(d.chunks()) == b.bytes(n)
        if n < 300_000:
            assert b"".join(d.chunks(4)) == b"".join(d.chunks(1024)) == b"".join(d.chunks())
        assert a.uniform(0, 1) == b.uniform(0, 1)        # both draws advanced the generator alike
    with pytest.raises(ValueError):
        next(TaskRng(1).data(8).chunks(6))
    d = TaskRng([3, 1]).data(1_234_567)
    for take in (read_digest, read_exact):
        ue, ex = socket.socketpair()
        with ue, ex:
            sent = {}
            t = threading.Thread(target=lambda: sent.update(h0=send_stream(ue, [b"line\n"] + list(d.chunks()), 10)))
            t.start()
            conn = Conn(ex)
            assert read_line(conn, 100, 5) == b"line"
            got = take(conn, d.size, 10)
            t.join()
        data = b"".join(d.chunks())
        assert sent["h0"] == hashlib.sha256(b"line\n" + data).digest()
        assert got == (hashlib.sha256(data).digest() if take is read_digest else data)
    for take in (read_digest, read_exact):
        ue, ex = socket.socketpair()
        with ue, ex:
            conn = Conn(ex)
            conn.pending = b"12345"
            with pytest.raises(Refusal) as e:
                take(conn, 4, 1)
            assert e.value.code == "oversized"
            conn.pending = b"12"
            ue.sendall(b"3")
            ue.shutdown(socket.SHUT_WR)
            with pytest.raises(Refusal) as e:
                take(conn, 4, 1)
            assert e.value.code == "malformed"


def test_the_host_programs_http_exchange_is_urllibs():
    """chain.rpc.http_exchange (the JSON-RPC client's and the controller API client's HTTP) gets
    what urllib.request gets from a server: status and body with a Content-Length, chunked, an
    error status, a query; JsonRpc names a refusal, an error status and an unreachable node."""
    import http.server
    import threading
    import urllib.error
    import urllib.request
    from chain.rpc import JsonRpc, RpcError, RpcRefused, http_exchange

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (body[:3], body[3:], b""):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                return
            if self.path == "/rpc":
                call = json.loads(body)
                out = ({"result": "0x10"} if call["method"] == "ok" else {"error": {"code": -32000, "message": "no"}})
                data = json.dumps({"jsonrpc": "2.0", "id": call["id"], **out}).encode()
            else:
                data = json.dumps({"path": self.path, "got": len(body), "type": self.headers.get("Content-Type")}).encode()
            self.send_response(404 if self.path == "/missing" else 200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        do_GET = do_PUT = do_POST

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        for path, method, body in (("/x?a=1", "GET", None), ("/y", "POST", b'{"a": 1}'), ("/missing", "PUT", b"{}"),
                                   ("/chunked", "POST", b"hello world")):
            ours = http_exchange(url + path, method, body, {"Content-Type": "application/json"}, 5)
            req = urllib.request.Request(url + path, data=body, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    theirs = (r.status, r.read())
            except urllib.error.HTTPError as e:
                theirs = (e.code, e.read())
            assert ours == theirs, path
        assert JsonRpc(url + "/rpc", timeout_s=2)("ok") == "0x10"
        with pytest.raises(RpcRefused) as e:
            JsonRpc(url + "/rpc", timeout_s=2)("bad")
        assert e.value.error == {"code": -32000, "message": "no"}
        with pytest.raises(RpcError, match="HTTP Error 404"):
            JsonRpc(url + "/missing", timeout_s=2)("ok")
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(RpcError, match="refused"):
        JsonRpc(url, timeout_s=1)("ok")


def test_programs_on_the_hosts_do_not_load_numpy():
    """A UE client (twenty in a lab) and an executor draw, price and size their tasks without
    numpy (13 MB each, issue 21), with the same figures as the model's numpy functions, sign
    without cffi's C parser (keccak through ctypes) and call HTTP without urllib.request's
    http.client, email and ssl (chain.rpc.http_exchange); a cluster server's budget agent
    (nodes.server_agent) loads nothing heavy either."""
    import subprocess
    import sys
    code = ("import sys, json, nodes.ue_client, nodes.executor, nodes.server_agent\n"
            "from scenario.config import load_scenario\n"
            "from scenario import units\n"
            "from nodes.rng import TaskRng\n"
            "s = load_scenario('lab', ['model.demand_reading=\"per_mb\"'])\n"
            "cal = units.Calibration(**json.loads(sys.argv[1]))\n"
            "m = units.LiveMapping(s.model, s.lab.mining_cores, s.lab.host_cores, cal)\n"
            "r = TaskRng([s.seed, 1])\n"
            "t = units.chain_task(s.model, r.uniform(*s.model.data_mb_range), r.uniform(1, 2), 1.5)\n"
            "r.bytes(t.data_bytes)\n"
            "print(json.dumps([t.gcycles, m.kernel_iterations(t.gcycles), units.task_price_wei(s.model, t),\n"
            "                  sorted({n.split('.')[0] for n in sys.modules}\n"
            "                         & {'numpy', 'web3', 'torch', 'cffi', 'pycparser', 'ssl', 'email',\n"
            "                            'http', 'psutil'})]))\n")
    cal = _calibration()
    out = subprocess.run([sys.executable, "-c", code, json.dumps(dataclasses.asdict(cal))], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    gcycles, iterations, price, heavy = json.loads(out.stdout)
    assert heavy == []
    s = load_scenario("lab", ['model.demand_reading="per_mb"'])
    rng = np.random.default_rng([s.seed, 1])
    d, xi = rng.uniform(*s.model.data_mb_range), rng.uniform(1, 2)
    task = units.chain_task(s.model, d, xi, 1.5)
    assert gcycles == float(model.task_gcycles(s.model, task.data_mb, task.demand)) == task.gcycles
    assert iterations == units.LiveMapping(s.model, s.lab.mining_cores, s.lab.host_cores, cal).kernel_iterations(gcycles)
    assert price == units.task_price_wei(s.model, task)


@pytest.mark.parametrize("overrides, names", [
    (["lab.host_cores_by_server.mec3=0.04"], ("lab.host_cores_by_server.mec3", "lab.mining_cores")),
    (["lab.host_cores=0.2"], ("model.cpu_per_mhs", "lab.host_cores", "lab.mining_cores")),   # κ twice
    (["lab.host_cores_by_server.mec11=0.5"], ("lab.host_cores_by_server", "model.n_servers")),
])
def test_a_host_that_cannot_hold_its_miner_is_refused(overrides, names):
    """Checked when a lab starts, before anything is started (a scenario for the paper's
    figures alone may set any hash budget)."""
    from base.errors import ConfigError
    from testbed.lab import check_lab_cpu
    with pytest.raises(ConfigError) as e:
        check_lab_cpu(load_scenario("lab", overrides))
    assert all(n in str(e.value) for n in names), str(e.value)
    check_lab_cpu(load_scenario("lab", ["lab.host_cores_by_server.mec3=0.04", "lab.coupling=separate"]))
    check_lab_cpu(load_scenario("lab"))


# ---- issue 17: the mining term from the hash really done, and the chain as the paper's network
CURVE = [{"quota_cores": 0.04, "hashrate_hps": 5600.0}, {"quota_cores": 0.08, "hashrate_hps": 13100.0},
         {"quota_cores": 0.16, "hashrate_hps": 26200.0}, {"quota_cores": 0.3, "hashrate_hps": 51500.0}]


def test_a_server_of_a_cluster_maps_by_its_own_calibration_at_the_labs_exchange_rate(tmp_path):
    """Issue 22: a MEC server on another server of a cluster gets each level's quota from that
    server's hash curve (what the lab's reference miner hashes at its quota), the work kernel's
    iterations from its own clock, and the lab's one exchange rate X (so the chain's difficulty
    holds); the same measurements give the lab's very mapping. LabInfo hands each reader the
    mapping of the server a MEC runs on."""
    from scenario.runinfo import LabInfo
    scn = load_scenario("lab")
    cfg = scn.model
    ref_cal = _calibration(hashrate_points=CURVE)
    lab = LiveMapping(cfg, scn.lab.mining_cores, scn.lab.host_cores, ref_cal)
    assert lab.for_server(dataclasses.replace(ref_cal, date="2026-02-02T00:00:00+00:00")) is lab
    fast = dataclasses.replace(ref_cal, core_hz=1.5 * ref_cal.core_hz,     # twice the hashes per core,
                               hashrate_points=[{**p, "hashrate_hps": 2 * p["hashrate_hps"]} for p in CURVE])
    b = lab.for_server(fast)                                               # 1.5x the clock
    levels = np.asarray(cfg.hash_levels_mhs)
    assert np.all(b.miner_cores(levels) < lab.miner_cores(levels))
    assert fast.hashrate_at(b.miner_cores(levels)) == pytest.approx(lab.real_hashrate(levels))
    assert b.real_hashrate(levels) == pytest.approx(lab.real_hashrate(levels))
    flat = LiveMapping(cfg, scn.lab.mining_cores, scn.lab.host_cores, _calibration())   # proportional curves
    flat_b = flat.for_server(_calibration(hashrate_hps_per_core=4e5))
    assert flat_b.miner_cores(levels) == pytest.approx(flat.miner_cores(levels) / 2)
    assert b.hps_per_mhs == lab.hps_per_mhs
    assert b.difficulty(cfg.network_hash_mhs, cfg.slot_s) == lab.difficulty(cfg.network_hash_mhs, cfg.slot_s)
    assert b.iterations_per_gcycle == pytest.approx(1.5 * lab.iterations_per_gcycle)
    for p in levels:                      # p̂ from the CPU its miner uses at the level: p's own figure
        assert b.measured_hash_mhs(b.miner_cores(p)) == pytest.approx(lab.measured_hash_mhs(lab.miner_cores(p)))
    assert b.nominal_seconds(2.0) == lab.nominal_seconds(2.0)
    ref_cal.save(tmp_path / "calibration.json")
    fast.save(tmp_path / "calibration-b.json")
    info = LabInfo(run="r", chain_id=1, contract="0x0", deploy_block=0, gateway_url="", api_url="", executor_port=0,
                   scenario=scn.to_dict(), calibration="/elsewhere/calibration.json",
                   servers={f"mec{i}": None for i in range(1, cfg.n_servers + 1)},
                   calibrations={"mec2": "calibration-b.json"})
    maps = info.mappings(tmp_path)
    assert maps["mec2"].iterations_per_gcycle == pytest.approx(b.iterations_per_gcycle)
    assert maps["mec1"].iterations_per_gcycle == pytest.approx(lab.iterations_per_gcycle)
    assert maps["mec1"] is maps["mec3"] and maps["mec1"].reference is None


def test_measured_hash_is_the_models_hash_at_an_equal_split_and_follows_the_curve():
    cfg = load_scenario("lab").model                  # M = 10, P = 600: 60 MHash/s each
    m = LiveMapping(cfg, mining_cores=0.8, executor_cores=0.2, cal=_calibration(hashrate_points=CURVE))
    assert m.hps_per_mhs == pytest.approx(13100.0 / 60)        # X: the calibrated rate at P/M over P/M
    assert m.measured_hash_mhs(m.miner_cores(60.0)) == pytest.approx(60.0)
    # a miner given 0.04 cores hashes 5600 H/s: 25.6 MHash/s of the model, not the linear 30
    assert m.measured_hash_mhs(0.04) == pytest.approx(5600.0 / m.hps_per_mhs)
    assert m.measured_hash_mhs(0.0) == 0.0
    # the inverse of the curve: the CPU at which one miner hashes a given model MHash/s
    for mhs in (25.0, 60.0, 150.0, 400.0):
        assert m.measured_hash_mhs(m.outside_cores(mhs)) == pytest.approx(mhs)
    # the network of H finds one block per slot at this difficulty
    assert m.difficulty(1000.0, 10.0) == round(1000.0 * m.hps_per_mhs * 10.0)


def _plan(overrides, cores=2):
    from testbed.lab import plan_chain
    scn = load_scenario("lab", overrides)
    m = LiveMapping(scn.model, scn.lab.mining_cores, scn.lab.host_cores, _calibration(hashrate_points=CURVE))
    return plan_chain(scn, m, cores=cores), m, scn


def test_the_chain_plan_sets_one_block_race_per_slot():
    plan, m, scn = _plan([])
    assert plan["outside"] == "virtual" == scn.chain.outside
    assert plan["difficulty"] == m.difficulty(scn.model.network_hash_mhs, scn.model.slot_s)
    # the MEC servers' 600 of 1000 MHash/s find a block every slot_s x H / P
    assert plan["mec_block_interval_s"] == pytest.approx(scn.model.slot_s * 1000 / 600)
    plan, m, _ = _plan(["chain.outside=miner"])
    assert plan["outside_mhs"] == 400 and m.measured_hash_mhs(plan["outside_cores"]) == pytest.approx(400)
    plan, m, scn = _plan(["chain.outside=none", "lab.block_interval_s=3.0"])
    assert plan["difficulty"] == int(10 * float(m.real_hashrate(60.0)) * 3.0)


@pytest.mark.parametrize("overrides, cores, names", [
    (["chain.outside=miner"], 1, ("chain.outside", "cores", "lab.max_mining_share")),     # no room for it
    (["chain.outside=miner", "model.network_hash_mhs=600"], 2, ("model.network_hash_mhs", "model.hash_budget_mhs")),
    (["model.slot_s=1.2", "model.network_hash_mhs=600"], 2, ("model.network_hash_mhs x model.slot_s", "131,072")),
    (["chain.outside=none", "lab.block_interval_s=0.5"], 2, ("lab.block_interval_s", "131,072")),
    (["chain.outside=elsewhere"], 2, ("chain.outside",)),
    (["model.network_hash_mhs=500"], 2, ("model.network_hash_mhs", "hash_budget_mhs")),        # H below P
])
def test_a_chain_the_machine_cannot_give_is_refused_before_anything_starts(overrides, cores, names):
    with pytest.raises(ConfigError) as e:
        _plan(overrides, cores=cores)
    assert all(n in str(e.value) for n in names), str(e.value)


def test_compare_with_one_run_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"compare\.runs.*>= 2"):
        load_scenario("lab", ["compare.runs=1"])
    with pytest.raises(ConfigError, match=r"compare\.policies"):
        load_scenario("lab", ["compare.policies=['greedy', 'greedy']"])
    from testbed.experiments.compare import order
    assert order(3) == [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1)]      # A B B A A B


def test_one_eq11_for_the_simulator_the_live_lab_and_fidelity():
    """The same slot, the same actions, tasks, latencies and hash: the simulator's env, the live
    lab's measured terms and fidelity's replay give the same utility (11), server by server."""
    from agent.env import MecChainEnv
    from testbed.experiments import fidelity
    from testbed.live_env import measured_terms
    scn = load_scenario("lab")
    cfg = scn.model
    env = MecChainEnv(cfg)
    env.reset(seed=3)
    servers = [f"mec{i}" for i in range(1, cfg.n_servers + 1)]
    users = np.array([0, 1, 2, 3, 10, 5, 6, 7, 8, 9])
    levels = np.array([0, 4, 2, 2, 1, 3, 2, 2, 2, 2])
    data, demand = env.data_mb.copy(), env.demand.copy()
    _, reward, *_, info = env.step(np.stack([users, levels]))
    # what the live lab would measure for the same slot: each miner's CPU at exactly its level's
    # hash, each server paid φ_u of its UE, the execution times of eq. (2)
    p = np.asarray(cfg.hash_levels_mhs)[levels]
    mapping = LiveMapping(cfg, scn.lab.mining_cores, scn.lab.host_cores, _calibration(hashrate_points=CURVE))
    cores = [mapping.outside_cores(x) for x in p]
    served = users < cfg.n_users
    xi = np.where(served, demand[np.minimum(users, cfg.n_users - 1)], 0.0)
    d = np.where(served, data[np.minimum(users, cfg.n_users - 1)], 0.0)
    lat = np.where(served, model.execution_latency(model.task_gcycles(cfg, d, xi),
                                                   model.task_capacity(cfg.cpu_ghz, p, cfg.cpu_per_mhs)), 0.0)
    wei = [units.price_wei(units.token_to_wei(cfg.unit_price), int(round(x * 1e9))) for x in xi]
    live, hash_hat = measured_terms(cfg, [mapping] * cfg.n_servers, cores, wei, lat)
    assert hash_hat == pytest.approx(p)
    assert live.utility == pytest.approx(info["server_utility"], rel=1e-9, abs=1e-9)
    tasks = [{"mec": servers[i], "slot": 0, "demand": xi[i]} for i in range(cfg.n_servers) if served[i]]
    slot = {"slot": 0, "levels": {m: int(k) for m, k in zip(servers, levels)}}
    replay = fidelity.slot_utility(cfg, servers, [slot], tasks, lat[served])
    assert replay[0] == pytest.approx(reward, rel=1e-9)
    assert reward == pytest.approx(float(live.total), rel=1e-9)


def test_bench_lab_reads_its_figures_from_the_summary_and_judges_each_target():
    from testbed.experiments.bench_lab import extract
    summary = {"scenario": "lab", "scenario_digest": "d" * 64, "M": 10, "U": 20, "slots": 15, "slot_s": 10.0, "policy": "greedy",
               "bring_up": {"network": 8.0, "chain": 9.0, "bring_up_s": 31.5}, "teardown_s": 3.2,
               "lab_peak_memory_mib": 2900.0, "machine_peak_used_mib": 4100.0,
               "resources": {"miners": {"cores_mean": 0.588, "rss_mib_max": 820.0},
                             "controller": {"cores_mean": 0.016, "cores_max": 0.05, "rss_mib_max": 66.0}},
               "decision": {"slot_start_to_applied_s": {"n": 15, "p50": 0.02, "p95": 0.041, "p99": 0.05, "max": 0.06},
                            "decision_ms": {"n": 15, "p50": 1.0, "p99": 3.0}},
               "tasks": {"offered": 170, "completed": 160, "failed": 0, "refunded": 0},
               "lost": {"books_close": True}}
    b = extract(summary)
    assert b["scenario_digest"] == "d" * 64 and b["bring_up_s"] == 31.5 and b["bring_up_steps_s"] == {"network": 8.0, "chain": 9.0}
    assert b["memory_mib_by_part"] == {"miners": 820.0, "controller": 66.0}
    t = b["targets"]
    assert not t["bring_up_s"]["met"] and not t["lab_peak_memory_mib"]["met"]      # 31.5 > 30, 2900 > 1536
    assert t["applied_p95_s"]["met"] and t["teardown_s"]["met"]                    # 41 ms <= 50, 3.2 <= 5
    assert extract({**summary, "M": 3, "U": 3}).get("targets") is None              # no target at that scale


def test_the_lower_layers_import_nothing_above_them():
    """Issue 20's layers: ``base/`` imports no package of the project; ``agent/``, ``chain/``
    (the miners' library and the keys) and ``topologies/`` (the emulated network: topologies,
    links, container hosts, the network's owner) only ``base/`` and themselves (usable without
    the lab); ``contracts/`` only ``chain/``, ``base/`` and itself; ``scenario/`` (the Scenario,
    its units, ``lab.json``) only those; ``nodes/`` (the host programs) only those below it, and
    ``controller/`` (the os-ken apps) also the host programs' wire formats and work check
    (``nodes.wire``, ``nodes.work``), never ``testbed/``; ``nodes/`` never imports ``controller/``. Read from the
    source (every import statement, inside functions too), so a lazy import cannot hide an arrow."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    project = {"agent", "base", "chain", "contracts", "controller", "nodes", "scenario", "testbed", "topologies"}
    below = {"agent", "base", "chain", "contracts", "scenario", "topologies"}
    allowed = {"base": {"base"}, "agent": {"agent", "base"}, "chain": {"chain", "base"},
               "contracts": {"contracts", "chain", "base"}, "topologies": {"topologies", "base"},
               "scenario": below, "nodes": below | {"nodes"}, "controller": below | {"controller", "nodes"}}
    wrong = []
    for pkg, ok in allowed.items():
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in project and top not in ok:
                        wrong.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    assert not wrong, wrong


# Libraries a program pays for in memory or start-up time (torch ~500 MB, web3 ~60 MB, numpy
# 13 MB in the host programs...): an import inside a function that saves one of them is documented by this list.
HEAVY_LIBRARIES = {"torch", "matplotlib", "ray", "scipy", "web3", "eth_account", "eth_abi", "docker", "mininet",
                   "websockets", "os_ken", "eventlet", "gymnasium", "stable_baselines3", "numpy"}


def _module_file(root: Path, name: str):
    p = root.joinpath(*name.split("."))
    return p / "__init__.py" if (p / "__init__.py").exists() else p.with_suffix(".py") if p.with_suffix(".py").exists() else None


def _module_level_imports(root: Path, name: str) -> list[str]:
    """What importing ``name`` imports at once: its module-level import statements (in if/try
    blocks too) and its parent packages."""
    import ast
    f = _module_file(root, name)
    if f is None:
        return [name.rsplit(".", 1)[0]] if "." in name else []        # ``from pkg import attr``
    pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    out = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]

    def visit(stmts):
        for n in stmts:
            if isinstance(n, ast.Import):
                out.extend(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                mod = ".".join(pkg[:len(pkg) - n.level + 1] + [n.module or ""]).strip(".") if n.level else n.module
                out.extend([mod] + [f"{mod}.{a.name}" for a in n.names])
            elif isinstance(n, (ast.If, ast.Try, ast.With)):
                for block in (n.body, getattr(n, "orelse", []), getattr(n, "finalbody", []),
                              *[h.body for h in getattr(n, "handlers", [])]):
                    visit(block)
    visit(ast.parse(f.read_text()).body)
    return out


def test_imports_inside_functions_are_only_the_documented_ones():
    """Issue 20: an import inside a function is one of (1) a module whose import loads a library
    of HEAVY_LIBRARIES (worked out from the source, through the project's own modules), so that a
    program that does not use it does not pay for it; (2) a verb of the one CLI (testbed/cli.py:
    each verb loads its own experiment); (3) a line that says why with a ``# lazy:`` comment
    (the kernel process's size, eventlet's patching order). Any other belongs at the top."""
    import ast
    root = Path(__file__).resolve().parents[1]
    project = {"agent", "base", "chain", "contracts", "controller", "nodes", "scenario", "testbed", "topologies"}
    memo: dict[str, bool] = {}

    def heavy(name: str, seen=frozenset()) -> bool:
        top = name.split(".")[0]
        if top in HEAVY_LIBRARIES:
            return True
        if top not in project or name in seen:
            return False
        if name not in memo:
            memo[name] = any(heavy(d, seen | {name}) for d in _module_level_imports(root, name))
        return memo[name]

    undocumented = []
    for pkg in sorted(project):
        for path in sorted((root / pkg).rglob("*.py")):
            lines = path.read_text().split("\n")
            rel = path.relative_to(root).as_posix()
            for fn in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for n in ast.walk(fn):
                    if not isinstance(n, (ast.Import, ast.ImportFrom)) or rel == "testbed/cli.py" \
                            or "# lazy:" in lines[n.lineno - 1]:
                        continue
                    names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                             [n.module] + [f"{n.module}.{a.name}" for a in n.names])
                    if not any(heavy(x) for x in names):
                        undocumented.append(f"{rel}:{n.lineno}: {lines[n.lineno - 1].strip()}")
    assert heavy("agent.train") and heavy("contracts.binding") and not heavy("scenario.units")   # the rule's own check
    assert not sorted(set(undocumented)), sorted(set(undocumented))
