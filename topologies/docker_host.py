"""A Mininet host that lives in a Docker container (the Containernet idea, without its fork).

The container is started with ``--network none``; Mininet's shell for the host joins the
container's network and mount namespaces with ``mnexec -a <container pid>``, so links, IPs
and ``host.cmd``/``host.popen`` work as for any Mininet host, while the file system, the
hostname and the cgroup limits are the container's. The repository (with its ``.venv``) is
bind-mounted read-only at its host path so the container runs the project's own code with the
same Debian interpreter.

Add such a host as the *second* node of ``addLink`` (switch first): Mininet creates the veth
pair inside node 1 and moves one end to ``netns <pid of node 2>``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import docker
import psutil
from mininet.node import Host

from topologies.images import UE_IMAGE

ROOT = Path(__file__).resolve().parent.parent
CONTAINER_LABEL = "mec-testbed"          # every container the testbed starts carries it
OWNER_LABEL = "mec-testbed.owner"        # ... and the pid of the process that started it
NAME_PREFIX = "mn."
# What of the repository a container sees (read-only): the programs and the venv, never the
# rest of the tree (results/ holds every run's folder: other UEs' tasks, the chain's data).
CODE_DIRS = ("agent", "base", "chain", "contracts", "controller", "nodes", "scenario", "testbed", "topologies", ".venv")


class ContainerNode:
    """Mixin for a Mininet node backed by a container: the container goes with the node
    (``_remove_container`` is the node class's own: here or on another server)."""

    def terminate(self):
        try:
            super().terminate()
        finally:
            self._remove_container()


class DockerHost(ContainerNode, Host):
    """Mininet host backed by a container of ``image``.

    Extra params: ``image`` (default the UE image), ``cpu_quota`` (cores, e.g. 0.5, or None),
    ``mem_limit`` (e.g. "512m" or None), ``pids_limit`` (or None), ``volumes`` (dict host path ->
    container path, read-only; or -> (container path, "rw") for a writable one), ``code``
    (the repository's folders it sees read-only at their own paths: :data:`CODE_DIRS` by
    default; None = the whole repository).
    """

    def __init__(self, name: str, image: str = UE_IMAGE, cpu_quota: float | None = None,
                 mem_limit: str | None = None, pids_limit: int | None = None,
                 volumes: dict[str, str | tuple[str, str]] | None = None,
                 code: tuple[str, ...] | None = CODE_DIRS, **params):
        self.image = image
        self._client = docker.from_env()
        _clear_stale(self._client, NAME_PREFIX + name)
        binds = container_binds(code, volumes)
        self.container = self._client.containers.run(
            image, name=NAME_PREFIX + name, hostname=name, detach=True, network_mode="none",
            labels={CONTAINER_LABEL: "1", OWNER_LABEL: str(os.getpid())}, volumes=binds, command=["sleep", "infinity"],
            cap_drop=["NET_ADMIN", "NET_RAW"], init=True, mem_limit=mem_limit, pids_limit=pids_limit,
            nano_cpus=int(cpu_quota * 1e9) if cpu_quota else None, working_dir=str(ROOT))
        self.container.reload()
        self.container_pid = int(self.container.attrs["State"]["Pid"])
        if self.container_pid <= 0:
            self._remove_container()
            raise RuntimeError(f"container for host {name} did not start: {self.container.status}")
        try:
            super().__init__(name, inNamespace=True, **params)
        except BaseException:
            self._remove_container()
            raise

    def startShell(self, mnopts=None):
        # The container already owns the namespaces: join them (-a) instead of making new
        # ones (-n, which Mininet adds for inNamespace hosts).
        self.inNamespace = False
        try:
            super().startShell(mnopts=f"-cda{self.container_pid}")
        finally:
            self.inNamespace = True

    def _remove_container(self):
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass


def container_binds(code: tuple[str, ...] | None, volumes: dict | None) -> dict[str, dict]:
    """A UE container's bind mounts, host path -> {"bind": container path, "mode": "ro"|"rw"}:
    the repository's ``code`` folders read-only at their own paths (None: the whole
    repository), then ``volumes`` (see :class:`DockerHost`)."""
    if code is None:
        binds = {str(ROOT): {"bind": str(ROOT), "mode": "ro"}}
    else:        # a symlinked folder (a worktree's .venv) is mounted from its target
        binds = {str((ROOT / d).resolve()): {"bind": str(ROOT / d), "mode": "ro"}
                 for d in code if (ROOT / d).exists()}
    for src, dst in (volumes or {}).items():
        dst, mode = (dst, "ro") if isinstance(dst, str) else dst
        binds[src] = {"bind": dst, "mode": mode}
    return binds


def dead_runs_container(cname: str, labels: dict, where: str = "") -> bool:
    """An existing container named ``cname`` with ``labels``: True when it is the testbed's own
    from a run that died (its owner pid, a process of this machine, is gone: remove it); raises
    for anything else, never touched. ``where``: " on server X" for a remote engine."""
    owner = labels.get(OWNER_LABEL, "")
    if labels.get(CONTAINER_LABEL) == "1" and owner.isdigit() and not psutil.pid_exists(int(owner)):
        print(f"removing container {cname}{where} left by an earlier run (pid {owner}, gone)", file=sys.stderr,
              flush=True)
        return True
    raise RuntimeError(f"a container named {cname} exists{where} and is not a leftover of a dead testbed run "
                       f"(labels {labels}); remove or rename it (docker rm -f {cname}) and start again")


def _clear_stale(client, cname: str) -> None:
    """A container already named ``cname``: the testbed's own from a run that died (its owner
    pid gone) is removed; anything else is refused with a clear error, never touched."""
    try:
        c = client.containers.get(cname)
    except docker.errors.NotFound:
        return
    if dead_runs_container(cname, c.labels or {}):
        c.remove(force=True)


def remove_leftover_containers(hosts: list[str] | None = None) -> list[str]:
    """Remove the testbed's containers (label ``mec-testbed``): those of the named Mininet
    ``hosts``, or every one if ``hosts`` is None; return their names."""
    client = docker.from_env()
    wanted = None if hosts is None else {NAME_PREFIX + h for h in hosts}
    gone = []
    for c in client.containers.list(all=True, filters={"label": CONTAINER_LABEL}):
        if wanted is None or c.name in wanted:
            c.remove(force=True)
            gone.append(c.name)
    return gone
