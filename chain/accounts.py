"""The lab's wallets: one mnemonic, one derivation, used by every chain (geth and anvil).

Accounts are derived from a BIP-39 mnemonic along the BIP-44 path m/44'/60'/0'/0/i:
index 0 is the ESP (the trading contract's deployer), 1..M the MEC servers (each miner's
etherbase, so a block's ``miner`` names its MEC server), M+1..M+U the UEs, M+U+1..2M+U the
MEC servers' payee wallets W_m (they only receive escrow payouts, so their balances show the
service revenue alone, apart from mining rewards and gas), and 2M+U+1 the outside miner's
etherbase (``chain.outside = "miner"``: the rest of the network, no MEC server). Transactions
are signed in Python with these keys; no node ever holds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from eth_account import Account
from eth_account.signers.local import LocalAccount

from chain.config import DEV_MNEMONIC  # noqa: F401  (defined with the [chain] section, which has no eth stack)


Account.enable_unaudited_hdwallet_features()


@lru_cache(maxsize=16)
def derive_accounts(mnemonic: str, n: int) -> tuple[LocalAccount, ...]:
    """The first ``n`` accounts of ``mnemonic`` (m/44'/60'/0'/0/0 .. n-1)."""
    return tuple(Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}")
                 for i in range(n))


@dataclass(frozen=True)
class ChainAccounts:
    """The ESP, the MEC servers and the UEs (W_u; pre-funded), the MEC payee wallets (W_m)."""
    esp: LocalAccount
    mec_servers: tuple[LocalAccount, ...]
    ues: tuple[LocalAccount, ...]
    mec_wallets: tuple[LocalAccount, ...] = ()
    outside_miner: LocalAccount | None = None

    @classmethod
    def derive(cls, mnemonic: str, n_servers: int, n_ues: int) -> "ChainAccounts":
        acc = derive_accounts(mnemonic, 2 + 2 * n_servers + n_ues)
        m, u = n_servers, n_ues
        return cls(esp=acc[0], mec_servers=acc[1:1 + m], ues=acc[1 + m:1 + m + u],
                   mec_wallets=acc[1 + m + u:1 + 2 * m + u], outside_miner=acc[1 + 2 * m + u])

    @property
    def all(self) -> tuple[LocalAccount, ...]:
        """The pre-funded accounts (the payee wallets start empty)."""
        return (self.esp, *self.mec_servers, *self.ues)
