"""Payment channels on the hosts (``contract.payment = "channel"``): the UE's side of its lanes
(:class:`PayerLanes`) and the MEC executor's (:class:`PayeeLanes`).

A UE opens one channel on the trading contract with a deposit (``openChannel``: createTrade and
the deposit in one transaction), one lane per MEC server, each capped at deposit / M. For each
task it signs one EIP-712 voucher (:mod:`contracts.vouchers`) on the lane of the server the
policy gave it: cumulative = what that server has earned on the lane so far + φ_u of this task,
the lane's nonce + 1, bound to the task (its id and the hash of the signed request). The
executor checks it locally, in milliseconds and with no chain call on the task's path (the
channels it has seen final are cached by :meth:`PayeeLanes.watch`), before any work. Once it
has sent the result the voucher is **earned** and written to its log; in the background, every
``contract.redeem_every_s`` and at the end of the run, it redeems the latest earned voucher of
every lane in one transaction.

The base of the next voucher is what the server has earned: the UE moves it when a result
arrives (right or wrong: the server then holds the voucher and may redeem it), not when a task
is lost before its result (the executor does not earn it either and never redeems it). So a
server that dies mid-task costs nobody anything, and a server that takes a voucher and returns
a wrong result costs the UE one task's price, which the UE's result check names.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from chain.keys import to_checksum_address
from contracts.vouchers import Voucher, VoucherError, sign_voucher, voucher_signer


class VoucherRefused(Exception):
    """A voucher the executor does not accept; ``code`` names why (no work is done)."""

    def __init__(self, code: str, message: str, **detail):
        super().__init__(message)
        self.code, self.detail = code, detail


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# ------------------------------------------------------------------------------ the UE's side
class PayerLanes:
    """The UE's lanes, one per MEC server, persisted in ``path`` (JSON) after every change so
    that a restarted UE client signs on from where it stopped.

    Per lane: ``generation`` (the lane's on chain), ``base`` (wei the server has earned: the
    cumulative of the last voucher whose result came back), ``signed`` (cumulatives signed above
    the base, kept to recognise a server's claim), ``nonce`` (the last one signed).
    """

    def __init__(self, path: Path, account, *, chain_id: int, contract: str, servers: dict[str, str],
                 cap_wei: int, generations: dict[str, int] | None = None):
        self.path, self.account = Path(path), account
        self.chain_id, self.contract, self.servers = chain_id, contract, dict(servers)
        self.cap_wei = cap_wei
        self.lock = threading.Lock()
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.lanes = {m: saved.get("lanes", {}).get(m) or {"generation": (generations or {}).get(m, 0), "base": 0,
                                                           "signed": [], "nonce": 0}
                      for m in self.servers}
        self.cap_wei = max(cap_wei, int(saved.get("cap_wei", 0)))

    def _save(self) -> None:
        _write_json(self.path, {"lanes": self.lanes, "cap_wei": self.cap_wei})

    def headroom(self, mec: str) -> int:
        """Wei the lane can still carry before its cap."""
        return self.cap_wei - self.lanes[mec]["base"]

    def voucher(self, mec: str, price_wei: int, task_id: int, request_hash: bytes) -> Voucher:
        """Sign the voucher paying ``price_wei`` for one task on ``mec``'s lane."""
        with self.lock:
            lane = self.lanes[mec]
            cumulative = lane["base"] + price_wei
            if cumulative > self.cap_wei:
                raise VoucherRefused("over_cap", f"the lane to {mec} carries {self.cap_wei} wei; "
                                     f"{lane['base']} earned + {price_wei} is over it (top up first)")
            v = sign_voucher(self.account, chain_id=self.chain_id, contract=self.contract, mec=self.servers[mec],
                             generation=lane["generation"], cumulative=cumulative, nonce=lane["nonce"] + 1,
                             task_id=task_id, request_digest=request_hash)
            lane["nonce"] = v.nonce
            lane["signed"].append(cumulative)
            self._save()
            return v

    def earned(self, mec: str, v: Voucher) -> None:
        """The server returned a result for ``v``: it holds the voucher, the base moves up."""
        with self.lock:
            lane = self.lanes[mec]
            lane["base"] = max(lane["base"], v.cumulative)
            lane["signed"] = [c for c in lane["signed"] if c > lane["base"]]
            self._save()

    def adopt(self, mec: str, base: int) -> bool:
        """The server says it has earned ``base``: accepted only if it is a cumulative this UE
        signed on the lane (it holds that voucher, so going on from it costs nothing more)."""
        with self.lock:
            lane = self.lanes[mec]
            if base != lane["base"] and base not in lane["signed"]:
                return False
            lane["base"] = base
            lane["signed"] = [c for c in lane["signed"] if c > base]
            self._save()
            return True

    def set_generation(self, mec: str, generation: int) -> None:
        """The lane was settled and reopened on chain: a new generation, nothing earned on it yet."""
        with self.lock:
            lane = self.lanes[mec]
            if generation != lane["generation"]:
                lane.update(generation=generation, base=0, signed=[], nonce=0)
                self._save()

    def raise_cap(self, cap_wei: int) -> None:
        with self.lock:
            self.cap_wei = max(self.cap_wei, cap_wei)
            self._save()

    def paid(self) -> dict[str, int]:
        """Per server, the wei it has earned from this UE (the vouchers it can redeem)."""
        return {m: lane["base"] for m, lane in self.lanes.items()}


# ------------------------------------------------------------------------------ the executor's side
class PayeeLanes:
    """A MEC server's lanes, one per UE, with what it has seen final on chain and what it has
    earned; every earned voucher and every redemption is appended to ``log`` (JSON lines), and
    a restarted executor reads it back.

    ``watch()`` (a background thread, and once synchronously for a UE it has not seen yet) scans
    the contract's channel events down to ``confirmations`` blocks below the head: a deposit is
    used only once it is that deep.
    """

    def __init__(self, trade, me: str, *, confirmations: int, log: Path, chain_id: int, expiry_margin_s: float):
        self.trade, self.me = trade, me.lower()
        self.confirmations, self.log_path = confirmations, Path(log)
        self.chain_id, self.contract = chain_id, trade.address
        self.expiry_margin_s = expiry_margin_s
        self.lock = threading.Lock()
        self.facts: dict[str, dict] = {}      # ue -> {cap, expiry, generation, state, block}
        self.lanes: dict[str, dict] = {}      # ue -> {earned, voucher, nonce, redeemed, pending}
        self.scanned = 0                      # channel events read up to this block
        self.unit_price = trade.unit_price()
        if self.log_path.exists():
            for line in self.log_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                lane = self._lane(rec["ue"])
                if rec["event"] == "earned":
                    v = Voucher.from_json(rec["voucher"])
                    if v.cumulative > lane["earned"]:
                        lane.update(earned=v.cumulative, voucher=v)
                    lane["nonce"] = max(lane["nonce"], v.nonce)
                elif rec["event"] == "redeemed":
                    lane["redeemed"] = max(lane["redeemed"], int(rec["cumulative"]))
        self.log = open(self.log_path, "a", buffering=1)

    def _lane(self, ue: str) -> dict:
        return self.lanes.setdefault(ue.lower(), {"earned": 0, "voucher": None, "nonce": 0, "redeemed": 0,
                                                  "pending": {}})

    # ---- what the chain says (background) ------------------------------------------------
    def load(self, ues: list[str]) -> None:
        """The channels of ``ues`` as the chain holds them ``confirmations`` blocks below the head
        (a lab whose set-up is in its genesis has no events for them), then events from there."""
        head = self.trade.block_number()
        final = max(0, head - self.confirmations + 1)
        me = to_checksum_address(self.me)
        for ue in ues:
            ch = self.trade.channel(ue, block=final)
            if ch is None:
                continue
            lane = self.trade.lane(ue, me, block=final)
            if lane.index > ch.lane_count:
                continue
            state = "reclaimed" if ch.reclaimed else lane.state
            with self.lock:
                self.facts[ue.lower()] = {"cap": ch.cap_per_lane_wei, "expiry": ch.expiry, "generation": lane.generation,
                                          "state": state, "block": final,
                                          **({"closes_at": lane.closes_at} if state == "closing" else {})}
                mine = self._lane(ue)
                mine["redeemed"] = max(mine["redeemed"], lane.redeemed_wei)
        self.scanned = final

    def watch(self) -> None:
        """Read the channel events that are ``confirmations`` deep and not read yet."""
        head = self.trade.block_number()
        final = head - self.confirmations + 1
        if final <= self.scanned:
            return
        events = self.trade.channel_events(from_block=self.scanned + 1, to_block=final)
        settled = []
        with self.lock:
            for ev in events:
                ue = str(ev["ue"]).lower()
                name = ev["event"]
                mine = str(ev.get("mec", "")).lower() == self.me
                f = self.facts.get(ue)
                if name == "ChannelOpened":
                    self.facts[ue] = {"cap": int(ev["capPerLane"]), "expiry": int(ev["expiry"]), "generation": 0,
                                      "state": "open", "block": ev["blockNumber"]}
                elif f is None:
                    continue
                elif name == "ChannelToppedUp":
                    f.update(cap=int(ev["capPerLane"]), expiry=int(ev["expiry"]))
                elif name == "ChannelReclaimed":
                    f["state"] = "reclaimed"
                elif mine and name == "LaneClosing":
                    f.update(state="closing", closes_at=int(ev["closesAt"]))
                elif mine and name == "LaneSettled":
                    f["state"] = "closed"
                    settled.append(ue)
                elif mine and name == "LaneReopened":
                    f.update(state="open", generation=int(ev["generation"]))
                elif mine and name == "VoucherRedeemed":
                    lane = self._lane(ue)
                    lane["redeemed"] = max(lane["redeemed"], int(ev["cumulative"]))
            self.scanned = final
        for ue in settled:          # a settled lane's next generation starts from nothing
            lane = self.trade.lane(ue, to_checksum_address(self.me))
            with self.lock:
                self.facts[ue]["generation"] = lane.generation
                self.lanes[ue] = {"earned": 0, "voucher": None, "nonce": 0, "redeemed": 0, "pending": {}}

    def closing(self) -> list[str]:
        """UEs closing their lane to this server: redeem before the dispute window ends."""
        with self.lock:
            return [ue for ue, f in self.facts.items() if f["state"] == "closing"]

    # ---- one task (the executor's admission: local, no chain call) -------------------------
    def check(self, ue: str, task_id: int, request_hash: bytes, raw_voucher, price_wei: int) -> Voucher:
        """Accept the voucher paying ``price_wei`` for ``ue``'s task, or raise
        :class:`VoucherRefused`. An accepted voucher is pending until :meth:`earned`."""
        ue = ue.lower()
        try:
            v = Voucher.from_json(raw_voucher)
        except (VoucherError, TypeError, KeyError) as e:
            raise VoucherRefused("malformed_voucher", f"the voucher is malformed: {e}") from None
        if v.ue.lower() != ue or v.mec.lower() != self.me:
            raise VoucherRefused("wrong_lane", f"a voucher from {v.ue} to {v.mec}, not from {ue} to {self.me}")
        if v.task_id != task_id or v.request_digest != request_hash:
            raise VoucherRefused("wrong_task", f"the voucher pays task {v.task_id} of another request, not task {task_id}")
        try:
            signer = voucher_signer(v, chain_id=self.chain_id, contract=self.contract)
        except VoucherError as e:
            raise VoucherRefused("bad_voucher_signature", f"the voucher's signature does not verify: {e}") from None
        if signer.lower() != ue:
            raise VoucherRefused("bad_voucher_signature", f"the voucher is signed by {signer}, not {ue}")
        if ue not in self.facts:
            self.watch()                      # once per lane: a channel not seen yet, or not final
        with self.lock:
            f = self.facts.get(ue)
            if f is None or f["state"] == "reclaimed":
                raise VoucherRefused("no_channel", f"{ue} has no channel {self.confirmations} block(s) deep")
            if f["expiry"] - time.time() < self.expiry_margin_s:
                raise VoucherRefused("channel_expiring", f"the channel expires at {f['expiry']}, within "
                                     f"{self.expiry_margin_s:.0f} s: too late to redeem safely")
            if f["state"] != "open":
                raise VoucherRefused("lane_closed", f"the lane is {f['state']}")
            if v.generation != f["generation"]:
                raise VoucherRefused("wrong_generation", f"generation {v.generation}, the lane's is {f['generation']}")
            if v.cumulative > f["cap"]:
                raise VoucherRefused("over_cap", f"cumulative {v.cumulative} wei over the lane's cap {f['cap']}")
            lane = self._lane(ue)
            if v.nonce <= lane["nonce"]:
                raise VoucherRefused("stale_voucher", f"nonce {v.nonce} is not above {lane['nonce']}",
                                     base=lane["earned"], nonce=lane["nonce"])
            if v.cumulative - lane["earned"] != price_wei:
                raise VoucherRefused("wrong_amount", f"cumulative {v.cumulative} wei is {lane['earned']} earned + "
                                     f"{v.cumulative - lane['earned']}, the task costs {price_wei}",
                                     base=lane["earned"], nonce=lane["nonce"])
            lane["nonce"] = v.nonce
            lane["pending"][task_id] = v
        return v

    def earned(self, ue: str, task_id: int) -> Voucher:
        """The result was sent: the voucher is this server's to redeem (logged at once)."""
        with self.lock:
            lane = self._lane(ue)
            v = lane["pending"].pop(task_id)
            if v.cumulative > lane["earned"]:
                lane.update(earned=v.cumulative, voucher=v)
            self.log.write(json.dumps({"event": "earned", "ue": ue.lower(), "t": time.time(),
                                       "voucher": v.to_json()}) + "\n")
        return v

    def abandoned(self, ue: str, task_id: int) -> None:
        """No result was sent: the voucher is never redeemed (the UE pays on from the base)."""
        with self.lock:
            self._lane(ue)["pending"].pop(task_id, None)

    # ---- redemption (background, and at the end) ------------------------------------------
    def to_redeem(self) -> list[Voucher]:
        """The latest earned voucher of every lane that holds more than is redeemed."""
        with self.lock:
            return [lane["voucher"] for ue, lane in self.lanes.items()
                    if lane["voucher"] is not None and lane["earned"] > lane["redeemed"]
                    and self.facts.get(ue, {}).get("state", "open") in ("open", "closing")]

    def redeemed(self, vouchers: list[Voucher], report=None) -> None:
        with self.lock:
            for v in vouchers:
                lane = self._lane(v.ue)
                lane["redeemed"] = max(lane["redeemed"], v.cumulative)
                self.log.write(json.dumps({"event": "redeemed", "ue": v.ue.lower(), "cumulative": v.cumulative,
                                           "t": time.time(), **({"tx": report.tx_hash, "gas": report.gas_used,
                                                                 "batch": len(vouchers)} if report else {})}) + "\n")

    def unredeemed_wei(self) -> int:
        with self.lock:
            return sum(lane["earned"] - lane["redeemed"] for lane in self.lanes.values())

    def earned_by_lane(self) -> dict[str, int]:
        with self.lock:
            return {ue: lane["earned"] for ue, lane in self.lanes.items() if lane["earned"]}
