"""Every process the lab starts, owned by one object and always stopped.

:class:`ManagedProcess` is the one owner: start (through a *launcher*), ready-check, stop
(SIGTERM, then SIGKILL after a grace period), kill (fault injection), log tail. Where the
process runs is the launcher's business, so the same owner serves

- :func:`local` — a plain child of this process on this host (loopback services: anvil, the
  os-ken controller, geth on loopback);
- :func:`in_mininet_host` — inside a Mininet host's network namespace (``host.popen``: geth
  miners and MEC executors on their emulated addresses);
- :func:`in_container` — inside a Docker container, with the container's cgroup, namespaces
  and capabilities (``docker exec``: the UE clients);
- :func:`over_ssh` — on another server of a cluster, through ssh, holding its stdin open
  (the budgets agent there: it ends when its stdin closes, so it ends with this process).

``with ManagedProcess(...) as p:`` always yields a started, ready process. :class:`ProcessGroup`
owns several and stops them in reverse start order: all are signalled first and then waited
for, so a large lab stops in one grace period rather than one per process.

Every process started here is recorded (:func:`started_pids`), so a leak check can look at
what *this* run started and nothing else (a user's own geth or anvil on the same machine is
neither touched nor counted; see :mod:`testbed.leftovers`).
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable, Protocol

import psutil


class ProcessError(RuntimeError):
    """A managed process failed to start, exited early or did not become ready; the message
    names the process and carries the tail of its log."""


# ---------------------------------------------------------------------------- launchers


class Handle(Protocol):
    """What a launcher returns: a running process it can signal and wait for."""
    pid: int

    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def wait(self, timeout: float) -> int | None: ...


class Launcher(Protocol):
    """Starts ``argv`` with stdout+stderr into ``log``; returns a :class:`Handle`."""
    where: str

    def __call__(self, argv: list[str], log: IO[bytes], *, cwd: Path | None,
                 env: dict[str, str] | None) -> Handle: ...


class _PopenHandle:
    """A child process of ours (``subprocess.Popen``); signals reach its process group when it
    leads one."""

    def __init__(self, popen: subprocess.Popen, group: bool):
        self.popen, self.group, self.pid = popen, group, popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, sig: int) -> None:
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


def local(*, new_session: bool = True) -> Launcher:
    """Run on this host as our child. ``new_session=False`` keeps the caller's session (and so
    its scheduler autogroup: geth miners sharing CPU per thread, see docs/chain.md)."""
    def launch(argv, log, *, cwd=None, env=None) -> Handle:
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                 start_new_session=new_session)
        return _PopenHandle(popen, group=new_session)
    launch.where = "local"
    return launch


def in_mininet_host(host, uid: int | None = None) -> Launcher:
    """Run inside Mininet host ``host`` (its network namespace, via ``mnexec -da``); as user
    and group ``uid`` when given (``setpriv``, after entering the namespace, which needs root):
    a MEC host's processes own their key and datadir and cannot read another host's."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if uid is not None else []

    def launch(argv, log, *, cwd=None, env=None) -> Handle:
        popen = host.popen(prefix + list(argv), stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, cwd=cwd, env=env)
        # mnexec -d makes the command a session leader: signal its whole group.
        return _PopenHandle(popen, group=True)
    launch.where = f"mininet host {host.name}" + (f" as uid {uid}" if uid is not None else "")
    launch.uid = uid
    return launch


class _LifelineHandle(_PopenHandle):
    """A process whose stdin we hold open (:func:`over_ssh`): SIGTERM closes that pipe, which is
    the program's stop; any other signal goes to the local process group (the ssh client)."""

    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGTERM and self.popen.stdin is not None:
            self.popen.stdin.close()
        else:
            super().send_signal(sig)


class _SignalLineHandle(_PopenHandle):
    """A process on another server behind a lifeline wrapper (:data:`LIFELINE`,
    :mod:`base.container_exec`): SIGTERM and SIGINT are sent as a line on its stdin (the wrapper
    signals the program there and keeps waiting, for as long as the program takes: an executor
    redeeming its vouchers); SIGKILL kills the local ssh client, and the closed stdin makes the
    wrapper stop the program (SIGTERM, then SIGKILL after its grace)."""

    def send_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT) and self.popen.stdin is not None and not self.popen.stdin.closed:
            try:
                self.popen.stdin.write(b"TERM\n" if sig == signal.SIGTERM else b"INT\n")
                self.popen.stdin.flush()
                return
            except (BrokenPipeError, ValueError):
                pass
        super().send_signal(sig)


def over_ssh(ssh: list[str] | None, stdin: bytes, *, signal_lines: bool = False) -> Launcher:
    """Run on another server: ``ssh`` is the ssh command up to its destination (e.g.
    ``topologies.cluster.ssh_argv``), the program's argv is quoted for the remote shell, ``cwd``
    is entered there and ``env`` set on top of the remote environment; ``ssh=None``: here, as
    our child (``env`` on top of ours). ``stdin`` is written first and the pipe stays open:
    the program must end when its stdin closes. That is its stop (SIGTERM closes the pipe;
    SIGKILL kills the ssh client, and sshd then closes the program's stdin), and how it ends
    when this process dies without a word (the kernel closes the pipe): nothing is left there.
    ``signal_lines``: the program is a lifeline wrapper that takes ``TERM``/``INT`` lines on its
    stdin (:class:`_SignalLineHandle`); the pipe's end still stops it."""
    def launch(argv, log, *, cwd=None, env=None) -> Handle:
        if ssh:
            prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
            remote = "exec " + shlex.join(prefix + list(argv))
            cmd = [*ssh, (f"cd {shlex.quote(str(cwd))} && " if cwd else "") + remote]
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                                     start_new_session=True)
        else:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                                     cwd=cwd, env={**os.environ, **env} if env else None,
                                     start_new_session=True)
        try:
            popen.stdin.write(stdin)
            popen.stdin.flush()
        except BrokenPipeError:
            pass                      # it exited at once: start() reports it with its log
        return (_SignalLineHandle if signal_lines else _LifelineHandle)(popen, group=True)
    launch.where = f"over ssh ({ssh[-1]})" if ssh else "local, stdin held"
    return launch


#: Run there as ``sh -c LIFELINE sh PROGRAM...``: the program with stdin from /dev/null, and a
#: watcher reading the wrapper's stdin (held open by the orchestrator): a ``TERM`` or ``INT``
#: line is that signal for the program (the orchestrator's stop: the program takes the time it
#: needs); when the stdin closes, SIGTERM, then SIGKILL after GRACE_DS tenths of a second. The
#: wrapper ends with the program; its first line is the program's pid there (``remote pid N``).
#: (A background job's stdin is /dev/null in a shell without job control: the lifeline is fd 3.
#: The watcher holds no output, so the ssh session ends with the program, and it stops waiting
#: as soon as the program is gone.)
LIFELINE = ('exec 3<&0; "$@" </dev/null 3<&- & p=$!; echo "remote pid $p"; '
            '{ while read -r s <&3; do case $s in TERM|INT) kill -"$s" $p;; esac; done; '
            'kill -TERM $p; i=0; while kill -0 $p && [ $i -lt "$GRACE_DS" ]; do '
            'sleep 0.1; i=$((i+1)); done; kill -0 $p && kill -KILL $p; } >/dev/null 2>&1 & w=$!; '
            'exec 3<&-; wait $p; rc=$?; kill $w 2>/dev/null; exit $rc')


def in_remote_host(host, uid: int | None = None, grace_s: float = 10.0) -> Launcher:
    """Run inside Mininet host ``host`` on another server of a cluster (a remote node of
    ``topologies.cluster``: ``host.pid`` is its shell's pid there, ``host.sshcmd`` reaches the
    server): over ssh, ``mnexec -a <pid>`` into its network and mount namespaces, as ``uid``
    when given, with ``cwd`` and ``env`` set there. No signal crosses ssh: SIGTERM and SIGINT
    travel as lines on its stdin (:data:`LIFELINE`, :class:`_SignalLineHandle`), and the program
    takes the time it needs; when the stdin closes (SIGKILL to the local ssh client, this
    process or its ssh client dead) it gets SIGTERM there, then SIGKILL after ``grace_s``. The
    handle is the local ssh client; the program's pid there is the log's first line."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if uid is not None else []
    ssh = [a for a in host.sshcmd if a != "-tt"]

    def launch(argv, log, *, cwd=None, env=None) -> Handle:
        wrapped = ["env", f"GRACE_DS={max(1, round(grace_s * 10))}", "sh", "-c", LIFELINE, "sh",
                   "mnexec", "-a", str(host.pid), *prefix, *argv]
        return over_ssh(ssh, b"", signal_lines=True)(wrapped, log, cwd=cwd, env=env)
    launch.where = f"mininet host {host.name} on server {host.server}" + (f" as uid {uid}" if uid is not None else "")
    launch.uid = uid
    launch.remote = True
    return launch


def in_remote_container(ssh: list[str] | None, container: str, *, log_inside: str, grace_s: float = 10.0,
                        python: str | None = None) -> Launcher:
    """Run inside Docker container ``container`` of another server's engine (a UE container
    there): over ``ssh`` (None: here), ``python -m base.container_exec`` does there what
    :func:`in_container` does here, with the same lifeline as :func:`in_remote_host` (signals as
    lines; its end: SIGTERM, SIGKILL after ``grace_s``). ``python``: the project's interpreter
    there (the same path on every server)."""
    py = python or sys.executable

    def launch(argv, log, *, cwd=None, env=None) -> Handle:
        wrapped = [py, "-m", "base.container_exec", "--container", container, "--log-inside", log_inside,
                   "--grace", f"{grace_s:g}", *(["--cwd", str(cwd)] if cwd else []), "--", *argv]
        return over_ssh(ssh, b"", signal_lines=True)(wrapped, log, cwd=cwd, env=env)
    launch.where = f"container {container} over ssh ({ssh[-1]})" if ssh else f"container {container}, stdin held"
    launch.remote = True
    return launch


def remote_pid(proc: "ManagedProcess", timeout_s: float = 10.0) -> int:
    """The pid on its server of a program started by :func:`in_remote_host` (its log's line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = re.findall(r"^remote pid (\d+)$", proc.log_path.read_text(errors="replace"), re.M)
        except OSError:
            found = []
        if found:          # the last: a restarted program appends to the same log
            return int(found[-1])
        if time.monotonic() > deadline or not proc.alive:
            raise ProcessError(f"{proc.name}: no 'remote pid' line in its log {proc.log_path}:\n{proc.log_tail()}")
        time.sleep(0.05)


class _ContainerHandle:
    """A process ``docker exec``-ed in a container: not our child, so it is watched by its
    host pid (the engine reports it) and signalled directly."""

    def __init__(self, pid: int):
        self.pid = pid
        self._proc = psutil.Process(pid)
        self._returncode: int | None = None

    def poll(self) -> int | None:
        if self._returncode is None:
            try:
                if self._proc.status() == psutil.STATUS_ZOMBIE:
                    self._returncode = -1
            except psutil.NoSuchProcess:
                self._returncode = -1   # the engine reaped it; its exit code is not ours to see
        return self._returncode

    def send_signal(self, sig: int) -> None:
        try:
            self._proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return self._returncode


def in_container(container: str, *, log_inside: str) -> Launcher:
    """Run inside Docker container ``container`` with its cgroup, namespaces and capabilities.

    The engine, not we, is the process's parent, so its output cannot go to our file handle:
    it is written to ``log_inside`` (a path inside the container, on a writable bind mount of
    the run's log folder) and ``log`` is ignored.
    """
    import docker
    client = docker.from_env()

    def launch(argv, log, *, cwd=None, env=None) -> Handle:
        # sh -c 'exec ... >log 2>&1': the exec'd program keeps the pid the engine reports.
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
        cmd = ["/bin/sh", "-c", f"exec {quoted} >>'{log_inside}' 2>&1 </dev/null"]
        ex = client.api.exec_create(container, cmd, stdout=False, stderr=False,
                                    workdir=str(cwd) if cwd else None, environment=env)
        client.api.exec_start(ex["Id"], detach=True)
        deadline = time.monotonic() + 10
        while True:
            info = client.api.exec_inspect(ex["Id"])
            if info.get("Pid"):
                handle = _ContainerHandle(int(info["Pid"]))
                # until runc and then the shell have exec'd the program, the pid runs them (and
                # in the middle of an exec its cmdline reads empty: a make test saw [] here)
                while time.monotonic() < deadline and handle.poll() is None:
                    try:
                        cmdline = handle._proc.cmdline()
                        if cmdline and cmdline[:1] not in (["/bin/sh"], ["runc"]):
                            break
                    except psutil.Error:
                        break
                    time.sleep(0.01)
                return handle
            if not info.get("Running") and info.get("ExitCode") is not None:
                raise ProcessError(f"docker exec in {container} exited at once with code "
                                   f"{info['ExitCode']}: {argv}")
            if time.monotonic() > deadline:
                raise ProcessError(f"docker exec in {container} did not start: {argv}")
            time.sleep(0.02)
    launch.where = f"container {container}"
    return launch


# ---------------------------------------------------------------------------- the owner

_registry_lock = threading.Lock()
_STARTED: dict[int, str] = {}   # pid -> name, every process this Python process started


def started_pids() -> dict[int, str]:
    """Processes started by this Python process through :class:`ManagedProcess` that are still
    running: pid -> name."""
    with _registry_lock:
        items = list(_STARTED.items())
    alive = {}
    for pid, name in items:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive[pid] = name
        except psutil.NoSuchProcess:
            pass
    return alive


ReadyCheck = Callable[["ManagedProcess"], bool]


class ManagedProcess:
    """One process the lab starts.

    Args:
        name: what it is, for messages ("geth mec3", "os-ken controller").
        argv: the command.
        log_path: its stdout+stderr (appended); read back by :meth:`log_tail`.
        launcher: where it runs (default: :func:`local`).
        ready: a check ``ready(proc) -> bool`` polled after launch until true (None: started
            is ready); :func:`tcp_ready` and :func:`log_ready` make common ones.
        ready_timeout_s: how long to wait for ``ready``.
        grace_s: SIGTERM to SIGKILL, seconds.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, *,
                 launcher: Launcher | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None, ready: ReadyCheck | None = None,
                 ready_timeout_s: float = 30.0, grace_s: float = 5.0):
        self.name, self.argv, self.log_path = name, list(argv), Path(log_path)
        self.launcher = launcher or local()
        self.cwd, self.env, self.ready = cwd, env, ready
        self.ready_timeout_s, self.grace_s = ready_timeout_s, grace_s
        self.handle: Handle | None = None
        self.started_at: float | None = None

    # ---- state
    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None

    @property
    def alive(self) -> bool:
        return self.handle is not None and self.handle.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.handle.poll() if self.handle is not None else None

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"ManagedProcess({self.name!r}, pid={self.pid}, {state}, {self.launcher.where})"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ---- life cycle
    def start(self) -> "ManagedProcess":
        """Launch, then wait until ready; on any failure stop it and raise
        :class:`ProcessError` with the log tail."""
        if self.alive:
            raise ProcessError(f"{self.name}: already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.handle = self.launcher(self.argv, log, cwd=self.cwd, env=self.env)
        self.started_at = time.monotonic()
        with _registry_lock:
            _STARTED[self.handle.pid] = self.name
        try:
            if self.ready is not None:
                self.wait_ready(self.ready, self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, check: ReadyCheck, timeout: float, what: str = "ready") -> None:
        """Poll ``check(self)`` until true; raise if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive          # read before the check: one that got there and then
            try:                        # ended between two polls is done, not dead
                if check(self):
                    return
            except Exception:
                pass   # not yet: a connection refused while it binds, a half-written log
            if not alive:
                raise ProcessError(f"{self.name} exited (code {self.returncode}) before it was "
                                   f"{what} [{self.launcher.where}]; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ProcessError(f"{self.name} not {what} after {timeout:.0f} s "
                                   f"[{self.launcher.where}]; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def wait_for_port(self, host: str, port: int, timeout: float = 20.0) -> None:
        """Wait until ``host:port`` accepts TCP connections."""
        self.wait_ready(tcp_ready(host, port), timeout, f"listening on {host}:{port}")

    def signal(self, sig: int) -> None:
        if self.handle is not None and self.handle.poll() is None:
            self.handle.send_signal(sig)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s; safe to call twice and after a failed start."""
        if self.handle is None or self.handle.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        self.finish(grace)

    def finish(self, grace: float | None = None) -> None:
        """After a SIGTERM: wait ``grace`` s, then SIGKILL (used by :class:`ProcessGroup`)."""
        if self.handle is None:
            return
        if self.handle.wait(self.grace_s if grace is None else grace) is None:
            self.handle.send_signal(signal.SIGKILL)
            self.handle.wait(10.0)

    def kill(self) -> None:
        """Fault injection: SIGKILL, no shutdown."""
        if self.handle is not None and self.handle.poll() is None:
            self.handle.send_signal(signal.SIGKILL)
            self.handle.wait(10.0)

    def __enter__(self) -> "ManagedProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tcp_ready(host: str, port: int) -> ReadyCheck:
    """Ready once ``host:port`` accepts a TCP connection (from the root namespace)."""
    def check(_proc) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((host, port)) == 0
    return check


def log_ready(pattern: str) -> ReadyCheck:
    """Ready once the process's log matches the regular expression ``pattern``."""
    rx = re.compile(pattern)

    def check(proc: ManagedProcess) -> bool:
        return rx.search(proc.log_path.read_text(errors="replace")) is not None
    return check


class ProcessGroup:
    """Owns several processes; stops them in reverse start order, signalling all first.

    ``with ProcessGroup() as group: group.start(ManagedProcess(...))`` ...
    """

    def __init__(self):
        self.procs: list[ManagedProcess] = []

    def start(self, proc: ManagedProcess) -> ManagedProcess:
        """Start ``proc`` and own it (it is stopped with the group even if it fails later)."""
        self.procs.append(proc)
        return proc.start()

    def adopt(self, proc: ManagedProcess) -> ManagedProcess:
        """Own an already started process."""
        self.procs.append(proc)
        return proc

    def stop(self, grace: float | None = None) -> None:
        procs = list(reversed(self.procs))
        for p in procs:
            p.signal(signal.SIGTERM)
        for p in procs:
            p.finish(grace)
        self.procs.clear()

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
