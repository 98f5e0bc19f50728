"""``python -m testbed run``: the live lab for ``lab.slots`` time slots, then the books.

Brings the lab up (:class:`testbed.lab.Lab`) and starts the decision maker
(:mod:`testbed.policy_loop`): every slot of ``model.slot_s`` seconds the policy
(``lab.policy``) reads the measured state from the controller and puts its decision in force
(which UE each MEC server serves, each server's hash budget, applied by the controller to the
miners' CPU quotas). The UE clients and executors do the rest on their own: announce, pay,
upload, compute, complete, verify, report.

After the last slot the UEs are told to stop (SIGTERM: no new task, a paid one finished or
refunded) and the run waits up to ``lab.drain_s`` for them. Then the books are closed on chain
(:func:`audit`): every escrow must end paid or refunded, the contract must hold nothing, and
every UE's and MEC wallet's balance must equal its payments, refunds and fees. Results:
``results/<scenario>/<time>/`` (see :mod:`testbed.experiments.live_report`).

``--cli`` opens the Mininet CLI with everything running; the slots run meanwhile, and leaving
the CLI ends the run.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
from tqdm import tqdm

from scenario.config import Scenario
from testbed.experiments import trickle
from testbed.lab import Lab
from nodes.api_client import ApiClient
from testbed.policy import check_policy


def _children(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            out += [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            continue
    return out


class ResourceSampler:
    """CPU (cores) and memory (RSS, MiB) of each part of the lab, sampled every ``period_s``."""

    def __init__(self, lab: Lab, period_s: float = 2.0):
        self.lab, self.period_s = lab, period_s
        self.samples: list[dict] = []
        self.machine: list[dict] = []
        self._stop = threading.Event()
        self._prev: dict[int, float] = {}

    def groups(self) -> dict[str, list[int]]:
        lab = self.lab
        g = {"miners": [n.pid for n in lab.chain.nodes if n.alive],
             "rpc gateway": [lab.chain.gateway.pid] if lab.chain.gateway and lab.chain.gateway.alive else [],
             "executors": [p.pid for p in lab.executors.values() if p.alive],
             "work kernels": _children([p.pid for p in lab.executors.values() if p.alive]),
             "UE clients": [p.pid for p in lab.ue_clients.values() if p.alive],
             "controller": [lab.network.controller.pid] if lab.network.controller else [],
             "policy loop": [lab.policy_proc.pid] if lab.policy_proc is not None and lab.policy_proc.alive else [],
             "orchestrator": [psutil.Process().pid]}
        g["Open vSwitch"] = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("ovs-vswitchd", "ovsdb-server")]
        g["Docker engine"] = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("dockerd", "containerd")]
        return g

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            dt, last = now - last, now
            row = {"t": time.time()}
            for name, pids in self.groups().items():
                cpu = rss = 0.0
                for pid in pids:
                    try:
                        p = psutil.Process(pid)
                        t = p.cpu_times()
                        total = t.user + t.system
                        if pid in self._prev:
                            cpu += max(0.0, total - self._prev[pid]) / dt
                        self._prev[pid] = total
                        rss += p.memory_info().rss / 2**20
                    except psutil.Error:
                        continue
                row[name] = {"cores": cpu, "rss_mib": rss}
            self.samples.append(row)
            vm = psutil.virtual_memory()
            self.machine.append({"t": row["t"], "used_mib": (vm.total - vm.available) / 2**20,
                                 "cpu_pct": psutil.cpu_percent()})

    def start(self) -> "ResourceSampler":
        threading.Thread(target=self._loop, daemon=True, name="resources").start()
        return self

    def stop(self) -> None:
        self._stop.set()


def wait_slots(lab: Lab, slots: int, stop: threading.Event, progress: bool = True) -> None:
    """Wait for the policy loop to run its slots, with a progress bar read from slots.jsonl."""
    path = lab.run_dir / "slots.jsonl"
    bar = tqdm(total=slots, desc=f"slots ({lab.scn.lab.policy})", unit="slot", disable=not progress)
    done = 0
    while lab.policy_proc.alive and not stop.is_set():
        n = len(path.read_text().splitlines()) if path.exists() else 0
        if n > done:
            bar.update(n - done)
            done = n
        stop.wait(1.0)
    bar.update(max(0, slots - done) if not stop.is_set() and lab.policy_proc.returncode == 0 else 0)
    bar.close()
    if lab.policy_proc.returncode not in (0, None) and not stop.is_set():
        raise RuntimeError(f"the policy loop failed (exit {lab.policy_proc.returncode}); log "
                           f"{lab.policy_proc.log_path}:\n{lab.policy_proc.log_tail()}")


def _terminate_all(procs: dict, timeout_s: float) -> tuple[float, list[str]]:
    """SIGTERM every process of ``procs`` (name -> ManagedProcess), then wait for all of them
    within ``timeout_s`` together; (seconds taken, names still running)."""
    t0 = time.monotonic()
    for p in procs.values():
        p.signal(15)
    for p in procs.values():
        p.handle.wait(max(0.5, timeout_s - (time.monotonic() - t0)))
    return round(time.monotonic() - t0, 2), [n for n, p in procs.items() if p.alive]


def drain(lab: Lab, timeout_s: float) -> dict:
    """Tell every UE client to stop and wait for them: paid tasks finish or are refunded."""
    took, left = _terminate_all(lab.ue_clients, timeout_s)
    return {"drain_s": took, "ue_clients_still_running": left}


def finish_executors(lab: Lab, timeout_s: float) -> dict:
    """Stop the executors (SIGTERM) and wait: each records its last completions (escrow) or
    redeems its earned vouchers in one transaction (channel) before it exits."""
    took, left = _terminate_all(lab.executors, timeout_s)
    return {"executors_s": took, "executors_still_running": left}


def books_start(lab: Lab) -> int:
    """The block the books open at: the one before the deploy, or the genesis when the set-up is
    in it (its balances and channels are then the opening balances)."""
    return max(0, lab.info.deploy_block - 1)


def channel_books(lab: Lab) -> dict:
    """The channels' books on chain, per UE: what its channel held when the books opened plus
    its deposits since = redeemed + withdrawn + still locked; per MEC wallet: what it redeemed;
    and every lane's latest earned voucher (the executor's log) against what the chain paid on
    it: a voucher earned and never redeemed is a lost payment."""
    trade = lab.trade
    start = books_start(lab)
    ue_name = {e.address.lower(): n for n, e in lab.info.ues.items()}
    mec_name = {e.address.lower(): n for n, e in lab.info.servers.items()}
    def held(ue: str, block) -> int:
        ch = trade.channel(ue, block=block)
        return ch.balance_wei if ch is not None else 0
    per_ue = {n: {"opening_wei": held(e.address, start), "deposited_wei": 0, "redeemed_wei": 0, "withdrawn_wei": 0}
              for n, e in lab.info.ues.items()}
    to_mec = {m: 0 for m in lab.info.servers}
    lane_paid: dict[tuple[str, str], int] = {}
    for ev in trade.channel_events(from_block=start + 1):
        ue = ue_name.get(str(ev["ue"]).lower())
        if ue is None:
            continue
        name, u = ev["event"], per_ue[ue]
        if name == "ChannelOpened":
            u["deposited_wei"] += int(ev["deposit"])
        elif name == "ChannelToppedUp":
            u["deposited_wei"] += int(ev["amount"])
        elif name == "VoucherRedeemed":
            m = mec_name[str(ev["mec"]).lower()]
            u["redeemed_wei"] += int(ev["amount"])
            to_mec[m] += int(ev["amount"])
            lane_paid[(ue, m)] = lane_paid.get((ue, m), 0) + int(ev["amount"])
        elif name == "LaneSettled" and not ev["byMec"]:
            u["withdrawn_wei"] += int(ev["released"])
        elif name in ("FreeWithdrawn", "ChannelReclaimed"):
            u["withdrawn_wei"] += int(ev["amount"])
    locked_total = 0
    for ue, u in per_ue.items():
        u["locked_wei"] = held(lab.info.ues[ue].address, "latest")
        locked_total += u["locked_wei"]
        u["adds_up"] = (u["opening_wei"] + u["deposited_wei"]
                        == u["redeemed_wei"] + u["withdrawn_wei"] + u["locked_wei"])
    # what each executor earned (its voucher log), lane by lane, against the chain
    earned: dict[tuple[str, str], int] = {}
    for m in lab.info.servers:
        log = lab.lab_dir / "executors" / f"{m}-vouchers.jsonl"
        for line in (log.read_text().splitlines() if log.exists() else []):
            rec = json.loads(line)
            if rec.get("event") == "earned":
                ue = ue_name.get(rec["ue"])
                earned[(ue, m)] = max(earned.get((ue, m), 0), int(rec["voucher"]["cumulative"]))
    unredeemed = [{"ue": ue, "mec": m, "earned_wei": w, "redeemed_wei": lane_paid.get((ue, m), 0)}
                  for (ue, m), w in sorted(earned.items()) if lane_paid.get((ue, m), 0) != w]
    ok = all(u["adds_up"] for u in per_ue.values()) and not unredeemed
    return {"ues": per_ue, "redeemed_to_mec_wei": to_mec, "locked_wei": locked_total, "opened_at_block": start,
            "opening_wei": sum(u["opening_wei"] for u in per_ue.values()),
            "deposited_wei": sum(u["deposited_wei"] for u in per_ue.values()),
            "redeemed_wei": sum(u["redeemed_wei"] for u in per_ue.values()),
            "withdrawn_wei": sum(u["withdrawn_wei"] for u in per_ue.values()),
            "lanes_used": len(earned), "unredeemed_lanes": unredeemed, "books_close": ok}


def audit(lab: Lab) -> dict:
    """Close the books on chain: every escrow paid or refunded, every channel's deposits
    redeemed, withdrawn or still locked, every earned voucher redeemed, balances that add up."""
    from contracts.binding import EscrowState
    trade, w3 = lab.trade, lab.chain.gateway.w3
    acc = lab.accounts
    ue_addr = {a.address.lower(): f"ue{j}" for j, a in enumerate(acc.ues, 1)}
    opened = trade.opened_escrows(from_block=lab.info.deploy_block)
    states = {"PAID": 0, "REFUNDED": 0, "OPEN": 0}
    sums = {"opened_wei": 0, "paid_wei": 0, "refunded_wei": 0, "open_wei": 0}
    per_ue = {n: {"opened_wei": 0, "refunded_wei": 0} for n in ue_addr.values()}
    paid_to = {m: 0 for m in lab.info.servers}
    mec_of = {e.address.lower(): n for n, e in lab.info.servers.items()}
    open_escrows = []
    for ev in opened:
        e = trade.escrow(ev["ue"], ev["taskId"])
        ue = ue_addr.get(ev["ue"].lower(), ev["ue"])
        sums["opened_wei"] += e.amount_wei
        per_ue.setdefault(ue, {"opened_wei": 0, "refunded_wei": 0})["opened_wei"] += e.amount_wei
        if e.state is EscrowState.PAID:
            states["PAID"] += 1
            sums["paid_wei"] += e.amount_wei
            paid_to[mec_of[ev["mec"].lower()]] += e.amount_wei
        elif e.state is EscrowState.REFUNDED:
            states["REFUNDED"] += 1
            sums["refunded_wei"] += e.amount_wei
            per_ue[ue]["refunded_wei"] += e.amount_wei
        else:
            states["OPEN"] += 1
            sums["open_wei"] += e.amount_wei
            open_escrows.append({"ue": ue, "task_id": ev["taskId"], "deadline": e.deadline})
    # every UE's fees, from the receipts of the transactions it sent since the books opened
    fees = {n: 0 for n in per_ue}
    head = w3.eth.block_number
    start = books_start(lab)
    for n in range(start + 1, head + 1):
        block = w3.eth.get_block(n, full_transactions=True)
        for tx in block["transactions"]:
            who = ue_addr.get(tx["from"].lower())
            if who is not None:
                r = w3.eth.get_transaction_receipt(tx["hash"])
                fees[who] += r["gasUsed"] * r["effectiveGasPrice"]
    channels = channel_books(lab) if lab.scn.contract.payment == "channel" else None
    ues = {}
    for addr, n in ue_addr.items():
        opening = w3.eth.get_balance(w3.to_checksum_address(addr), block_identifier=start)
        bal = w3.eth.get_balance(w3.to_checksum_address(addr))
        ch = channels["ues"][n] if channels else {"deposited_wei": 0, "withdrawn_wei": 0}
        expect = (opening - per_ue[n]["opened_wei"] + per_ue[n]["refunded_wei"] - fees[n]
                  - ch["deposited_wei"] + ch["withdrawn_wei"])
        ues[n] = {"balance_delta_wei": bal - opening, "expected_delta_wei": expect - opening,
                  "adds_up": bal == expect, "fees_wei": fees[n], **per_ue[n]}
    wallets = {}
    for m, e in lab.info.servers.items():
        bal = w3.eth.get_balance(e.wallet)
        redeemed = channels["redeemed_to_mec_wei"][m] if channels else 0
        wallets[m] = {"balance_wei": bal, "paid_wei": paid_to[m], "redeemed_wei": redeemed,
                      "adds_up": bal == paid_to[m] + redeemed}
    contract_balance = trade.balance()
    locked = channels["locked_wei"] if channels else 0
    ok = (states["OPEN"] == 0 and contract_balance == locked
          and sums["opened_wei"] == sums["paid_wei"] + sums["refunded_wei"]
          and all(u["adds_up"] for u in ues.values()) and all(w["adds_up"] for w in wallets.values())
          and (channels is None or channels["books_close"]))
    return {"escrows": len(opened), "states": states, **sums, "contract_balance_wei": contract_balance,
            "open_escrows": open_escrows, "ues": ues, "mec_wallets": wallets, "channels": channels,
            "books_close": ok, "books_opened_at_block": start, "blocks_scanned": head - start}


def chain_record(lab: Lab) -> dict:
    """Blocks per miner over the run (canonical chain seen by the gateway), uncles included."""
    from testbed.experiments.metrics import chain_blocks
    gw = lab.chain.gateway
    head = gw.block_number()
    blocks = chain_blocks(gw, 1, head)
    names = {nd.etherbase.lower(): nd.name for nd in lab.chain.nodes}
    per = {nd.name: {"blocks": 0, "uncles": 0} for nd in lab.chain.nodes}
    for b in blocks:
        if b["miner"] in names:
            per[names[b["miner"]]]["blocks"] += 1
        for u in b["uncles"]:
            if u["miner"] in names:
                per[names[u["miner"]]]["uncles"] += 1
    return {"head": head, "blocks": blocks, "per_miner": per, "mec_addresses": list(names)}


def run(scn: Scenario, out_dir: Path | None = None, *, cli: bool = False) -> dict:
    from testbed.experiments import live_report
    run_dir = Path(out_dir or scn.results_path / scn.name / time.strftime("%Y%m%d-%H%M%S")).resolve()
    policy_name = check_policy(scn)    # checked before anything starts (an agent: in a child process)
    stop = threading.Event()
    t_run = time.monotonic()
    lab = Lab(scn, run_dir)
    vm = psutil.virtual_memory()
    result: dict = {"scenario": scn.name, "scenario_digest": scn.digest(), "policy": policy_name, "run_dir": str(run_dir),
                    "machine_used_before_mib": (vm.total - vm.available) / 2**20}
    try:
        lab.start()
        if scn.lab.trickle_api or scn.lab.trickle_executor:       # the slow-client load test
            result["attack"] = {"api": scn.lab.trickle_api, "per_executor": scn.lab.trickle_executor,
                                "from": trickle.start(lab)}
        sampler = ResourceSampler(lab).start()
        t_slots = time.time()
        lab.start_policy()
        if cli:
            from mininet.cli import CLI
            print(f"[run] lab up; the policy runs its {scn.lab.slots} slots of {scn.model.slot_s} s "
                  "meanwhile. Leave the CLI (exit) to end the run.")
            CLI(lab.net)
            lab.policy_proc.stop()
        else:
            wait_slots(lab, scn.lab.slots, stop)
        t_slots_end = time.time()
        result["drain"] = drain(lab, scn.lab.drain_s)
        result["drain"].update(finish_executors(lab, scn.lab.drain_s))
        sampler.stop()
        if "attack" in result:
            result["attack"]["counts"] = trickle.summary(run_dir)
        result["audit"] = audit(lab)
        result["chain"] = chain_record(lab)
        result["final_state"] = ApiClient(lab.api_url, lab.token).state()
        slots_file = lab.run_dir / "slots.jsonl"
        slots = [json.loads(x) for x in slots_file.read_text().splitlines()] if slots_file.exists() else []
        result.update(slots=slots, t_slots=[t_slots, t_slots_end], resources=sampler.samples,
                      machine=sampler.machine, mapping=lab.mapping.as_dict(), notes=lab.network.notes,
                      bring_up=dict(lab.timings), calibration=lab.calibration.date)
    finally:
        stop.set()
        lab.stop()
        result["teardown_s"] = lab.timings.get("teardown_s")
    result["total_s"] = round(time.monotonic() - t_run, 1)
    return live_report.write(scn, run_dir, result)
