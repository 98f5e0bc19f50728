"""Shared fixtures: root/OVS/Docker checks, the leftover snapshot, a small running lab."""
import contextlib
import json
import os
import subprocess
import threading
import time

import pytest
from _pytest.nodeid import NodeId

from testbed import leftovers


#: Tests that change machine-wide state: OVS, Mininet and Docker (the network and docker marks)
#: and the ones marked ``machine`` (namespaces, veths, the lab's cgroups).
MACHINE_MARKS = ("network", "docker", "machine")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs pytest-xdist with two workers (``-n 2 --dist loadgroup``): every test
    that changes machine-wide state goes to one worker, one at a time in file order (the leftover
    checks compare namespaces, veths, bridges and cgroups before and after, and the labs share
    the OVS and Docker names); the tests that touch only their own processes, ports and files
    run beside them on the other worker. Without ``-n`` the mark does nothing. pytest-xdist
    hands out the groups largest first, one to each worker: the machine group goes to one
    worker, the next largest (``chain-geth``, test_chain_geth.py's one chain) to the other, and
    the single tests after them to whichever is free.

    Before the other hooks: the group mark. After them: pytest-xdist 3.8 names a test's group
    by appending ``@group`` to ``item._nodeid``, which pytest 9 no longer reads (the node id is
    ``item._id``), so ``--dist loadgroup`` would scatter the group; xdist's name is carried
    over (a no-op without xdist, or once xdist sets it itself)."""
    for item in items:
        if any(item.get_closest_marker(m) for m in MACHINE_MARKS):
            item.add_marker(pytest.mark.xdist_group("machine"))
    result = yield
    for item in items:
        named = getattr(item, "_nodeid", None)
        if isinstance(named, str) and "@" in named and named != item.nodeid:
            item._id = NodeId.parse(named)
    return result


@pytest.fixture(autouse=True)
def _beside_the_machine_tests(request):
    """Under xdist, a test beside the machine worker runs at nice 10 (its geth, anvil and
    torch children inherit it), so the live labs keep the CPU they were sized for."""
    beside = (os.environ.get("PYTEST_XDIST_WORKER") is not None
              and not any(request.node.get_closest_marker(m) for m in MACHINE_MARKS))
    if beside:
        os.setpriority(os.PRIO_PROCESS, 0, 10)
    yield
    if beside:
        os.setpriority(os.PRIO_PROCESS, 0, 0)           # root may raise it back


@pytest.fixture(scope="module")
def beside_cgroup():
    """For a module of geth nodes that runs beside the machine worker: a top-level cgroup of
    this pytest process's own (``mec-test-<pid>``, not the lab's ``mec-chain`` or ``mec-lab``
    that the machine tests' leftover checks compare) for the nodes' quotas to nest under,
    capped at one core and weighted as one, so that beside a live lab (sized for the machine
    less what nice-10 tests take: a node's nice counts only within its own cgroup) they take
    at most one of its two cores. After the module it must hold no node's group (each node
    removes its own, the last one this group too) and is gone."""
    from chain import cgroup
    top = cgroup.CpuQuota(f"mec-test-{os.getpid()}", parent=".")
    top.set(1.0)
    yield top.name
    left = [c.name for c in top.dir.iterdir() if c.is_dir()] if top.dir.is_dir() else []
    top.remove()
    assert not left, f"cgroups left behind under {top.dir}: {left}"


def _ok(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def network_ready():
    """Root, Open vSwitch and a Docker engine: `make setup` provides them. A missing part is
    a failure, not a skip: the README's test command installs and starts all of them."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    if not _ok(["ovs-vsctl", "--timeout=3", "show"]):
        problems.append("Open vSwitch not running")
    if not _ok(["/usr/bin/docker", "info"]):
        problems.append("no Docker engine")
    if problems:
        pytest.fail("network tests need `make setup` first: " + ", ".join(problems))


@pytest.fixture
def no_leftovers():
    """Yield; then assert nothing (namespaces, veths, bridges, containers, processes) leaked."""
    before = leftovers.snapshot()
    yield
    leaked = leftovers.leaks(before, leftovers.snapshot())
    assert not leaked, f"teardown left behind: {leaked}"


def passable(path):
    """``path``, made passable to every user (0711: entered by name, never listed) from
    pytest's root folder down: a lab's MEC hosts run their programs as their own uids
    (``lab.mec_uid_base``), which must reach their datadirs in the run folder, and pytest makes
    its temporary folders 0700 (it sets its root back to 0700 at the next session)."""
    import pathlib
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chain = [path, *path.parents]
    top = next((i for i, d in enumerate(chain) if d.name.startswith("pytest-of-")), None)
    for d in chain[:top + 1] if top is not None else []:      # nothing outside pytest's folders
        d.chmod(d.stat().st_mode | 0o111)
    return path


@contextlib.contextmanager
def running_lab(workdir, overrides: list[str], ues: tuple[str, ...]):
    """A lab of the ``lab`` scenario with ``overrides``, the UE clients ``ues`` started and
    registered; torn down after, and nothing may be left behind."""
    from scenario.config import load_scenario
    from testbed.lab import Lab
    from base.processes import log_ready

    before = leftovers.snapshot()
    passable(workdir.parent)
    lab = Lab(load_scenario("lab", overrides), workdir, start_ues=False)
    try:
        lab.start()
        for u in ues:
            lab.start_ue(u).wait_ready(log_ready("registered as"), 120, "registered")
        yield lab
    finally:
        lab.stop()
        leaked = leftovers.leaks(before, leftovers.snapshot())
        assert not leaked, f"teardown left behind: {leaked}"


def drive(lab, api, client, task_id, mec, task=None, slot=[1000]):
    """Run one task of ``client`` with the test as the policy: announce, assign to ``mec``."""
    box = {}
    th = threading.Thread(target=lambda: box.update(rec=client.run_task(task_id, task)), daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while client.name not in api.state()["pending"]:
        assert time.monotonic() < deadline, "the task was never announced"
        time.sleep(0.1)
    slot[0] += 1
    levels = {m: 2 for m in lab.info.servers}
    status, resp = api.call("PUT", "/assignment", {"slot": slot[0], "serve": {mec: client.name}, "levels": levels})
    assert status == 200, resp
    th.join(timeout=180)
    assert "rec" in box, "the task did not finish"
    return box["rec"]


def fault_free(argv: list[str]) -> list[str]:
    """An executor's command line without its fault-injection flags (``--dishonest``, ``--lazy``,
    ``--stall S``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--stall":
            skip = True
        elif a not in ("--dishonest", "--lazy"):
            out.append(a)
    return out


def served(lab, mec, ue="ue3"):
    """Tasks of ``ue`` that ``mec``'s executor served (the UE clients keep being served in the
    background by the controller's fallback policy)."""
    path = lab.run_dir / "lab" / "executors" / f"{mec}.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return sum(r.get("event") == "served" and r.get("ue_name") == ue for r in rows)


#: A small live lab with the full lab's hosts: 2 MEC servers, P = 2 x 60 MHash/s on 2 x 0.06 cores (κ as the lab's)
SMALL_LAB = ["model.n_servers=2", "model.hash_budget_mhs=120", "lab.mining_cores=0.12"]


def chain_overrides(overrides: list[str], outside: str, *, interval_s: float = 2.0,
                    network_over_budget: float = 5 / 3) -> list[str]:
    """``overrides`` plus the chain of a small test lab, fitted to this machine's calibration
    (the lab refuses a chain its miners cannot make): ``outside = "none"``: the MEC servers'
    own chain at the shortest interval ethash's minimum difficulty allows, at least
    ``interval_s``; ``"virtual"``: H = ``network_over_budget`` x P (the paper's 0.6 of the
    network), raised until the difficulty reaches ethash's minimum on this machine."""
    from chain.config import MIN_DIFFICULTY
    from scenario.config import load_scenario
    from scenario.units import Calibration, LiveMapping
    scn = load_scenario("lab", overrides)
    m = LiveMapping(scn.model, scn.lab.mining_cores, scn.lab.host_cores,
                    Calibration.load(scn.path(scn.lab.calibration)))
    if outside == "none":
        hps = float(m.real_hashrate(scn.model.hash_levels_mhs[scn.model.equal_hash_level])) * scn.model.n_servers
        return overrides + ["chain.outside=none", f"lab.block_interval_s={max(interval_s, 1.2 * MIN_DIFFICULTY / hps):.2f}"]
    h = max(network_over_budget * scn.model.hash_budget_mhs,
            1.2 * MIN_DIFFICULTY / (m.hps_per_mhs * scn.model.slot_s))
    return overrides + [f"chain.outside={outside}", f"model.network_hash_mhs={h:.1f}"]
