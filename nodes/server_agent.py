"""The server agent: hash budgets written on a cluster server by one small program (issue 22).

In a lab across servers (docs/cluster.md) the controller runs on the orchestrator but a MEC
host's miner and work kernel run on another server, in that server's cgroups. One ssh per
write would cost a handshake per slot and server; instead each server runs this agent, as root,
for the run: it listens on the server's address, holds the run's secret, and applies the
controller's budgets to the miners placed on it, with the lab's one quota writer
(:func:`chain.cgroup.write_budget` -> :func:`chain.cgroup.write_quota`), exactly as the
controller does for miners on its own machine.

Protocol (TCP, one connection kept open by :class:`AgentClient`; a line per message)::

    <HMAC-SHA256 hex> SP <JSON body> LF           at most MAX_LINE bytes

The MAC is over ``b"request\\n" + body`` (``b"reply\\n" + body`` for answers, so an answer can
never pass as a request) with the run's secret (32 random bytes, never on a command line).
A request is ``{"op": "apply", "seq": N, "budgets": {"mec3": 0.3, ...}}`` (each miner's CPU
quota in cores; its host's work kernel gets what the miner leaves, ``coupling``) or
``{"op": "cpu_seconds", "seq": N}`` (each miner's CPU time, the state's probe). ``seq`` is the
sender's clock in nanoseconds, strictly increasing: the agent refuses one not above the last it
accepted (a replay) or further than ``max_age_s`` from its own clock (a stale one, e.g. held
back across an agent restart). Answers::

    {"ok": true, "seq": N, "applied": {"mec3": {"group": "mec3-4242", "miner_cores": 0.3,
     "executor_cores": 0.7}}, "not_applied": {"mec4": "its miner's cgroup is gone"}, "at": T}
    {"ok": false, "seq": N|null, "refused": REASON, "detail": "...", "at": T}

REASON is one of :data:`REASONS`; a request is checked whole before anything is written, so a
refused one changes nothing (the quotas in force stay). The agent only writes the groups of the
miners in its configuration (each under the lab's ``mec-lab``/``mec-chain`` tree): a request
names miners, never paths. At most MAX_CONNECTIONS at once; when full, the oldest
connection that never sent a signed request makes room (idle ones cannot lock the controller out).

Run (the configuration as JSON on stdin, ``-``, or a file readable by root only)::

    python -m nodes.server_agent --listen 192.168.50.12 --port 7717 --config -
    {"secret": "<64 hex>", "max_age_s": 30,
     "miners": {"mec3": {"host_group": "mec-lab/<run>/mec3", "host_cores": 1.0,
                         "coupling": "shared", "period_us": 100000}}}

It prints ``listening on HOST:PORT`` once ready, starts no process, writes no file and exits
0 on SIGTERM or SIGINT with its sockets closed. Imports nothing heavy (a host program).

``--until-stdin-closes`` (how the orchestrator starts it over ssh, :mod:`topologies.remote`):
the configuration is stdin's first line, and the agent stops, as on SIGTERM, when its stdin
closes: the orchestrator holds the other end, so the agent ends with the orchestrator's run,
also when the orchestrator is killed (its pipe closes) or its ssh client is (sshd closes it).
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import os
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from chain.cgroup import PARENT, controller_dir, cpu_seconds, miner_group, write_budget

MAX_LINE = 16 * 1024          # a request for hundreds of miners fits; anything longer is refused
MAX_REPLY = 16 * MAX_LINE     # an answer names each miner's group and both quotas
MAX_CONNECTIONS = 8
DEFAULT_PORT = 7717
LAB_TREES = (PARENT, "mec-lab")   # the lab's cgroup subtrees (testbed.leftovers checks the same)
REASONS = ("bad_signature", "replay", "stale", "malformed", "too_large", "unknown_miner",
           "out_of_range")
COUPLINGS = ("shared", "separate")

__all__ = ["AgentClient", "AgentError", "ServerAgent", "load_config", "new_secret", "REASONS"]


class AgentError(RuntimeError):
    """The agent refused a request (``reason``, one of :data:`REASONS`), or could not be reached
    or answered something that is not its signed answer (``reason`` None)."""

    def __init__(self, message: str, reason: str | None = None, answer: dict | None = None):
        super().__init__(message)
        self.reason, self.answer = reason, answer or {}


class Refused(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def new_secret() -> str:
    """A run's secret: 32 bytes from the OS, as hex."""
    return os.urandom(32).hex()


def _mac(secret: bytes, kind: bytes, body: bytes) -> str:
    return hmac.new(secret, kind + b"\n" + body, hashlib.sha256).hexdigest()


def frame(secret: bytes, kind: bytes, message: dict) -> bytes:
    """One line of the protocol: ``message`` as compact JSON, signed for ``kind``."""
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    return _mac(secret, kind, body).encode() + b" " + body + b"\n"


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def unframe(secret: bytes, kind: bytes, line: bytes) -> dict:
    """The JSON object of a signed line; :class:`Refused` (malformed, bad_signature) otherwise."""
    mac, sep, body = line.rstrip(b"\r\n").partition(b" ")
    if not sep or len(mac) != 64:
        raise Refused("malformed", "not '<64 hex MAC> <JSON body>'")
    if not hmac.compare_digest(mac, _mac(secret, kind, body).encode()):
        raise Refused("bad_signature", "the MAC does not match the body under the run's secret")
    try:
        message = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused("malformed", f"the body is not JSON ({e})") from None
    if not isinstance(message, dict):
        raise Refused("malformed", "the body is not a JSON object")
    return message


def load_config(text: str) -> dict:
    """The agent's configuration, checked: ``secret`` (>= 32 bytes as hex), ``max_age_s`` and
    ``miners`` (name -> host_group under the lab's tree, host_cores, coupling, period_us).
    ValueError naming the field otherwise."""
    cfg = json.loads(text)
    if not isinstance(cfg, dict) or set(cfg) - {"secret", "max_age_s", "miners"}:
        raise ValueError("the configuration is an object of secret, max_age_s, miners")
    try:
        secret = bytes.fromhex(cfg.get("secret", ""))
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ValueError("secret: at least 32 bytes as hex")
    age = cfg.get("max_age_s", 30.0)
    if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 < age <= 3600:
        raise ValueError(f"max_age_s: in (0, 3600] s, got {age!r}")
    miners = cfg.get("miners")
    if not isinstance(miners, dict) or not miners:
        raise ValueError("miners: a non-empty object of miner name -> its host's group")
    for name, m in miners.items():
        where = f"miners.{name}"
        if not isinstance(m, dict) or set(m) != {"host_group", "host_cores", "coupling", "period_us"}:
            raise ValueError(f"{where}: an object of host_group, host_cores, coupling, period_us")
        parts = Path(m["host_group"]).parts if isinstance(m["host_group"], str) else ()
        if not parts or parts[0] not in LAB_TREES or ".." in parts or len(parts) < 2:
            raise ValueError(f"{where}.host_group: a group below {' or '.join(LAB_TREES)}/, got "
                             f"{m['host_group']!r}")
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{where}: not a miner's name")
        if not _number(m["host_cores"]) or not 0 < m["host_cores"] <= 1024:
            raise ValueError(f"{where}.host_cores: cores in (0, 1024], got {m['host_cores']!r}")
        if m["coupling"] not in COUPLINGS:
            raise ValueError(f"{where}.coupling: one of {', '.join(COUPLINGS)}, got {m['coupling']!r}")
        if isinstance(m["period_us"], bool) or not isinstance(m["period_us"], int) \
                or not 1000 <= m["period_us"] <= 1_000_000:
            raise ValueError(f"{where}.period_us: an integer in [1000, 1000000] (the kernel's), "
                             f"got {m['period_us']!r}")
    return {"secret": secret, "max_age_s": float(age), "miners": miners}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _Stop(Exception):
    """SIGTERM or SIGINT."""


class ServerAgent:
    """The agent's state and rules (the socket loop is :meth:`serve`)."""

    def __init__(self, cfg: dict, root: Path | None = None):
        self.secret, self.max_age_s, self.miners = cfg["secret"], cfg["max_age_s"], cfg["miners"]
        self.root = root if root is not None else controller_dir()
        if self.root is None:
            raise ValueError("no cgroup CPU controller on this server")
        self.last_seq = 0
        self.trusted: set[socket.socket] = set()    # connections that sent a request with the MAC
        self.log = sys.stderr

    # ---- one request
    def handle(self, line: bytes) -> tuple[bytes, bool]:
        """The signed answer to one request line (``line`` at most MAX_LINE bytes), and whether
        the line carried the run's MAC (its sender holds the secret)."""
        seq, authentic = None, False
        try:
            msg = unframe(self.secret, b"request", line)
            authentic = True
            seq = msg.get("seq")
            self._check_seq(seq)
            self.last_seq = seq                   # consumed, whatever the body says next
            answer = self._do(msg)
        except RecursionError:                     # JSON nested beyond the parser's depth
            answer = self._refused(seq, Refused("malformed", "the body is nested too deeply"))
        except Refused as e:
            answer = self._refused(seq, e)
        return frame(self.secret, b"reply", {**answer, "at": time.time()}), authentic

    def _refused(self, seq, e: Refused) -> dict:
        print(f"refused {e.reason}: {e.detail}", file=self.log, flush=True)
        return {"ok": False, "seq": seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                "refused": e.reason, "detail": e.detail}

    def refusal(self, reason: str, detail: str) -> bytes:
        print(f"refused {reason}: {detail}", file=self.log, flush=True)
        return frame(self.secret, b"reply", {"ok": False, "seq": None, "refused": reason,
                                             "detail": detail, "at": time.time()})

    def _check_seq(self, seq) -> None:
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 2 ** 63:
            raise Refused("malformed", "seq: a positive 64-bit integer (the sender's clock, ns)")
        if seq <= self.last_seq:
            raise Refused("replay", f"seq {seq} is not above the last accepted ({self.last_seq})")
        off = seq / 1e9 - time.time()
        if abs(off) > self.max_age_s:
            raise Refused("stale", f"seq is {off:+.1f} s off this server's clock (more than "
                                   f"{self.max_age_s:g} s)")

    def _do(self, msg: dict) -> dict:
        op = msg.get("op")
        if op == "cpu_seconds":
            if set(msg) != {"op", "seq"}:
                raise Refused("malformed", "cpu_seconds takes op and seq only")
            return {"ok": True, "seq": msg["seq"], "seconds": self.cpu_seconds()}
        if op != "apply":
            raise Refused("malformed", f"op: 'apply' or 'cpu_seconds', got {str(op)[:40]!r}")
        if set(msg) != {"op", "seq", "budgets"} or not isinstance(msg["budgets"], dict) or not msg["budgets"]:
            raise Refused("malformed", "apply takes op, seq and budgets (miner name -> cores)")
        budgets = msg["budgets"]
        unknown = [n for n in budgets if n not in self.miners]
        if unknown:
            raise Refused("unknown_miner", f"not a miner on this server: {', '.join(repr(n[:60]) for n in unknown[:5])}")
        for name, cores in budgets.items():             # all checked before anything is written
            host = self.miners[name]["host_cores"]
            if not _number(cores) or not 0 <= cores <= host:
                raise Refused("out_of_range", f"{name}: cores in [0, {host:g}] (its host's), got {cores!r}")
        applied, not_applied = {}, {}
        for name, cores in budgets.items():
            m = self.miners[name]
            try:
                done = write_budget(self.root / m["host_group"], name, float(cores), float(m["host_cores"]),
                                    m["coupling"], m["period_us"])
            except (OSError, ValueError) as e:
                not_applied[name] = str(e)
                continue
            if done is None:
                not_applied[name] = "its miner's cgroup is gone"
            else:
                applied[name] = done
        return {"ok": True, "seq": msg["seq"], "applied": applied, "not_applied": not_applied}

    def cpu_seconds(self) -> dict:
        out = {}
        for name, m in self.miners.items():
            group = miner_group(self.root / m["host_group"], name)
            if group is not None:
                try:
                    out[name] = cpu_seconds(group)
                except OSError:
                    continue
        return out

    # ---- the socket loop
    def serve(self, listener: socket.socket, lifeline: int | None = None) -> None:
        """Answer requests on ``listener`` until SIGTERM/SIGINT (:class:`_Stop`), or until the
        file descriptor ``lifeline`` (stdin) reaches its end; every socket is closed on the way out."""
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        if lifeline is not None:
            sel.register(lifeline, selectors.EVENT_READ)
        buffers: dict[socket.socket, bytearray] = {}   # open connections, oldest first
        draining: dict[socket.socket, int] = {}      # refused connections: bytes still read before closing

        def close(sock):
            sel.unregister(sock)
            del buffers[sock]
            draining.pop(sock, None)
            self.trusted.discard(sock)
            sock.close()
        try:
            while True:
                for key, _ in sel.select():
                    sock = key.fileobj
                    if sock == lifeline:
                        if not os.read(lifeline, 4096):    # what else comes is ignored
                            raise _Stop
                        continue
                    if sock is listener:
                        conn, _ = listener.accept()
                        if len(buffers) >= MAX_CONNECTIONS:
                            # full: the oldest connection that never sent a signed request makes
                            # room (idle or trickling ones cannot lock the controller out)
                            idle = next((c for c in buffers if c not in self.trusted), None)
                            if idle is None:
                                conn.close()
                                continue
                            close(idle)
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        buffers[conn] = bytearray()
                        sel.register(conn, selectors.EVENT_READ)
                        continue
                    if sock in draining:
                        state = self._drain(sock, draining[sock])
                    else:
                        state = self._readable(sock, buffers[sock])
                    if state is None:
                        close(sock)
                    elif state is not True:
                        draining[sock] = state
        finally:
            for sock in list(buffers):
                sock.close()
            self.trusted.clear()
            sel.close()

    @staticmethod
    def _drain(sock: socket.socket, left: int) -> int | None:
        """Read and drop what a refused connection still sends (so that closing it does not
        reset it before the refusal is read), at most ``left`` bytes more."""
        try:
            data = sock.recv(65536)
        except OSError:
            return None
        return left - len(data) if data and len(data) < left else None

    def _readable(self, sock: socket.socket, buf: bytearray) -> bool | int | None:
        """Read what came, answer every whole line. True: keep the connection; None: close it;
        an int: it was refused whole (a line too long: no way to find the next one), drain
        that many bytes at most, then close."""
        try:
            data = sock.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        buf += data
        while True:
            end = buf.find(b"\n")
            if end < 0 or end >= MAX_LINE:
                break
            line = bytes(buf[:end + 1])
            del buf[:end + 1]
            answer, authentic = self.handle(line)
            if authentic:
                self.trusted.add(sock)
            try:
                sock.sendall(answer)
            except OSError:
                return None
        if len(buf) >= MAX_LINE:
            try:
                sock.sendall(self.refusal("too_large", f"a request is at most {MAX_LINE} bytes"))
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return None
            buf.clear()
            return 16 * MAX_LINE
        return True


def _stop(signum, frame_):
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodes.server_agent", description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="this server's address, as the controller reaches it")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free one)")
    ap.add_argument("--config", required=True, help="the configuration (JSON): a file readable by root "
                    "only, or - for stdin")
    ap.add_argument("--until-stdin-closes", action="store_true", help="stop when stdin closes (started "
                    "over ssh by the orchestrator, which holds it open); with --config -, the "
                    "configuration is stdin's first line")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if args.config == "-":
            text = sys.stdin.readline() if args.until_stdin_closes else sys.stdin.read()
        else:
            path = Path(args.config)
            if path.stat().st_mode & 0o077:
                raise ValueError(f"{path} is readable by others than its owner (chmod 600): it holds the secret")
            text = path.read_text()
        agent = ServerAgent(load_config(text))
        for name, m in agent.miners.items():
            if not (agent.root / m["host_group"]).is_dir():
                print(f"note: {name}'s host group {m['host_group']} does not exist yet", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"server agent: configuration refused: {e}", file=sys.stderr)
        return 2
    except _Stop:
        return 0
    listener = socket.socket(socket.AF_INET6 if ":" in args.listen else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.listen, args.port))
        listener.listen(MAX_CONNECTIONS)
        host, port = listener.getsockname()[:2]
        print(f"listening on {host}:{port} for {', '.join(agent.miners)}", flush=True)
        agent.serve(listener, sys.stdin.fileno() if args.until_stdin_closes else None)
    except _Stop:
        pass
    except OSError as e:
        print(f"server agent: {e}", file=sys.stderr)
        return 1
    finally:
        listener.close()
    print("stopped", flush=True)
    return 0


# ---------------------------------------------------------------------------- the client


class AgentClient:
    """The controller's side: one kept-open connection to a server's agent, signed requests,
    checked answers. Thread-safe (one request on the wire at a time); reconnects once when the
    connection was lost. ``address``: ``"host:port"``."""

    def __init__(self, address: str, secret: str | bytes, timeout_s: float = 2.0):
        host, _, port = address.rpartition(":")
        self.address, self.host, self.port = address, host.strip("[]"), int(port)
        self.secret = bytes.fromhex(secret) if isinstance(secret, str) else bytes(secret)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._file = None
        self._seq = 0
        self._lock = threading.Lock()

    def _connect(self) -> None:
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._file = sock, sock.makefile("rb")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, time.time_ns())
        return self._seq

    def call(self, op: str, **fields) -> dict:
        """Send one request and return the agent's answer when it accepted it; AgentError with
        the reason when it refused it, or when it could not be reached (OSError inside)."""
        with self._lock:
            for attempt in (0, 1):
                seq = self._next_seq()
                try:
                    if self._sock is None:
                        self._connect()
                    self._sock.sendall(frame(self.secret, b"request", {"op": op, "seq": seq, **fields}))
                    line = self._file.readline(MAX_REPLY)
                    if not line:
                        raise ConnectionError("the agent closed the connection")
                    break
                except OSError as e:
                    self.close()
                    if attempt:
                        raise AgentError(f"agent {self.address}: {e}") from e
        try:
            answer = unframe(self.secret, b"reply", line)
        except Refused as e:
            raise AgentError(f"agent {self.address}: its answer is not signed with the run's secret "
                             f"({e})") from None
        if not answer.get("ok"):
            raise AgentError(f"agent {self.address} refused {op}: {answer.get('refused')}: "
                             f"{answer.get('detail')}", answer.get("refused"), answer)
        if answer.get("seq") != seq:
            raise AgentError(f"agent {self.address}: the answer is to seq {answer.get('seq')}, not {seq}")
        return answer

    def apply(self, budgets: dict[str, float]) -> dict:
        """Each miner's quota in cores; the agent's answer (applied, not_applied, at)."""
        return self.call("apply", budgets={k: float(v) for k, v in budgets.items()})

    def cpu_seconds(self) -> dict[str, float]:
        return self.call("cpu_seconds")["seconds"]

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
