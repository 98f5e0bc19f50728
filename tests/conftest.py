"""Shared fixtures: root/OVS/Docker checks, the leftover snapshot, a small running lab."""
import contextlib
import os
import subprocess

import pytest

from testbed import leftovers


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


@contextlib.contextmanager
def running_lab(workdir, overrides: list[str], ues: tuple[str, ...]):
    """A lab of the ``lab`` scenario with ``overrides``, the UE clients ``ues`` started and
    registered; torn down after, and nothing may be left behind."""
    from testbed.config import load_scenario
    from testbed.lab import Lab
    from testbed.processes import log_ready

    before = leftovers.snapshot()
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
