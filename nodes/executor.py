"""The MEC executor: the program on each MEC host that serves paid tasks (paper Fig. 2, steps 3-7).

    python -m nodes.executor --lab RUN/lab.json --name mec3 --key KEYFILE [--dishonest | --lazy] [--stall S]

It listens on its host's data address (``lab.executor_port``) and, for each connection:

1. reads one request line (JSON, signed by the UE's chain key; :mod:`nodes.wire`), within
   ``lab.header_timeout_s``;
2. checks the payment **before any work**, by ``contract.payment``:

   - ``escrow`` (the paper's literal reading): on chain, an escrow for exactly this UE and task,
     on this server, open (not settled), with its deadline ahead, of the amount the contract
     charges for the service demand the UE paid for; the upload size must be the data size the
     UE paid for;
   - ``channel``: locally, in milliseconds (:class:`nodes.channels.PayeeLanes`): a voucher
     signed by the UE on its lane to this server, for this task and request, on a channel seen
     ``contract.confirmations`` blocks deep, within the lane's cap, raising what this server has
     earned on the lane by exactly φ_u = µ·ξ_u of the task;

   on this chain and contract, within ``lab.max_upload_mb``. Anything else is refused with a
   named error (``unpaid``, ``underpaid``, ``replayed``, ``foreign_chain``, ``expired``,
   ``other_server``, ``oversized``, ``malformed``, ``bad_signature``; channel: ``no_channel``,
   ``wrong_amount``, ``stale_voucher``, ``over_cap``, ``bad_voucher_signature``, ...) and no
   work is done;
3. reads the data, waits for the CPU (one task at a time: Σ_u x_u^m = 1), does the real work
   (:mod:`nodes.work`, the task's model Gcycles turned into kernel iterations by
   :class:`scenario.units.LiveMapping`) in its kernel process, the only part of it the lab puts
   in the host's CPU quota, and returns the result;
4. escrow: records the completion on chain (``complete`` with the result's digest, in a
   background queue so the next task does not wait for a block); channel: the voucher is earned
   and logged, and redeemed with the lane's others in one transaction every
   ``contract.redeem_every_s`` and when the executor stops (SIGTERM);
5. reports the task to the controller (POST /report, signed: the execution time of eq. (2),
   queue + compute, and what it was paid) and to its own ``executors/<name>.jsonl``.

Its CPU is its host's: in ``coupling = "shared"`` the executor and the host's miner are in one
cgroup with the host's quota, so mining takes CPU from the tasks as κ·p_m does in the model.
``--dishonest`` (or the server named in ``lab.dishonest``) returns fabricated results and still
claims its payment: the fault the UEs' checks must catch.
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
from pathlib import Path

from agent.config import task_gcycles
from chain.keys import Key, recover_message
from contracts.light import LightTrade
from nodes.api_client import ApiClient
from contracts.txsender import ContractRevert
from nodes.channels import PayeeLanes, VoucherRefused
from nodes.wire import (Conn, Refusal, ack_bytes, read_digest, read_line, receipt_bytes,  # noqa: F401
                        request_digest, request_hash, send_line)
from nodes.work import Kernel, fabricate
from scenario import units
from scenario.runinfo import LabInfo


class Executor:
    """One MEC server's executor (see the module docstring)."""

    def __init__(self, lab_path: Path, name: str, key: str, dishonest: bool = False, lazy: bool = False,
                 stall_s: float = 0.0):

        self.info = LabInfo.load(lab_path, wait_s=300)
        self.scn = self.info.scenario_obj()
        self.name = name
        self.me = self.info.servers[name]
        self.key = Key(key)              # signs its answers, receipts, API calls and transactions
        self.api = ApiClient(self.info.api_url, signer=name, key=self.key)
        if self.key.address.lower() != self.me.address.lower():
            raise SystemExit(f"{name}: the key is not {name}'s account")
        self.dishonest = dishonest or name in self.scn.lab.dishonest
        self.lazy = lazy              # fault injection: a true hash chain of one iteration, said so
        self.stall_s = stall_s        # fault injection: this long more before each task's result
        # its server's own calibration on a cluster (the work kernel's iterations per Gcycle)
        self.mapping = self.info.mappings(Path(lab_path).parent)[name]
        cfg = self.scn.contract
        self.trade = LightTrade(self.info.gateway_url, self.info.contract, cfg)   # no web3.py: ~40 MB less
        self.cpu = threading.Lock()               # one task at a time
        self.seen: set[tuple[str, int]] = set()   # (ue, task) served or being served
        self.seen_lock = threading.Lock()
        self.completions: queue.Queue = queue.Queue()
        self.out = Path(lab_path).parent / "executors"
        self.out.mkdir(exist_ok=True)
        self.reports = open(self.out / f"{name}.jsonl", "a", buffering=1)
        self.completions_lock = threading.Lock()
        self.completions_log = open(self.out / f"{name}-completions.jsonl", "a", buffering=1)
        self.served = self.refused = 0
        self.ue_names = {e.address.lower(): n for n, e in self.info.ues.items()}
        # the work kernel in its own process, alone in the host's CPU group: a task's cycles are
        # the host's f_m (shared with its miner), the executor's own work is not
        self.kernel = Kernel(sys.executable)
        self.channel = cfg.payment == "channel"
        self.lanes = None
        self.stopped = threading.Event()
        if self.channel:
            self.lanes = PayeeLanes(self.trade, self.me.address, confirmations=cfg.confirmations,
                                    log=self.out / f"{name}-vouchers.jsonl", chain_id=self.info.chain_id,
                                    expiry_margin_s=cfg.redeem_every_s + 600)

    # ---- admission ----------------------------------------------------------------------
    def admit(self, raw: bytes) -> dict:
        """Parse and check one request; return the task to run, or raise :class:`Refusal`."""
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
            signer = recover_message(request_digest(header), sig)
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
        if self.channel:
            return self._admit_voucher(req, header, ue, task_id, data_bytes)
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
                "iterations": self.mapping.kernel_iterations(gcycles), "deadline": escrow.deadline,
                "paid_wei": escrow.amount_wei}

    def _admit_voucher(self, req: dict, header: dict, ue: str, task_id: int, data_bytes: int) -> dict:
        """Channel mode: the voucher in the request pays this task (local checks only)."""
        try:
            demand = int(header["demand"])
            if not 0 < demand < 2**64:
                raise ValueError(f"demand {demand} cycles out of (0, 2^64)")
        except (KeyError, TypeError, ValueError) as e:
            raise Refusal("malformed", f"a channel request names the task's demand in cycles: {e}") from None
        price = units.price_wei(self.lanes.unit_price, demand)
        try:
            v = self.lanes.check(ue, task_id, request_hash(header), req.get("voucher"), price)
        except VoucherRefused as r:
            raise Refusal(r.code, str(r), **r.detail) from None
        with self.seen_lock:
            if (ue, task_id) in self.seen:
                self.lanes.abandoned(ue, task_id)
                raise Refusal("replayed", f"task {task_id} of {ue} was already served here")
            self.seen.add((ue, task_id))
        gcycles = float(task_gcycles(self.scn.model, data_bytes / units.BYTES_PER_MB, demand / units.CYCLES_PER_GCYCLE))
        return {"ue": ue, "ue_name": self.ue_names.get(ue, ue), "task_id": task_id, "data_bytes": data_bytes,
                "demand": demand, "gcycles": gcycles, "desired_s": float(header.get("desired_s", 0.0)),
                "iterations": self.mapping.kernel_iterations(gcycles), "paid_wei": price,
                "cumulative_wei": v.cumulative}

    def _ack(self, raw: bytes, verdict: str) -> dict:
        """``{"ack": this server's signature over (UE, task, verdict)}`` for a request whose UE
        signed it (:func:`nodes.wire.ack_bytes`); {} for one that names no UE it can prove."""
        try:
            header = json.loads(raw)["header"]
            ue, task_id = str(header["ue"]), int(header["task_id"])
            signer = recover_message(request_digest(header), json.loads(raw)["sig"])
        except Exception:
            return {}
        if signer.lower() != ue.lower():
            return {}
        return {"ack": self.key.sign_message(ack_bytes(ue, task_id, verdict))}

    # ---- one connection -------------------------------------------------------------------
    def handle(self, raw_sock: socket.socket, peer) -> None:
        sock = Conn(raw_sock)
        t_conn = time.monotonic()
        raw = b""
        try:
            raw = read_line(sock, 8192, self.scn.lab.header_timeout_s)
            task = self.admit(raw)
        except Refusal as r:
            self.refused += 1
            self._log({"event": "refused", "code": r.code, "why": str(r), "peer": peer[0]})
            try:
                send_line(sock, {"accepted": False, "code": r.code, "error": str(r), **r.detail,
                                 **self._ack(raw, r.code)})
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
            send_line(sock, {"accepted": True, "iterations": task["iterations"],
                             **self._ack(raw, "accepted")})
            size = task["data_bytes"]
            h0 = read_digest(sock, size, timeout=max(30.0, size / 125_000))   # >= 1 Mbit/s; h_0 = SHA256(data)
            t_up = time.monotonic()
            send_line(sock, {"received": True})
            with self.cpu:
                t_start = time.monotonic()
                if self.stall_s:
                    time.sleep(self.stall_s)
                res = fabricate(task["iterations"], seed=task["task_id"]) if self.dishonest \
                    else self.kernel.compute_from(h0, 1) if self.lazy \
                    else self.kernel.compute_from(h0, task["iterations"])
                t_done = time.monotonic()
            blob = res.to_bytes()
            # the receipt: this server returned this result for this data (a UE's claim that it is
            # wrong can then be checked by the controller, and a false claim refused)
            receipt = self.key.sign_message(receipt_bytes(task["ue"], task["task_id"], h0, res.digest()))
            send_line(sock, {"ok": True, "queue_s": t_start - t_up, "compute_s": t_done - t_start,
                             "iterations": res.iterations, "result_bytes": len(blob), "receipt": receipt})
            sock.sendall(blob)
            t_sent = time.monotonic()
        except (Refusal, OSError) as e:
            self._log({"event": "aborted", "task": task["task_id"], "ue": task["ue"], "why": str(e)})
            if self.channel:
                self.lanes.abandoned(task["ue"], task["task_id"])
            return    # no result delivered: no payment claimed (escrow: the UE takes its refund)
        if self.channel:
            self.lanes.earned(task["ue"], task["task_id"])
        self.served += 1
        rec = {"event": "served", "mec": self.name, "ue": task["ue"], "ue_name": task["ue_name"],
               "task_id": task["task_id"], "desired_s": task["desired_s"], "gcycles": task["gcycles"],
               "iterations": task["iterations"], "admit_s": t_admit - t_conn, "upload_s": t_up - t_admit,
               "queue_s": t_start - t_up, "compute_s": t_done - t_start, "send_s": t_sent - t_done,
               "service_s": t_sent - t_admit, "execution_s": t_done - t_up, "dishonest": self.dishonest,
               "paid_wei": task.get("paid_wei"), "t": time.time()}
        if self.channel:            # paid by the voucher: nothing to record on chain per task
            self._log(rec)
            self._report(rec)
            return
        self._queue_completion(task, res.digest(), rec)

    def _queue_completion(self, task: dict, digest: bytes, rec: dict, persist: bool = True) -> None:
        """Queue ``complete`` for a served escrow task, first on disk
        (``<mec>-completions.jsonl``): a restarted executor claims what its predecessor served."""
        if persist:
            with self.completions_lock:
                self.completions_log.write(json.dumps({"op": "queued", "task": task, "digest": digest.hex(),
                                                       "rec": rec}) + "\n")
        self.completions.put((task, digest, rec))

    def _completion_done(self, task: dict) -> None:
        with self.completions_lock:
            self.completions_log.write(json.dumps({"op": "done", "ue": task["ue"], "task_id": task["task_id"]}) + "\n")

    def _requeue_completions(self) -> int:
        """The completions a predecessor queued and did not finish, queued again (before serving)."""
        path = self.out / f"{self.name}-completions.jsonl"
        if not path.exists():
            return 0
        queued: dict[tuple[str, int], dict] = {}
        for line in path.read_text().splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue                      # a line cut by a crash: its task was never served
            key = (d.get("ue") or d["task"]["ue"], d.get("task_id", d.get("task", {}).get("task_id")))
            if d.get("op") == "queued":
                queued[key] = d
            elif d.get("op") == "done":
                queued.pop(key, None)
        for (ue, task_id), d in queued.items():
            with self.seen_lock:
                self.seen.add((ue, int(task_id)))
            self._queue_completion(d["task"], bytes.fromhex(d["digest"]), {**d["rec"], "requeued": True},
                                   persist=False)
        return len(queued)

    # ---- completion on chain and reports --------------------------------------------------
    def complete_loop(self) -> None:
        while True:
            item = self.completions.get()
            if item is None:
                return
            task, digest, rec = item
            t0 = time.monotonic()
            attempt = -1
            # until it is paid, or can never be (the deadline passed: the UE takes its refund)
            while attempt < 5 or time.time() < float(task.get("deadline") or 0) + 30:
                attempt += 1
                try:
                    r = self.trade.complete(self.key, ue=task["ue"], task_id=task["task_id"],
                                            result_hash=digest)
                    rec.update(complete_gas=r.gas_used, complete_s=time.monotonic() - t0,
                               complete_block=r.block_number, complete_attempts=attempt + 1)
                    rec.pop("complete_error", None)
                    break
                except ContractRevert as e:
                    if e.error == "AlreadyPaid":
                        # only the task's server may complete: our own earlier attempt (or a
                        # predecessor's, before a restart) was mined after all
                        rec.pop("complete_error", None)
                        rec.update(complete_note="already paid", complete_attempts=attempt + 1)
                        break
                    rec.update(complete_error=f"{e}")
                    # a chain re-organisation can take the escrow out for a block or two (its
                    # payment goes back to the pool and is mined again): try again, but not
                    # what can never succeed
                    if e.error in ("AlreadyPaid", "AlreadyRefunded", "DeadlinePassed", "NotTaskMec"):
                        break
                except Exception as e:
                    rec.update(complete_error=f"{type(e).__name__}: {e}")
                time.sleep(2.0)
            self._completion_done(task)
            self._log(rec)
            self._report(rec)

    def _report(self, rec: dict) -> None:
        # T_u^m of eqs. (2), (3), (11): the execution time (queue + compute) of the task
        paid = rec.get("paid_wei") if "complete_error" not in rec else 0
        body = {"source": "executor", "mec": self.name, "ue": rec["ue_name"], "task_id": rec["task_id"],
                "desired_s": rec["desired_s"] or 1e-9, "latency_s": rec["execution_s"], "ok": "complete_error" not in rec,
                "detail": {**{k: rec[k] for k in ("queue_s", "compute_s", "upload_s", "service_s", "gcycles")},
                           "paid_wei": paid or 0}}
        try:
            self.api.request("POST", "/report", body)
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

        if not self.channel:
            requeued = self._requeue_completions()
            if requeued:
                print(f"executor {self.name}: {requeued} completion(s) left by a predecessor queued again",
                      flush=True)
        threading.Thread(target=self.complete_loop, daemon=True, name="complete").start()
        if self.channel:
            self.lanes.load([e.address for e in self.info.ues.values()])
            threading.Thread(target=self.channel_loop, daemon=True, name="channels").start()
        with Server((self.me.ip, self.info.executor_port), Handler) as srv:
            signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
            print(f"executor {self.name} serving on {self.me.ip}:{self.info.executor_port} "
                  f"({self.scn.contract.payment}){' (DISHONEST)' if self.dishonest else ''}", flush=True)
            srv.serve_forever(poll_interval=0.2)
        self.stopped.set()
        # finish the completions already queued, so no served task is left unclaimed
        self.completions.put(None)
        deadline = time.monotonic() + 30
        while not self.completions.empty() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.channel:                 # every earned voucher redeemed before leaving
            self.redeem(final=True)
        print(f"executor {self.name} stopped: {self.served} served, {self.refused} refused", flush=True)

    # ---- channels: what the chain says, and redemption -------------------------------------
    def channel_loop(self) -> None:
        """Every second: read the channel events that are deep enough; redeem every
        ``contract.redeem_every_s``, and at once for a lane its UE is closing."""
        last = time.monotonic()
        while not self.stopped.wait(1.0):
            try:
                self.lanes.watch()
                if self.lanes.closing() or time.monotonic() - last >= self.scn.contract.redeem_every_s:
                    last = time.monotonic()
                    self.redeem()
            except Exception as e:          # the gateway unreachable for a while: try again
                self._log({"event": "channel_error", "why": f"{type(e).__name__}: {e}"})

    def redeem(self, final: bool = False) -> None:
        """Redeem the latest earned voucher of every lane in one transaction. ``final``: keep
        trying (the gateway may be cut for a while) for up to ``lab.drain_s``."""
        deadline = time.monotonic() + (self.scn.lab.drain_s if final else 0)
        while True:
            vouchers = self.lanes.to_redeem()
            if not vouchers:
                return
            try:
                r = self.trade.redeem(self.key, vouchers)
                self.lanes.redeemed(vouchers, r)
                self._log({"event": "redeemed", "vouchers": len(vouchers), "gas": r.gas_used, "tx": r.tx_hash,
                           "wei": sum(v.cumulative for v in vouchers), "block": r.block_number})
                if not final:
                    return
            except ContractRevert as e:
                # a voucher the chain will not pay (a lane already redeemed by an earlier run of
                # this executor, closed, or expired): read what the chain holds, and go on
                self._log({"event": "redeem_refused", "why": str(e)})
                self._reconcile(vouchers)
            except Exception as e:
                self._log({"event": "redeem_failed", "why": f"{type(e).__name__}: {e}"})
                if time.monotonic() > deadline:
                    print(f"executor {self.name}: could not redeem {self.lanes.unredeemed_wei()} wei of vouchers: "
                          f"{e}", file=sys.stderr, flush=True)
                    return
                time.sleep(2.0)

    def _reconcile(self, vouchers) -> None:
        """After a refused redemption: a lane the chain has paid up to the voucher counts as
        redeemed; one it will never pay (closed, expired) is given up and logged as lost."""
        for v in vouchers:
            lane = self.trade.lane(v.ue, self.me.address)
            if lane.redeemed_wei >= v.cumulative and lane.generation == v.generation:
                self.lanes.redeemed([v])
            elif lane.generation != v.generation or lane.state == "closed":
                self._log({"event": "voucher_lost", "ue": v.ue, "cumulative": v.cumulative,
                           "why": f"lane {lane.state}, generation {lane.generation}"})
                self.lanes.redeemed([v])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodes.executor", description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True, type=Path, help="the running lab's lab.json")
    ap.add_argument("--name", required=True, help="this MEC server's name (mec1 ...)")
    ap.add_argument("--key", required=True, type=Path, help="file holding this server's private key")
    ap.add_argument("--dishonest", action="store_true", help="fabricate results (fault injection)")
    ap.add_argument("--stall", type=float, default=0.0, metavar="S",
                    help="wait S seconds more before each task's result (fault injection: a slow server)")
    ap.add_argument("--lazy", action="store_true",
                    help="compute one iteration only and return it as it is (fault injection)")
    args = ap.parse_args(argv)
    Executor(args.lab, args.name, args.key.read_text().strip(), args.dishonest, args.lazy, args.stall).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
