"""Configuration of the trading contract and its binding: the [contract] section of a scenario.

scenario/config.py composes :class:`ContractConfig` from the TOML section ``[contract]``, e.g.

    [contract]
    unit_price_wei_per_gcycle = 150_000_000_000_000_000   # mu = 0.15 ether/Gcycle (paper, Table I)
    settlement_grace_s = 120
    confirmations = 1
    payment = "channel"                # or "escrow": how UEs pay (docs/channels.md)
    redeem_every_s = 1800.0
"""
from __future__ import annotations

from dataclasses import dataclass

from base.errors import is_int, is_number, require

#: How UEs pay: escrow per task, or payment channels with signed vouchers.
PAYMENTS = ("escrow", "channel")


@dataclass(frozen=True, kw_only=True)
class ContractConfig:
    """Trading-contract parameters and the binding's transaction policy.

    Attributes:
        unit_price_wei_per_gcycle: mu, the ESP's unit price, wei per Gcycle (1e9 CPU cycles).
            Default 0.15 ether/Gcycle: the paper's 0.15 token/Gcycle (Table I) with 1 token = 1 ether.
        settlement_grace_s: seconds added to a task's execution time tau_u to form the escrow's
            on-chain deadline (block time), because blocks come every few seconds (about 13 s on
            the PoW chain) while tau_u is often below one.
        gas_price_wei: legacy gas price of every transaction, wei; None asks the node
            (eth_gasPrice) once per transaction.
        gas_limit_margin: multiplier on eth_estimateGas for each transaction's gas limit (>= 1).
        fee_bump: gas price multiplier when a stuck transaction is replaced by a copy with the
            same nonce; geth's pool needs at least 1.10 to accept a replacement.
        confirmations: blocks (the including one counts) before a transaction is reported final.
        receipt_timeout_s: give up on a transaction that has not confirmed after this many seconds.
        poll_interval_s: period of receipt polling, seconds.
        resend_after_s: a transaction still unmined after this many seconds is re-broadcast (if the
            node dropped it) or replaced with a bumped fee (if it is stuck in the pool).
        max_resends: re-broadcasts/replacements per transaction before giving up.
        rpc_timeout_s: HTTP timeout of one JSON-RPC request, seconds.
        dispute_window_s: the contract's dispute window (constructor): seconds a MEC server has,
            after a UE starts closing their lane, to redeem its newest voucher.
        payment: how UEs pay for tasks: "escrow" (trading + complete per task) or "channel"
            (one deposit per UE, a signed voucher per task, redeemed in batches).
        channel_deposit_wei: what each UE deposits when it opens its channel, wei (< 2**128).
        channel_lifetime_s: a channel's expiry is its opening time + this, seconds; MEC servers
            must redeem before it, after it the UE reclaims the balance.
        redeem_every_s: how often a MEC server redeems its newest vouchers (all its lanes in one
            transaction), besides at the end of a run, seconds of lab time.
    """

    unit_price_wei_per_gcycle: int = 150_000_000_000_000_000
    settlement_grace_s: int = 120
    gas_price_wei: int | None = None
    gas_limit_margin: float = 1.25
    fee_bump: float = 1.125
    confirmations: int = 1
    receipt_timeout_s: float = 300.0
    poll_interval_s: float = 0.25
    resend_after_s: float = 30.0
    max_resends: int = 5
    rpc_timeout_s: float = 30.0
    dispute_window_s: int = 600
    payment: str = "escrow"
    channel_deposit_wei: int = 20 * 10**18
    channel_lifetime_s: int = 86_400
    redeem_every_s: float = 1800.0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            require(ok, f"contract.{name}", what, getattr(self, name))

        mu = self.unit_price_wei_per_gcycle
        need(is_int(mu) and 0 < mu < 2**128, "unit_price_wei_per_gcycle", "an integer in [1, 2**128)")
        need(is_int(self.settlement_grace_s) and self.settlement_grace_s >= 0, "settlement_grace_s",
             "an integer >= 0")
        need(self.gas_price_wei is None or (is_int(self.gas_price_wei) and self.gas_price_wei > 0), "gas_price_wei",
             "None or an integer > 0")
        need(is_number(self.gas_limit_margin) and 1.0 <= self.gas_limit_margin <= 10.0, "gas_limit_margin",
             "a number in [1, 10]")
        need(is_number(self.fee_bump) and 1.1 <= self.fee_bump <= 10.0, "fee_bump", "a number in [1.1, 10]")
        need(is_int(self.confirmations) and self.confirmations >= 1, "confirmations", "an integer >= 1")
        for name in ("receipt_timeout_s", "poll_interval_s", "resend_after_s", "rpc_timeout_s"):
            need(is_number(getattr(self, name)) and getattr(self, name) > 0, name, "a number > 0")
        need(is_int(self.max_resends) and self.max_resends >= 0, "max_resends", "an integer >= 0")
        # The contract keeps the window in 32 bits and a closing time in 32 bits of unix seconds.
        need(is_int(self.dispute_window_s) and 1 <= self.dispute_window_s < 2**31, "dispute_window_s",
             "an integer in [1, 2**31)")
        need(self.payment in PAYMENTS, "payment", f"one of {', '.join(map(repr, PAYMENTS))}")
        need(is_int(self.channel_deposit_wei) and 0 < self.channel_deposit_wei < 2**128, "channel_deposit_wei",
             "an integer in [1, 2**128)")
        need(is_int(self.channel_lifetime_s) and self.channel_lifetime_s >= 60, "channel_lifetime_s",
             "an integer >= 60")
        need(is_number(self.redeem_every_s) and self.redeem_every_s > 0, "redeem_every_s", "a number > 0")

    def payment_wei(self, service_demand_cycles: int) -> int:
        """phi_u = mu * xi_u in wei for xi_u CPU cycles, rounded down as the contract does."""
        return self.unit_price_wei_per_gcycle * service_demand_cycles // 10**9
