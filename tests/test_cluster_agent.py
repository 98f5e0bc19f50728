"""A server's budgets agent and the lab's cgroups there, as the orchestrator makes them
(:mod:`topologies.remote`, issue 22), with a server at ``localhost``: the same functions, run
here instead of over ssh (the ssh path itself runs in `make cluster-check`, between two
containers). Real processes, real cgroups read back from the kernel's files; the agent ends
when its stdin closes, also when the orchestrator holding it is killed; nothing is left."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from base.processes import ProcessError
from chain.cgroup import controller_dir
from nodes.server_agent import AgentClient
from testbed import leftovers
from topologies import remote
from topologies.cluster import ClusterError, leaks, snapshot
from topologies.config import ClusterConfig, ServerSpec

pytestmark = [pytest.mark.skipif(os.geteuid() != 0 or controller_dir() is None,
                                 reason="the lab's cgroups need root and a CPU controller"),
              pytest.mark.machine]      # the lab's cgroups, processes on a port

HERE = ServerSpec(name="here", address="127.0.0.1")
ROOT = Path(__file__).resolve().parents[1]


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster() -> ClusterConfig:
    return ClusterConfig(servers=[HERE], controller_address="192.0.2.1", agent_port=_free_port())


def _miner_settings(run: str, name: str) -> dict:
    return {"host_group": f"mec-lab/{run}/{name}", "host_cores": 1.0, "coupling": "shared",
            "period_us": 100_000, "server": HERE.name}


@pytest.fixture
def miner():
    """A process standing for a miner (sleep); killed after."""
    p = subprocess.Popen(["sleep", "120"])
    yield p
    p.kill()
    p.wait()


def test_the_groups_are_made_and_removed_on_a_server_and_the_snapshot_sees_them(miner):
    cluster, run = _cluster(), f"remote-test-{os.getpid()}"
    before = snapshot(HERE, cluster)
    groups = remote.make_groups(HERE, cluster, run, {"mec1": {"host_cores": 1.0, "executor_cores": 0.6,
                                                              "miner_pid": miner.pid}})
    try:
        assert groups == {"mec1": f"mec-lab/{run}/mec1/mec1-{miner.pid}"}
        root = controller_dir()
        assert str(miner.pid) in (root / groups["mec1"] / "cgroup.procs").read_text().split()
        quotas = remote.read_quotas(HERE, cluster, [groups["mec1"], f"mec-lab/{run}/mec1/executor"])
        assert quotas == {groups["mec1"]: (None, 100_000), f"mec-lab/{run}/mec1/executor": (60_000, 100_000)}
        left = leaks(before, snapshot(HERE, cluster))
        assert {f"mec-lab/{run}", f"mec-lab/{run}/mec1", f"mec-lab/{run}/mec1/executor",
                groups["mec1"]} <= set(left["cgroup"])
    finally:
        assert remote.remove_groups(HERE, cluster, run) == []
    assert miner.poll() is None                              # moved out, not killed
    assert "cgroup" not in leaks(before, snapshot(HERE, cluster))
    assert not (controller_dir() / "mec-lab" / run).exists()


def test_a_failed_cgroup_script_names_the_server_and_leaves_nothing():
    cluster, run = _cluster(), f"remote-bad-{os.getpid()}"
    before = snapshot(HERE, cluster)
    with pytest.raises(ClusterError, match=r"server here: making the lab's cgroups mec-lab/remote-bad-\d+ failed "
                                           r"\(exit 1\): ProcessLookupError"):
        remote.make_groups(HERE, cluster, run, {"mec1": {"host_cores": 1.0, "executor_cores": 1.0,
                                                         "miner_pid": 2 ** 22 + 1}})   # no such process
    assert "cgroup" not in leaks(before, snapshot(HERE, cluster))
    with pytest.raises(ValueError, match="a run's name"):
        remote.remove_groups(HERE, cluster, "../../cpu")


def test_the_agent_started_for_a_server_applies_budgets_and_ends_when_its_stdin_closes(tmp_path, miner):
    cluster, run = _cluster(), f"remote-agent-{os.getpid()}"
    before, here_before = snapshot(HERE, cluster), leftovers.snapshot()
    secrets = tmp_path / "secrets"
    secret = remote.write_secret(secrets, HERE.name)
    assert secrets.stat().st_mode & 0o777 == 0o700 and secret.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        remote.write_secret(secrets, HERE.name)               # never overwritten
    groups = remote.make_groups(HERE, cluster, run, {"mec1": {"host_cores": 1.0, "executor_cores": 1.0,
                                                              "miner_pid": miner.pid}})
    try:
        proc = remote.agent(HERE, cluster, {"mec1": _miner_settings(run, "mec1")}, secret, tmp_path / "agent.log")
        with proc, AgentClient(remote.agent_address(HERE, cluster), secret.read_text()) as client:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert b"--until-stdin-closes" in cmdline and secret.read_text().encode() not in cmdline
            answer = client.apply({"mec1": 0.3})
            assert answer["applied"]["mec1"]["group"] == f"mec1-{miner.pid}"
            assert remote.read_quotas(HERE, cluster, [groups["mec1"], f"mec-lab/{run}/mec1/executor"]) == {
                groups["mec1"]: (30_000, 100_000), f"mec-lab/{run}/mec1/executor": (70_000, 100_000)}
            client.close()
            proc.stop()                                      # closes its stdin: no signal
            assert proc.returncode == 0 and proc.log_tail(1) == "stopped", proc.log_tail()
    finally:
        assert remote.remove_groups(HERE, cluster, run) == []
    assert not leaks(before, snapshot(HERE, cluster))
    assert not leftovers.leaks(here_before, leftovers.snapshot())


def test_an_agent_refused_on_a_server_is_named_with_the_reason(tmp_path):
    cluster = _cluster()
    secret = remote.write_secret(tmp_path / "secrets", HERE.name)
    bad = {**_miner_settings("x", "mec1"), "host_group": "/sys/fs/cgroup/cpu"}
    with pytest.raises(ProcessError, match=r"server agent on here exited \(code 2\)(.|\n)*configuration refused: "
                                           r"miners.mec1.host_group"):
        remote.agent(HERE, cluster, {"mec1": bad}, secret, tmp_path / "agent.log").start()


# the orchestrator: starts the agent, says its pid, and waits to be killed
ORCHESTRATOR = """
import json, sys, time
from pathlib import Path
from topologies import remote
from topologies.config import ClusterConfig, ServerSpec
a = json.loads(sys.argv[1])
cluster = ClusterConfig(servers=[ServerSpec(name="here", address="127.0.0.1")], controller_address="192.0.2.1",
                        agent_port=a["port"])
proc = remote.agent(cluster.servers[0], cluster, a["miners"], Path(a["secret"]), Path(a["log"])).start()
print(proc.pid, flush=True)
time.sleep(600)
"""


def test_the_agent_ends_when_the_orchestrator_is_killed(tmp_path):
    cluster = _cluster()
    secret = remote.write_secret(tmp_path / "secrets", HERE.name)
    args = {"port": cluster.agent_port, "secret": str(secret), "log": str(tmp_path / "agent.log"),
            "miners": {"mec1": _miner_settings(f"remote-orch-{os.getpid()}", "mec1")}}
    orch = subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, json.dumps(args)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    agent_pid = None
    try:
        agent_pid = int(orch.stdout.readline())
        assert _running(agent_pid)
        os.kill(orch.pid, signal.SIGKILL)                    # no teardown: the pipe closes with it
        orch.wait()
        deadline = time.monotonic() + 5
        while _running(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(agent_pid), "the agent outlived its orchestrator"
        assert (tmp_path / "agent.log").read_text().splitlines()[-1] == "stopped"
    finally:
        orch.kill()
        orch.wait()
        if agent_pid is not None and _running(agent_pid):
            os.kill(agent_pid, signal.SIGKILL)              # a failed test leaves nothing either
    with socket.socket() as s:                               # its port is free again
        assert s.connect_ex(("127.0.0.1", cluster.agent_port)) != 0
