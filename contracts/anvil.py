"""An anvil dev chain owned by one object: started on a free loopback port, always stopped.

Used by the contract tests and the gas report. anvil (Foundry, pinned in package.json) is a
real single-node Ethereum JSON-RPC server: transactions are signed, mined, metered and traced
by a full EVM. It neither peers nor mines proof-of-work; the testbed's chain is geth (nodes/).

    with AnvilNode(accounts=25) as node:
        w3 = node.web3()
        esp, ue = node.accounts[0], node.accounts[1]
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

ROOT = Path(__file__).resolve().parent.parent
ANVIL_WRAPPER = ROOT / "node_modules" / ".bin" / "anvil"   # npm's launcher (node), pinned in package.json


def _anvil_binary() -> Path:
    """The platform binary that npm's launcher would start: run directly, it is our own child,
    so stop() reaps it (behind the node launcher it would be left a zombie) and starts faster."""
    for candidate in sorted((ROOT / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return candidate
    return ANVIL_WRAPPER


ANVIL = _anvil_binary()
# Foundry's well-known development mnemonic: its keys are public, fit for a throw-away chain only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
HARDFORK = "london"  # the rules of geth 1.11.6's proof-of-work chain (see contracts/build.py)

Account.enable_unaudited_hdwallet_features()


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
        self.proc: subprocess.Popen | None = None
        self._logdir: tempfile.TemporaryDirectory | None = None
        self._accounts: list[LocalAccount] | None = None
        self._rpc_w3: Web3 | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> "AnvilNode":
        if self.proc is not None:
            raise AnvilError("anvil already started")
        if not self.anvil_path.exists():
            raise AnvilError(f"anvil not found at {self.anvil_path}: run `make setup`")
        self._logdir = tempfile.TemporaryDirectory(prefix="anvil-")
        log_path = Path(self._logdir.name) / "anvil.log"
        cmd = [str(self.anvil_path), "--host", "127.0.0.1", "--port", "0",
               "--hardfork", self.hardfork, "--chain-id", str(self.chain_id),
               "--accounts", str(self.n_accounts), "--balance", str(self.balance_ether),
               "--mnemonic", self.mnemonic]
        if self.block_time_s is not None:
            cmd += ["--block-time", str(self.block_time_s)]
        with open(log_path, "wb") as log:
            # own process group, so stop() reaches anvil even behind the npm wrapper
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.port = self._wait_listening(log_path)
            self._wait_rpc()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate anvil (SIGTERM, then SIGKILL after 5 s); safe to call twice."""
        proc, self.proc = self.proc, None
        self._rpc_w3 = None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None

    def __enter__(self) -> "AnvilNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_listening(self, log_path: Path) -> int:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            m = re.search(r"Listening on 127\.0\.0\.1:(\d+)", text)
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AnvilError(f"anvil exited with {self.proc.returncode}: {text[-2000:]}")
            time.sleep(0.05)
        raise AnvilError(f"anvil did not listen within {self.startup_timeout_s} s")

    def _wait_rpc(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        w3 = self.web3()
        while time.monotonic() < deadline:
            try:
                if w3.eth.chain_id == self.chain_id:
                    return
            except Exception:  # connection refused while the server binds
                time.sleep(0.05)
        raise AnvilError(f"anvil RPC at {self.rpc_url} not ready within {self.startup_timeout_s} s")

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
        if self._accounts is None:
            self._accounts = [Account.from_mnemonic(self.mnemonic, account_path=f"m/44'/60'/0'/0/{i}")
                              for i in range(self.n_accounts)]
        return self._accounts

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
        """Advance block time by `seconds` and mine a block, so the next call sees it."""
        self.rpc("evm_increaseTime", int(seconds))
        self.rpc("evm_mine")

    def mine_at(self, timestamp: int) -> None:
        """Mine one block with block time `timestamp` (unix seconds); later blocks follow it."""
        self.rpc("evm_mine", int(timestamp))

    def snapshot(self) -> str:
        return self.rpc("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        if not self.rpc("evm_revert", snapshot_id):
            raise AnvilError(f"evm_revert({snapshot_id}) refused")
