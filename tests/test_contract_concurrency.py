"""The binding under concurrency and a misbehaving transaction pool, on real anvil nodes.

- 20 UE accounts pay concurrently (several payments per account in flight at once) on a chain
  that mines a block per second; one MEC server account completes all of them concurrently:
  every payment lands exactly once.
- A transaction the node dropped is re-broadcast; one stuck in the pool is replaced with a higher
  fee; one whose nonce another signer took is sent again with a fresh nonce. Each pays once.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chain.anvil import AnvilNode
from contracts.binding import EscrowState, TradingContract, TxReport, TxSender
from contracts.config import ContractConfig

pytestmark = pytest.mark.chain

MU = 150_000_000_000_000_000
N_UES = 20
TASKS_PER_UE = 3


def demand(ue_index: int, task_id: int) -> int:
    """A distinct xi_u per payment (cycles), so a double or missing payment shows in the sums."""
    return 600_000_000 + 10_000_000 * ue_index + 1_000_000 * task_id


def test_concurrent_payments_from_20_ues_all_land_once():
    config = ContractConfig(unit_price_wei_per_gcycle=MU, settlement_grace_s=600, poll_interval_s=0.05)
    with AnvilNode(accounts=N_UES + 3, block_time_s=1) as node:
        w3 = node.web3()
        esp, mec, mec_wallet, *ues = node.accounts
        trade, _ = TradingContract.deploy(w3, esp, config, sender=TxSender(w3, config))
        trade.register_mec(esp, server=mec.address, wallet=mec_wallet.address)
        wallet_before = w3.eth.get_balance(mec_wallet.address)
        start_block = w3.eth.block_number

        with ThreadPoolExecutor(max_workers=N_UES) as pool:
            list(pool.map(trade.create_trade, ues))
        jobs = [(i, ue, t) for t in range(TASKS_PER_UE) for i, ue in enumerate(ues)]

        def pay(job) -> TxReport:
            i, ue, t = job
            return trade.trading(ue, mec=mec.address, task_id=t, data_size_bits=8_000_000,
                                 service_demand_cycles=demand(i, t), execution_time_s=5)

        # 60 payments in flight at once: each UE has up to 3 transactions pending together.
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            reports = list(pool.map(pay, jobs))

        expected_total = sum(MU * demand(i, t) // 10**9 for i, _, t in jobs)
        assert len({r.tx_hash for r in reports}) == len(jobs)
        assert trade.balance() == expected_total
        for (i, ue, t), r in zip(jobs, reports):
            assert r.event("EscrowOpened")["taskId"] == t and r.sender == ue.address
            e = trade.escrow(ue.address, t)
            assert e.state is EscrowState.OPEN and e.amount_wei == MU * demand(i, t) // 10**9
        for ue in ues:  # createTrade + 3 payments: no nonce skipped, none reused
            assert w3.eth.get_transaction_count(ue.address) == 1 + TASKS_PER_UE
        opened = trade.opened_escrows(mec=mec.address, from_block=start_block)
        assert sorted((e["ue"], e["taskId"]) for e in opened) == sorted((ue.address, t) for _, ue, t in jobs)
        assert len({r.block_number for r in reports}) < len(jobs)  # really batched into shared blocks

        # One MEC server account completes all 60 at once: 60 nonces from one account.
        def complete(job) -> TxReport:
            i, ue, t = job
            return trade.complete(mec, ue=ue.address, task_id=t, result_hash=(i * 10 + t + 1).to_bytes(32, "big"))

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            done = list(pool.map(complete, jobs))
        assert sorted(r.nonce for r in done) == list(range(len(jobs)))
        assert trade.balance() == 0
        assert w3.eth.get_balance(mec_wallet.address) == wallet_before + expected_total
        assert all(trade.escrow(ue.address, t).state is EscrowState.PAID for _, ue, t in jobs)


# ---------------------------------------------------------------------------- pool faults

RESEND = 0.4  # seconds before the binding acts on an unmined transaction


@pytest.fixture(scope="module")
def manual():
    """A chain that mines only when told, with a deployed contract, one MEC and one UE."""
    config = ContractConfig(unit_price_wei_per_gcycle=MU, settlement_grace_s=600, poll_interval_s=0.02,
                            resend_after_s=RESEND, max_resends=20, receipt_timeout_s=30)
    with AnvilNode(accounts=4) as node:
        w3 = node.web3()
        esp, mec, ue, _ = node.accounts
        trade, _ = TradingContract.deploy(w3, esp, config, sender=TxSender(w3, config))
        trade.register_mec(esp, server=mec.address)
        trade.create_trade(ue)
        node.rpc("evm_setAutomine", False)
        yield dict(node=node, w3=w3, trade=trade, mec=mec, ue=ue)


class Payment(threading.Thread):
    """trading() running in the background while the test plays with the pool."""

    def __init__(self, m, task_id, trade=None):
        super().__init__(daemon=True)
        self.m, self.task_id, self.report, self.error = m, task_id, None, None
        self.trade = trade or m["trade"]

    def run(self):
        try:
            self.report = self.trade.trading(self.m["ue"], mec=self.m["mec"].address, task_id=self.task_id,
                                                  data_size_bits=8_000_000, service_demand_cycles=10**9,
                                                  execution_time_s=5)
        except Exception as exc:  # handed to the test thread
            self.error = exc


def _wait(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _in_pool(m) -> bool:
    w3, ue = m["w3"], m["ue"].address
    return w3.eth.get_transaction_count(ue, "pending") > w3.eth.get_transaction_count(ue, "latest")


def _finish(m, payment: Payment) -> TxReport:
    """Mine until the payment's thread returns."""
    while payment.is_alive():
        m["node"].rpc("evm_mine")
        payment.join(timeout=0.1)
    if payment.error:
        raise payment.error
    return payment.report


def _assert_paid_once(m, task_id: int, balance_before: int, nonce_before: int, nonces_used: int):
    trade, w3, ue = m["trade"], m["w3"], m["ue"].address
    phi = MU  # xi_u = 1 Gcycle
    assert trade.balance() == balance_before + phi
    assert trade.escrow(ue, task_id).state is EscrowState.OPEN
    assert w3.eth.get_transaction_count(ue) == nonce_before + nonces_used
    events = [e for e in trade.opened_escrows(mec=m["mec"].address) if e["ue"] == ue and e["taskId"] == task_id]
    assert len(events) == 1


def test_dropped_transaction_is_rebroadcast_and_pays_once(manual):
    m = manual
    balance, nonce = m["trade"].balance(), m["w3"].eth.get_transaction_count(m["ue"].address)
    payment = Payment(m, task_id=1)
    payment.start()
    _wait(lambda: _in_pool(m), "the payment in the pool")
    m["node"].rpc("anvil_dropAllTransactions")
    assert not _in_pool(m)
    _wait(lambda: _in_pool(m), "the re-broadcast")
    report = _finish(m, payment)
    assert report.resends >= 1 and report.nonce == nonce
    _assert_paid_once(m, 1, balance, nonce, 1)


def test_stuck_transaction_is_replaced_with_a_higher_fee_and_pays_once(manual):
    m = manual
    w3 = m["w3"]
    balance, nonce = m["trade"].balance(), w3.eth.get_transaction_count(m["ue"].address)
    price = w3.eth.gas_price
    payment = Payment(m, task_id=2)
    payment.start()
    _wait(lambda: _in_pool(m), "the payment in the pool")
    time.sleep(2.5 * RESEND)  # not mined: the binding replaces it (same nonce, higher fee)
    report = _finish(m, payment)
    assert report.resends >= 1 and report.nonce == nonce
    assert report.gas_price_wei > price  # the replacement, not the original, was mined
    _assert_paid_once(m, 2, balance, nonce, 1)


def test_nonce_taken_by_another_signer_leads_to_a_fresh_nonce_and_pays_once(manual):
    m = manual
    w3, ue = m["w3"], m["ue"]
    balance, nonce = m["trade"].balance(), w3.eth.get_transaction_count(ue.address)
    payment = Payment(m, task_id=3)
    payment.start()
    _wait(lambda: _in_pool(m), "the payment in the pool")
    # Another process holding the same key sends something else with that nonce, at a higher
    # price, and it is mined first.
    foreign = ue.sign_transaction({"to": ue.address, "value": 0, "gas": 21_000, "nonce": nonce,
                                   "gasPrice": 5 * w3.eth.gas_price, "chainId": w3.eth.chain_id})
    w3.eth.send_raw_transaction(foreign.raw_transaction)
    m["node"].rpc("evm_mine")
    assert w3.eth.get_transaction_receipt(foreign.hash)["status"] == 1
    report = _finish(m, payment)
    assert report.resends >= 1 and report.nonce == nonce + 1
    _assert_paid_once(m, 3, balance, nonce, 2)


def test_confirmations_wait_for_later_blocks(manual):
    m = manual
    config = dataclasses.replace(m["trade"].config, confirmations=3)
    trade = TradingContract(m["w3"], m["trade"].address, config, sender=TxSender(m["w3"], config))
    balance, nonce = trade.balance(), m["w3"].eth.get_transaction_count(m["ue"].address)
    payment = Payment(m, task_id=4, trade=trade)
    payment.start()
    _wait(lambda: _in_pool(m), "the payment in the pool")
    for depth in (1, 2):  # included, then one block on top: not yet 3 deep
        m["node"].rpc("evm_mine")
        payment.join(timeout=0.3)
        assert payment.is_alive(), f"returned at depth {depth} with confirmations=3"
    m["node"].rpc("evm_mine")
    payment.join(timeout=5)
    assert not payment.is_alive() and payment.error is None
    report = payment.report
    assert report.confirmation_latency_s >= report.inclusion_latency_s + 0.5
    _assert_paid_once(m, 4, balance, nonce, 1)
