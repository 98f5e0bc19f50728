"""``python -m base.container_exec``: a program in a Docker container of *this* server, owned
as :func:`base.processes.in_container` owns it, ended when this program's stdin closes.

The launcher :func:`base.processes.in_remote_container` runs it on another server of a cluster
over ssh (the server's own Docker engine: a UE container there), because no signal crosses
ssh and ``docker exec`` forwards none: its stdin is the lifeline. A ``TERM`` or ``INT`` line is
that signal for the program (the orchestrator's stop: it takes the time it needs); when stdin
closes (the orchestrator or its ssh client gone, or killed), the program gets SIGTERM, and
SIGKILL after ``--grace`` seconds; this process exits with the program's code. Its first line
of output is ``remote pid N`` (the program's pid on this server)::

    python -m base.container_exec --container mn.ue3 --log-inside /lab/out/client.log --grace 60 -- PROGRAM ARGS...
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from base.processes import ManagedProcess, in_container


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m base.container_exec", description=__doc__.split("\n\n")[0])
    p.add_argument("--container", required=True)
    p.add_argument("--log-inside", required=True, help="the program's log, a path inside the container")
    p.add_argument("--grace", type=float, default=10.0, help="SIGTERM to SIGKILL, seconds")
    p.add_argument("--cwd", default=None)
    p.add_argument("program", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    program = a.program[1:] if a.program[:1] == ["--"] else a.program
    if not program:
        p.error("no program given (after --)")
    proc = ManagedProcess(f"{program[0]} in {a.container}", program, Path(os.devnull),
                          launcher=in_container(a.container, log_inside=a.log_inside),
                          cwd=Path(a.cwd) if a.cwd else None, grace_s=a.grace)
    proc.start()
    print(f"remote pid {proc.pid}", flush=True)

    def lifeline():
        for line in sys.stdin:        # TERM / INT: the orchestrator's signal; the end: it is gone
            if line.strip() in ("TERM", "INT"):
                proc.signal(signal.SIGTERM if line.strip() == "TERM" else signal.SIGINT)
        proc.stop(a.grace)
    threading.Thread(target=lifeline, daemon=True).start()
    while proc.alive:
        time.sleep(0.2)
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
