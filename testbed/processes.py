"""A process the testbed starts, owned by one object and always stopped.

``ManagedProcess`` starts a command in its own process group with its output in a log file,
and ``stop()`` ends the whole group (SIGTERM, then SIGKILL after a grace period). Use it as
a context manager so it is stopped on success, on error and on Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class ManagedProcess:
    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None):
        self.name, self.argv, self.log_path, self.cwd, self.env = name, argv, Path(log_path), cwd, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd, env=self.env,
                                         start_new_session=True)
        finally:
            log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for_port(self, host: str, port: int, timeout: float = 20.0) -> None:
        """Wait until ``host:port`` accepts TCP; raise with the log tail if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited (code {self.proc.returncode}) before "
                                   f"listening on {host}:{port}:\n{self.log_tail()}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((host, port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not listening on {host}:{port} after {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
