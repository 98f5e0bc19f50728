"""The MEC executor: the program on each MEC host that serves paid tasks (paper Fig. 2, steps 3-7).

    python -m nodes.executor --lab RUN/lab.json --name mec3 --key KEYFILE [--dishonest]

It listens on its host's data address (``lab.executor_port``) and, for each connection:

1. reads one request line (JSON, signed by the UE's chain key), within ``lab.header_timeout_s``;
2. checks the payment on chain **before any work**: an escrow for exactly this UE and task, on
   this server, open (not settled), with its deadline ahead, of the amount the contract charges
   for the service demand the UE paid for, on this chain and contract; the upload size must be
   the data size the UE paid for and within ``lab.max_upload_mb``. Anything else is refused
   with a named error (``unpaid``, ``underpaid``, ``replayed``, ``foreign_chain``, ``expired``,
   ``other_server``, ``oversized``, ``malformed``, ``bad_signature``) and no work is done;
3. reads the data, waits for the CPU (one task at a time: Σ_u x_u^m = 1), does the real work
   (:mod:`nodes.work`, the task's model Gcycles turned into kernel iterations by
   :class:`testbed.units.LiveMapping`), and returns the result;
4. records the completion on chain (``complete`` with the result's digest, in a background
   queue so the next task does not wait for a block) and reports the task to the controller
   (POST /report, signed) and to its own ``reports.jsonl``.

Its CPU is its host's: in ``coupling = "shared"`` the executor and the host's miner are in one
cgroup with the host's quota, so mining takes CPU from the tasks as κ·p_m does in the model.
``--dishonest`` (or the server named in ``lab.dishonest``) returns fabricated results and still
calls ``complete``: the fault the UEs' checks must catch.
"""
from __future__ import annotations

import argparse
import json
import queue
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.request
from pathlib import Path

from eth_account import Account

from agent.model import task_gcycles
from contracts.txsender import ContractRevert

READ_CHUNK = 256 * 1024


class Refusal(Exception):
    """A request the executor does not serve; ``code`` names why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Conn:
    """A socket with what :func:`read_line` read past the end of its line kept for the next read."""

    def __init__(self, sock: socket.socket):
        self.sock, self.pending = sock, b""

    def __getattr__(self, name):          # settimeout, recv, sendall, close ...
        return getattr(self.sock, name)


def read_line(sock: Conn, limit: int, timeout: float) -> bytes:
    """One newline-terminated line, at most ``limit`` bytes, within ``timeout`` seconds."""
    buf = sock.pending
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refusal("timeout", f"no complete request line within {timeout:.0f} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            raise Refusal("timeout", f"no complete request line within {timeout:.0f} s") from None
        if not chunk:
            raise Refusal("malformed", "connection closed before the request line ended")
        buf += chunk
        if len(buf) > limit and b"\n" not in buf[:limit]:
            raise Refusal("malformed", f"request line over {limit} bytes")
    line, _, rest = buf.partition(b"\n")
    sock.pending = rest                                    # data sent right after the line
    return line


def read_exact(sock: Conn, n: int, timeout: float) -> bytes:
    """Exactly ``n`` bytes (after what :func:`read_line` over-read), within ``timeout``."""
    parts = [sock.pending]
    sock.pending = b""
    have = len(parts[0])
    deadline = time.monotonic() + timeout
    while have < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refusal("timeout", f"upload stalled: {have} of {n} bytes after {timeout:.0f} s")
        sock.settimeout(min(left, 10.0))
        try:
            chunk = sock.recv(min(READ_CHUNK, n - have))
        except socket.timeout:
            continue
        if not chunk:
            raise Refusal("malformed", f"upload ended at {have} of {n} bytes")
        parts.append(chunk)
        have += len(chunk)
    data = b"".join(parts)
    if len(data) > n:
        raise Refusal("oversized", f"upload longer than the {n} bytes paid for")
    return data


def send_line(sock: socket.socket, obj: dict) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def request_digest(header: dict) -> bytes:
    """The bytes a UE signs: the request header as canonical JSON."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


class Executor:
    """One MEC server's executor (see the module docstring)."""

    def __init__(self, lab_path: Path, name: str, key: str, dishonest: bool = False):
        from contracts.binding import TradingContract
        from contracts.txsender import TxSender
        from testbed import units
        from testbed.runinfo import LabInfo
        from web3 import HTTPProvider, Web3

        self.info = LabInfo.load(lab_path, wait_s=300)
        self.scn = self.info.scenario_obj()
        self.name = name
        self.me = self.info.servers[name]
        self.account = Account.from_key(key)
        if self.account.address.lower() != self.me.address.lower():
            raise SystemExit(f"{name}: the key is not {name}'s account")
        self.dishonest = dishonest or name in self.scn.lab.dishonest
        cal = units.Calibration.load(Path(self.info.calibration))
        self.mapping = units.LiveMapping(self.scn.model, self.scn.lab.mining_cores,
                                         self.scn.lab.host_cores, cal)
        cfg = self.scn.contract
        w3 = Web3(HTTPProvider(self.info.gateway_url, request_kwargs={"timeout": cfg.rpc_timeout_s}))
        self.trade = TradingContract(w3, self.info.contract, cfg, sender=TxSender(w3, cfg))
        self.cpu = threading.Lock()               # one task at a time
        self.seen: set[tuple[str, int]] = set()   # (ue, task) served or being served
        self.seen_lock = threading.Lock()
        self.completions: queue.Queue = queue.Queue()
        self.out = Path(lab_path).parent / "executors"
        self.out.mkdir(exist_ok=True)
        self.reports = open(self.out / f"{name}.jsonl", "a", buffering=1)
        self.served = self.refused = 0
        self.ue_names = {e.address.lower(): n for n, e in self.info.ues.items()}

    # ---- admission ----------------------------------------------------------------------
    def admit(self, raw: bytes) -> dict:
        """Parse and check one request; return the task to run, or raise :class:`Refusal`."""
        from eth_account.messages import encode_defunct
        from testbed import units
        try:
            req = json.loads(raw)
            header, sig = req["header"], req["sig"]
            ue = str(header["ue"]).lower()
            task_id = int(header["task_id"])
            data_bytes = int(header["data_bytes"])
        except (ValueError, KeyError, TypeError) as e:
            raise Refusal("malformed", f"a request is {{'header': {{ue, task_id, chain_id, contract, "
                                       f"data_bytes}}, 'sig'}}: {e}") from None
        try:
            signer = Account.recover_message(encode_defunct(primitive=request_digest(header)), signature=sig)
        except Exception:
            raise Refusal("bad_signature", "the request's signature does not verify") from None
        if signer.lower() != ue:
            raise Refusal("bad_signature", f"request for {ue} signed by {signer}")
        if header.get("chain_id") != self.info.chain_id or \
                str(header.get("contract", "")).lower() != self.info.contract.lower():
            raise Refusal("foreign_chain", f"payment proof for chain {header.get('chain_id')} contract "
                                           f"{header.get('contract')}, this server is paid on chain "
                                           f"{self.info.chain_id} contract {self.info.contract}")
        limit = int(self.scn.lab.max_upload_mb * units.BYTES_PER_MB)
        if not 0 < data_bytes <= limit:
            raise Refusal("oversized", f"upload of {data_bytes} bytes; this server takes 1..{limit}")
        with self.seen_lock:
            if (ue, task_id) in self.seen:
                raise Refusal("replayed", f"task {task_id} of {ue} was already served here")
        escrow = self.trade.escrow(ue, task_id)
        state = escrow.state.name
        if state == "NONE":
            raise Refusal("unpaid", f"no escrow for task {task_id} of {ue}")
        if state != "OPEN":
            raise Refusal("replayed", f"the escrow of task {task_id} of {ue} is already {state.lower()}")
        if (escrow.mec or "").lower() != self.me.address.lower():
            raise Refusal("other_server", f"task {task_id} of {ue} was paid to {escrow.mec}, not to {self.name}")
        opened = self.trade.opened_escrows(ue=ue, task_id=task_id, from_block=self.info.deploy_block)
        if len(opened) != 1:
            raise Refusal("unpaid", f"no EscrowOpened event for task {task_id} of {ue}")
        ev = opened[0]
        demand = int(ev["serviceDemand"])
        if escrow.amount_wei != self.trade.quote(demand):
            raise Refusal("underpaid", f"escrow holds {escrow.amount_wei} wei, the service demand "
                                       f"{demand} costs {self.trade.quote(demand)} wei")
        if int(ev["dataSize"]) != 8 * data_bytes:
            raise Refusal("underpaid", f"paid for {int(ev['dataSize']) // 8} bytes of data, uploading {data_bytes}")
        gcycles = float(task_gcycles(self.scn.model, data_bytes / units.BYTES_PER_MB,
                                     demand / units.CYCLES_PER_GCYCLE))
        margin = 2 * self.mapping.nominal_seconds(gcycles) + 5
        now = max(self.trade.latest_block_time(), int(time.time()))   # as the UE's deadline was set
        if escrow.deadline <= now + margin:
            raise Refusal("expired", f"escrow deadline {escrow.deadline} leaves under {margin:.0f} s "
                                     f"(block time {now})")
        with self.seen_lock:
            if (ue, task_id) in self.seen:
                raise Refusal("replayed", f"task {task_id} of {ue} was already served here")
            self.seen.add((ue, task_id))
        return {"ue": ue, "ue_name": self.ue_names.get(ue, ue), "task_id": task_id,
                "data_bytes": data_bytes, "demand": demand, "gcycles": gcycles,
                "desired_s": float(header.get("desired_s", 0.0)),
                "iterations": self.mapping.kernel_iterations(gcycles), "deadline": escrow.deadline}

    # ---- one connection -------------------------------------------------------------------
    def handle(self, raw_sock: socket.socket, peer) -> None:
        from nodes.work import compute, fabricate
        sock = Conn(raw_sock)
        t_conn = time.monotonic()
        try:
            raw = read_line(sock, 8192, self.scn.lab.header_timeout_s)
            task = self.admit(raw)
        except Refusal as r:
            self.refused += 1
            self._log({"event": "refused", "code": r.code, "why": str(r), "peer": peer[0]})
            try:
                send_line(sock, {"accepted": False, "code": r.code, "error": str(r)})
            except OSError:
                pass
            return
        except Exception as e:        # the chain unreachable, a bug: say so, keep serving others
            self._log({"event": "error", "why": f"{type(e).__name__}: {e}", "peer": peer[0]})
            try:
                send_line(sock, {"accepted": False, "code": "server_error", "error": str(e)})
            except OSError:
                pass
            return
        t_admit = time.monotonic()
        try:
            send_line(sock, {"accepted": True, "iterations": task["iterations"]})
            size = task["data_bytes"]
            data = read_exact(sock, size, timeout=max(30.0, size / 125_000))   # >= 1 Mbit/s
            t_up = time.monotonic()
            send_line(sock, {"received": True})
            with self.cpu:
                t_start = time.monotonic()
                res = fabricate(task["iterations"], seed=task["task_id"]) if self.dishonest \
                    else compute(data, task["iterations"])
                t_done = time.monotonic()
            blob = res.to_bytes()
            send_line(sock, {"ok": True, "queue_s": t_start - t_up, "compute_s": t_done - t_start,
                             "iterations": res.iterations, "result_bytes": len(blob)})
            sock.sendall(blob)
            t_sent = time.monotonic()
        except (Refusal, OSError) as e:
            self._log({"event": "aborted", "task": task["task_id"], "ue": task["ue"], "why": str(e)})
            return    # no result delivered: no completion claimed; the UE takes its refund
        self.served += 1
        rec = {"event": "served", "mec": self.name, "ue": task["ue"], "ue_name": task["ue_name"],
               "task_id": task["task_id"], "desired_s": task["desired_s"], "gcycles": task["gcycles"],
               "iterations": task["iterations"], "admit_s": t_admit - t_conn, "upload_s": t_up - t_admit,
               "queue_s": t_start - t_up, "compute_s": t_done - t_start, "send_s": t_sent - t_done,
               "service_s": t_sent - t_admit, "dishonest": self.dishonest, "t": time.time()}
        self.completions.put((task, res.digest(), rec))

    # ---- completion on chain and reports --------------------------------------------------
    def complete_loop(self) -> None:
        while True:
            item = self.completions.get()
            if item is None:
                return
            task, digest, rec = item
            t0 = time.monotonic()
            for attempt in range(6):
                try:
                    r = self.trade.complete(self.account, ue=task["ue"], task_id=task["task_id"],
                                            result_hash=digest)
                    rec.update(complete_gas=r.gas_used, complete_s=time.monotonic() - t0,
                               complete_block=r.block_number, complete_attempts=attempt + 1)
                    rec.pop("complete_error", None)
                    break
                except ContractRevert as e:
                    rec.update(complete_error=f"{e}")
                    # a chain re-organisation can take the escrow out for a block or two (its
                    # payment goes back to the pool and is mined again): try again, but not
                    # what can never succeed
                    if e.error in ("AlreadyPaid", "AlreadyRefunded", "DeadlinePassed", "NotTaskMec"):
                        break
                except Exception as e:
                    rec.update(complete_error=f"{type(e).__name__}: {e}")
                time.sleep(2.0)
            self._log(rec)
            self._report(rec)

    def _report(self, rec: dict) -> None:
        from controller.api import sign_body
        body = json.dumps({"source": "executor", "mec": self.name, "ue": rec["ue_name"],
                           "task_id": rec["task_id"], "desired_s": rec["desired_s"] or 1e-9,
                           "latency_s": rec["service_s"], "ok": "complete_error" not in rec,
                           "detail": {k: rec[k] for k in ("queue_s", "compute_s", "upload_s", "gcycles")}}).encode()
        req = urllib.request.Request(self.info.api_url + "/report", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-Signer": self.name,
                                              "X-Signature": sign_body(self.account, body)})
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except Exception as e:
            self._log({"event": "report_failed", "task": rec["task_id"], "why": str(e)})

    def _log(self, rec: dict) -> None:
        self.reports.write(json.dumps({"t": time.time(), **rec}) + "\n")

    # ---- serving ----------------------------------------------------------------------------
    def serve(self) -> None:
        executor = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                executor.handle(self.request, self.client_address)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        threading.Thread(target=self.complete_loop, daemon=True, name="complete").start()
        with Server((self.me.ip, self.info.executor_port), Handler) as srv:
            signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
            print(f"executor {self.name} serving on {self.me.ip}:{self.info.executor_port}"
                  f"{' (DISHONEST)' if self.dishonest else ''}", flush=True)
            srv.serve_forever(poll_interval=0.2)
        # finish the completions already queued, so no served task is left unclaimed
        self.completions.put(None)
        deadline = time.monotonic() + 30
        while not self.completions.empty() and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"executor {self.name} stopped: {self.served} served, {self.refused} refused", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodes.executor", description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True, type=Path, help="the running lab's lab.json")
    ap.add_argument("--name", required=True, help="this MEC server's name (mec1 ...)")
    ap.add_argument("--key", required=True, type=Path, help="file holding this server's private key")
    ap.add_argument("--dishonest", action="store_true", help="fabricate results (fault injection)")
    args = ap.parse_args(argv)
    Executor(args.lab, args.name, args.key.read_text().strip(), args.dishonest).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
