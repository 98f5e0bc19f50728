"""Payment channels of the trading contract on a real node (anvil, London rules): the happy path of
many tasks on several lanes, attacks (stale, replayed, over-cap, expired, forged and malleated
vouchers, early closes by either side, a reorganised deposit, racing redemptions, 2**128 amounts,
re-entrant wallets), every other refusal, the binding's pre-check and the voucher codec; the UE's
light reader and the MEC executor's light client (contracts.light) against the binding.

Every refusal is checked twice, as in test_contract_trading.py: through gas estimation (nothing is
sent, no balance moves) and mined with a fixed gas limit (only the sender's fee is spent)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import function_signature_to_4byte_selector

from contracts.binding import ContractRevert
from contracts.build import load_artifact
from contracts.config import ContractConfig
from contracts.testing import (attacker_call, deploy_attacker, deploy_with_mecs, encode_trading_call, named_balances,
                               rolled_back)
from contracts.vouchers import (Voucher, VoucherError, domain_separator, sign_voucher, typed_data, voucher_digest,
                                voucher_signer)
from chain.anvil import AnvilNode
from chain.keys import Key
from contracts.light import LightTrade

pytestmark = pytest.mark.chain

ROOT = Path(__file__).resolve().parents[1]

MU = 150_000_000_000_000_000          # wei per Gcycle
CAP = 10**17                          # wei per lane and generation
DEPOSIT = 3 * CAP                     # two lanes (mec1, mec2) and one cap of free balance
PHI = 10**16                          # wei, one task's price in these tests
WINDOW = 600                          # s, the dispute window
LIFETIME = 3600                       # s, a channel's expiry after opening
GAS = 400_000                         # fixed limit: the call is mined (and fails there) without estimation
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
CONFIG = ContractConfig(unit_price_wei_per_gcycle=MU, settlement_grace_s=0, poll_interval_s=0.01,
                        dispute_window_s=WINDOW)
NAMES = ["esp", "mec1", "mec1_wallet", "mec2", "mec2_wallet", "mec3", "ue1", "ue2", "ue2_wallet", "ue3",
         "stranger", "owner"]


@pytest.fixture(scope="module")
def node():
    with AnvilNode(accounts=len(NAMES)) as n:
        yield n


@pytest.fixture(scope="module")
def world(node):
    """ESP; mec1 and mec2 registered (each paid into a separate wallet); mec3 not yet; UEs
    unregistered (open_channel registers them; ue2 into a separate wallet)."""
    acct = dict(zip(NAMES, node.accounts))
    trade = deploy_with_mecs(node, acct["esp"], CONFIG, [(acct[m], acct[f"{m}_wallet"]) for m in ("mec1", "mec2")])
    light = LightTrade(node.rpc_url, trade.address, CONFIG)      # the MEC executor's client, at the end
    return dict(acct, trade=trade, light=light, node=node, w3=node.web3())


@pytest.fixture
def w(world):
    """The world, rolled back after each test."""
    with rolled_back(world["node"], world["trade"]):
        yield world
    world["light"].sender.reset_nonces()


# ---------------------------------------------------------------------------- helpers


def now(w) -> int:
    return w["trade"].latest_block_time()


def open_(w, ue="ue1", deposit=DEPOSIT, cap=CAP, lifetime=LIFETIME, trade=None, **kw):
    trade = trade or w["trade"]
    if ue == "ue2" and kw.get("register", True):
        kw.setdefault("wallet", w["ue2_wallet"].address)
    return trade.open_channel(w[ue], deposit_wei=deposit, cap_per_lane_wei=cap, expiry=now(w) + lifetime, **kw)


def voucher(w, ue="ue1", mec="mec1", cumulative=PHI, nonce=1, generation=0, domain=None, **kw) -> Voucher:
    """UE `ue`'s voucher for `cumulative` wei on its lane with `mec` (signed for w's contract)."""
    digest = hashlib.sha256(f"{ue}/{mec}/{generation}/{nonce}".encode()).digest()
    fields = dict(mec=w[mec].address, generation=generation, cumulative=cumulative, nonce=nonce,
                  task_id=nonce, request_digest=digest) | kw
    return sign_voucher(w[ue], **(domain or w["trade"].domain), **fields)


def balances(w, *extra_contracts) -> dict:
    return named_balances(w["node"], w, NAMES, w["trade"], *extra_contracts)


def refused(w, caller: str, call, error: str, args: dict | None = None, extra=()) -> ContractRevert:
    """`call(**kw)` is refused with `error` (and `args`) twice: at estimation, sending nothing and
    moving no ether; then mined with a fixed gas limit, costing `caller` its fee and nothing else."""
    w3, account = w["w3"], w[caller]
    nonce = w3.eth.get_transaction_count(account.address)
    before = balances(w, *extra)
    with pytest.raises(ContractRevert) as exc:
        call()
    assert exc.value.error == error and exc.value.receipt is None, exc.value
    _check_args(w, exc.value.error_args, args or {})
    assert w3.eth.get_transaction_count(account.address) == nonce
    assert balances(w, *extra) == before

    with pytest.raises(ContractRevert) as mined:
        call(gas=GAS)
    receipt = mined.value.receipt
    assert receipt is not None and receipt["status"] == 0 and mined.value.error == error, mined.value
    _check_args(w, mined.value.error_args, args or {})
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    after = balances(w, *extra)
    for name, value in before.items():
        assert after[name] == value - (fee if name == caller else 0), f"{name} moved by {after[name] - value} wei"
    return exc.value


def _check_args(w, error_args: dict, expected: dict) -> None:
    for key, want in expected.items():
        got = error_args[key]
        if isinstance(want, str) and want in w:
            assert got.lower() == w[want].address.lower(), (key, got, want)
        else:
            assert got == want, (key, got, want)


def _selector(signature: str) -> bytes:
    return function_signature_to_4byte_selector(signature)


# ---------------------------------------------------------------------------- happy path


def test_deploy_state_and_domain(w):
    trade = w["trade"]
    assert trade.dispute_window_s() == WINDOW
    assert trade.domain == {"chain_id": 31337, "contract": trade.address}
    assert trade.domain_separator() == domain_separator(31337, trade.address)
    assert trade.channel(w["ue1"].address) is None
    lane = trade.lane(w["ue1"].address, w["mec2"].address)
    assert (lane.index, lane.redeemed_wei, lane.generation, lane.state) == (2, 0, 0, "open")
    with pytest.raises(ValueError, match="not a registered MEC"):
        trade.lane(w["ue1"].address, w["stranger"].address)


def test_many_tasks_on_several_lanes_one_batch_per_mec_exact_to_the_wei(w):
    trade = w["trade"]
    start = balances(w)
    fees = {n: 0 for n in NAMES}
    for ue in ("ue1", "ue2", "ue3"):
        r = open_(w, ue)
        fees[ue] += r.fee_wei
        ev = r.event("ChannelOpened")
        assert (ev["deposit"], ev["capPerLane"], ev["laneCount"]) == (DEPOSIT, CAP, 2)
        assert r.event("TradeCreated")["wallet"] == (w["ue2_wallet"] if ue == "ue2" else w[ue]).address

    # 14 tasks on 5 lanes, of several prices; each task a new voucher on its lane.
    tasks = [("ue1", "mec1", 1), ("ue2", "mec1", 2), ("ue1", "mec2", 3), ("ue1", "mec1", 1), ("ue3", "mec2", 2),
             ("ue2", "mec1", 1), ("ue1", "mec1", 4), ("ue3", "mec2", 1), ("ue2", "mec2", 2), ("ue1", "mec2", 1),
             ("ue2", "mec1", 3), ("ue3", "mec2", 5), ("ue1", "mec1", 2), ("ue2", "mec2", 1)]
    newest: dict[tuple[str, str], Voucher] = {}
    for ue, mec, units in tasks:
        prev = newest.get((ue, mec))
        v = voucher(w, ue, mec, cumulative=(prev.cumulative if prev else 0) + units * PHI,
                    nonce=(prev.nonce if prev else 0) + 1)
        assert voucher_signer(v, **trade.domain) == w[ue].address   # what the MEC server checks
        newest[(ue, mec)] = v

    paid = {}
    for mec in ("mec1", "mec2"):
        batch = [v for (ue, m), v in sorted(newest.items()) if m == mec]
        r = trade.redeem(w[mec], batch)
        fees[mec] += r.fee_wei
        redeemed = [args for name, args in r.events if name == "VoucherRedeemed"]
        assert [(e["ue"], e["amount"], e["nonce"]) for e in redeemed] == \
            [(v.ue, v.cumulative, v.nonce) for v in batch]
        paid[mec] = sum(v.cumulative for v in batch)

    end = balances(w)
    assert end["mec1_wallet"] - start["mec1_wallet"] == paid["mec1"] == 14 * PHI
    assert end["mec2_wallet"] - start["mec2_wallet"] == paid["mec2"] == 15 * PHI
    assert end["contract"] == 3 * DEPOSIT - paid["mec1"] - paid["mec2"]
    for name in NAMES:
        if name not in ("mec1_wallet", "mec2_wallet"):
            deposit = DEPOSIT if name in ("ue1", "ue2", "ue3") else 0
            assert end[name] == start[name] - fees[name] - deposit, name
    for ue in ("ue1", "ue2", "ue3"):
        lanes_paid = sum(v.cumulative for (u, _), v in newest.items() if u == ue)
        c = trade.channel(w[ue].address)
        assert (c.balance_wei, c.redeemed_open_wei, c.open_lanes) == (DEPOSIT - lanes_paid, lanes_paid, 2)
        assert c.free_wei == CAP
    lane = trade.lane(w["ue1"].address, w["mec1"].address)
    assert (lane.redeemed_wei, lane.nonce, lane.state) == (8 * PHI, 4, "open")

    # The free balance (one cap) leaves to W_u exactly; the lanes keep theirs.
    r = trade.withdraw_free(w["ue2"], amount_wei=CAP)
    assert balances(w)["ue2_wallet"] == end["ue2_wallet"] + CAP
    assert r.event("FreeWithdrawn") == {"ue": w["ue2"].address, "wallet": w["ue2_wallet"].address, "amount": CAP}
    events = trade.channel_events(ue=w["ue2"].address)
    assert [e["event"] for e in events] == ["ChannelOpened", "VoucherRedeemed", "VoucherRedeemed", "FreeWithdrawn"]
    assert [e["event"] for e in trade.channel_events(mec=w["mec2"].address)] == ["VoucherRedeemed"] * 3


# ---------------------------------------------------------------------------- attacks: vouchers


def test_stale_voucher_after_a_newer_one_is_refused(w):
    trade = w["trade"]
    open_(w)
    v1, v2 = voucher(w, cumulative=PHI, nonce=1), voucher(w, cumulative=3 * PHI, nonce=2)
    trade.redeem(w["mec1"], [v2])
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v1], **g), "StaleVoucher",
            {"laneNonce": 2, "nonce": 1, "redeemed": 3 * PHI, "cumulative": PHI})
    # A higher amount under an old nonce, or a new nonce for no more money: stale too.
    for cumulative, nonce in ((5 * PHI, 2), (3 * PHI, 3)):
        refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [voucher(w, cumulative=cumulative, nonce=nonce)], **g),
                "StaleVoucher")
    assert trade.lane(w["ue1"].address, w["mec1"].address).redeemed_wei == 3 * PHI


def test_voucher_replayed_on_another_lane_is_refused(w):
    trade = w["trade"]
    open_(w)
    v = voucher(w, mec="mec1", cumulative=2 * PHI)
    refused(w, "mec2", lambda **g: trade.redeem(w["mec2"], [v], **g), "BadSignature", {"ue": "ue1"})
    before = balances(w)
    trade.redeem(w["mec1"], [v])                       # the lane it was signed for pays it
    assert balances(w)["mec1_wallet"] == before["mec1_wallet"] + 2 * PHI


def test_voucher_replayed_on_another_contract_is_refused(w):
    """A second deployment with the same ESP, MEC servers (same indexes) and UE channel."""
    trade = w["trade"]
    trade2 = deploy_with_mecs(w["node"], w["esp"], CONFIG, [(w[m], w[f"{m}_wallet"]) for m in ("mec1", "mec2")],
                              sender=trade.sender)
    open_(w)
    open_(w, trade=trade2)
    v_for_1, v_for_2 = voucher(w), voucher(w, domain=trade2.domain)
    refused(w, "mec1", lambda **g: trade2.redeem(w["mec1"], [v_for_1], **g), "BadSignature", {"ue": "ue1"},
            extra=[trade2])
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v_for_2], **g), "BadSignature", {"ue": "ue1"},
            extra=[trade2])
    assert trade.domain_separator() != trade2.domain_separator()


def test_voucher_signed_for_another_chain_id_is_refused(w):
    trade = w["trade"]
    open_(w)
    v = voucher(w, domain={"chain_id": 1, "contract": trade.address})
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v], **g), "BadSignature", {"ue": "ue1"})
    assert voucher_signer(v, **trade.domain) != w["ue1"].address


def test_voucher_above_the_cap_or_the_deposit_is_refused(w):
    trade = w["trade"]
    open_(w)
    for cumulative in (CAP + 1, DEPOSIT + 1):
        v = voucher(w, cumulative=cumulative)
        refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v], **g), "OverCap",
                {"cumulative": cumulative, "cap": CAP})
    trade.redeem(w["mec1"], [voucher(w, cumulative=CAP)])   # exactly the cap pays


def test_redeeming_on_an_expired_channel_is_refused_and_the_ue_reclaims(w):
    trade, node = w["trade"], w["node"]
    expiry = open_(w).event("ChannelOpened")["expiry"]
    v = voucher(w, cumulative=2 * PHI)
    node.increase_time(LIFETIME + 5)
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v], **g), "ChannelExpired", {"expiry": expiry})
    before = balances(w)
    r = trade.reclaim(w["ue1"])
    assert r.event("ChannelReclaimed")["amount"] == DEPOSIT
    after = balances(w)
    assert after["ue1"] == before["ue1"] + DEPOSIT - r.fee_wei and after["contract"] == 0
    assert after["mec1_wallet"] == before["mec1_wallet"]
    c = trade.channel(w["ue1"].address)
    assert c.reclaimed and c.balance_wei == 0 and c.free_wei == 0
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v], **g), "NoChannel", {"ue": "ue1"})


def test_expiry_boundary_belongs_to_the_mec(w):
    """At block time == expiry a voucher still pays and the UE may not reclaim; one second later
    it is the other way round."""
    trade, node = w["trade"], w["node"]
    expiry = open_(w).event("ChannelOpened")["expiry"]
    node.rpc("evm_setNextBlockTimestamp", expiry - 1)
    with pytest.raises(ContractRevert, match="ChannelNotExpired"):
        trade.reclaim(w["ue1"], gas=GAS)
    node.rpc("evm_setNextBlockTimestamp", expiry)
    trade.redeem(w["mec1"], [voucher(w, cumulative=PHI)], gas=GAS)
    node.rpc("evm_setNextBlockTimestamp", expiry + 1)
    with pytest.raises(ContractRevert, match="ChannelExpired"):
        trade.redeem(w["mec1"], [voucher(w, cumulative=2 * PHI, nonce=2)], gas=GAS)
    trade.reclaim(w["ue1"])
    assert trade.balance() == 0


# ---------------------------------------------------------------------------- attacks: closing


def test_mec_releasing_early_with_an_old_voucher_only_costs_itself(w):
    trade = w["trade"]
    open_(w)
    v1, v2 = voucher(w, cumulative=PHI, nonce=1), voucher(w, cumulative=3 * PHI, nonce=2)
    trade.redeem(w["mec1"], [v1])
    r = trade.release_lane(w["mec1"], ue=w["ue1"].address)
    assert r.event("LaneSettled") == {"ue": w["ue1"].address, "mec": w["mec1"].address, "generation": 0,
                                      "redeemed": PHI, "released": CAP - PHI, "byMec": True}
    lane = trade.lane(w["ue1"].address, w["mec1"].address)
    assert (lane.state, lane.generation, lane.redeemed_wei, lane.nonce) == ("closed", 1, 0, 0)
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v2], **g), "LaneClosed",
            {"ue": "ue1", "mec": "mec1", "generation": 1})
    c = trade.channel(w["ue1"].address)
    assert (c.open_lanes, c.redeemed_open_wei, c.free_wei) == (1, 0, CAP + CAP - PHI)

    # Reopened, the lane is in generation 1: the old generation's voucher still pays nothing.
    assert trade.reopen_lane(w["ue1"], mec=w["mec1"].address).event("LaneReopened")["generation"] == 1
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v2], **g), "WrongGeneration",
            {"expected": 1, "got": 0})
    before = balances(w)
    free = trade.channel(w["ue1"].address).free_wei
    assert free == CAP - PHI
    r = trade.withdraw_free(w["ue1"], amount_wei=free)
    after = balances(w)
    assert after["ue1"] == before["ue1"] + free - r.fee_wei and after["contract"] == before["contract"] - free
    assert after["mec1_wallet"] == before["mec1_wallet"]           # the MEC got v1 only: PHI
    assert trade.channel(w["ue1"].address).free_wei == 0


def test_ue_closing_early_and_the_mec_answering_in_the_dispute_window(w):
    trade, node = w["trade"], w["node"]
    open_(w, "ue2")
    vs = [voucher(w, "ue2", cumulative=k * PHI, nonce=k) for k in (1, 2, 3, 4)]
    trade.redeem(w["mec1"], [vs[0]])
    r = trade.close_lane(w["ue2"], mec=w["mec1"].address)
    closes_at = r.event("LaneClosing")["closesAt"]
    assert closes_at == trade.latest_block_time() + WINDOW
    assert trade.lane(w["ue2"].address, w["mec1"].address).state == "closing"

    # Inside the window the UE can neither settle the lane nor take the lane's reservation.
    refused(w, "ue2", lambda **g: trade.withdraw_lane(w["ue2"], mec=w["mec1"].address, **g), "DisputeWindowOpen",
            {"closesAt": closes_at})
    free = trade.channel(w["ue2"].address).free_wei
    assert free == CAP
    refused(w, "ue2", lambda **g: trade.withdraw_free(w["ue2"], amount_wei=free + 1, **g), "InsufficientFree",
            {"requested": free + 1, "free": free})

    # The MEC answers with its newest voucher, at the last second of the window: paid in full.
    before = balances(w)
    node.rpc("evm_setNextBlockTimestamp", closes_at)
    trade.redeem(w["mec1"], [vs[2]], gas=GAS)
    assert balances(w)["mec1_wallet"] == before["mec1_wallet"] + 2 * PHI
    # One second later the lane is the UE's: no more vouchers, and the rest of the cap goes to W_u.
    node.rpc("evm_setNextBlockTimestamp", closes_at + 1)
    with pytest.raises(ContractRevert, match="DisputeWindowOver"):
        trade.redeem(w["mec1"], [vs[3]], gas=GAS)
    mid = balances(w)
    r = trade.withdraw_lane(w["ue2"], mec=w["mec1"].address)
    assert r.event("LaneSettled") == {"ue": w["ue2"].address, "mec": w["mec1"].address, "generation": 0,
                                      "redeemed": 3 * PHI, "released": CAP - 3 * PHI, "byMec": False}
    after = balances(w)
    assert after["ue2_wallet"] == mid["ue2_wallet"] + CAP - 3 * PHI
    assert after["ue2"] == mid["ue2"] - r.fee_wei
    assert after["contract"] == mid["contract"] - (CAP - 3 * PHI) == DEPOSIT - 3 * PHI - (CAP - 3 * PHI)
    assert after["mec1_wallet"] == mid["mec1_wallet"]
    c = trade.channel(w["ue2"].address)
    assert (c.open_lanes, c.redeemed_open_wei, c.balance_wei, c.free_wei) == (1, 0, 2 * CAP, CAP)


# ---------------------------------------------------------------------------- attacks: the chain


def test_deposit_undone_by_a_reorganisation_pays_nothing(w):
    """The UE's deposit is mined, a voucher signed on it, then the block is reorganised away
    (evm_revert to before the deposit): the voucher finds no channel and no ether leaves."""
    trade, node = w["trade"], w["node"]
    snap = node.snapshot()
    open_(w)
    v = voucher(w, cumulative=2 * PHI)
    assert voucher_signer(v, **trade.domain) == w["ue1"].address     # it looked fine off chain
    node.revert(snap)
    trade.sender.reset_nonces()
    assert trade.channel(w["ue1"].address) is None and trade.balance() == 0
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [v], **g), "NoChannel", {"ue": "ue1"})
    assert trade.balance() == 0


@pytest.mark.parametrize("order", ["older first", "newer first"])
def test_two_redemptions_racing_in_one_block(w, order):
    """v1 < v2 of one lane, in two transactions mined in one block: the MEC server ends with
    exactly v2's cumulative; the later transaction pays the difference or fails StaleVoucher."""
    trade, node, w3 = w["trade"], w["node"], w["w3"]
    open_(w)
    v1, v2 = voucher(w, cumulative=PHI, nonce=1), voucher(w, cumulative=4 * PHI, nonce=2)
    sent = [v1, v2] if order == "older first" else [v2, v1]
    before = balances(w)
    results: dict[int, object] = {}

    def send(i, v):
        try:
            results[i] = trade.redeem(w["mec1"], [v], gas=GAS)
        except ContractRevert as exc:
            results[i] = exc

    node.rpc("evm_setAutomine", False)
    threads = []
    try:
        for i, v in enumerate(sent):
            pending = w3.eth.get_transaction_count(w["mec1"].address, "pending")
            threads.append(threading.Thread(target=send, args=(i, v)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while w3.eth.get_transaction_count(w["mec1"].address, "pending") == pending:
                assert time.monotonic() < deadline, "transaction never reached the pool"
                time.sleep(0.01)
        node.rpc("evm_mine")
    finally:
        node.rpc("evm_setAutomine", True)
        for t in threads:
            t.join(30)
    first, second = results[0], results[1]
    assert not isinstance(first, ContractRevert), first
    blocks = {first.block_number,
              second.receipt["blockNumber"] if isinstance(second, ContractRevert) else second.block_number}
    assert len(blocks) == 1, "both transactions must be in one block"
    after = balances(w)
    assert after["mec1_wallet"] == before["mec1_wallet"] + 4 * PHI
    assert after["contract"] == before["contract"] - 4 * PHI
    if order == "older first":
        assert [r.event("VoucherRedeemed")["amount"] for r in (first, second)] == [PHI, 3 * PHI]
    else:
        assert isinstance(second, ContractRevert) and second.error == "StaleVoucher"
        assert second.receipt["status"] == 0
        assert first.event("VoucherRedeemed")["amount"] == 4 * PHI
    assert trade.lane(w["ue1"].address, w["mec1"].address).redeemed_wei == 4 * PHI


def test_amounts_at_the_2_128_boundary(w):
    """Deposit, balance, cap and cumulative at 2**128 - 1 wei, and one wei beyond. anvil's pool
    will not carry a transaction whose value plus fee reaches 2**128 wei, so the channel reaches
    2**128 - 1 in two deposits, and a single deposit of 2**128 is checked at estimation (the same
    EVM call; test_contract_trading.py's AmountTooLarge test says the same of escrows)."""
    trade, node = w["trade"], w["node"]
    top = 2**128 - 1
    for ue in ("ue1", "ue2"):
        node.rpc("anvil_setBalance", w[ue].address, hex(2**131))
    before = balances(w)
    with pytest.raises(ContractRevert) as exc:
        open_(w, deposit=top + 1, cap=CAP)
    assert exc.value.error == "AmountTooLarge" and exc.value.error_args == {"amount": top + 1, "maxAmount": top}
    assert balances(w) == before
    # Two lanes of cap 2**128 - 1 need 2**129 - 2 wei: computed without overflow, not covered.
    refused(w, "ue2", lambda **g: open_(w, "ue2", deposit=2**127, cap=top, **g), "CapNotCovered",
            {"needed": 2 * top, "available": 2**127})

    cap = top // 2
    expiry = open_(w, deposit=2**127, cap=2**126).event("ChannelOpened")["expiry"]
    trade.top_up(w["ue1"], amount_wei=top - 2**127, cap_per_lane_wei=cap, expiry=expiry)
    c = trade.channel(w["ue1"].address)
    assert (c.balance_wei, c.cap_per_lane_wei, c.free_wei) == (top, cap, 1)
    refused(w, "ue1", lambda **g: trade.top_up(w["ue1"], amount_wei=1, cap_per_lane_wei=cap, expiry=expiry, **g),
            "AmountTooLarge", {"amount": top + 1, "maxAmount": top})
    refused(w, "ue1", lambda **g: trade.top_up(w["ue1"], amount_wei=0, cap_per_lane_wei=cap + 1, expiry=expiry, **g),
            "CapNotCovered", {"needed": 2 * cap + 2, "available": top})
    for mec, cumulative in (("mec2", cap + 1), ("mec2", top)):
        refused(w, mec, lambda **g: trade.redeem(w[mec], [voucher(w, mec=mec, cumulative=cumulative)], **g),
                "OverCap", {"cumulative": cumulative, "cap": cap})
    before = balances(w)
    trade.redeem(w["mec1"], [voucher(w, cumulative=cap)])
    assert balances(w)["mec1_wallet"] == before["mec1_wallet"] + cap
    assert trade.channel(w["ue1"].address).balance_wei == top - cap
    with pytest.raises(VoucherError, match="cumulative"):
        voucher(w, cumulative=top + 1)


def _malleate(sig: bytes) -> bytes:
    """The same signature with s -> n - s and v flipped: valid for ecrecover, refused as high s."""
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (N - s).to_bytes(32, "big") + bytes([55 - sig[64]])


MALFORMED = {
    "64 bytes": lambda sig: sig[:64],
    "66 bytes": lambda sig: sig + b"\0",
    "v = 0": lambda sig: sig[:64] + bytes([sig[64] - 27]),
    "v = 29": lambda sig: sig[:64] + b"\x1d",
    "high s": _malleate,
    "zero r": lambda sig: bytes(32) + sig[32:],
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_signature_is_refused_on_chain_and_off(w, case):
    trade = w["trade"]
    open_(w)
    good = voucher(w, cumulative=PHI)
    bad = dataclasses.replace(good, signature=MALFORMED[case](good.signature))
    with pytest.raises(VoucherError):
        voucher_signer(bad, **trade.domain)
    refused(w, "mec1", lambda **g: trade.redeem(w["mec1"], [bad], **g), "BadSignature", {"ue": "ue1"})


# ---------------------------------------------------------------------------- attacks: wallets


def test_reentrant_mec_wallet_cannot_redeem_its_batch_twice(w):
    """The attacker is a registered MEC server and its own wallet; on being paid it re-enters
    redeem() with the same batch (up to 3 times)."""
    trade, w3 = w["trade"], w["w3"]
    attacker = deploy_attacker(trade, w["owner"])
    trade.register_mec(w["esp"], server=attacker.address, wallet=attacker.address)
    open_(w, deposit=4 * CAP)     # after the registration: the channel has a lane for the attacker
    open_(w, "ue2")
    v = sign_voucher(w["ue1"], **trade.domain, mec=attacker.address, generation=0, cumulative=2 * PHI, nonce=1,
                     task_id=1, request_digest=bytes(32))
    redeem_call = encode_trading_call(trade, "redeem", [(v.ue, 0, v.cumulative, 1, 1, bytes(32), v.signature)])
    attacker_call(trade, w["owner"], attacker, "arm", redeem_call, 3)
    held = trade.balance()
    attacker_call(trade, w["owner"], attacker, "execute", redeem_call)
    f = attacker.functions
    assert f.received().call() == 2 * PHI and f.reentries().call() == 1 and f.reentrySuccesses().call() == 0
    assert f.lastError().call() == _selector("StaleVoucher(uint64,uint64,uint256,uint256)")
    assert trade.balance() == held - 2 * PHI and w3.eth.get_balance(attacker.address) == 2 * PHI


def test_rejecting_wallets_cannot_lose_money(w):
    """A MEC wallet that rejects payment makes its batch revert (TransferFailed, lanes untouched);
    a UE wallet that rejects payment keeps the free balance in the channel."""
    trade = w["trade"]
    attacker = deploy_attacker(trade, w["owner"])
    attacker_call(trade, w["owner"], attacker, "setRejectPayments", True)
    trade.register_mec(w["esp"], server=attacker.address, wallet=attacker.address)
    open_(w, "ue3", deposit=4 * CAP, wallet=attacker.address)
    v = sign_voucher(w["ue3"], **trade.domain, mec=attacker.address, generation=0, cumulative=PHI, nonce=1,
                     task_id=1, request_digest=bytes(32))
    with pytest.raises(ContractRevert) as exc:
        attacker_call(trade, w["owner"], attacker, "execute", encode_trading_call(
            trade, "redeem", [(v.ue, 0, v.cumulative, 1, 1, bytes(32), v.signature)]))
    assert exc.value.error == "TransferFailed"
    lane = trade.lane(w["ue3"].address, attacker.address)
    assert lane.redeemed_wei == 0 and lane.nonce == 0
    refused(w, "ue3", lambda **g: trade.withdraw_free(w["ue3"], amount_wei=CAP, **g), "TransferFailed")
    assert trade.channel(w["ue3"].address).free_wei == CAP and trade.balance() == 4 * CAP


# ---------------------------------------------------------------------------- the binding


def test_binding_names_the_bad_voucher_and_sends_nothing(w):
    trade, w3 = w["trade"], w["w3"]
    open_(w)
    open_(w, "ue2")
    trade.redeem(w["mec1"], [voucher(w, cumulative=2 * PHI, nonce=2)])
    good = voucher(w, "ue2", cumulative=PHI)
    stale = voucher(w, cumulative=PHI, nonce=1)
    nonce = w3.eth.get_transaction_count(w["mec1"].address)
    with pytest.raises(ContractRevert) as exc:
        trade.redeem(w["mec1"], [good, stale])
    e = exc.value
    assert (e.error, e.receipt, e.error_args["voucher_index"], e.error_args["voucher_ue"],
            e.error_args["voucher_nonce"]) == ("StaleVoucher", None, 1, w["ue1"].address, 1)
    assert "StaleVoucher" in str(e) and "voucher_nonce=1" in str(e)
    # Each alone is fine, together they are not: an older voucher of a lane behind a newer one.
    v3, v4 = voucher(w, cumulative=3 * PHI, nonce=3), voucher(w, cumulative=4 * PHI, nonce=4)
    with pytest.raises(ContractRevert) as exc:
        trade.redeem(w["mec1"], [good, v4, v3])
    assert (exc.value.error, exc.value.error_args["voucher_index"], exc.value.error_args["voucher_nonce"]) == \
        ("StaleVoucher", 2, 3)
    with pytest.raises(ContractRevert) as exc:
        trade.redeem(w["stranger"], [good])
    assert exc.value.error == "UnknownMec" and "voucher_index" not in exc.value.error_args
    assert w3.eth.get_transaction_count(w["mec1"].address) == nonce
    trade.redeem(w["mec1"], [good, v3, v4])                     # in order, all three pay
    assert trade.lane(w["ue1"].address, w["mec1"].address).redeemed_wei == 4 * PHI


def test_binding_refuses_bad_arguments_naming_them(w):
    trade, ue, mec = w["trade"], w["ue1"], w["mec1"]
    good = voucher(w)
    for bad, name in [(dict(cap_per_lane_wei=-1), "cap_per_lane_wei"), (dict(cap_per_lane_wei=2**128), "cap"),
                      (dict(expiry=2**40), "expiry"), (dict(deposit_wei=1.5), "deposit_wei"),
                      (dict(register=False, wallet=ue.address), "wallet")]:
        with pytest.raises(ValueError, match=name):
            trade.open_channel(ue, **(dict(deposit_wei=DEPOSIT, cap_per_lane_wei=CAP, expiry=2**39) | bad))
    for bad, name in [(dict(generation=2**32), r"vouchers\[0\].generation"), (dict(nonce=-1), "nonce"),
                      (dict(request_digest=b"short"), "request_digest"), (dict(ue="0x12"), "ue"),
                      (dict(signature="0x00"), "signature")]:
        with pytest.raises(ValueError, match=name):
            trade.redeem(mec, [dataclasses.replace(good, **bad)])
    with pytest.raises(ValueError, match="empty"):
        trade.redeem(mec, [])
    with pytest.raises(ValueError, match="Voucher"):
        trade.redeem(mec, [good.to_json()])
    with pytest.raises(ValueError, match="ue"):
        trade.release_lane(mec, ue="0x1234")
    with pytest.raises(ValueError, match="amount_wei"):
        trade.withdraw_free(ue, amount_wei=2**128)
    with pytest.raises(ValueError, match="mec"):
        trade.close_lane(ue, mec="nope")


# ---------------------------------------------------------------------------- every other refusal
# Each case: (name, setup(w) -> (caller, call(**kw)), expected error, expected error args).


def _call(caller, method, *steps, **kwargs):
    """Run `steps` (each step(w)), then refuse trade.method(w[caller], **kwargs) (callables in
    kwargs are given w)."""
    def setup(w):
        for step in steps:
            step(w)
        args = {k: v(w) if callable(v) else v for k, v in kwargs.items()}
        return caller, lambda **g: getattr(w["trade"], method)(w[caller], **args, **g)
    return setup


def _opened(ue="ue1", **kw):
    return lambda w: open_(w, ue, **kw)


def _redeemed(cumulative=PHI, nonce=1, mec="mec1", ue="ue1"):
    return lambda w: w["trade"].redeem(w[mec], [voucher(w, ue, mec, cumulative=cumulative, nonce=nonce)])


def _closing(ue="ue1", mec="mec1"):
    return lambda w: w["trade"].close_lane(w[ue], mec=w[mec].address)


def _released(ue="ue1", mec="mec1"):
    return lambda w: w["trade"].release_lane(w[mec], ue=w[ue].address)


def _after(seconds):
    return lambda w: w["node"].increase_time(seconds)


def _mec3(w):
    w["trade"].register_mec(w["esp"], server=w["mec3"].address)


def _reclaimed(w):
    w["node"].increase_time(LIFETIME + 5)
    w["trade"].reclaim(w["ue1"])


def _expiry(delta=0):
    return lambda w: w["trade"].channel(w["ue1"].address).expiry + delta


def _redeem(mec="mec1", steps=(), **voucher_kw):
    def setup(w):
        for step in steps:
            step(w)
        v = voucher(w, **({"mec": mec if mec in ("mec1", "mec2", "mec3") else "mec1"} | voucher_kw))
        return mec, lambda **g: w["trade"].redeem(w[mec], [v], **g)
    return setup


def _lane_op(caller, method, target, *steps):
    key = "ue" if method == "release_lane" else "mec"
    return _call(caller, method, *steps, **{key: lambda w: w[target].address})


REJECTIONS = [
    ("open twice", _call("ue1", "open_channel", _opened(), deposit_wei=DEPOSIT, cap_per_lane_wei=CAP,
                         expiry=lambda w: now(w) + LIFETIME, register=False), "ChannelExists", {"ue": "ue1"}),
    ("open again after reclaim", _call("ue1", "open_channel", _opened(), _reclaimed, deposit_wei=DEPOSIT,
                                       cap_per_lane_wei=CAP, expiry=lambda w: now(w) + LIFETIME, register=False),
     "ChannelExists", {"ue": "ue1"}),
    ("open with expiry in the past", _call("ue1", "open_channel", deposit_wei=DEPOSIT, cap_per_lane_wei=CAP, expiry=1),
     "ExpiryInPast", {"expiry": 1}),
    ("open with the cap not covered", _call("ue1", "open_channel", deposit_wei=2 * CAP - 1, cap_per_lane_wei=CAP,
                                            expiry=lambda w: now(w) + LIFETIME),
     "CapNotCovered", {"needed": 2 * CAP, "available": 2 * CAP - 1}),
    ("open unregistered without a key", _call("stranger", "open_channel", deposit_wei=DEPOSIT, cap_per_lane_wei=CAP,
                                              expiry=lambda w: now(w) + LIFETIME, register=False),
     "UnknownUe", {"ue": "stranger"}),
    ("open registering twice", _call("ue1", "open_channel", lambda w: w["trade"].create_trade(w["ue1"]),
                                     deposit_wei=DEPOSIT, cap_per_lane_wei=CAP, expiry=lambda w: now(w) + LIFETIME),
     "UeAlreadyRegistered", {"ue": "ue1"}),
    ("top up without a channel", _call("stranger", "top_up", amount_wei=1, cap_per_lane_wei=CAP, expiry=2**39),
     "NoChannel", {"ue": "stranger"}),
    ("top up after expiry", _call("ue1", "top_up", _opened(), _after(LIFETIME + 5), amount_wei=1,
                                  cap_per_lane_wei=CAP, expiry=2**39), "ChannelExpired", {}),
    ("top up shortening the expiry", _call("ue1", "top_up", _opened(), amount_wei=1, cap_per_lane_wei=CAP,
                                           expiry=_expiry(-1)), "ExpiryShortened", {}),
    ("top up lowering the cap", _call("ue1", "top_up", _opened(), amount_wei=1, cap_per_lane_wei=CAP - 1,
                                      expiry=_expiry()), "CapDecreased", {"current": CAP, "requested": CAP - 1}),
    ("top up raising the cap uncovered", _call("ue1", "top_up", _opened(), _redeemed(PHI), amount_wei=CAP - 1,
                                               cap_per_lane_wei=2 * CAP, expiry=_expiry()),
     "CapNotCovered", {"needed": 4 * CAP - PHI, "available": DEPOSIT - PHI + CAP - 1}),
    ("top up after reclaim", _call("ue1", "top_up", _opened(), _reclaimed, amount_wei=1, cap_per_lane_wei=CAP,
                                   expiry=2**39), "NoChannel", {"ue": "ue1"}),
    ("redeem by a stranger", _redeem("stranger", [_opened()]), "UnknownMec", {"server": "stranger"}),
    ("redeem without a channel", _redeem("mec1"), "NoChannel", {"ue": "ue1"}),
    ("redeem on a MEC registered after the channel", _redeem("mec3", [_opened(), _mec3]), "NoLane",
     {"ue": "ue1", "mec": "mec3"}),
    ("redeem a wrong generation", _redeem("mec1", [_opened()], generation=1), "WrongGeneration",
     {"expected": 0, "got": 1}),
    ("redeem after the dispute window", _redeem("mec1", [_opened(), _closing(), _after(WINDOW + 5)]),
     "DisputeWindowOver", {}),
    ("redeem on a settled lane", _redeem("mec1", [_opened(), _closing(), _after(WINDOW + 5),
                                                  lambda w: w["trade"].withdraw_lane(w["ue1"], mec=w["mec1"].address)]),
     "LaneClosed", {"ue": "ue1", "mec": "mec1", "generation": 1}),
    ("close twice", _lane_op("ue1", "close_lane", "mec1", _opened(), _closing()), "LaneNotOpen",
     {"ue": "ue1", "mec": "mec1"}),
    ("close a settled lane", _lane_op("ue1", "close_lane", "mec1", _opened(), _released()), "LaneNotOpen", {}),
    ("close a stranger's lane", _lane_op("ue1", "close_lane", "stranger", _opened()), "UnknownMec",
     {"server": "stranger"}),
    ("close a lane the channel lacks", _lane_op("ue1", "close_lane", "mec3", _opened(), _mec3), "NoLane", {}),
    ("close without a channel", _lane_op("ue1", "close_lane", "mec1"), "NoChannel", {"ue": "ue1"}),
    ("withdraw an open lane", _lane_op("ue1", "withdraw_lane", "mec1", _opened()), "LaneNotClosing",
     {"ue": "ue1", "mec": "mec1"}),
    ("withdraw a settled lane", _lane_op("ue1", "withdraw_lane", "mec1", _opened(), _released()), "LaneNotClosing",
     {}),
    ("withdraw in the dispute window", _lane_op("ue1", "withdraw_lane", "mec1", _opened(), _closing()),
     "DisputeWindowOpen", {}),
    ("release twice", _lane_op("mec1", "release_lane", "ue1", _opened(), _released()), "LaneClosed",
     {"ue": "ue1", "mec": "mec1", "generation": 1}),
    ("release by a stranger", _lane_op("stranger", "release_lane", "ue1", _opened()), "UnknownMec",
     {"server": "stranger"}),
    ("release without a channel", _lane_op("mec1", "release_lane", "ue1"), "NoChannel", {"ue": "ue1"}),
    ("release a lane the channel lacks", _lane_op("mec3", "release_lane", "ue1", _opened(), _mec3), "NoLane",
     {"ue": "ue1", "mec": "mec3"}),
    ("reopen an open lane", _lane_op("ue1", "reopen_lane", "mec1", _opened()), "LaneNotClosed",
     {"ue": "ue1", "mec": "mec1"}),
    ("reopen a closing lane", _lane_op("ue1", "reopen_lane", "mec1", _opened(), _closing()), "LaneNotClosed", {}),
    ("reopen without free balance", _lane_op("ue1", "reopen_lane", "mec1", _opened(), _redeemed(PHI), _released(),
                                             lambda w: w["trade"].withdraw_free(w["ue1"], amount_wei=CAP + 1)),
     "CapNotCovered", {"needed": CAP, "available": CAP - PHI - 1}),
    ("withdraw more than the free balance", _call("ue1", "withdraw_free", _opened(), _redeemed(PHI), amount_wei=CAP + 1),
     "InsufficientFree", {"requested": CAP + 1, "free": CAP}),
    ("withdraw free after reclaim", _call("ue1", "withdraw_free", _opened(), _reclaimed, amount_wei=0),
     "NoChannel", {"ue": "ue1"}),
    ("reclaim before expiry", _call("ue1", "reclaim", _opened()), "ChannelNotExpired", {}),
    ("reclaim twice", _call("ue1", "reclaim", _opened(), _reclaimed), "NoChannel", {"ue": "ue1"}),
    ("reclaim without a channel", _call("ue1", "reclaim"), "NoChannel", {"ue": "ue1"}),
]


@pytest.mark.parametrize("case,setup,error,args", REJECTIONS, ids=[c[0] for c in REJECTIONS])
def test_rejection_reverts_with_named_error_and_moves_no_funds(w, case, setup, error, args):
    caller, call = setup(w)
    refused(w, caller, call, error, args)


def test_no_mecs_and_zero_dispute_window_are_refused(w):
    trade, w3 = w["trade"], w["w3"]
    bare = deploy_with_mecs(w["node"], w["esp"], CONFIG, [], sender=trade.sender)
    with pytest.raises(ContractRevert) as exc:
        bare.open_channel(w["ue1"], deposit_wei=0, cap_per_lane_wei=0, expiry=now(w) + LIFETIME)
    assert exc.value.error == "NoMecs"
    artifact = load_artifact("TradingContract")
    data = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"]).constructor(MU, 0).data_in_transaction
    with pytest.raises(ContractRevert) as exc:
        trade.errors.estimate(trade.sender.node, {"from": w["esp"].address, "data": data, "value": 0}, "deploy", 1.0)
    assert exc.value.error == "ZeroDisputeWindow"


# ---------------------------------------------------------------------------- vouchers off chain


def test_voucher_digest_is_eip712_as_eth_account_computes_it(w):
    v = voucher(w, cumulative=2**128 - 1, nonce=2**64 - 1, generation=2**32 - 1, task_id=2**64 - 1)
    message = encode_typed_data(full_message=typed_data(v, **w["trade"].domain))
    fields = {k: getattr(v, k) for k in ("ue", "mec", "generation", "cumulative", "nonce", "task_id", "request_digest")}
    assert _hash_eip191_message(message) == voucher_digest(**w["trade"].domain, **fields)
    assert Account.recover_message(message, signature=v.signature) == w["ue1"].address


def test_voucher_json_round_trip_and_malformed_input(w):
    v = voucher(w, cumulative=3 * 10**19, nonce=7, task_id=12)
    wire = v.to_json()
    assert wire["request_digest"].startswith("0x") and len(wire["signature"]) == 2 + 130
    assert Voucher.from_json(wire) == v
    lower = wire | {"ue": wire["ue"].lower()}
    assert Voucher.from_json(lower).ue == v.ue                      # normalized to checksum
    bad_cases = [
        ([], "JSON object"), ({k: x for k, x in wire.items() if k != "nonce"}, "missing"),
        (wire | {"extra": 1}, "unknown"), (wire | {"ue": "0x12"}, "ue"),
        (wire | {"mec": wire["mec"][:3] + wire["mec"][3:].swapcase()}, "mec"),
        (wire | {"generation": 2**32}, "generation"), (wire | {"generation": -1}, "generation"),
        (wire | {"cumulative": 2**128}, "cumulative"), (wire | {"cumulative": "30"}, "cumulative"),
        (wire | {"nonce": True}, "nonce"), (wire | {"nonce": 1.0}, "nonce"), (wire | {"task_id": 2**64}, "task_id"),
        (wire | {"request_digest": "0x" + "00" * 31}, "request_digest"),
        (wire | {"request_digest": "00" * 32}, "request_digest"), (wire | {"signature": "0x" + "zz" * 65}, "signature"),
        (wire | {"signature": wire["signature"][:-2]}, "signature"),
    ]
    for bad, word in bad_cases:
        with pytest.raises(VoucherError, match=word):
            Voucher.from_json(bad)
    assert issubclass(VoucherError, ValueError)


def test_config_channel_fields_are_validated():
    cfg = ContractConfig()
    assert (cfg.dispute_window_s, cfg.payment, cfg.channel_deposit_wei, cfg.channel_lifetime_s, cfg.redeem_every_s) \
        == (600, "escrow", 20 * 10**18, 86_400, 1800.0)
    for field, value in [("dispute_window_s", 0), ("dispute_window_s", 2**31), ("dispute_window_s", 1.5),
                         ("payment", "cash"), ("channel_deposit_wei", 0), ("channel_deposit_wei", 2**128),
                         ("channel_lifetime_s", 59), ("redeem_every_s", 0), ("redeem_every_s", float("nan"))]:
        with pytest.raises(ValueError, match=f"contract.{field}"):
            ContractConfig(**{field: value})
    assert ContractConfig(payment="channel").payment == "channel"


def test_the_light_reader_reads_what_the_binding_reads(w):
    """contracts.reads.ContractReader (the UE client's reads, without web3) against the web3
    binding at each stage of a lane's life, and its refusals."""
    from contracts.reads import ContractReader, ReadError
    trade = w["trade"]
    reader = ContractReader(w["node"].rpc_url, trade.address)
    ue, mec = w["ue2"].address, w["mec1"].address

    def same():
        assert reader.unit_price() == trade.unit_price()
        assert reader.quote(1_234_567_891) == trade.quote(1_234_567_891)
        assert reader.mec(mec) == trade.mec(mec) and reader.mec(w["mec3"].address) is None
        assert reader.channel(ue) == trade.channel(ue)
        assert reader.lane(ue, mec) == trade.lane(ue, mec)
        assert reader.latest_block_time() == trade.latest_block_time()

    assert reader.channel(ue) is None
    open_(w, "ue2")
    same()
    trade.redeem(w["mec1"], [voucher(w, "ue2", cumulative=2 * PHI, nonce=2)])
    same()
    trade.close_lane(w["ue2"], mec=mec)
    same()
    assert reader.lane(ue, mec).state == "closing" and reader.channel(ue).free_wei == trade.channel(ue).free_wei
    with pytest.raises(ValueError, match="not a registered MEC server"):
        reader.lane(ue, w["mec3"].address)
    with pytest.raises(ValueError, match="ue must be a 20-byte hex address"):
        reader.channel("0x1234")
    with pytest.raises(ValueError, match=r"a uint64 is an integer"):
        reader.quote(2**64)
    with pytest.raises(ReadError, match="is .* the trading contract"):
        ContractReader(w["node"].rpc_url, w["stranger"].address).unit_price()
    with pytest.raises(ReadError, match="failed"):
        ContractReader("http://127.0.0.1:9/", trade.address, timeout_s=2).unit_price()

def test_the_one_json_rpc_client_answers_refuses_and_gives_up_in_time(w):
    """chain.rpc.JsonRpc, the one web3-free client (the reader's, the executor's node's, the
    controller monitor's): a real node's result, its error reply as RpcRefused with the node's
    error object, and a node that never answers given up after its timeout, as the monitor
    needs (it polls every miner from its measuring loop)."""
    import socket

    from chain.rpc import JsonRpc, RpcError, RpcRefused
    from contracts.reads import ReadError
    node = JsonRpc(w["node"].rpc_url, timeout_s=5)
    assert int(node("eth_chainId"), 16) == int(w["node"].rpc("eth_chainId"), 16)
    assert node("eth_getBlockByNumber", ["latest", False])["number"] == w["node"].rpc("eth_getBlockByNumber",
                                                                                      "latest", False)["number"]
    with pytest.raises(RpcRefused, match="no_such_method refused by") as e:
        node("no_such_method")
    assert isinstance(e.value.error, dict) and "code" in e.value.error
    assert issubclass(RpcRefused, ReadError)           # what the contract's readers catch
    with socket.socket() as mute:                      # accepts, never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        t0 = time.monotonic()
        with pytest.raises(RpcError, match="eth_blockNumber to .* failed"):
            JsonRpc(f"http://127.0.0.1:{mute.getsockname()[1]}", timeout_s=0.5)("eth_blockNumber")
        assert time.monotonic() - t0 < 2.0


# ---------------------------------------------------------------------------- the MEC executor's light client
# contracts.light.LightTrade (JSON-RPC, chain.keys, contracts.abi) against the web3 binding: the same
# transactions leave the same state and events, refusals are named alike, the same logs are read.

XI = 10**8                            # cycles, the service demand of the escrow tests' tasks


def key(w, name: str) -> Key:
    return Key(w[name].key)


def both_ways(w, act):
    """`act(client, signer)` done by the light client, then undone and done by the binding:
    (light's result, the binding's result), each as `act` returns it."""
    node, trade, light = w["node"], w["trade"], w["light"]
    snap = node.snapshot()
    ours = act(light, lambda name: key(w, name))
    node.revert(snap)
    trade.sender.reset_nonces()
    light.sender.reset_nonces()
    theirs = act(trade, lambda name: w[name])
    return ours, theirs


def _report(r) -> tuple:
    """What two reports of the same transaction share (not its hash, fee or latencies)."""
    return r.function, r.sender, r.nonce, r.block_number, r.gas_used, r.events


def test_complete_leaves_the_state_and_events_the_binding_leaves(w):
    trade, light = w["trade"], w["light"]
    trade.create_trade(w["ue1"])
    for task_id, mec in ((1, "mec1"), (2, "mec1"), (3, "mec2")):
        trade.trading(w["ue1"], mec=w[mec].address, task_id=task_id, data_size_bits=8_000, service_demand_cycles=XI,
                      execution_time_s=600)
    ue = w["ue1"].address
    assert light.escrow(ue, 1) == trade.escrow(ue, 1) and light.escrow(ue, 9) == trade.escrow(ue, 9)
    for filters in ({}, {"ue": ue}, {"ue": ue, "task_id": 2}, {"mec": w["mec2"].address}, {"task_id": 7},
                    {"from_block": trade.reports[-1].block_number}):
        assert light.opened_escrows(**filters) == trade.opened_escrows(**filters), filters
    assert len(light.opened_escrows(ue=ue)) == 3 and light.opened_escrows(ue=ue, task_id=2)[0]["taskId"] == 2
    digest = hashlib.sha256(b"result").digest()

    def complete(client, signer):
        r = client.complete(signer("mec1"), ue=ue, task_id=1, result_hash=digest)
        return _report(r), client.escrow(ue, 1), trade.balance(), trade.paid_escrows(ue=ue)

    ours, theirs = both_ways(w, complete)
    assert ours == theirs
    assert ours[0][5][0][0] == "EscrowPaid" and ours[0][5][0][1]["resultHash"] == digest
    assert ours[1].state.name == "PAID"
    assert light.reports[-1].fee_wei == light.reports[-1].gas_used * light.reports[-1].gas_price_wei > 0


def test_a_refused_complete_is_named_alike_at_estimation_and_on_chain(w):
    trade, light = w["trade"], w["light"]
    ue = w["ue1"].address
    trade.create_trade(w["ue1"])
    trade.trading(w["ue1"], mec=w["mec1"].address, task_id=1, data_size_bits=8_000, service_demand_cycles=XI,
                  execution_time_s=600)
    digest = b"\x01" * 32
    for gas in (None, GAS):
        kw = {} if gas is None else {"gas": gas}
        errors = []
        for client, signer in ((light, key(w, "mec2")), (trade, w["mec2"])):
            with pytest.raises(ContractRevert) as exc:
                client.complete(signer, ue=ue, task_id=1, result_hash=digest, **kw)
            errors.append((exc.value.error, exc.value.error_args, exc.value.receipt is None))
        assert errors[0] == errors[1] and errors[0][:2] == ("NotTaskMec", {"caller": w["mec2"].address}) \
            and errors[0][2] == (gas is None), errors
    with pytest.raises(ValueError, match="result_hash must be 32 bytes"):
        light.complete(key(w, "mec1"), ue=ue, task_id=1, result_hash=b"short")
    with pytest.raises(ValueError, match="ue must be"):
        light.complete(key(w, "mec1"), ue="0x12", task_id=1, result_hash=digest)


def test_redeem_leaves_the_state_and_events_the_binding_leaves_and_the_logs_read_alike(w):
    trade, light = w["trade"], w["light"]
    open_(w, "ue1")
    open_(w, "ue2")
    batch = [voucher(w, "ue1", cumulative=2 * PHI, nonce=2), voucher(w, "ue2", cumulative=PHI, nonce=1)]

    def redeem(client, signer):
        r = client.redeem(signer("mec1"), batch)
        lanes = [client.lane(w[u].address, w["mec1"].address) for u in ("ue1", "ue2")]
        return _report(r), lanes, [client.channel(w[u].address) for u in ("ue1", "ue2")], trade.balance()

    ours, theirs = both_ways(w, redeem)
    assert ours == theirs
    assert [name for name, _ in ours[0][5]] == ["VoucherRedeemed", "VoucherRedeemed"]
    assert ours[1][0].redeemed_wei == 2 * PHI
    trade.close_lane(w["ue2"], mec=w["mec2"].address)
    trade.redeem(w["mec1"], [voucher(w, "ue1", cumulative=3 * PHI, nonce=3)])
    head = light.block_number()
    assert head == trade.block_number()
    for filters in ({}, {"ue": w["ue1"].address}, {"mec": w["mec1"].address}, {"mec": w["mec2"].address},
                    {"ue": w["ue2"].address, "mec": w["mec2"].address}, {"from_block": head, "to_block": head},
                    {"from_block": head - 1, "to_block": "latest"}):
        assert light.channel_events(**filters) == trade.channel_events(**filters), filters
    assert {e["event"] for e in light.channel_events()} == {"ChannelOpened", "VoucherRedeemed", "LaneClosing"}


def test_a_bad_voucher_batch_is_named_as_the_binding_names_it_and_nothing_is_sent(w):
    trade, light = w["trade"], w["light"]
    open_(w, "ue1")
    open_(w, "ue2")
    trade.redeem(w["mec1"], [voucher(w, cumulative=2 * PHI, nonce=2)])
    good, stale = voucher(w, "ue2", cumulative=PHI), voucher(w, cumulative=PHI, nonce=1)
    v3, v4 = voucher(w, cumulative=3 * PHI, nonce=3), voucher(w, cumulative=4 * PHI, nonce=4)
    nonce = w["node"].web3().eth.get_transaction_count(w["mec1"].address)
    for who, batch, expected in [("mec1", [good, stale], ("StaleVoucher", 1)), ("mec1", [good, v4, v3], ("StaleVoucher", 2)),
                                 ("stranger", [good], ("UnknownMec", None))]:
        named = []
        for client, signer in ((light, key(w, who)), (trade, w[who])):
            with pytest.raises(ContractRevert) as exc:
                client.redeem(signer, batch)
            named.append((exc.value.error, exc.value.error_args, exc.value.receipt))
        assert named[0] == named[1], named
        assert (named[0][0], named[0][1].get("voucher_index")) == expected and named[0][2] is None
    assert w["node"].web3().eth.get_transaction_count(w["mec1"].address) == nonce
    with pytest.raises(ValueError, match="empty"):
        light.redeem(key(w, "mec1"), [])
    r = light.redeem(key(w, "mec1"), [good, v3, v4])                   # in order, all three pay
    assert r.event("VoucherRedeemed")["ue"] == w["ue2"].address
    assert trade.lane(w["ue1"].address, w["mec1"].address).redeemed_wei == 4 * PHI


def test_the_executor_and_its_chain_client_load_no_eth_stack(world, tmp_path):
    """nodes.executor, nodes.channels and the light client, built and used against anvil (a
    read, the head, the channel events, PayeeLanes), leave web3.py, eth_account, eth_abi,
    eth_utils, eth_keys and hexbytes out of the process: the weight issue 21 measured per MEC."""
    code = (
        "import sys\n"
        "import nodes.executor, nodes.channels\n"
        "from contracts.light import LightTrade\n"
        "from contracts.config import ContractConfig\n"
        f"trade = LightTrade({world['node'].rpc_url!r}, {world['trade'].address!r}, ContractConfig())\n"
        "assert trade.unit_price() > 0 and trade.block_number() > 0\n"
        "trade.channel_events(from_block=0, to_block=trade.block_number())\n"
        f"lanes = nodes.channels.PayeeLanes(trade, {world['mec1'].address!r}, confirmations=1,\n"
        f"    log={str(tmp_path / 'vouchers.jsonl')!r}, chain_id=trade.sender.chain_id, expiry_margin_s=60)\n"
        "lanes.load([]); lanes.watch()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "               ('web3', 'eth_account', 'eth_abi', 'eth_utils', 'eth_keys', 'hexbytes'))\n"
        "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
