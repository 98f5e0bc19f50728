"""The server agent (issue 22: hash budgets on a remote server) with its real parts: the agent as
a real process (``python -m nodes.server_agent``), real cgroups of the lab's tree made as the lab
makes them, quotas read back from the kernel's files, a network namespace as the remote server;
every refusal from an attacker's position changes nothing, and nothing is left after."""
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from chain.cgroup import MIN_QUOTA_US, controller_dir, read_quota
from nodes.server_agent import MAX_CONNECTIONS, MAX_LINE, AgentClient, AgentError, _mac, frame, new_secret
from testbed import leftovers
from testbed.experiments.bench_server_agent import agent_config, agent_process, bench, lab_groups, netns

pytestmark = [pytest.mark.skipif(os.geteuid() != 0 or controller_dir() is None,
                                 reason="cgroups and namespaces need root and a CPU controller"),
              pytest.mark.machine]      # namespaces, veths and the lab's cgroups

HOST = 1.0          # each MEC host's cores
PERIOD = 100_000


def _quota(group) -> float | None:
    q, period = read_quota(group)
    return None if q is None else q / period


@pytest.fixture
def agent(tmp_path):
    """Two MEC hosts' groups (mec1, mec2) and a third configured whose miner is gone (mec3); the
    agent for them on loopback. Yields (client, secret, {name: miner group}, process, address);
    after: the agent stopped by SIGTERM, the groups removed, nothing left."""
    before = leftovers.snapshot()
    run = f"agent-test-{os.getpid()}"
    secret = new_secret()
    with lab_groups(run, ["mec1", "mec2"], HOST) as groups:
        cfg = agent_config(run, ["mec1", "mec2", "mec3"], secret, HOST, PERIOD)
        with agent_process(cfg, tmp_path) as (proc, address), AgentClient(address, secret) as client:
            assert not (tmp_path / "agent-config.json").exists()       # the secret is not left at rest
            yield client, secret, groups, proc, address
            client.close()
            proc.stop()
            assert proc.returncode == 0 and proc.log_tail().endswith("stopped"), proc.log_tail()
            host, port = address.rsplit(":", 1)
            with socket.socket() as s:                                 # its port is closed
                assert s.connect_ex((host, int(port))) != 0
    leaked = leftovers.leaks(before, leftovers.snapshot())
    assert not leaked, f"left behind: {leaked}"


def test_the_agent_writes_each_miners_quota_and_its_hosts_kernels(agent):
    client, _, groups, _, _ = agent
    t0 = time.time()
    answer = client.apply({"mec1": 0.3, "mec2": 0.0, "mec3": 0.5})
    assert answer["applied"] == {
        "mec1": {"group": groups["mec1"].name, "miner_cores": 0.3, "executor_cores": pytest.approx(0.7)},
        "mec2": {"group": groups["mec2"].name, "miner_cores": 0.0, "executor_cores": 1.0}}
    assert answer["not_applied"] == {"mec3": "its miner's cgroup is gone"}
    assert t0 <= answer["at"] <= time.time()                             # when, on the agent's clock
    assert _quota(groups["mec1"]) == 0.3 and _quota(groups["mec1"].parent / "executor") == pytest.approx(0.7)
    assert _quota(groups["mec2"]) == MIN_QUOTA_US / PERIOD                # level 0: the kernel's minimum
    assert _quota(groups["mec2"].parent / "executor") == 1.0
    assert (groups["mec1"] / "cpu.shares").read_text().strip() == str(round(1024 * 0.3))
    seconds = client.cpu_seconds()
    assert set(seconds) == {"mec1", "mec2"} and all(s == 0 for s in seconds.values())


def _raw(address: str, data: bytes) -> list[dict | bytes]:
    """Send raw bytes as an attacker would; every answer line (parsed without checking its MAC)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return [json.loads(line.split(b" ", 1)[1]) for line in out.splitlines()]


def test_every_refusal_is_named_and_changes_nothing(agent):
    client, secret, groups, proc, address = agent
    client.apply({"mec1": 0.25, "mec2": 0.5})
    key = bytes.fromhex(secret)
    in_force = {g: _quota(g) for g in (groups["mec1"], groups["mec2"], groups["mec1"].parent / "executor")}

    def signed(msg, k=key, kind=b"request"):
        return frame(k, kind, msg)

    def raw(body: bytes) -> bytes:               # signed with the right secret, any bytes
        return _mac(key, b"request", body).encode() + b" " + body + b"\n"

    def req(budgets, **kw):
        return {"op": "apply", "seq": time.time_ns(), "budgets": budgets, **kw}

    cases = [                                    # each made when sent (a fresh seq)
        ("bad_signature", lambda: signed(req({"mec1": 0.75}), k=os.urandom(32))),              # wrong secret
        ("bad_signature", lambda: signed(req({"mec1": 0.75})).replace(b"0.75", b"0.95")),    # body altered
        ("bad_signature", lambda: signed({"ok": True, "seq": time.time_ns()}, kind=b"reply")),  # an answer reflected
        ("malformed", lambda: b"no mac here\n"),
        ("malformed", lambda: raw(b"not json")),
        ("malformed", lambda: raw(b'{"op":"apply","seq":%d,"budgets":{"mec1":NaN}}' % time.time_ns())),
        ("malformed", lambda: signed(req({"mec1": 0.1}, group="../../../../tmp"))),       # a path: no such field
        ("malformed", lambda: signed({"op": "write", "seq": time.time_ns(), "path": "/etc/passwd", "value": "0"})),
        ("malformed", lambda: signed(req({"mec1": 0.1}) | {"seq": "1"})),
        ("malformed", lambda: signed(req({"mec1": 0.1}) | {"seq": 10 ** 400})),
        ("malformed", lambda: raw(b'{"op":"apply","seq":%d,"budgets":%s}' % (time.time_ns(), b"[" * 5000 + b"]" * 5000))),
        ("unknown_miner", lambda: signed(req({"../../something": 0.1}))),                # a foreign cgroup
        ("unknown_miner", lambda: signed(req({"mec1": 0.1, "mec9": 0.1}))),              # one of two unknown
        ("out_of_range", lambda: signed(req({"mec1": 0.1, "mec2": 5.0}))),               # above its host's cores
        ("out_of_range", lambda: signed(req({"mec1": -0.1}))),
        ("out_of_range", lambda: signed(req({"mec1": True}))),
        ("out_of_range", lambda: signed(req({"mec1": "0.5"}))),
        ("stale", lambda: signed(req({"mec1": 0.1}) | {"seq": time.time_ns() + 120 * 10 ** 9})),  # held for later
    ]
    for reason, make in cases:
        [answer] = _raw(address, make())
        assert answer["ok"] is False and answer["refused"] == reason, (reason, make()[:120], answer)
    assert {g: _quota(g) for g in in_force} == in_force           # nothing changed
    # a request captured on the wire, delivered: the same bytes once more are a replay
    captured = signed(req({"mec1": 0.75}))
    assert _raw(address, captured)[0]["ok"] is True and _quota(groups["mec1"]) == 0.75
    client.apply({"mec1": 0.25, "mec2": 0.5})                     # what was in force before
    assert _raw(address, captured)[0]["refused"] == "replay"
    # a line longer than MAX_LINE: refused, and the rest of the connection with it
    huge = b"0" * 64 + b" " + b"x" * (MAX_LINE + 100)
    answers = _raw(address, huge + b"\n" + signed(req({"mec1": 0.75})))
    assert [a["refused"] for a in answers] == ["too_large"]
    assert {g: _quota(g) for g in in_force} == in_force           # nothing changed
    # the client names the agent's reason; a valid request still goes through
    with pytest.raises(AgentError) as e:
        client.apply({"mec9": 0.1})
    assert e.value.reason == "unknown_miner"
    with pytest.raises(AgentError, match="not signed"):          # a client with another run's secret
        AgentClient(address, new_secret()).apply({"mec1": 0.1})
    assert client.apply({"mec1": 0.5})["applied"]["mec1"]["miner_cores"] == 0.5
    assert _quota(groups["mec1"]) == 0.5 and proc.alive
    assert "refused bad_signature" in proc.log_path.read_text()


def test_idle_connections_cannot_lock_the_controller_out(agent):
    """An attacker without the secret fills every connection slot: the oldest connection that
    never sent a signed request makes room for a new one; the controller's stays."""
    client, secret, groups, proc, address = agent
    client.apply({"mec1": 0.25})                      # the controller's connection, trusted
    host, port = address.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(2 * MAX_CONNECTIONS)]
    try:
        idle[-1].sendall(b"0" * 100)                  # one trickling, never finishing a line
        with AgentClient(address, secret) as other:    # a new connection of the run gets in
            assert other.apply({"mec2": 0.5})["applied"]["mec2"]["miner_cores"] == 0.5
        assert client.apply({"mec1": 0.75})["applied"]["mec1"]["miner_cores"] == 0.75
        assert _quota(groups["mec1"]) == 0.75 and _quota(groups["mec2"]) == 0.5
    finally:
        for s in idle:
            s.close()
    assert proc.alive


@pytest.mark.parametrize("change, named", [
    ({"host_group": "../../../etc"}, "host_group"),
    ({"host_group": "system.slice/ssh.service"}, "host_group"),
    ({"host_group": "mec-lab/../../x"}, "host_group"),
    ({"host_cores": 0}, "host_cores"),
    ({"period_us": 500}, "period_us"),
    ({"coupling": "both"}, "coupling"),
])
def test_a_configuration_outside_the_labs_tree_is_refused_by_field(tmp_path, change, named):
    cfg = agent_config("r", ["mec1"], new_secret())
    cfg["miners"]["mec1"].update(change)
    out = subprocess.run([sys.executable, "-m", "nodes.server_agent", "--listen", "127.0.0.1", "--port", "0",
                          "--config", "-"], input=json.dumps(cfg), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f"miners.mec1.{named}" in out.stderr, out.stderr


def test_a_configuration_others_can_read_or_a_short_secret_is_refused(tmp_path):
    conf = tmp_path / "agent.json"
    conf.write_text(json.dumps(agent_config("r", ["mec1"], new_secret())))
    conf.chmod(0o644)
    argv = [sys.executable, "-m", "nodes.server_agent", "--listen", "127.0.0.1", "--port", "0", "--config"]
    out = subprocess.run(argv + [str(conf)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "chmod 600" in out.stderr, out.stderr
    out = subprocess.run(argv + ["-"], input=json.dumps(agent_config("r", ["mec1"], "ab" * 8)),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "secret" in out.stderr, out.stderr


def test_the_controllers_budgets_go_through_the_agent_for_a_miner_on_another_server(tmp_path):
    """controller.budgets' BudgetApplier: mec1 on this machine (written here), mec2 on server
    "b" (an agent in a network namespace of its own): one assignment sets both, through the one
    writer, each at its own server's quota for the level (mec2's by server b's calibration); the
    CPU times come from both; an agent gone loses nothing (the quota stays)."""
    from controller.budgets import BudgetApplier
    from controller.state import Assignment

    class Log(logging.Logger):
        def __init__(self):
            super().__init__("test")
            self.lines = []

        def warning(self, fmt, *args, **kw):
            self.lines.append(fmt % args)

    before = leftovers.snapshot()
    run = f"agent-ctl-{os.getpid()}"
    secret = new_secret()
    levels = [0.0, 0.2, 0.4]
    miners = {m: {"host_group": f"mec-lab/{run}/{m}", "period_us": PERIOD, "host_cores": HOST, "coupling": "shared"}
              for m in ("mec1", "mec2")}
    miners["mec2"].update(server="b", levels_cores=[0.0, 0.15, 0.3])   # b hashes more per core
    ns = f"mec-agentt-{os.getpid()}"
    with lab_groups(run, ["mec1", "mec2"], HOST) as groups, netns(ns) as (_, there):
        with agent_process(agent_config(run, ["mec2"], secret, HOST, PERIOD), tmp_path, listen=there, ns=ns) \
                as (proc, address), AgentClient(address, secret) as client:
            log = Log()
            app = BudgetApplier(miners, levels, log, agents={"b": client})
            t0 = time.time()
            got = app.apply(Assignment(slot=1, serve={}, levels={"mec1": 1, "mec2": 2}, decided_at=t0))
            assert got["budgets"] - t0 < 0.3 and got["budgets_cores"] == {"mec1": 0.2, "mec2": 0.3}, got
            assert _quota(groups["mec1"]) == 0.2 and _quota(groups["mec2"]) == 0.3
            assert _quota(groups["mec2"].parent / "executor") == pytest.approx(HOST - 0.3) and not log.lines
            assert set(app.cpu_seconds()["seconds"]) == {"mec1", "mec2"}
            proc.stop()                                   # the agent gone: mec2's quota stays, said by name
            got = app.apply(Assignment(slot=2, serve={}, levels={"mec1": 2, "mec2": 1}, decided_at=time.time()))
            assert got["budgets_cores"] == {"mec1": 0.4, "mec2": 0.3}
            assert _quota(groups["mec1"]) == 0.4 and _quota(groups["mec2"]) == 0.3
            assert len(log.lines) == 1 and "mec2 not applied on server b" in log.lines[0], log.lines
            assert set(app.cpu_seconds()["seconds"]) == {"mec1"}
    leaked = leftovers.leaks(before, leftovers.snapshot())
    assert not leaked, f"left behind: {leaked}"


def test_an_unchanged_budget_is_not_written_again_but_a_restarted_miners_new_group_is(monkeypatch):
    """controller.budgets writes a miner's quota when its level or its group (a restarted miner
    has a new one) changed since it last wrote it, not every slot (change 8 of
    docs/performance.md): counted by the writer's calls, checked in the kernel's files."""
    import controller.budgets as budgets
    from chain.cgroup import CpuQuota
    from controller.state import Assignment

    calls = []
    real = budgets.write_budget
    monkeypatch.setattr(budgets, "write_budget", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    before = leftovers.snapshot()
    run = f"agent-skip-{os.getpid()}"
    miners = {m: {"host_group": f"mec-lab/{run}/{m}", "period_us": PERIOD, "host_cores": HOST, "coupling": "shared"}
              for m in ("mec1", "mec2")}
    with lab_groups(run, ["mec1", "mec2"], HOST) as groups:
        app = budgets.BudgetApplier(miners, [0.0, 0.2, 0.4], logging.getLogger("test"))

        def apply(slot, levels):
            return app.apply(Assignment(slot=slot, serve={}, levels=levels, decided_at=time.time()))

        apply(1, {"mec1": 1, "mec2": 1})
        apply(2, {"mec1": 1, "mec2": 2})
        assert calls == ["mec1", "mec2", "mec2"]
        assert _quota(groups["mec1"]) == 0.2 and _quota(groups["mec2"]) == 0.4
        time.sleep(0.05)                           # the newest group by its time of creation
        restarted = CpuQuota(f"mec1-{os.getpid() + 1}", parent=miners["mec1"]["host_group"])
        try:
            restarted.set(1.0)
            got = apply(3, {"mec1": 1, "mec2": 2})
            assert calls[3:] == ["mec1"] and _quota(restarted.dir) == 0.2, calls
            assert got["budgets_cores"] == {"mec1": 0.2, "mec2": 0.4}
        finally:
            restarted.remove()
    leaked = leftovers.leaks(before, leftovers.snapshot())
    assert not leaked, f"left behind: {leaked}"

def test_the_benchmark_meets_the_target_in_a_namespace_and_leaves_nothing(tmp_path):
    before = leftovers.snapshot()
    rep = bench(writes=50, miners=2, in_netns=True, log_dir=tmp_path, host_cores=0.5)
    assert rep["read_back_ok"] and rep["target"]["met"], rep
    assert set(rep["round_trip_ms"]) == {"p50", "p95", "p99", "max"}
    assert not leftovers.leaks(before, leftovers.snapshot())


def test_the_controller_process_applies_a_remote_miners_budget_through_its_agent(tmp_path):
    """``python -m controller`` with the lab's apps: mec1 on this machine, mec2 on server "b"
    (its agent in a namespace, the run's secret in a file of the controller's settings); one
    ``PUT /assignment`` writes both through the one writer, applied within the 300-ms target."""
    from eth_account import Account

    from nodes.api_client import ApiClient
    from test_controller_api import TOKEN, _free_port, start_controller, write_settings

    before = leftovers.snapshot()
    run = f"agent-api-{os.getpid()}"
    secret = new_secret()
    (tmp_path / "agent-b.secret").write_text(secret)
    (tmp_path / "agent-b.secret").chmod(0o600)
    ns = f"mec-agentc-{os.getpid()}"
    with lab_groups(run, ["mec1", "mec2"], HOST) as groups, netns(ns) as (_, there), \
            agent_process(agent_config(run, ["mec2"], secret, HOST, PERIOD), tmp_path, listen=there, ns=ns) \
            as (agent_proc, address):
        port = _free_port()
        miners = {m: {"host_group": f"mec-lab/{run}/{m}", "period_us": PERIOD, "host_cores": HOST,
                      "coupling": "shared"} for m in ("mec1", "mec2")}
        miners["mec2"]["server"] = "b"
        write_settings(tmp_path, {n: Account.create() for n in ("mec1", "mec2", "ue1", "ue2")}, port, miners,
                       {"b": {"address": address, "secret_file": str(tmp_path / "agent-b.secret")}})
        operator = ApiClient(f"http://127.0.0.1:{port}", TOKEN, timeout_s=5.0)
        proc, _ = start_controller(tmp_path, 1, operator)
        try:
            for slot, levels in enumerate(({"mec1": 1, "mec2": 0}, {"mec1": 0, "mec2": 1})):
                got = operator.request("PUT", "/assignment", {"slot": slot, "serve": {}, "levels": levels})
                assert got["applied"]["budgets_applied_s"] < 0.3, got
                assert operator.state()["miners"]["budgets_cores"] == {m: [0.1, 0.2][k] for m, k in levels.items()}
                for m, k in levels.items():
                    assert _quota(groups[m]) == [0.1, 0.2][k]
                    assert _quota(groups[m].parent / "executor") == pytest.approx(HOST - [0.1, 0.2][k])
        finally:
            proc.terminate()
            proc.wait(10)
        assert "refused" not in agent_proc.log_path.read_text()
    log = (tmp_path / "controller-1.log").read_text()
    assert "not applied" not in log and "Traceback" not in log, log
    leaked = leftovers.leaks(before, leftovers.snapshot())
    assert not leaked, f"left behind: {leaked}"
