"""The lab's programs and cgroups on a cluster's servers, reached over ssh (issue 22, step 2).

The repository and its ``.venv`` are at the same path on every server (docs/cluster.md,
prerequisites), so a program runs there from the same files as here:

- :func:`write_secret`: a server agent's secret in the run's secrets folder (the folder 0700,
  the file 0600): the controller reads it there (``LabSettings.agents[server]["secret_file"]``),
  the agent gets it on ssh's stdin, never on a command line nor at rest on the server;
- :func:`agent`: a server's budgets agent (:mod:`nodes.server_agent`) as a
  :class:`base.processes.ManagedProcess` started over ssh (:func:`base.processes.over_ssh`):
  its configuration is its stdin's first line, and the orchestrator holds that stdin open, so
  the agent ends when it closes: stopped, the orchestrator killed, its ssh client killed;
- :func:`make_groups`, :func:`remove_groups`, :func:`read_quotas`: the lab's cgroups there
  (``mec-lab/<run>/<mec>/{executor, <mec>-<miner pid>}``, as ``testbed.lab`` makes them here),
  one ssh per server and call, running :mod:`chain.cgroup`'s code there (the one writer).

A server whose address is ``localhost`` is this machine (no ssh), as in :mod:`topologies.cluster`.
Errors name the server and what failed (:class:`topologies.cluster.ClusterError`, or the
agent's :class:`base.processes.ProcessError` with its log).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
from pathlib import Path

from base.processes import ManagedProcess, log_ready, over_ssh
from topologies.cluster import ClusterError, is_local, run_on, ssh_argv
from topologies.config import ClusterConfig, ServerSpec

ROOT = Path(__file__).resolve().parents[1]      # the repository: the same path on every server
PYTHON = ROOT / ".venv" / "bin" / "python"
LAB_TREE = "mec-lab"                            # testbed.lab.CGROUP_PARENT

# run there by the server's Python, from the repository: the lab's cgroup code, not a copy
_MAKE_GROUPS = """
import json, sys
from chain.cgroup import CpuQuota, controller_dir, host_groups
a = json.loads(sys.argv[1])
made = [CpuQuota(a["run"], parent=a["tree"])]
try:
    made[0].set(None, weight=10.0)                    # the run's group, as testbed.lab weighs it
    out = {}
    for host, h in a["hosts"].items():
        made += host_groups(f"{a['tree']}/{a['run']}", host, h["host_cores"], h["executor_cores"],
                            h["miner_pid"], attach=True)
        out[host] = str(made[-1].dir.relative_to(controller_dir()))
except BaseException:
    for q in reversed(made):
        q.remove()
    raise
print(json.dumps(out))
"""
_REMOVE_GROUPS = """
import json, sys
from chain.cgroup import remove_tree
print(json.dumps(remove_tree(json.loads(sys.argv[1])["group"])))
"""
_READ_QUOTAS = """
import json, sys
from chain.cgroup import controller_dir, read_quota
print(json.dumps({g: read_quota(controller_dir() / g) for g in json.loads(sys.argv[1])["groups"]}))
"""


def write_secret(folder: Path, server: str) -> Path:
    """A new secret (32 random bytes, hex) for ``server``'s agent, in the run's secrets folder
    ``folder`` (made 0700 if new; the file 0600, never overwritten). Returns the file's path."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / f"agent-{server}.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def agent_address(spec: ServerSpec, cluster: ClusterConfig) -> str:
    """Where the controller reaches ``spec``'s agent: ``"address:port"``."""
    return f"{spec.address}:{cluster.agent_port}"


def agent(spec: ServerSpec, cluster: ClusterConfig, miners: dict[str, dict], secret_file: Path,
          log_path: Path, *, max_age_s: float = 30.0) -> ManagedProcess:
    """Server ``spec``'s budgets agent for ``miners`` (the controller's ``LabSettings.miners``
    entries of the miners placed there: name -> host_group, host_cores, coupling, period_us),
    listening on the server's address and ``cluster.agent_port``; not started yet (``start()``
    or ``with``: ready once it logs ``listening on``). Its log (ssh's output) is ``log_path``."""
    cfg = {"secret": Path(secret_file).read_text().strip(), "max_age_s": max_age_s,
           "miners": {n: {k: m[k] for k in ("host_group", "host_cores", "coupling", "period_us")}
                      for n, m in miners.items()}}
    argv = [str(PYTHON), "-m", "nodes.server_agent", "--listen", spec.address, "--port", str(cluster.agent_port),
            "--config", "-", "--until-stdin-closes"]
    launcher = over_ssh(None if is_local(spec) else ssh_argv(spec, cluster), (json.dumps(cfg) + "\n").encode())
    return ManagedProcess(f"server agent on {spec.name}", argv, log_path, launcher=launcher, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT)}, ready=log_ready(r"listening on \S+:\d+"),
                          ready_timeout_s=30, grace_s=5)


def _python_on(spec: ServerSpec, cluster: ClusterConfig, code: str, args: dict, what: str,
               timeout_s: float = 30.0):
    """Run ``code`` by the project's Python on the server, in the repository, with ``args`` as
    JSON in argv[1]; its last line of output, as JSON."""
    script = f"cd {shlex.quote(str(ROOT))} && exec {shlex.quote(str(PYTHON))} -c {shlex.quote(code)} " \
             f"{shlex.quote(json.dumps(args))}"
    r = run_on(spec, cluster, script, timeout_s)
    lines = r.stdout.strip().splitlines()
    if r.returncode or not lines:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"server {spec.name}: {what} failed (exit {r.returncode}): {why}")
    return json.loads(lines[-1])


def _run_name(run: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", run):
        raise ValueError(f"a run's name is letters, digits, '.', '_' or '-', got {run!r}")
    return run


def make_groups(spec: ServerSpec, cluster: ClusterConfig, run: str, hosts: dict[str, dict]) -> dict[str, str]:
    """The lab's groups of ``hosts`` on server ``spec``, in one ssh: ``mec-lab/<run>`` and per
    host ``<host>/{executor, <host>-<miner_pid>}`` (:func:`chain.cgroup.host_groups`), the miner
    moved into its group. ``hosts``: name -> {"host_cores", "executor_cores", "miner_pid"} (the
    miner's pid there). Returns each miner's group (relative to the CPU controller's root);
    :class:`ClusterError` naming the server otherwise (nothing made is left)."""
    return _python_on(spec, cluster, _MAKE_GROUPS, {"tree": LAB_TREE, "run": _run_name(run), "hosts": hosts},
                      f"making the lab's cgroups {LAB_TREE}/{run}")


def remove_groups(spec: ServerSpec, cluster: ClusterConfig, run: str) -> list[str]:
    """Remove ``mec-lab/<run>`` and every group below it on server ``spec`` (a process still in
    one is moved to the root first); the groups that could not be removed (empty: all gone)."""
    return _python_on(spec, cluster, _REMOVE_GROUPS, {"group": f"{LAB_TREE}/{_run_name(run)}"},
                      f"removing the lab's cgroups {LAB_TREE}/{run}")


def read_quotas(spec: ServerSpec, cluster: ClusterConfig, groups: list[str]) -> dict[str, tuple[int | None, int]]:
    """The CPU quota in force on each of ``groups`` on server ``spec``, as its kernel reports it:
    group -> (quota µs per period or None for no cap, period µs) (:func:`chain.cgroup.read_quota`)."""
    got = _python_on(spec, cluster, _READ_QUOTAS, {"groups": list(groups)}, "reading CPU quotas")
    return {g: (q, p) for g, (q, p) in got.items()}


_PUT_FILES = """
import json, os, sys
a = json.loads(sys.stdin.read())
for d in a["dirs"]:
    os.makedirs(d["path"], mode=0o700, exist_ok=True)
    os.chmod(d["path"], d["mode"])
for f in a["files"]:
    fd = os.open(f["path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f["text"])
    if f.get("uid") is not None:
        os.chown(f["path"], f["uid"], f["uid"])
print(json.dumps(len(a["files"])))
"""


def put_files(spec: ServerSpec, cluster: ClusterConfig, dirs: dict[str, int], files: dict[str, tuple[str, int | None]]) -> int:
    """Write ``files`` (path -> (text, owner uid or None for root), each 0600) on server
    ``spec``, after making ``dirs`` (path -> mode) there, in one ssh; the texts travel on ssh's
    stdin (a key never on a command line). The number written; :class:`ClusterError` otherwise."""
    script = f"exec {shlex.quote(str(PYTHON))} -c {shlex.quote(_PUT_FILES)}"
    argv = ["bash", "-c", script] if is_local(spec) else [*ssh_argv(spec, cluster), script]
    body = json.dumps({"dirs": [{"path": k, "mode": v} for k, v in dirs.items()],
                       "files": [{"path": k, "text": t, "uid": u} for k, (t, u) in files.items()]})
    r = subprocess.run(argv, input=body, capture_output=True, text=True, timeout=30)
    if r.returncode:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"server {spec.name}: writing {len(files)} file(s) of the run failed: {why}")
    return int(r.stdout.strip().splitlines()[-1])


def remove_folder(spec: ServerSpec, cluster: ClusterConfig, folder: Path) -> None:
    """Remove the run's ``folder`` (its secrets: ``/run/mec-lab/<run>``) on server ``spec``."""
    if not str(folder).startswith("/run/mec-lab/"):
        raise ValueError(f"not a run's secrets folder: {folder}")
    r = run_on(spec, cluster, f"rm -rf {shlex.quote(str(folder))}")
    if r.returncode:
        raise ClusterError(f"server {spec.name}: removing {folder} failed: {r.stderr.strip()}")


_ATTACH_KERNEL = """
import json, sys
import psutil
from chain.cgroup import CpuQuota
a = json.loads(sys.argv[1])
kernels = [c for c in psutil.Process(a["pid"]).children(recursive=True) if "nodes.work" in " ".join(c.cmdline())]
if len(kernels) != 1:
    raise SystemExit(f"expected one work kernel process below pid {a['pid']}, found {len(kernels)}")
parent, _, name = a["group"].rpartition("/")
CpuQuota(name, parent=parent).attach(kernels[0].pid)
print(json.dumps(kernels[0].pid))
"""


def attach_kernel(spec: ServerSpec, cluster: ClusterConfig, run: str, mec: str, executor_pid: int) -> int:
    """Put MEC host ``mec``'s work kernel (the ``nodes.work`` child of its executor, pid
    ``executor_pid`` on server ``spec``) into its ``executor`` group there, as ``testbed.lab``
    does here; the kernel's pid."""
    return _python_on(spec, cluster, _ATTACH_KERNEL, {"pid": executor_pid,
                                                      "group": f"{LAB_TREE}/{_run_name(run)}/{mec}/executor"},
                      f"attaching {mec}'s work kernel")
