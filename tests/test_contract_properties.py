"""Property tests: random sequences of trading / complete / refund / time jumps from several
accounts, every call mined on a real anvil node, checked against a model of the contract.

Properties: each call succeeds or fails exactly as the rules say (with the named error);
ether is conserved (the contract holds exactly the open escrows, and every account's balance is
its start minus fees and payments plus what it received); no task is paid twice; every escrow
ends paid or refunded.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from chain.anvil import AnvilNode
from contracts.binding import ContractRevert, EscrowState, TradingContract, TxSender
from contracts.config import ContractConfig

pytestmark = pytest.mark.chain

MU = 150_000_000_000_000_000
GAS = 400_000  # fixed limit: every call, rejected or not, is mined and metered
CONFIG = ContractConfig(unit_price_wei_per_gcycle=MU, settlement_grace_s=0, poll_interval_s=0.005)
UES = ["ue1", "ue2", "ue3"]            # registered (ue2 refunds into a separate wallet)
MECS = ["mec1", "mec2"]                # registered (mec1 is paid into a separate wallet)
NAMES = ["esp", "mec1", "mec1_wallet", "mec2", "ue1", "ue2", "ue2_wallet", "ue3", "stranger"]


@pytest.fixture(scope="module")
def world():
    with AnvilNode(accounts=len(NAMES)) as node:
        w3 = node.web3()
        acct = dict(zip(NAMES, node.accounts))
        trade, _ = TradingContract.deploy(w3, acct["esp"], CONFIG, sender=TxSender(w3, CONFIG))
        trade.register_mec(acct["esp"], server=acct["mec1"].address, wallet=acct["mec1_wallet"].address)
        trade.register_mec(acct["esp"], server=acct["mec2"].address)
        for ue in UES:
            trade.create_trade(acct[ue], wallet=acct["ue2_wallet"].address if ue == "ue2" else None)
        # Deterministic block time: every block is exactly 1 s after its parent (jumps by mine_at),
        # so the model knows the timestamp each call executes at.
        node.rpc("anvil_setBlockTimestampInterval", 1)
        node.rpc("evm_mine")
        world = dict(node=node, w3=w3, trade=trade, acct=acct, snapshot=node.snapshot())
        yield world


class EscrowMachine(RuleBasedStateMachine):
    world: dict = {}
    outcomes: Counter = Counter()   # (call, error or "ok") over the whole run: the test's coverage

    def __init__(self):
        super().__init__()
        w = self.world
        self.node, self.w3, self.trade, self.acct = w["node"], w["w3"], w["trade"], w["acct"]
        self.node.revert(w["snapshot"], clock="chain")   # the examples' time is the chain's own
        w["snapshot"] = self.node.snapshot()   # anvil consumes a snapshot on revert
        self.trade.sender.reset_nonces()
        self.start_block = self.w3.eth.block_number + 1
        self.start = self._balances()
        self.delta = defaultdict(int)          # expected balance change per account, wei
        self.escrows: dict[tuple[str, int], dict] = {}
        self.wallet = {"ue1": "ue1", "ue2": "ue2_wallet", "ue3": "ue3", "mec1": "mec1_wallet", "mec2": "mec2"}

    # ------------------------------------------------------------------ helpers

    def _balances(self) -> dict:
        out = {n: self.w3.eth.get_balance(self.acct[n].address) for n in NAMES}
        out["contract"] = self.trade.balance()
        return out

    def _now(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def _send(self, sender: str, call, expected_error: str | None):
        """Run `call(gas=GAS)`; check success or the named error; book the fee."""
        try:
            report = call(gas=GAS)
        except ContractRevert as exc:
            self.outcomes[(exc.function, exc.error)] += 1
            assert exc.receipt is not None, "a fixed gas limit must put the call on chain"
            self.delta[sender] -= exc.receipt["gasUsed"] * exc.receipt["effectiveGasPrice"]
            assert exc.error == expected_error, f"expected {expected_error or 'success'}, got {exc}"
            return None
        self.outcomes[(report.function, "ok")] += 1
        self.delta[sender] -= report.fee_wei
        assert expected_error is None, f"expected {expected_error}, but {report.function} succeeded"
        return report

    # ------------------------------------------------------------------ rules

    @rule(ue=st.sampled_from(UES), mec=st.sampled_from(MECS), task=st.integers(0, 3),
          demand=st.integers(1, 3 * 10**9), ttl=st.integers(2, 40))
    def pay(self, ue, mec, task, demand, ttl):
        """A well-formed payment (rejected only if the task id is taken)."""
        self._pay(ue, mec, task, demand, ttl, 0)

    @rule(fault=st.sampled_from(["ue", "mec", "demand", "value+", "value-", "deadline"]),
          ue=st.sampled_from(UES), mec=st.sampled_from(MECS), task=st.integers(0, 3),
          demand=st.integers(1, 3 * 10**9), ttl=st.integers(0, 1))
    def pay_with_a_fault(self, fault, ue, mec, task, demand, ttl):
        """A payment with one thing wrong: unknown UE or MEC, zero demand, wrong value, stale deadline."""
        self._pay("stranger" if fault == "ue" else ue, "stranger" if fault == "mec" else mec, task,
                  0 if fault == "demand" else demand, ttl if fault == "deadline" else 30,
                  {"value+": 1, "value-": -1}.get(fault, 0))

    def _pay(self, ue, mec, task, demand, ttl, value_delta):
        now = self._now()
        block_time = now + 1
        deadline = now + ttl
        amount = MU * demand // 10**9
        value = max(0, amount + value_delta)
        key = (ue, task)
        if ue == "stranger":
            expected = "UnknownUe"
        elif mec == "stranger":
            expected = "UnknownMec"
        elif demand == 0:
            expected = "ZeroDemand"
        elif value != amount:
            expected = "WrongValue"
        elif deadline <= block_time:
            expected = "DeadlineInPast"
        elif key in self.escrows:
            expected = "TaskExists"
        else:
            expected = None
        report = self._send(ue, lambda **g: self.trade.trading(
            self.acct[ue], mec=self.acct[mec].address, task_id=task, data_size_bits=8_000_000,
            service_demand_cycles=demand, deadline=deadline, value_wei=value, **g), expected)
        if report is not None:
            self.delta[ue] -= value
            self.escrows[key] = dict(amount=amount, mec=mec, deadline=deadline, state=EscrowState.OPEN)

    @rule(complete=st.booleans(), caller=st.sampled_from(MECS + UES + ["stranger"]),
          ue=st.sampled_from(UES + ["stranger"]), task=st.integers(0, 3),
          empty=st.sampled_from([False] * 4 + [True]))
    def settle_any(self, complete, caller, ue, task, empty):
        """Complete or refund any (UE, task) pair from any account, mostly ones that do not exist."""
        if complete:
            self._complete(caller, ue, task, empty)
        else:
            self._refund(caller if caller in UES + ["stranger"] else ue, task)

    @precondition(lambda self: self.escrows)
    @rule(data=st.data(), action=st.sampled_from(["complete", "refund", "complete by another", "again"]))
    def settle_an_escrow(self, data, action):
        """Complete (as its MEC server, or as someone else) or refund (as its UE) an existing
        escrow, preferably an open one; "again" settles one already settled, as a double payment would."""
        settled = sorted(k for k, e in self.escrows.items() if e["state"] is not EscrowState.OPEN)
        still_open = sorted(k for k, e in self.escrows.items() if e["state"] is EscrowState.OPEN)
        pool = (settled if action == "again" else still_open) or sorted(self.escrows)
        ue, task = data.draw(st.sampled_from(pool), label="escrow")
        mec = self.escrows[(ue, task)]["mec"]
        if action == "again":
            action = data.draw(st.sampled_from(["complete", "refund"]), label="how")
        if action == "refund":
            self._refund(ue, task)
        else:
            other = data.draw(st.sampled_from([m for m in MECS + ["stranger"] if m != mec]), label="other")
            self._complete(mec if action == "complete" else other, ue, task, False)

    def _complete(self, caller, ue, task, empty):
        block_time = self._now() + 1
        e = self.escrows.get((ue, task))
        if empty:
            expected = "EmptyResult"
        elif e is None:
            expected = "UnknownTask"
        elif caller != e["mec"]:
            expected = "NotTaskMec"
        elif e["state"] is EscrowState.PAID:
            expected = "AlreadyPaid"
        elif e["state"] is EscrowState.REFUNDED:
            expected = "AlreadyRefunded"
        elif block_time > e["deadline"]:
            expected = "DeadlinePassed"
        else:
            expected = None
        digest = b"\0" * 32 if empty else (task + 1).to_bytes(32, "big")
        report = self._send(caller, lambda **g: self.trade.complete(
            self.acct[caller], ue=self.acct[ue].address, task_id=task, result_hash=digest, **g), expected)
        if report is not None:
            e["state"] = EscrowState.PAID
            self.delta[self.wallet[caller]] += e["amount"]

    def _refund(self, ue, task):
        block_time = self._now() + 1
        e = self.escrows.get((ue, task))
        if e is None:
            expected = "UnknownTask"
        elif e["state"] is EscrowState.PAID:
            expected = "AlreadyPaid"
        elif e["state"] is EscrowState.REFUNDED:
            expected = "AlreadyRefunded"
        elif block_time <= e["deadline"]:
            expected = "DeadlineNotReached"
        else:
            expected = None
        report = self._send(ue, lambda **g: self.trade.refund(self.acct[ue], task_id=task, **g), expected)
        if report is not None:
            e["state"] = EscrowState.REFUNDED
            self.delta[self.wallet[ue]] += e["amount"]

    @precondition(lambda self: self.escrows)
    @rule(data=st.data(), offset=st.integers(-1, 1))
    def advance_to_a_deadline(self, data, offset):
        """Make the next call run exactly at an escrow's deadline (offset 0) or one second off it."""
        e = self.escrows[data.draw(st.sampled_from(sorted(self.escrows)), label="escrow")]
        target = e["deadline"] + offset - 1  # the next block is 1 s after the one mined here
        if target > self._now():
            self.node.mine_at(target)

    @rule(seconds=st.integers(1, 30))
    def advance_time(self, seconds):
        self.node.mine_at(self._now() + seconds)

    # ------------------------------------------------------------------ properties

    @invariant()
    def contract_holds_exactly_the_open_escrows(self):
        open_sum = sum(e["amount"] for e in self.escrows.values() if e["state"] is EscrowState.OPEN)
        assert self.trade.balance() == open_sum

    def teardown(self):
        # Close every escrow the sequence left open, the only way left once deadlines pass.
        if self.escrows:
            last = max(e["deadline"] for e in self.escrows.values())
            self.node.mine_at(max(last, self._now()) + 1)
        for (ue, task), e in list(self.escrows.items()):
            if e["state"] is EscrowState.OPEN:
                self._refund(ue, task)
        for (ue, task), e in self.escrows.items():
            chain = self.trade.escrow(self.acct[ue].address, task)
            assert chain.state is e["state"] and chain.state in (EscrowState.PAID, EscrowState.REFUNDED)
            assert chain.amount_wei == e["amount"]
        now = self._balances()
        assert now["contract"] == 0
        for name in NAMES:
            assert now[name] == self.start[name] + self.delta[name], f"{name}: ether not conserved"
        closes = Counter()
        for event in ("EscrowPaid", "EscrowRefunded"):
            for log in self.trade.contract.events[event]().get_logs(from_block=self.start_block):
                closes[(log["args"]["ue"], log["args"]["taskId"])] += 1
        assert all(n == 1 for n in closes.values()), f"an escrow was settled twice: {closes}"
        assert len(closes) == len(self.escrows)


def test_random_call_sequences_conserve_ether_and_settle_each_escrow_once(world):
    EscrowMachine.world = world
    EscrowMachine.outcomes = Counter()
    run_state_machine_as_test(EscrowMachine, settings=settings(
        max_examples=15, stateful_step_count=40, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    # The sequences must have reached the interesting outcomes, not only early rejections.
    seen = EscrowMachine.outcomes
    must = [("trading", "ok"), ("complete", "ok"), ("refund", "ok"), ("trading", "TaskExists"),
            ("trading", "WrongValue"), ("complete", "NotTaskMec")]
    missing = [m for m in must if not seen[m]]
    double = sum(seen[(f, e)] for f in ("complete", "refund") for e in ("AlreadyPaid", "AlreadyRefunded"))
    late_or_early = seen[("complete", "DeadlinePassed")] + seen[("refund", "DeadlineNotReached")]
    assert not missing and double and late_or_early, f"outcomes too thin: {dict(seen)}"
