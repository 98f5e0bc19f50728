"""The UE client: the program in each UE's Docker container (paper Fig. 2, steps 1-3).

    python -m nodes.ue_client --lab /lab/lab.json --name ue3 --key /run/secrets/key --out /lab/out

It registers once (``createTrade``: Id_u, PK_u, W_u; with ``contract.payment = "channel"``
``openChannel``, which also deposits ``contract.channel_deposit_wei`` into its payment channel)
and then, task after task:

1. draws a task R_u = (d_u, ξ_u, τ_u) from Table I's ranges (the scenario's ``[model]``, seeded
   by the scenario's seed and the UE's index) and announces it to the controller (POST /task);
2. waits for the policy to give it a MEC server (GET /assignment/<ue>); after
   ``model.max_wait_slots`` slots without one it gives the task up, unpaid;
3. pays φ_u = µ·ξ_u for that server: ``escrow``: into escrow (``trading``, through the RPC
   gateway), waiting until the escrow is mined; ``channel``: a voucher signed on its lane to
   that server (:class:`nodes.channels.PayerLanes`), sent with the request, no chain call;
4. uploads d_u bytes to the server's executor with a signed request naming the payment, and
   receives the result;
5. checks the result against its own data (:func:`nodes.work.verify_from` with h_0, the hash of
   the data it sent, and a random segment of the work) and, with an escrow, against the result
   hash the server committed on chain (``EscrowPaid``). A server is paid on its own word, so this
   check is what catches one that takes payment without doing the work: a mismatch is a failed
   task, named with the server;
6. escrow: if the server refused, vanished or never finished, waits for the escrow's deadline
   and takes its refund (``refund``): no payment is ever left open. Channel: a task lost before
   its result was never earned (the next voucher pays on from the server's base);
7. reports the task to the controller (POST /report, signed) and appends its record to
   ``<out>/tasks.jsonl``: latency split into payment (escrow: until mined; channel: signing
   the voucher until the executor accepted it), upload, queue, compute, download and
   settlement (escrow: until the server's completion is mined), gas.

SIGTERM ends the run: no new task; a task not yet paid is cancelled; a paid one is finished
(or refunded) first.

What survives a restart (``<out>/ue_state.json``, written atomically): the next task id (a task id
is never reused: the contract and the executors key payments by it) and every escrow paid and
not yet settled. A background settler refunds an open escrow once its deadline has passed (a
task that raised after paying, a server that said `wrong_result` and never completed), and a
restarted client settles the escrows its predecessor left: no payment is left behind.
"""
from __future__ import annotations

import time

T_START = time.monotonic()       # before the imports: how long a start takes
STEERING_RETRIES = 3             # a connection reset, cut or answered by another server before
RETRY_PAUSE_S = 0.3              # the server accepted: tried again this many times, this far apart

import argparse  # noqa: E402
import json
import os
import random
import signal
import socket
import sys
import threading
from pathlib import Path

from chain.keys import Key
from contracts.reads import ContractReader, EscrowState
from contracts.txsender import TxSender
from nodes.api_client import ApiClient
from nodes.channels import PayerLanes
from nodes.rng import TaskData, TaskRng
from nodes.wire import Conn, read_exact, read_line, request_digest, request_hash, send_line, send_stream
from nodes.work import WorkResult, verify_from
from scenario import units
from scenario.runinfo import LabInfo


class TaskFailed(Exception):
    """The paid task did not produce a good result; ``outcome`` names how."""

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome


class UEClient:
    def __init__(self, lab_path: Path, name: str, key: str, out: Path):

        t_wait = time.monotonic()
        self.info = LabInfo.load(lab_path, wait_s=300)
        self.t_lab = time.monotonic()
        print(f"{name}: started in {t_wait - T_START:.1f} s, lab.json after {self.t_lab - t_wait:.1f} s more",
              flush=True)
        self.scn = self.info.scenario_obj()
        self.name = name
        self.index = int(name.lstrip("ue"))
        self.account = Key(key)
        if self.account.address.lower() != self.info.ues[name].address.lower():
            raise SystemExit(f"{name}: the key is not {name}'s account")
        self.api = ApiClient(self.info.api_url, signer=name, key=self.account, timeout_s=40.0)
        cfg = self.scn.contract
        # reads over plain JSON-RPC; the web3 binding (``trade``) only once a transaction is sent
        self.reader = ContractReader(self.info.gateway_url, self.info.contract, timeout_s=cfg.rpc_timeout_s)
        self._trade = None                     # (TradingContract, LocalAccount), see _chain
        self._chain_lock = threading.Lock()
        self.rng = TaskRng([self.scn.seed, self.index])   # numpy's default_rng, without numpy
        # The segments a UE re-checks come from the OS's randomness: a server cannot predict them
        # (a seeded draw would follow from lab.json, which every server reads).
        self.check_rng = random.SystemRandom()
        # The iteration count a task needs is the UE's own figure from the ξ_u it paid for, the
        # same conversion as the serving executor's (its server's calibration, public): a server
        # that did fewer iterations and says so is caught, not believed.
        self.mappings = self.info.mappings(Path(lab_path).parent)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.records = open(self.out / "tasks.jsonl", "a", buffering=1)
        self.stopping = False
        self.channel = cfg.payment == "channel"
        self.lanes = None                      # PayerLanes, once the channel is open
        self.state_path = self.out / "ue_state.json"
        self.state_lock = threading.Lock()
        self.state = self._load_state()
        self.in_flight: set[int] = set()       # escrow tasks whose own run settles them
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, *_):
        self.stopping = True

    @property
    def trade(self):
        """The web3 binding of the trading contract, loaded on first use: by an escrow (every
        task) or, on a payment channel, by a transaction (a top-up). About 30 MB a process
        (web3.py and eth_account), which a UE paying by voucher otherwise never loads."""
        return self._chain()[0]

    @property
    def signer(self):
        """This UE's key as eth_account's LocalAccount, which signs its transactions."""
        return self._chain()[1]

    def _chain(self):
        with self._chain_lock:
            if self._trade is None:
                from contracts.binding import TradingContract
                from eth_account import Account
                from web3 import HTTPProvider, Web3
                cfg = self.scn.contract
                w3 = Web3(HTTPProvider(self.info.gateway_url, request_kwargs={"timeout": cfg.rpc_timeout_s}))
                self._trade = (TradingContract(w3, self.info.contract, cfg, sender=TxSender(w3, cfg)),
                               Account.from_key(self.account.key))
            return self._trade

    # ---- what survives a restart ------------------------------------------------------------
    def _load_state(self) -> dict:
        try:
            d = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            d = {}
        except ValueError as e:
            raise SystemExit(f"{self.name}: {self.state_path} is not valid JSON ({e}); it lists the open "
                             "escrows: repair it, or move it away once they are settled") from None
        return {"next_task_id": int(d.get("next_task_id", 1)),
                "open": {int(k): v for k, v in d.get("open", {}).items()}}

    def _save_state(self) -> None:
        with self.state_lock:
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"next_task_id": self.state["next_task_id"],
                                       "open": {str(k): v for k, v in self.state["open"].items()}}))
            os.replace(tmp, self.state_path)

    def _escrow_open(self, task_id: int, **entry) -> None:
        with self.state_lock:
            self.state["open"][task_id] = {**self.state["open"].get(task_id, {}), **entry}
            self.state["next_task_id"] = max(self.state["next_task_id"], task_id + 1)
        self._save_state()

    def _escrow_closed(self, task_id: int) -> None:
        with self.state_lock:
            self.state["open"].pop(task_id, None)
        self._save_state()

    def open_escrows(self) -> dict[int, dict]:
        with self.state_lock:
            return dict(self.state["open"])

    def settle_leftovers(self) -> list[dict]:
        """One pass over the open escrows no running task owns: paid or refunded -> forgotten;
        none on chain (the payment never mined) once its deadline passed -> forgotten; open past
        its deadline -> refunded. Returns what was done."""
        done = []
        for task_id, entry in self.open_escrows().items():
            if task_id in self.in_flight:
                continue
            e = self.trade.escrow(self.account.address, task_id)
            now = self.trade.latest_block_time()
            if e.state in (EscrowState.PAID, EscrowState.REFUNDED):
                self._escrow_closed(task_id)
                done.append({"task_id": task_id, "settled": e.state.name.lower()})
            elif e.state is EscrowState.NONE:
                pending = (self.trade.w3.eth.get_transaction_count(self.account.address, "pending")
                           > self.trade.w3.eth.get_transaction_count(self.account.address, "latest"))
                if not pending and now > float(entry.get("deadline") or entry.get("t", 0) + 600):
                    self._escrow_closed(task_id)
                    done.append({"task_id": task_id, "settled": "never paid"})
            elif now > e.deadline:
                r = self.trade.refund(self.signer, task_id=task_id)
                self._escrow_closed(task_id)
                done.append({"task_id": task_id, "settled": "refunded", "refunded_wei": e.amount_wei,
                             "refund_gas": r.gas_used})
        for d in done:     # an event, not a task record: "task", not "task_id"
            rest = {k: v for k, v in d.items() if k != "task_id"}
            self.records.write(json.dumps({"ue": self.name, "event": "leftover", "task": d["task_id"], **rest,
                                           "t": time.time()}) + "\n")
        return done

    def _settler(self) -> None:
        while not self.stopping:
            try:
                self.settle_leftovers()
            except Exception as e:        # the gateway cut: the escrows stay listed, tried again
                self.records.write(json.dumps({"ue": self.name, "event": "settle_failed",
                                               "error": f"{type(e).__name__}: {e}", "t": time.time()}) + "\n")
            for _ in range(10):
                if self.stopping:
                    return
                time.sleep(0.5)

    # ---- controller API -------------------------------------------------------------------
    # ---- one task ---------------------------------------------------------------------------
    def draw(self):
        m = self.scn.model
        d = self.rng.uniform(*m.data_mb_range)
        xi = self.rng.uniform(*m.demand_gcycles_range)
        tau = self.rng.uniform(*m.desired_time_s_range)
        return units.chain_task(m, d, xi, tau)

    def wait_for_server(self, task_id: int) -> dict | None:
        give_up = time.monotonic() + self.scn.model.max_wait_slots * self.scn.model.slot_s
        while not self.stopping and time.monotonic() < give_up:
            wait = min(10.0, max(0.5, give_up - time.monotonic()))
            a = self.api.request("GET", f"/assignment/{self.name}?task={task_id}&wait={wait:.1f}", timeout=wait + 10)
            if a.get("mec"):
                return a
        return None

    def request(self, task_id: int, task, mec: str, data_bytes: int, price_wei: int | None) -> tuple[dict, object]:
        """The signed request line of one task, with its voucher in channel mode."""
        header = {"ue": self.account.address, "task_id": task_id, "chain_id": self.info.chain_id,
                  "contract": self.info.contract, "data_bytes": data_bytes, "desired_s": task.desired_s}
        voucher = None
        if self.channel:
            header.update(payment="channel", demand=task.service_demand)
            voucher = self.lanes.voucher(mec, price_wei, task_id, request_hash(header))
        sig = self.account.sign_message(request_digest(header))
        line = {"header": header, "sig": sig}
        if voucher is not None:
            line["voucher"] = voucher.to_json()
        return line, voucher

    def offload(self, task_id: int, task, mec: str, data: TaskData, rec: dict,
                price_wei: int | None = None) -> tuple[WorkResult, bytes]:
        """Steps 3 (channel: the voucher) to 5 over TCP; returns the result and h_0 = SHA256 of the
        data sent (made piece by piece as it is sent, never held whole), or raises :class:`TaskFailed`."""
        ip = self.info.service_ip or self.info.servers[mec].ip
        t0 = time.monotonic()
        try:
            adjusted = False
            for attempt in range(1 + STEERING_RETRIES):
                raw = None
                try:
                    raw = socket.create_connection((ip, self.info.executor_port), timeout=10)
                    s = Conn(raw)
                    line, voucher = self.request(task_id, task, mec, data.size, price_wei)
                    send_line(s, line)
                    reply = json.loads(read_line(s, 8192, 60))
                except ConnectionError as e:           # reset, refused, broken: not a timeout
                    if raw is not None:
                        raw.close()
                    # reset or refused before the server accepted anything: the switches may still
                    # have steered this connection by the UE's previous route (a datapath's
                    # cached flow outlives the new rule for a moment on a loaded machine).
                    # Nothing was accepted, and a voucher re-signed for this task carries the
                    # same cumulative amount, so trying again cannot pay twice.
                    if attempt == STEERING_RETRIES:
                        raise
                    rec.setdefault("retries", []).append(f"{type(e).__name__}")
                    time.sleep(RETRY_PAUSE_S)
                    continue
                # the server's signature over (this UE, the task, its verdict): evidence if the
                # task then fails (an accepted task that never came back)
                rec["_ack"], rec["_ack_verdict"] = reply.get("ack"), ("accepted" if reply.get("accepted")
                                                                       else str(reply.get("code")))
                if reply.get("accepted"):
                    break
                raw.close()
                if reply.get("code") == "wrong_lane" and attempt < STEERING_RETRIES:
                    # another server answered the service address (the same cause): again
                    rec.setdefault("retries", []).append("wrong_lane")
                    time.sleep(RETRY_PAUSE_S)
                    continue
                attempt_left = not adjusted
                # the server counts another base on the lane (a result it sent that never
                # arrived, a voucher log lost): go on from it if it is a voucher we signed
                if (attempt_left and self.channel and reply.get("code") in ("wrong_amount", "stale_voucher")
                        and self.lanes.adopt(mec, int(reply.get("base", -1)))):
                    rec["lane_adopted_base"] = int(reply["base"])
                    adjusted = True
                    continue
                if attempt_left and self.channel and reply.get("code") == "wrong_generation":
                    # the lane was settled and reopened since: sign on its new generation
                    self.lanes.set_generation(mec, self.reader.lane(self.account.address,
                                                                    self.info.servers[mec].address).generation)
                    adjusted = True
                    continue
                raise TaskFailed(f"refused:{reply.get('code')}", reply.get("error", "refused"))
            else:                                      # the last try was spent on an adjustment
                raise TaskFailed(f"refused:{reply.get('code')}", reply.get("error", "refused"))
            with raw:
                t_acc = time.monotonic()
                if voucher is not None:
                    rec.update(payment_s=t_acc - t0, paid_wei=price_wei, voucher_cumulative=voucher.cumulative,
                               voucher_nonce=voucher.nonce)
                h0 = send_stream(s, data.chunks(), 60)
                got = json.loads(read_line(s, 8192, 120))
                t_up = time.monotonic()
                if not got.get("received"):
                    raise TaskFailed("protocol", f"no upload acknowledgement: {got}")
                # escrow: until shortly before the escrow's deadline; channel: two minutes
                left = max(10.0, rec["deadline"] - time.time() - 5) if "deadline" in rec else 120.0
                res_hdr = json.loads(read_line(s, 8192, left))
                t_hdr = time.monotonic()
                blob = read_exact(s, int(res_hdr["result_bytes"]), 60)
                t_down = time.monotonic()
                if voucher is not None:         # the result is here: the server has earned it
                    self.lanes.earned(mec, voucher)
        except TaskFailed:
            raise
        except Exception as e:     # connection refused or reset, timeouts, a server gone
            raise TaskFailed("lost", f"{mec}: {type(e).__name__}: {e}") from None
        queue_s, compute_s = float(res_hdr.get("queue_s", 0)), float(res_hdr.get("compute_s", 0))
        rec.update(request_s=t_acc - t0, upload_s=t_up - t_acc, queue_s=queue_s, compute_s=compute_s,
                   download_s=t_down - t_hdr, result_wait_s=t_hdr - t_up, service_s=t_down - t0)
        rec["_receipt"] = res_hdr.get("receipt")          # the server's signature over what it returned
        return WorkResult.from_bytes(blob), h0

    def check_result(self, h0: bytes, res: WorkResult, mec: str, rec: dict) -> None:
        """Step 5's own check (:func:`nodes.work.verify_from` from h_0, at the iteration count this UE computed);
        a failure carries the evidence the controller checks: the server's receipt, the result,
        h_0 and the failing segment."""
        found: dict = {}
        ok, why = verify_from(h0, res, rec["iterations"], self.check_rng, found=found)
        if not ok:
            rec["evidence"] = {"receipt": rec.get("_receipt"), "result": res.to_bytes().hex(),
                               "h0": h0.hex(), "segment": found.get("segment", 0)}
            raise TaskFailed("wrong_result", f"{mec} returned a result that does not verify: {why}")

    def settle(self, task_id: int, res: WorkResult, h0: bytes, mec: str, rec: dict) -> None:
        """Step 5: the result must verify against our data (its h_0) and match the hash on chain."""
        self.check_result(h0, res, mec, rec)
        t0 = time.monotonic()
        deadline = rec["deadline"]
        while True:
            paid = self.trade.paid_escrows(ue=self.account.address, task_id=task_id,
                                           from_block=self.info.deploy_block)
            if paid:
                break
            if self.trade.latest_block_time() > deadline:
                raise TaskFailed("not_completed", f"{mec} never recorded the completion on chain")
            time.sleep(0.5)
        rec["settlement_s"] = time.monotonic() - t0
        rec["complete_block"] = paid[0]["blockNumber"]
        if bytes(paid[0]["resultHash"]) != res.digest():
            raise TaskFailed("hash_mismatch", f"{mec} committed {bytes(paid[0]['resultHash']).hex()} on chain "
                                              f"but returned a result hashing to {res.digest().hex()}")

    def refund(self, task_id: int, rec: dict) -> None:
        """Step 6: once block time passes the deadline, take the escrow back.

        The payment's block may have been undone by a reorganisation (the lab's miners make
        uncles): then the chain knows no escrow for a while, until the payment is mined again.
        The UE keeps looking until its deadline has passed and nothing of its own is pending;
        an escrow that reappears is refunded like any other, so no payment is left behind."""
        t0 = time.monotonic()
        while True:
            e = self.trade.escrow(self.account.address, task_id)
            if e.state is EscrowState.PAID:        # the server completed after all
                rec["refund"] = "not needed: completed"
                return
            if e.state is EscrowState.REFUNDED:
                return
            if e.state is EscrowState.NONE:
                pending = (self.trade.w3.eth.get_transaction_count(self.account.address, "pending")
                           > self.trade.w3.eth.get_transaction_count(self.account.address, "latest"))
                if not pending and self.trade.latest_block_time() > rec["deadline"]:
                    rec["refund"] = ("not needed: no escrow on chain (the payment's block was undone by a "
                                     "reorganisation and the payment never mined again: nothing was paid)")
                    rec["payment_undone"] = True
                    return
                if time.monotonic() - t0 > 600:
                    raise RuntimeError(f"task {task_id}: no escrow on chain and a transaction still pending "
                                       "after 10 min")
            elif self.trade.latest_block_time() > e.deadline:
                break
            time.sleep(1.0)
        r = self.trade.refund(self.signer, task_id=task_id)
        rec.update(refund_gas=r.gas_used, refund_wait_s=time.monotonic() - t0, refunded_wei=e.amount_wei)

    def run_task(self, task_id: int, task=None) -> dict:
        """One task from announcement to its record (``task``: a ``units.ChainTask``, default
        drawn from the scenario's distributions)."""
        task = task or self.draw()
        rec = {"ue": self.name, "task_id": task_id, "data_mb": task.data_mb, "demand": task.demand,
               "desired_s": task.desired_s, "gcycles": task.gcycles, "t_start": time.time()}
        self.api.request("POST", "/task", {"ue": self.name, "task_id": task_id, "data_mb": task.data_mb,
                                           "demand": task.demand, "desired_s": task.desired_s})
        t0 = time.monotonic()
        a = self.wait_for_server(task_id)
        rec["wait_s"] = time.monotonic() - t0
        if a is None:
            self.api.request("POST", "/task", {"ue": self.name, "task_id": task_id, "cancel": True})
            rec["outcome"] = "stopped" if self.stopping else "dropped"
            return rec
        mec = a["mec"]
        rec.update(mec=mec, slot=a.get("slot"), iterations=self.mappings[mec].kernel_iterations(task.gcycles))
        if self.channel:
            return self._run_channel_task(task_id, task, mec, rec, t0)
        t_pay = time.monotonic()
        self.in_flight.add(task_id)
        self._escrow_open(task_id, mec=mec, t=time.time())      # before sending: a crash may follow
        try:
            return self._run_escrow_task(task_id, task, mec, a, rec, t0, t_pay)
        finally:
            self.in_flight.discard(task_id)

    def _run_escrow_task(self, task_id: int, task, mec: str, a: dict, rec: dict, t0: float, t_pay: float) -> dict:
        pay = self.trade.trading(self.signer, mec=a["mec_address"], task_id=task_id,
                                 data_size_bits=task.data_bits, service_demand_cycles=task.service_demand,
                                 execution_time_s=task.desired_s)
        opened = pay.event("EscrowOpened")
        rec.update(payment_s=time.monotonic() - t_pay, trading_gas=pay.gas_used, paid_wei=opened["amount"],
                   deadline=opened["deadline"], pay_block=pay.block_number, trading_fee_wei=pay.fee_wei)
        self._escrow_open(task_id, deadline=opened["deadline"])
        data = self.rng.data(task.data_bytes)
        try:
            res, h0 = self.offload(task_id, task, mec, data, rec)
            self.settle(task_id, res, h0, mec, rec)
            rec["outcome"] = "completed"
        except TaskFailed as f:
            rec.update(outcome=f.outcome, error=str(f))
            if f.outcome not in ("wrong_result", "hash_mismatch"):
                self.refund(task_id, rec)      # nothing delivered: the money comes back
                if "refunded_wei" in rec:
                    rec["outcome"] = f"refunded:{f.outcome}"
                elif rec.get("payment_undone"):
                    rec["outcome"] = "payment_undone"
        rec["e2e_s"] = time.monotonic() - t0
        if rec["outcome"] == "completed" or "refunded_wei" in rec or rec.get("payment_undone") \
                or rec.get("refund") == "not needed: completed":
            self._escrow_closed(task_id)   # else (wrong_result: the server may still complete) the settler
        if rec["outcome"] == "payment_undone":
            return rec                 # the chain's doing, not the server's: nothing to report
        return self._report(task_id, task, mec, rec)

    def _run_channel_task(self, task_id: int, task, mec: str, rec: dict, t0: float) -> dict:
        """Steps 3-5 with a payment channel: the voucher travels with the request."""
        price = units.price_wei(self.unit_price, task.service_demand)
        if self.lanes.headroom(mec) < price:
            self.top_up()
        data = self.rng.data(task.data_bytes)
        try:
            res, h0 = self.offload(task_id, task, mec, data, rec, price_wei=price)
            self.check_result(h0, res, mec, rec)
            rec["outcome"] = "completed"
        except TaskFailed as f:
            rec.update(outcome=f.outcome, error=str(f))
        rec["e2e_s"] = time.monotonic() - t0
        if rec["outcome"] != "completed" and "voucher_cumulative" in rec and rec["outcome"] != "wrong_result":
            rec["paid_wei"] = 0                 # accepted but never earned: not paid
        self.maybe_top_up()
        return self._report(task_id, task, mec, rec)

    def _report(self, task_id: int, task, mec: str, rec: dict) -> dict:
        if rec["outcome"] != "completed" and "evidence" not in rec and rec.get("_ack"):
            rec["evidence"] = {"ack": rec["_ack"], "verdict": rec["_ack_verdict"]}
        try:
            self.api.request("POST", "/report", {
                "source": "ue", "mec": mec, "ue": self.name, "task_id": task_id, "desired_s": task.desired_s,
                "latency_s": rec.get("service_s", 0.0), "ok": rec["outcome"] == "completed",
                "detail": {"outcome": rec["outcome"], **({"evidence": rec["evidence"]} if "evidence" in rec else {})}})
        except Exception as e:
            rec["report_error"] = str(e)
        return rec

    # ---- the payment channel ------------------------------------------------------------------
    def open_channel(self) -> None:
        """Register and deposit in one transaction (``openChannel``), or pick up a channel this
        UE opened before (a restarted client); then its lanes (:class:`PayerLanes`)."""
        cfg = self.scn.contract
        self.unit_price = self.reader.unit_price()
        ch = self.reader.channel(self.account.address)
        if ch is None or ch.reclaimed:
            r = self.trade.open_channel(self.signer, deposit_wei=cfg.channel_deposit_wei,
                                        cap_per_lane_wei=cfg.channel_deposit_wei // len(self.info.servers),
                                        expiry=int(time.time()) + cfg.channel_lifetime_s, register=True)
            self.records.write(json.dumps({"ue": self.name, "event": "openChannel", "gas": r.gas_used,
                                           "fee_wei": r.fee_wei, "deposit_wei": cfg.channel_deposit_wei,
                                           "block": r.block_number, "t": time.time()}) + "\n")
            ch = self.reader.channel(self.account.address)
        # lanes start at generation 0; one settled and reopened since is told by its server
        # (wrong_generation) and read from the chain then
        servers = {m: e.address for m, e in self.info.servers.items()}
        self.lanes = PayerLanes(self.out / "lanes.json", self.account, chain_id=self.info.chain_id,
                                contract=self.info.contract, servers=servers, cap_wei=ch.cap_per_lane_wei)
        self.expiry = ch.expiry

    def maybe_top_up(self) -> None:
        """Top up before a lane runs out: when any lane has less than a quarter of its cap left
        (or the channel less than half its lifetime): a chain transaction off the task's path
        while the lanes still have room."""
        cap = self.lanes.cap_wei
        low = min(self.lanes.headroom(m) for m in self.lanes.servers) < cap // 4
        if low or self.expiry - time.time() < self.scn.contract.channel_lifetime_s / 2:
            self.top_up()

    def top_up(self) -> None:
        cfg = self.scn.contract
        add = cfg.channel_deposit_wei
        cap = self.lanes.cap_wei + add // len(self.info.servers)
        expiry = max(self.expiry, int(time.time()) + cfg.channel_lifetime_s)
        r = self.trade.top_up(self.signer, amount_wei=add, cap_per_lane_wei=cap, expiry=expiry)
        self.records.write(json.dumps({"ue": self.name, "event": "topUp", "gas": r.gas_used, "fee_wei": r.fee_wei,
                                       "deposit_wei": add, "block": r.block_number, "t": time.time()}) + "\n")
        self.expiry = expiry
        # the servers use the new cap once it is contract.confirmations deep: the transaction
        # has waited for exactly that
        self.lanes.raise_cap(cap)

    def run(self) -> None:
        if self.channel:
            self.open_channel()
        elif self.trade.ue_wallet(self.account.address) is None:
            r = self.trade.create_trade(self.signer)
            self.records.write(json.dumps({"ue": self.name, "event": "createTrade", "gas": r.gas_used,
                                           "fee_wei": r.fee_wei, "t": time.time()}) + "\n")
        print(f"{self.name} registered as {self.account.address} ({time.monotonic() - self.t_lab:.1f} s after "
              "lab.json)", flush=True)
        if not self.channel:
            self.settle_leftovers()            # what a predecessor left (a restarted client)
            threading.Thread(target=self._settler, daemon=True, name="settler").start()
        task_id = self.state["next_task_id"] - 1
        while not self.stopping:
            task_id += 1
            with self.state_lock:
                self.state["next_task_id"] = task_id + 1
            self._save_state()
            try:
                rec = self.run_task(task_id)
            except Exception as e:   # the chain or the controller unreachable: record and go on
                rec = {"ue": self.name, "task_id": task_id, "outcome": "error", "error": f"{type(e).__name__}: {e}"}
                time.sleep(2)
            rec["t_end"] = time.time()
            self.records.write(json.dumps(rec) + "\n")
        if not self.channel:
            try:
                self.settle_leftovers()        # a last pass; what is not yet due stays listed
            except Exception as e:
                print(f"{self.name}: open escrows left for the next start ({self.state_path}): {e}", flush=True)
        print(f"{self.name} stopped after {task_id} task(s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodes.ue_client", description=__doc__.splitlines()[0])
    ap.add_argument("--lab", required=True, type=Path, help="the running lab's lab.json")
    ap.add_argument("--name", required=True, help="this UE's name (ue1 ...)")
    ap.add_argument("--key", required=True, type=Path, help="file holding this UE's private key")
    ap.add_argument("--out", required=True, type=Path, help="folder for tasks.jsonl")
    args = ap.parse_args(argv)
    UEClient(args.lab, args.name, args.key.read_text().strip(), args.out).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
