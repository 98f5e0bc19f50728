"""The one process owner: start, ready-check, stop, kill, log tail, on this host and inside a
Docker container; and the leak check that counts what this run started and nothing else."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from testbed import leftovers
from topologies.docker_host import CONTAINER_LABEL, OWNER_LABEL
from topologies.images import UE_IMAGE
from base.processes import (ManagedProcess, ProcessError, ProcessGroup, in_container, local,
                               log_ready, started_pids, tcp_ready)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_with_yields_a_started_process_and_always_stops_it(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ManagedProcess("sleeper", ["sleep", "60"], tmp_path / "s.log") as p:
            assert p.alive and p.pid in started_pids()
            pid = p.pid
            raise RuntimeError("boom")
    assert _gone(pid) and not p.alive and pid not in started_pids()


def test_a_process_that_dies_before_ready_is_reported_with_its_log(tmp_path):
    p = ManagedProcess("bad server", [sys.executable, "-c", "print('cannot bind'); raise SystemExit(3)"],
                       tmp_path / "bad.log", ready=tcp_ready("127.0.0.1", 1), ready_timeout_s=10)
    with pytest.raises(ProcessError, match=r"bad server exited \(code 3\).*\n.*cannot bind"):
        p.start()
    assert not p.alive


def test_ready_check_on_the_log_and_a_timeout(tmp_path):
    code = "import time; time.sleep(0.3); print('READY', flush=True); time.sleep(60)"
    with ManagedProcess("slow", [sys.executable, "-c", code], tmp_path / "slow.log",
                        ready=log_ready(r"READY")) as p:
        assert "READY" in p.log_tail()
    never = ManagedProcess("never", ["sleep", "60"], tmp_path / "never.log",
                           ready=log_ready("nope"), ready_timeout_s=0.5)
    with pytest.raises(ProcessError, match="never not ready after"):
        never.start()
    assert not never.alive


def test_a_process_that_got_there_and_then_ended_between_two_polls_is_done(tmp_path):
    """A short job (the calibration's kernel) prints its result and exits within one poll:
    its log says done, so waiting for that is not an error; a job that ended without
    writing it still is."""
    with ManagedProcess("quick", [sys.executable, "-c", "print('WALL 1.5', flush=True)"],
                        tmp_path / "quick.log") as p:
        p.handle.wait(10)                       # ended before the first poll
        p.wait_ready(log_ready("WALL"), 5, "done")
        with pytest.raises(ProcessError, match=r"quick exited \(code 0\) before it was finished"):
            p.wait_ready(log_ready("NEVER"), 5, "finished")


def test_the_calibrations_result_line_is_read_only_once_whole(tmp_path):
    """An unbuffered child (PYTHONUNBUFFERED=1) writes ``print('WALL', x)`` in pieces; throttled
    by its CPU quota between them, a check for "WALL" alone saw the line half-written and the
    parse failed (make calibrate on a CI machine). The calibration waits for the whole line."""
    from testbed.experiments.calibrate import wall_seconds
    code = ("import sys, time\n"
            "sys.stdout.write('WALL'); sys.stdout.flush(); time.sleep(1.0)\n"
            "sys.stdout.write(' 2.5\\n'); sys.stdout.flush(); time.sleep(30)\n")
    with ManagedProcess("halves", [sys.executable, "-c", code], tmp_path / "halves.log") as p:
        p.wait_ready(log_ready("WALL"), 5, "started")     # the first half is in the log
        assert p.log_path.read_text() == "WALL"
        assert wall_seconds(p, 5) == 2.5


def test_stop_escalates_to_sigkill_and_kill_is_immediate(tmp_path):
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)"]
    p = ManagedProcess("stubborn", stubborn, tmp_path / "st.log", ready=log_ready("up"), grace_s=0.5).start()
    t0 = time.monotonic()
    p.stop()
    assert not p.alive and time.monotonic() - t0 < 5
    q = ManagedProcess("victim", ["sleep", "60"], tmp_path / "v.log").start()
    q.kill()
    assert not q.alive and q.returncode == -signal.SIGKILL


def test_group_stops_everything_in_reverse_order(tmp_path):
    order = tmp_path / "order"
    code = ("import signal, sys, time\n"
            "def bye(*_):\n"
            f"    open({str(order)!r}, 'a').write(sys.argv[1] + ' ' + repr(time.monotonic()) + '\\n'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\nprint('up', flush=True)\ntime.sleep(60)\n")
    with ProcessGroup() as g:
        procs = [g.start(ManagedProcess(f"p{i}", [sys.executable, "-c", code, f"p{i}"],
                                        tmp_path / f"p{i}.log", ready=log_ready("up"))) for i in range(3)]
    assert all(not p.alive for p in procs)
    assert sorted(line.split()[0] for line in order.read_text().splitlines()) == ["p0", "p1", "p2"]


@pytest.fixture
def container(network_ready):
    import docker
    client = docker.from_env()
    c = client.containers.run(UE_IMAGE, command=["sleep", "infinity"], detach=True, network_mode="none",
                              init=True, labels={CONTAINER_LABEL: "1", OWNER_LABEL: str(os.getpid())},
                              name=f"mn.proctest{os.getpid()}")
    try:
        yield c
    finally:
        c.remove(force=True)


@pytest.mark.docker
def test_a_process_inside_a_container_is_owned_like_any_other(container, tmp_path):
    launcher = in_container(container.name, log_inside="/tmp/inside.log")
    code = "import os, time; print('in', os.getpid(), open('/proc/self/cgroup').read()[:200], flush=True); time.sleep(60)"
    with ManagedProcess("inside", ["python3", "-c", code], tmp_path / "unused.log", launcher=launcher) as p:
        host_pid = p.pid
        assert p.alive and psutil.Process(host_pid).cmdline()[:2] == ["python3", "-c"]
        # in the container's cgroup, not ours
        assert container.id in open(f"/proc/{host_pid}/cgroup").read()
        time.sleep(0.3)
        out = container.exec_run(["cat", "/tmp/inside.log"]).output.decode()
        assert out.startswith("in ")
    assert _gone(host_pid) and not p.alive


def _user_anvil():
    """A process the lab did not start: detached (setsid -f), so it is not our descendant."""
    from chain.anvil import ANVIL
    subprocess.run(["setsid", "-f", str(ANVIL), "--port", "0", "--host", "127.0.0.1"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    for _ in range(50):
        mine = [p for p in psutil.process_iter(["pid", "cmdline", "ppid"])
                if p.info["cmdline"] and p.info["cmdline"][0] == str(ANVIL) and "0" in p.info["cmdline"]
                and p.pid not in {c.pid for c in psutil.Process().children(recursive=True)}]
        if mine:
            return mine[0]
        time.sleep(0.1)
    raise RuntimeError("the stand-in for a user's anvil did not start")


@pytest.mark.chain
@pytest.mark.machine                 # the snapshot compares namespaces, veths and bridges machine-wide
def test_leak_check_ignores_a_users_own_node_and_catches_ours(tmp_path):
    from chain.anvil import AnvilNode
    before = leftovers.snapshot()
    user = _user_anvil()             # starts while "our run" is going on
    try:
        with AnvilNode(accounts=1):
            pass
        assert leftovers.leaks(before, leftovers.snapshot()) == {}
        leaked = ManagedProcess("forgotten", ["sleep", "60"], tmp_path / "f.log").start()
        try:
            found = leftovers.leaks(before, leftovers.snapshot())
            assert list(found) == ["processes"] and f"{leaked.pid} forgotten" in found["processes"]
        finally:
            leaked.stop()
        assert leftovers.leaks(before, leftovers.snapshot()) == {}
    finally:
        user.kill()
    assert local().where == "local"


def _ended(pid: int) -> bool:
    """``pid`` has exited (gone, or a zombie not yet reaped): it may go between two looks."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_program_in_a_remote_host_ends_with_its_lifeline(tmp_path):
    """in_remote_host's wrapper (here without ssh: a host whose shell is this process, an empty
    ssh command): the program's pid there is in its log; stop() sends SIGTERM through the
    lifeline and the program takes the time it needs (past the wrapper's own grace); an
    orchestrator killed outright (SIGKILL to the handle) ends it too, after the wrapper's grace
    (SIGTERM ignored here, so SIGKILL)."""
    import types

    from base.processes import in_remote_host, remote_pid
    host = types.SimpleNamespace(name="h1", server="here", pid=os.getpid(), sshcmd=[])
    p = ManagedProcess("sleeper", ["sleep", "300"], tmp_path / "a.log", launcher=in_remote_host(host), grace_s=5)
    p.start()
    pid = remote_pid(p)
    assert pid != p.pid and psutil.Process(pid).cmdline() == ["sleep", "300"]
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 2, "the wrapper outlived its program (a watcher holding its output?)"
    assert _ended(pid)
    # a program that needs 3 s after SIGTERM (an executor redeeming): it gets them, and its exit code
    # (it says when its trap is set: a SIGTERM before that ends a shell with 143, as on a slow CI machine)
    slow = ManagedProcess("slow", ["sh", "-c", "trap 'sleep 3; exit 7' TERM; echo trap set; while :; do sleep 0.1; done"],
                          tmp_path / "c.log", launcher=in_remote_host(host, grace_s=1), grace_s=20)
    slow.start()
    remote_pid(slow)
    slow.wait_ready(log_ready("trap set"), 10, "trapping SIGTERM")
    t0 = time.monotonic()
    slow.stop()
    assert slow.returncode == 7 and 2.5 < time.monotonic() - t0 < 15
    stubborn = ManagedProcess("stubborn", [sys.executable, "-c", "import signal, time; signal.signal("
                              "signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"], tmp_path / "b.log",
                              launcher=in_remote_host(host, grace_s=1), grace_s=5)
    stubborn.start()
    pid = remote_pid(stubborn)
    os.killpg(stubborn.pid, signal.SIGKILL)        # the local end (the ssh client) dies
    deadline = time.monotonic() + 10
    while not _ended(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ended(pid)
    stubborn.stop()
