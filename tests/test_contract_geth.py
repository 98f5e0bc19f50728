"""The binding against geth 1.11.6 (the testbed's client) in --dev mode: same gas as on anvil,
errors decoded from geth's replies, keys signed in Python only."""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3
from web3.middleware import ExtraDataToPOAMiddleware

from contracts.binding import ContractRevert, EscrowState, TradingContract, TxSender
from contracts.config import ContractConfig

pytestmark = pytest.mark.chain
GETH = Path(__file__).resolve().parent.parent / ".tools" / "bin" / "geth"


@pytest.fixture(scope="module")
def geth(tmp_path_factory):
    if not GETH.exists():
        pytest.fail(f"geth not built at {GETH}: run `make setup`, which builds it")
    datadir = tmp_path_factory.mktemp("geth-dev")
    log = open(datadir / "geth.log", "wb")
    proc = subprocess.Popen(
        [str(GETH), "--dev", "--datadir", str(datadir), "--http", "--http.addr", "127.0.0.1", "--http.port", "0",
         "--http.api", "eth,net,web3,debug", "--authrpc.port", "0", "--port", "0", "--nodiscover", "--ipcdisable"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url, deadline = None, time.monotonic() + 30
        while url is None:
            m = re.search(r"HTTP server started\s+endpoint=(127\.0\.0\.1:\d+) auth=false",
                          (datadir / "geth.log").read_text(errors="replace"))
            if m:
                url = f"http://{m.group(1)}"
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("geth --dev did not start: " + (datadir / "geth.log").read_text()[-2000:])
            else:
                time.sleep(0.1)
        w3 = Web3(HTTPProvider(url))
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)  # --dev is clique: long extraData
        yield w3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_paid_offload_and_a_rejection_on_geth(geth):
    w3 = geth
    keys = [Account.create() for _ in range(3)]
    dev = w3.eth.accounts[0]  # the only funded account of --dev; it only funds our local keys here
    for k in keys:
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": dev, "to": k.address, "value": 10**21}))
    esp, mec, ue = keys
    config = ContractConfig(poll_interval_s=0.05, settlement_grace_s=0)
    trade, deploy = TradingContract.deploy(w3, esp, config, sender=TxSender(w3, config))
    trade.register_mec(esp, server=mec.address)
    created = trade.create_trade(ue)
    paid = trade.trading(ue, mec=mec.address, task_id=1, data_size_bits=8_000_000,
                         service_demand_cycles=1_200_000_000, execution_time_s=60)
    done = trade.complete(mec, ue=ue.address, task_id=1, result_hash=b"\x01" * 32)
    assert trade.escrow(ue.address, 1).state is EscrowState.PAID and trade.balance() == 0
    assert created.gas_used < 60_000 and paid.gas_used < 60_000 and done.gas_used < 45_000
    assert deploy.gas_used > 0
    with pytest.raises(ContractRevert) as exc:  # refused at estimation, from geth's error reply
        trade.complete(mec, ue=ue.address, task_id=1, result_hash=b"\x01" * 32)
    assert exc.value.error == "AlreadyPaid"
    with pytest.raises(ContractRevert) as exc:  # mined and failed, named from geth's call trace
        trade.trading(ue, mec=mec.address, task_id=1, data_size_bits=1, service_demand_cycles=10**9,
                      execution_time_s=60, gas=200_000)
    assert exc.value.error == "TaskExists" and exc.value.receipt["status"] == 0


def test_amount_above_128_bits_is_refused_on_chain(geth):
    """The bug report's exact call, mined: mu = 2^128 - 1, trading(mec, 1, 0, 2e9, now + 10) with
    value 2(2^128 - 1). It used to be accepted with 2^128 - 2 wei recorded in escrow; now the
    transaction reverts with AmountTooLarge and the UE keeps its ether (minus gas)."""
    w3 = geth
    esp, mec, ue = (Account.create() for _ in range(3))
    dev = w3.eth.accounts[0]
    for k, value in ((esp, 10**21), (mec, 10**21), (ue, 2**130)):
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": dev, "to": k.address, "value": value}))
    config = ContractConfig(poll_interval_s=0.05, settlement_grace_s=0)
    trade, _ = TradingContract.deploy(w3, esp, config, sender=TxSender(w3, config))
    trade.register_mec(esp, server=mec.address)
    trade.create_trade(ue)
    trade.set_unit_price(esp, 2**128 - 1)
    before = w3.eth.get_balance(ue.address)
    with pytest.raises(ContractRevert) as exc:
        trade.trading(ue, mec=mec.address, task_id=1, data_size_bits=0, service_demand_cycles=2 * 10**9,
                      deadline=trade.latest_block_time() + 10, value_wei=2 * (2**128 - 1), gas=200_000)
    receipt = exc.value.receipt
    assert exc.value.error == "AmountTooLarge" and receipt["status"] == 0
    assert trade.balance() == 0 and trade.escrow(ue.address, 1).state is EscrowState.NONE
    assert w3.eth.get_balance(ue.address) == before - receipt["gasUsed"] * receipt["effectiveGasPrice"]
