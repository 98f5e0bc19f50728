"""An anvil dev chain owned by one object: started on a free loopback port, always stopped.

The contract tests and the gas report run on it. anvil (Foundry, pinned by the set-up) is a
real single-node Ethereum JSON-RPC server: transactions are signed, mined, metered and traced
by a full EVM. It neither peers nor mines proof-of-work; the lab's chain is geth
(:mod:`chain.geth`, :mod:`chain.network`). Its accounts come from the lab's one mnemonic
(:mod:`chain.accounts`), so a binding works unchanged on both.

    with AnvilNode(accounts=25) as node:          # started and answering
        w3 = node.web3()
        esp, ue = node.accounts[0], node.accounts[1]
"""
from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from chain.accounts import DEV_MNEMONIC, derive_accounts
from base.processes import ManagedProcess, ProcessError, local

ROOT = Path(__file__).resolve().parent.parent


#: The binary the set-up installs (``npm pack`` of Foundry's platform package, checked against
#: package-lock.json): run directly, not through npm's node launcher, it is our own child, so
#: stopping it reaps it, and it starts faster.
ANVIL = ROOT / ".tools" / "bin" / "anvil"
HARDFORK = "london"  # the rules of geth 1.11.6's proof-of-work chain (see contracts/build.py)


class AnvilError(RuntimeError):
    """anvil could not be started or did not become ready."""


class AnvilNode:
    """One anvil process listening on 127.0.0.1 at a port the OS picks.

    Args:
        accounts: number of pre-funded accounts derived from `mnemonic` (m/44'/60'/0'/0/i).
        balance_ether: balance of each pre-funded account, ether.
        block_time_s: interval mining period in seconds; None mines one block per transaction.
        hardfork: EVM rules (`london` matches the testbed's geth proof-of-work chain).
        chain_id: EIP-155 chain id.
        startup_timeout_s: how long to wait for the RPC server, seconds.
    """

    def __init__(self, *, accounts: int = 10, balance_ether: int = 10_000,
                 block_time_s: float | None = None, hardfork: str = HARDFORK,
                 chain_id: int = 31337, mnemonic: str = DEV_MNEMONIC,
                 startup_timeout_s: float = 30.0, anvil_path: Path = ANVIL):
        if accounts < 1:
            raise ValueError(f"accounts must be >= 1, got {accounts}")
        if block_time_s is not None and block_time_s <= 0:
            raise ValueError(f"block_time_s must be > 0 or None, got {block_time_s}")
        self.n_accounts = accounts
        self.balance_ether = balance_ether
        self.block_time_s = block_time_s
        self.hardfork = hardfork
        self.chain_id = chain_id
        self.mnemonic = mnemonic
        self.startup_timeout_s = startup_timeout_s
        self.anvil_path = Path(anvil_path)
        self.port: int | None = None
        self.proc: ManagedProcess | None = None
        self._logdir: tempfile.TemporaryDirectory | None = None
        self._rpc_w3: Web3 | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> "AnvilNode":
        if self.proc is not None:
            raise AnvilError("anvil already started")
        if not self.anvil_path.exists():
            raise AnvilError(f"anvil not found at {self.anvil_path}: run `make setup`")
        self._logdir = tempfile.TemporaryDirectory(prefix="anvil-")
        cmd = [str(self.anvil_path), "--host", "127.0.0.1", "--port", "0",
               "--hardfork", self.hardfork, "--chain-id", str(self.chain_id),
               "--accounts", str(self.n_accounts), "--balance", str(self.balance_ether),
               "--mnemonic", self.mnemonic]
        if self.block_time_s is not None:
            cmd += ["--block-time", str(self.block_time_s)]
        self.proc = ManagedProcess("anvil", cmd, Path(self._logdir.name) / "anvil.log",
                                   launcher=local(), ready=self._ready,
                                   ready_timeout_s=self.startup_timeout_s)
        try:
            self.proc.start()
        except ProcessError as e:
            self.stop()
            raise AnvilError(str(e)) from None
        return self

    def _ready(self, proc: ManagedProcess) -> bool:
        """Listening (the port it picked is in its log) and answering with our chain id."""
        if self.port is None:
            m = re.search(r"Listening on 127\.0\.0\.1:(\d+)", proc.log_path.read_text(errors="replace"))
            if not m:
                return False
            self.port = int(m.group(1))
        return self.web3(timeout_s=2).eth.chain_id == self.chain_id

    def stop(self) -> None:
        """Terminate anvil (SIGTERM, then SIGKILL after 5 s); safe to call twice."""
        proc, self.proc = self.proc, None
        self._rpc_w3 = None
        if proc is not None:
            proc.stop()
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None

    def __enter__(self) -> "AnvilNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ access

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise AnvilError("anvil not started")
        return f"http://127.0.0.1:{self.port}"

    def web3(self, timeout_s: float = 30.0) -> Web3:
        return Web3(HTTPProvider(self.rpc_url, request_kwargs={"timeout": timeout_s}))

    @property
    def accounts(self) -> list[LocalAccount]:
        """The pre-funded accounts, with their private keys (signing stays in Python)."""
        return list(derive_accounts(self.mnemonic, self.n_accounts))

    # ------------------------------------------------------------------ dev-chain controls

    def rpc(self, method: str, *params):
        """A raw JSON-RPC call (anvil's evm_* / anvil_* methods), raising on an error reply."""
        if self._rpc_w3 is None:
            self._rpc_w3 = self.web3()
        reply = self._rpc_w3.provider.make_request(method, list(params))
        if "error" in reply:
            raise AnvilError(f"{method} failed: {reply['error']}")
        return reply.get("result")

    def increase_time(self, seconds: int) -> None:
        """Mine one block `seconds` after the latest block, so the next call sees that time.

        Counted from the chain's own latest block, not with ``evm_increaseTime``: that adds to
        anvil's offset from the host clock, so a host clock stepping back between two calls took
        the chain's time back with it (a CI run's refund reverted with DeadlineNotReached at
        block time == deadline after "+65 s"; see tests/test_contract_trading.py)."""
        latest = self.rpc("eth_getBlockByNumber", "latest", False)
        self.mine_at(int(latest["timestamp"], 16) + int(seconds))

    def mine_at(self, timestamp: int) -> None:
        """Mine one block with block time `timestamp` (unix seconds); later blocks follow it."""
        self.rpc("evm_mine", int(timestamp))

    def snapshot(self) -> str:
        return self.rpc("evm_snapshot")

    def revert(self, snapshot_id: str, *, clock: str = "host") -> None:
        """Roll the chain back to `snapshot_id`; its clock goes on from the host clock, or with
        ``clock="chain"`` from the snapshot block's time (anvil's own revert: for tests whose
        time is the chain's alone, a block timestamp interval, and expiries counted from the
        head; with the host's clock a module running longer than an expiry's lifetime mined
        its next block past it: ExpiryInPast in a slow run of the channel property test).

        anvil's evm_revert also resets its clock to the snapshot block's time, so after each
        revert the chain's time lagged the host clock by the time spent since the snapshot,
        and the lag added up over a module of rolled-back tests. A deadline counted from the
        clock (``TradingContract.trading``) was then more than ``increase_time(TAU + 5)`` ahead
        of the chain: CI saw refund revert DeadlineNotReached at block time == deadline."""
        if clock not in ("host", "chain"):
            raise ValueError(f"clock must be 'host' or 'chain', not {clock!r}")
        if not self.rpc("evm_revert", snapshot_id):
            raise AnvilError(f"evm_revert({snapshot_id}) refused")
        if clock == "chain":
            return
        latest = int(self.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16)
        self.rpc("evm_setTime", max(latest, int(time.time())))
