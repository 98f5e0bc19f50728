"""The trading contract on a real node (anvil, London rules): normal path, every rejection
(named custom error, no funds moved), and a re-entrant MEC wallet that tries to drain the escrow."""
from __future__ import annotations

import pytest
from eth_utils import function_signature_to_4byte_selector

from chain.anvil import AnvilNode
from contracts.binding import ContractRevert, EscrowState, TradingContract, TxSender
from contracts.config import ContractConfig
from contracts.testing import attacker_call, deploy_attacker, encode_trading_call

pytestmark = pytest.mark.chain

MU = 150_000_000_000_000_000          # wei per Gcycle (0.15 ether/Gcycle)
XI = 1_200_000_000                    # cycles
PHI = MU * XI // 10**9                # wei
D = 16_000_000                        # bits
TAU = 60                              # seconds until the on-chain deadline (grace 0)
HASH = b"\x42" * 32
CONFIG = ContractConfig(unit_price_wei_per_gcycle=MU, settlement_grace_s=0, poll_interval_s=0.01)


@pytest.fixture(scope="module")
def node():
    with AnvilNode(accounts=10) as n:
        yield n


@pytest.fixture(scope="module")
def world(node):
    """ESP, two MEC servers (mec1 paid into a separate wallet), two registered UEs, a stranger."""
    w3 = node.web3()
    a = node.accounts
    esp, mec1, mec1_wallet, mec2, ue1, ue2, stranger, ue2_wallet, owner = a[:9]
    trade, _ = TradingContract.deploy(w3, esp, CONFIG, sender=TxSender(w3, CONFIG))
    trade.register_mec(esp, server=mec1.address, wallet=mec1_wallet.address)
    trade.register_mec(esp, server=mec2.address)
    trade.create_trade(ue1)
    trade.create_trade(ue2, wallet=ue2_wallet.address)
    return dict(trade=trade, node=node, w3=w3, esp=esp, mec1=mec1, mec1_wallet=mec1_wallet, mec2=mec2,
                ue1=ue1, ue2=ue2, ue2_wallet=ue2_wallet, stranger=stranger, owner=owner)


@pytest.fixture
def w(world):
    """The world, rolled back after each test."""
    node, trade = world["node"], world["trade"]
    snap = node.snapshot()
    yield world
    node.revert(snap)
    trade.sender.reset_nonces()


def pay(w, ue="ue1", task_id=1, mec="mec1", **kw):
    args = dict(mec=w[mec].address, task_id=task_id, data_size_bits=D, service_demand_cycles=XI,
                execution_time_s=TAU)
    return w["trade"].trading(w[ue], **(args | kw))


def balances(w) -> dict:
    names = ["esp", "mec1", "mec1_wallet", "mec2", "ue1", "ue2", "ue2_wallet", "stranger"]
    out = {n: w["w3"].eth.get_balance(w[n].address) for n in names}
    out["contract"] = w["trade"].balance()
    return out


# ---------------------------------------------------------------------------- normal path


def test_deploy_state(w):
    trade = w["trade"]
    assert trade.provider() == w["esp"].address
    assert trade.unit_price() == MU
    assert trade.quote(XI) == PHI
    assert trade.mec(w["mec1"].address) == (w["mec1_wallet"].address, 1)
    assert trade.mec(w["mec2"].address) == (w["mec2"].address, 2)
    assert trade.mec(w["stranger"].address) is None
    assert trade.ue_wallet(w["ue1"].address) == w["ue1"].address
    assert trade.ue_wallet(w["ue2"].address) == w["ue2_wallet"].address
    assert trade.ue_wallet(w["stranger"].address) is None


def test_create_trade_event_carries_the_paper_fields(w):
    r = w["trade"].create_trade(w["stranger"])
    ev = r.event("TradeCreated")
    assert ev["ue"] == w["stranger"].address and ev["wallet"] == w["stranger"].address
    assert len(ev["publicKey"]) == 64 and ev["unitPrice"] == MU
    assert r.gas_used > 21_000 and r.fee_wei == r.gas_used * r.gas_price_wei


def test_trading_then_complete_pays_the_mec_wallet(w):
    trade = w["trade"]
    before = balances(w)
    r = pay(w)
    ev = r.event("EscrowOpened")
    assert (ev["ue"], ev["taskId"], ev["mec"], ev["amount"], ev["dataSize"], ev["serviceDemand"]) == \
        (w["ue1"].address, 1, w["mec1"].address, PHI, D, XI)
    escrow = trade.escrow(w["ue1"].address, 1)
    assert escrow.state is EscrowState.OPEN and escrow.amount_wei == PHI and escrow.mec == w["mec1"].address
    assert escrow.deadline == ev["deadline"]
    mid = balances(w)
    assert mid["contract"] == before["contract"] + PHI
    assert mid["ue1"] == before["ue1"] - PHI - r.fee_wei

    c = trade.complete(w["mec1"], ue=w["ue1"].address, task_id=1, result_hash=HASH)
    paid = c.event("EscrowPaid")
    assert paid["amount"] == PHI and paid["resultHash"] == HASH and paid["mec"] == w["mec1"].address
    after = balances(w)
    assert after["contract"] == before["contract"]
    assert after["mec1_wallet"] == before["mec1_wallet"] + PHI
    assert after["mec1"] == before["mec1"] - c.fee_wei
    assert trade.escrow(w["ue1"].address, 1).state is EscrowState.PAID


def test_refund_after_deadline_goes_to_the_ue_wallet(w):
    trade, node = w["trade"], w["node"]
    pay(w, ue="ue2", task_id=7)
    before = balances(w)
    node.increase_time(TAU + 5)
    r = trade.refund(w["ue2"], task_id=7)
    ev = r.event("EscrowRefunded")
    assert ev["wallet"] == w["ue2_wallet"].address and ev["amount"] == PHI
    after = balances(w)
    assert after["contract"] == before["contract"] - PHI
    assert after["ue2_wallet"] == before["ue2_wallet"] + PHI
    assert after["ue2"] == before["ue2"] - r.fee_wei
    assert trade.escrow(w["ue2"].address, 7).state is EscrowState.REFUNDED


def test_escrow_keeps_its_price_when_mu_changes(w):
    trade = w["trade"]
    pay(w, task_id=3)
    trade.set_unit_price(w["esp"], 2 * MU)
    assert trade.quote(XI) == 2 * PHI
    assert trade.escrow(w["ue1"].address, 3).amount_wei == PHI
    r = pay(w, task_id=4)
    assert r.event("EscrowOpened")["amount"] == 2 * PHI
    c = trade.complete(w["mec1"], ue=w["ue1"].address, task_id=3, result_hash=HASH)
    assert c.event("EscrowPaid")["amount"] == PHI


def test_time_moves_by_the_chain_not_by_the_host_clock(w):
    """CI (2026-12-06) saw refund revert DeadlineNotReached(deadline=t, blockTime=t) after
    increase_time(TAU + 5): anvil's block time is the host clock plus an offset, so a host clock
    that steps back between two calls takes the chain's time back with it (down to the latest
    block's). Here anvil's clock is set 30 s back after the payment, as such a step would;
    increase_time must still move the chain's own time, and the refund must go through."""
    trade, node = w["trade"], w["node"]
    deadline = pay(w, task_id=1).event("EscrowOpened")["deadline"]
    paid_at = trade.latest_block_time()
    node.rpc("evm_setTime", paid_at - 30)
    node.increase_time(TAU + 5)
    assert trade.latest_block_time() == paid_at + TAU + 5 > deadline
    trade.refund(w["ue1"], task_id=1)
    assert trade.escrow(w["ue1"].address, 1).state is EscrowState.REFUNDED

def test_same_task_id_in_two_ues_is_two_escrows(w):
    pay(w, ue="ue1", task_id=9)
    pay(w, ue="ue2", task_id=9, mec="mec2")
    assert w["trade"].balance() == 2 * PHI


def test_deadline_boundary_belongs_to_the_mec(w):
    """At block time == deadline the MEC may still complete and the UE may not yet refund;
    one second later it is the other way round."""
    trade, node = w["trade"], w["node"]
    deadline = pay(w, task_id=1).event("EscrowOpened")["deadline"]
    pay(w, task_id=2)  # same deadline or one second later
    deadline2 = trade.escrow(w["ue1"].address, 2).deadline

    node.rpc("evm_setNextBlockTimestamp", deadline)
    with pytest.raises(ContractRevert, match="DeadlineNotReached"):
        trade.refund(w["ue1"], task_id=1, gas=300_000)
    node.rpc("evm_setNextBlockTimestamp", deadline2)
    trade.complete(w["mec1"], ue=w["ue1"].address, task_id=2, result_hash=HASH)

    pay(w, task_id=3, execution_time_s=None, deadline=deadline2 + 10)
    node.rpc("evm_setNextBlockTimestamp", deadline2 + 11)
    with pytest.raises(ContractRevert, match="DeadlinePassed"):
        trade.complete(w["mec1"], ue=w["ue1"].address, task_id=3, result_hash=HASH, gas=300_000)
    trade.refund(w["ue1"], task_id=1)
    assert trade.escrow(w["ue1"].address, 1).state is EscrowState.REFUNDED


# ---------------------------------------------------------------------------- rejections
# Each case: (name, setup(w) -> (sender key, call(**kw)), expected error, expected error args).


def _trading(ue="ue1", mec="mec1", **kw):
    return lambda w: (ue, lambda **g: pay(w, ue=ue, mec=mec, **(kw | g)))


def _complete(caller="mec1", ue="ue1", task_id=1, result_hash=HASH, before=()):
    def setup(w):
        for step in before:
            step(w)
        return caller, lambda **g: w["trade"].complete(w[caller], ue=w[ue].address, task_id=task_id,
                                                         result_hash=result_hash, **g)
    return setup


def _refund(ue="ue1", task_id=1, before=()):
    def setup(w):
        for step in before:
            step(w)
        return ue, lambda **g: w["trade"].refund(w[ue], task_id=task_id, **g)
    return setup


def _paid(w):
    pay(w)


def _completed(w):
    w["trade"].complete(w["mec1"], ue=w["ue1"].address, task_id=1, result_hash=HASH)


def _expired(w):
    w["node"].increase_time(TAU + 5)


def _refunded(w):
    w["trade"].refund(w["ue1"], task_id=1)


def _as(caller, function, *args):
    def setup(w):
        trade = w["trade"]
        return caller, lambda **g: trade.transact(w[caller], function, [a(w) if callable(a) else a for a in args], **g)
    return setup


REJECTIONS = [
    ("unknown UE", _trading(ue="stranger"), "UnknownUe", {"ue": "stranger"}),
    ("wrong value (less)", _trading(value_wei=PHI - 1), "WrongValue", {"expected": PHI, "sent": PHI - 1}),
    ("wrong value (more)", _trading(value_wei=PHI + 1), "WrongValue", {"expected": PHI, "sent": PHI + 1}),
    ("zero demand", _trading(service_demand_cycles=0, value_wei=0), "ZeroDemand", {}),
    ("unregistered MEC", _trading(mec="stranger"), "UnknownMec", {"server": "stranger"}),
    ("deadline in the past", _trading(execution_time_s=None, deadline=1), "DeadlineInPast", {"deadline": 1}),
    ("task id reused", lambda w: (_paid(w), _trading()(w))[1], "TaskExists", {"ue": "ue1", "taskId": 1}),
    ("completion by a stranger", _complete(caller="stranger", before=[_paid]), "NotTaskMec", {"caller": "stranger"}),
    ("completion by another MEC", _complete(caller="mec2", before=[_paid]), "NotTaskMec", {"caller": "mec2"}),
    ("completion of an unknown task", _complete(), "UnknownTask", {"ue": "ue1", "taskId": 1}),
    ("completion with an empty result", _complete(result_hash=b"\0" * 32, before=[_paid]), "EmptyResult", {}),
    ("completion after the deadline", _complete(before=[_paid, _expired]), "DeadlinePassed", {}),
    ("double completion", _complete(before=[_paid, _completed]), "AlreadyPaid", {"ue": "ue1", "taskId": 1}),
    ("completion after refund", _complete(before=[_paid, _expired, _refunded]), "AlreadyRefunded",
     {"ue": "ue1", "taskId": 1}),
    ("refund before the deadline", _refund(before=[_paid]), "DeadlineNotReached", {}),
    ("refund by a stranger", _refund(ue="stranger", before=[_paid, _expired]), "UnknownTask",
     {"ue": "stranger", "taskId": 1}),
    ("double refund", _refund(before=[_paid, _expired, _refunded]), "AlreadyRefunded", {"ue": "ue1", "taskId": 1}),
    ("refund after completion", _refund(before=[_paid, _completed, _expired]), "AlreadyPaid",
     {"ue": "ue1", "taskId": 1}),
    ("createTrade twice", lambda w: ("ue1", lambda **g: w["trade"].create_trade(w["ue1"], **g)),
     "UeAlreadyRegistered", {"ue": "ue1"}),
    ("createTrade with another's key", _as("stranger", "createTrade", lambda w: w["stranger"].address,
                                           lambda w: _public_key(w["ue1"])), "InvalidPublicKey", {"caller": "stranger"}),
    ("createTrade with a short key", _as("stranger", "createTrade", lambda w: w["stranger"].address, b"\x01" * 33),
     "InvalidPublicKey", {"caller": "stranger"}),
    ("createTrade with zero wallet", _as("stranger", "createTrade", "0x" + "00" * 20,
                                         lambda w: _public_key(w["stranger"])), "ZeroAddress", {}),
    ("registerMec by a UE", lambda w: ("ue1", lambda **g: w["trade"].register_mec(w["ue1"], server=w["ue1"].address, **g)),
     "NotProvider", {"caller": "ue1"}),
    ("registerMec twice", lambda w: ("esp", lambda **g: w["trade"].register_mec(w["esp"], server=w["mec2"].address, **g)),
     "MecAlreadyRegistered", {"server": "mec2"}),
    ("setUnitPrice by a MEC", lambda w: ("mec1", lambda **g: w["trade"].set_unit_price(w["mec1"], 1, **g)),
     "NotProvider", {"caller": "mec1"}),
    ("setUnitPrice zero", lambda w: ("esp", lambda **g: w["trade"].set_unit_price(w["esp"], 0, **g)),
     "ZeroUnitPrice", {}),
]


def _public_key(account) -> bytes:
    from eth_keys import keys
    return keys.PrivateKey(account.key).public_key.to_bytes()


def _check_args(w, error_args: dict, expected: dict) -> None:
    for key, want in expected.items():
        got = error_args[key]
        if isinstance(want, str) and want in w:
            assert got.lower() == w[want].address.lower(), (key, got, want)
        else:
            assert got == want, (key, got, want)


@pytest.mark.parametrize("case,setup,error,args", REJECTIONS, ids=[c[0] for c in REJECTIONS])
def test_rejection_reverts_with_named_error_and_moves_no_funds(w, case, setup, error, args):
    caller, call = setup(w)
    w3, account = w["w3"], w[caller]

    # 1. Through gas estimation: refused before anything is sent.
    nonce = w3.eth.get_transaction_count(account.address)
    before = balances(w)
    with pytest.raises(ContractRevert) as exc:
        call()
    assert exc.value.error == error and exc.value.receipt is None
    _check_args(w, exc.value.error_args, args)
    assert w3.eth.get_transaction_count(account.address) == nonce
    assert balances(w) == before

    # 2. Mined on chain with a fixed gas limit: it fails there, and only the fee is spent.
    with pytest.raises(ContractRevert) as exc:
        call(gas=300_000)
    receipt = exc.value.receipt
    assert receipt is not None and receipt["status"] == 0
    assert exc.value.error == error
    _check_args(w, exc.value.error_args, args)
    after = balances(w)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    for name, value in before.items():
        expected = value - fee if name == caller else value
        assert after[name] == expected, f"{case}: {name} balance moved by {after[name] - value} wei"


def test_binding_refuses_bad_arguments_naming_them(w):
    trade, ue = w["trade"], w["ue1"]
    cases = [
        (dict(task_id=-1), "task_id"), (dict(task_id=2**64), "task_id"),
        (dict(data_size_bits=1.5), "data_size_bits"), (dict(service_demand_cycles=True), "service_demand_cycles"),
        (dict(mec="not-an-address"), "mec"), (dict(execution_time_s=float("nan")), "execution_time_s"),
        (dict(execution_time_s=None), "execution_time_s"),
    ]
    for bad, name in cases:
        args = dict(mec=w["mec1"].address, task_id=1, data_size_bits=D, service_demand_cycles=XI,
                    execution_time_s=TAU) | bad
        with pytest.raises(ValueError, match=name):
            trade.trading(ue, **args)
    with pytest.raises(ValueError, match="result_hash"):
        trade.complete(w["mec1"], ue=ue.address, task_id=1, result_hash=b"short")
    with pytest.raises(ValueError, match="server"):
        trade.register_mec(w["esp"], server="0x1234")


# ---------------------------------------------------------------------------- attacks


def _selector(signature: str) -> bytes:
    return function_signature_to_4byte_selector(signature)


def test_reentrant_mec_wallet_cannot_drain_the_escrow(w):
    """The attacker is a registered MEC server and its own wallet; on receiving phi_u it
    re-enters complete() for the same task (up to 5 times), then other escrows."""
    trade, node = w["trade"], w["node"]
    attacker = deploy_attacker(trade, w["owner"])
    trade.register_mec(w["esp"], server=attacker.address, wallet=attacker.address)
    trade.trading(w["ue1"], mec=attacker.address, task_id=1, data_size_bits=D, service_demand_cycles=XI,
                  execution_time_s=TAU)
    pay(w, ue="ue1", task_id=2, mec="mec1")      # an honest MEC's escrow, also in the contract
    pay(w, ue="ue2", task_id=1, mec="mec2")
    held = trade.balance()
    assert held == 3 * PHI

    complete_1 = encode_trading_call(trade, "complete", w["ue1"].address, 1, HASH)
    attacker_call(trade, w["owner"], attacker, "arm", complete_1, 5)
    attacker_call(trade, w["owner"], attacker, "execute", complete_1)

    f = attacker.functions
    assert f.received().call() == PHI                       # paid once, for its own task
    assert f.reentries().call() == 1                        # receive() ran once: no second payment
    assert f.reentrySuccesses().call() == 0
    assert f.lastError().call() == _selector("AlreadyPaid(address,uint64)")
    assert trade.balance() == held - PHI                    # other escrows intact
    assert node.web3().eth.get_balance(attacker.address) == PHI
    assert trade.escrow(w["ue1"].address, 1).state is EscrowState.PAID
    assert trade.escrow(w["ue1"].address, 2).state is EscrowState.OPEN

    # Re-entering to take somebody else's escrow, or a refund it is not owed, fails too.
    trade.trading(w["ue2"], mec=attacker.address, task_id=5, data_size_bits=D, service_demand_cycles=XI,
                  execution_time_s=TAU)
    for reentry, error in [
        (encode_trading_call(trade, "complete", w["ue1"].address, 2, HASH), "NotTaskMec(address)"),
        (encode_trading_call(trade, "refund", 2), "UnknownTask(address,uint64)"),
    ]:
        attacker_call(trade, w["owner"], attacker, "arm", reentry, 1)
        snapshot = node.snapshot()
        attacker_call(trade, w["owner"], attacker, "execute",
                      encode_trading_call(trade, "complete", w["ue2"].address, 5, HASH))
        assert f.reentries().call() == 1 and f.reentrySuccesses().call() == 0
        assert f.lastError().call() == _selector(error)
        assert trade.balance() == held - PHI  # ue2/5 paid in, paid out; nothing else moved
        node.revert(snapshot)
        trade.sender.reset_nonces()


def test_reentrant_ue_wallet_cannot_take_a_second_refund(w):
    trade, node = w["trade"], w["node"]
    attacker = deploy_attacker(trade, w["owner"])
    trade.create_trade(w["stranger"], wallet=attacker.address)
    trade.trading(w["stranger"], mec=w["mec1"].address, task_id=1, data_size_bits=D, service_demand_cycles=XI,
                  execution_time_s=TAU)
    pay(w, task_id=1)
    attacker_call(trade, w["owner"], attacker, "arm", encode_trading_call(trade, "refund", 1), 3)
    node.increase_time(TAU + 5)
    trade.refund(w["stranger"], task_id=1)
    f = attacker.functions
    assert f.received().call() == PHI and f.reentrySuccesses().call() == 0
    assert f.lastError().call() == _selector("UnknownTask(address,uint64)")
    assert trade.balance() == PHI  # ue1's escrow still there


def test_wallet_that_rejects_payment_leaves_escrow_refundable(w):
    trade, node = w["trade"], w["node"]
    attacker = deploy_attacker(trade, w["owner"])
    trade.register_mec(w["esp"], server=attacker.address, wallet=attacker.address)
    attacker_call(trade, w["owner"], attacker, "setRejectPayments", True)
    trade.trading(w["ue1"], mec=attacker.address, task_id=1, data_size_bits=D, service_demand_cycles=XI,
                  execution_time_s=TAU)
    with pytest.raises(ContractRevert) as exc:
        attacker_call(trade, w["owner"], attacker, "execute",
                      encode_trading_call(trade, "complete", w["ue1"].address, 1, HASH))
    assert exc.value.error == "TransferFailed"
    assert trade.escrow(w["ue1"].address, 1).state is EscrowState.OPEN
    node.increase_time(TAU + 5)
    trade.refund(w["ue1"], task_id=1)
    assert trade.balance() == 0


def test_amount_above_128_bits_is_refused_not_cut(w):
    """Found by an independent test: at mu = 2^128 - 1 wei/Gcycle, trading(mec, 1, 0, 2e9, now +
    10) with value 2(2^128 - 1) was accepted and the 128-bit escrow recorded 2^128 - 2 wei,
    stranding the rest. Now refused with AmountTooLarge. anvil's pool refuses to carry a value
    of 2^128 or more at all, so here the refusal is checked at estimation (the same EVM call);
    the transaction itself is mined and refused on geth (test_contract_geth.py)."""
    trade, ue = w["trade"], w["ue1"]
    trade.set_unit_price(w["esp"], 2**128 - 1)
    w["node"].rpc("anvil_setBalance", ue.address, hex(2**131))
    assert trade.quote(2 * 10**9) == 2 * (2**128 - 1)
    before = balances(w)
    with pytest.raises(ContractRevert) as exc:
        pay(w, task_id=1, data_size_bits=0, service_demand_cycles=2 * 10**9, execution_time_s=10,
            value_wei=2 * (2**128 - 1))
    assert exc.value.error == "AmountTooLarge"
    assert exc.value.error_args == {"amount": 2 * (2**128 - 1), "maxAmount": 2**128 - 1}
    assert balances(w) == before and trade.escrow(ue.address, 1).state is EscrowState.NONE
