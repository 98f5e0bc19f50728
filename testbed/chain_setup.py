"""The lab's chain starts where its set-up left it (``lab.genesis_setup``, the default).

The set-up is the same transactions the lab would otherwise send on its proof-of-work chain and
wait for block after block: the ESP deploys the trading contract and registers the M MEC
servers; every UE registers (``createTrade``) or, with ``contract.payment = "channel"``, opens
its payment channel with its deposit (``openChannel``). Here they run on a scratch anvil chain
with the lab chain's rules (London), chain id, accounts and balances, and the state they leave
(every account's balance, nonce, code and storage: ``anvil_dumpState``) becomes the geth
chain's genesis. On the paper's chain (one block race per slot: a block every ~17 s) that
saves the two to three minutes of confirmations the set-up would wait for, and every run
starts from the same books: balances at block 0. The gas of each set-up call is reported as
measured there (``setup.json``); the live path (``lab.genesis_setup = false``: deploy and
registrations mined on the lab's chain) stays and is tested.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor

from contracts.binding import TradingContract
from contracts.txsender import TxSender
from chain.anvil import AnvilNode


def setup_state(chain_cfg, contract_cfg, accounts, *, n_servers: int) -> dict:
    """Run the set-up on a scratch anvil chain; return ``{"alloc", "contract", "gas", "seconds"}``:
    the genesis alloc (address -> balance, nonce, code, storage) of every account the set-up
    touched or funded, the contract's address, and the gas of each call."""
    t0 = time.monotonic()
    cfg = dataclasses.replace(contract_cfg, confirmations=1, poll_interval_s=0.01)
    prefund_ether, rest = divmod(chain_cfg.prefund_wei, 10**18)
    if rest:
        raise ValueError(f"chain.prefund_wei = {chain_cfg.prefund_wei} is not a whole number of ether "
                         "(anvil funds accounts in ether)")
    funded = {a.address.lower() for a in accounts.all}
    with AnvilNode(accounts=len(accounts.all), balance_ether=prefund_ether,
                   chain_id=chain_cfg.chain_id, mnemonic=chain_cfg.mnemonic) as node:
        w3 = node.web3()
        sender = TxSender(w3, cfg)
        trade, deploy = TradingContract.deploy(w3, accounts.esp, cfg, sender=sender)
        regs = [trade.register_mec(accounts.esp, server=accounts.mec_servers[i].address,
                                   wallet=accounts.mec_wallets[i].address) for i in range(n_servers)]

        def join(ue):
            if cfg.payment == "channel":
                return trade.open_channel(ue, deposit_wei=cfg.channel_deposit_wei,
                                          cap_per_lane_wei=cfg.channel_deposit_wei // n_servers,
                                          expiry=int(time.time()) + cfg.channel_lifetime_s, register=True)
            return trade.create_trade(ue)
        with ThreadPoolExecutor(max_workers=8) as pool:
            joins = list(pool.map(join, accounts.ues))
        state = json.loads(gzip.decompress(bytes.fromhex(node.rpc("anvil_dumpState")[2:])))
    keep = funded | {trade.address.lower()}
    alloc = {}
    for addr, acc in state["accounts"].items():
        if addr.lower() not in keep:
            continue          # anvil's own (its CREATE2 deployer, the fee recipient), and the empty wallets
        entry = {"balance": acc["balance"]}
        if acc.get("nonce"):
            entry["nonce"] = hex(int(acc["nonce"]))
        if acc.get("code") not in (None, "0x"):
            entry["code"] = acc["code"]
        if acc.get("storage"):
            entry["storage"] = {_word(k): _word(v) for k, v in acc["storage"].items()}
        alloc[addr.lower()] = entry
    gas = {"deploy": deploy.gas_used, "registerMec": [r.gas_used for r in regs],
           ("openChannel" if cfg.payment == "channel" else "createTrade"): [r.gas_used for r in joins]}
    return {"alloc": alloc, "contract": trade.address, "gas": gas, "seconds": round(time.monotonic() - t0, 2),
            "node": "anvil (London rules, the lab chain's id, accounts and balances)"}


def _word(x) -> str:
    """A storage key or value as geth's genesis wants it: 32 bytes, 0x-prefixed hex."""
    return "0x" + int(str(x), 16).to_bytes(32, "big").hex()
