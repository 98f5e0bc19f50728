"""Configuration of the miners' chain: :class:`ChainConfig`, the ``[chain]`` table of a scenario.

The MEC servers are the miners of the paper (section III.C): each runs one geth v1.11.6 node
that seals ethash proof-of-work blocks, with a hash budget (threads, optionally a CPU quota)
that the agent sets at run time. ``scenario.config`` composes this dataclass from TOML::

    [chain]
    n_nodes = 3
    pow_mode = "test"
    genesis_difficulty = 1048576
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from base.errors import ConfigError, is_int, require
from chain.cgroup import PARENT

ROOT = Path(__file__).resolve().parent.parent

#: ethash refuses any difficulty below this (params.MinimumDifficulty in geth).
MIN_DIFFICULTY = 131_072

POW_MODES = ("test", "full")
BUDGET_MODES = ("threads", "cpu_quota")
#: Who else mines the chain besides the MEC servers (the paper's network of hash H, eq. (4)).
OUTSIDE_MODES = ("virtual", "miner", "none")


#: The anvil/hardhat development mnemonic. Its keys are public: fit for a throw-away lab chain
#: only. The same keys fund the anvil chain of the contract tests and the geth chain.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


PORT_FIELDS = ("p2p_port", "http_port", "ws_port", "authrpc_port")   # node i: base + i


@dataclass(kw_only=True)
class ChainConfig:
    """The geth proof-of-work network of the M MEC servers.

    Accounts are derived from ``mnemonic`` (BIP-44 path m/44'/60'/0'/0/i): index 0 is the ESP,
    1..M the MEC servers (each node's etherbase, so ``block.miner`` names the server),
    M+1..M+U the UEs.
    """
    n_nodes: int = 3                      # M, one geth miner per MEC server
    n_ues: int = 10                       # U, pre-funded UE wallets
    chain_id: int = 31_337                # also the devp2p network id
    geth_binary: str = ".tools/bin/geth"  # relative to the repository root
    # "test": geth's ethash ModeTest (real hashimoto PoW over a 32 KiB dataset, no DAG);
    # "full": mainnet-size epoch-0 DAG (~1 GiB), shared read-only from dag_dir. docs/chain.md.
    pow_mode: str = "test"
    dag_dir: str = ".tools/ethash/full"   # full mode only; `geth makedag` fills it once
    # Expected hashes per block at the start. Keep difficulty >= 2 s x total H/s: a block's
    # timestamp must exceed its parent's by >= 1 s, so a chain mining faster than 1 block/s
    # runs ahead of the clock, and peers refuse blocks > 15 s in the future (chain split).
    # 2^20 gives ~2.4 s blocks for 2 cores in test mode (~430 kH/s).
    genesis_difficulty: int = 2**20
    gas_limit: int = 30_000_000           # gas per block
    mnemonic: str = DEV_MNEMONIC
    prefund_wei: int = 10**24             # balance of every pre-funded account, wei
    host: str = "127.0.0.1"               # default bind address of every node (never 0.0.0.0)
    p2p_port: int = 30_400                # node i listens on p2p_port + i (TCP, no discovery)
    http_port: int = 8_600                # JSON-RPC over HTTP: http_port + i
    ws_port: int = 8_700                  # JSON-RPC over WebSocket (newHeads): ws_port + i
    authrpc_port: int = 8_800             # geth's engine API, unused but always bound
    threads: int = 1                      # initial hash budget of every node, threads
    max_threads: int = 8                  # a budget above this is refused
    # "cpu_quota": a cgroup per node, budget in cores (needs root); "threads": threads only,
    # fair only while all nodes share one scheduler group (not so in Mininet hosts).
    budget_mode: str = "cpu_quota"
    cpu_period_us: int = 100_000          # CFS period for cpu_quota mode, microseconds
    # the cgroup (a path under the CPU controller's root) every node's quota nests under where
    # the caller names none (the live lab nests each miner under its MEC host's own group)
    cgroup_parent: str = PARENT
    cache_mb: int = 64                    # geth --cache, MB (memory per node)
    verbosity: int = 3                    # geth log level; 3 keeps the "mined" lines
    start_timeout_s: float = 30.0         # peered + mining, seconds
    sync_timeout_s: float = 30.0          # a restarted node back at the head, seconds
    workdir: str | None = None            # datadirs; None = a fresh temporary directory
    # The rest of the network of hash H (model.network_hash_mhs) in the live lab:
    # "virtual": nobody; the difficulty is set so the MEC servers' Σp find Σp/H blocks per slot,
    #            as in the paper's one block race per slot (eqs. (4)-(6)), the rest being virtual;
    # "miner":   one real outside miner (no MEC server, no tasks) hashing H - Σp at that difficulty;
    # "none":    the MEC servers are the whole chain (difficulty from lab.block_interval_s).
    outside: str = "virtual"

    def __post_init__(self):
        def need(ok: bool, field: str, what: str, value):
            require(ok, f"chain.{field}", what, value)

        for name in ("n_nodes", "n_ues", "chain_id", "genesis_difficulty", "gas_limit",
                     "prefund_wei", *PORT_FIELDS,
                     "threads", "max_threads", "cpu_period_us", "cache_mb", "verbosity"):
            v = getattr(self, name)
            need(is_int(v), name, "an integer", v)
        need(1 <= self.n_nodes <= 64, "n_nodes", "in [1, 64]", self.n_nodes)
        need(0 <= self.n_ues <= 10_000, "n_ues", "in [0, 10000]", self.n_ues)
        need(1 <= self.chain_id < 2**32, "chain_id", "in [1, 2^32)", self.chain_id)
        need(self.pow_mode in POW_MODES, "pow_mode", f"one of {POW_MODES}", self.pow_mode)
        need(self.budget_mode in BUDGET_MODES, "budget_mode", f"one of {BUDGET_MODES}",
             self.budget_mode)
        need(self.outside in OUTSIDE_MODES, "outside", f"one of {OUTSIDE_MODES}", self.outside)
        need(self.genesis_difficulty >= MIN_DIFFICULTY, "genesis_difficulty",
             f">= {MIN_DIFFICULTY} (ethash minimum)", self.genesis_difficulty)
        need(5000 <= self.gas_limit <= 2**63 - 1, "gas_limit", ">= 5000", self.gas_limit)
        need(self.prefund_wei >= 0, "prefund_wei", ">= 0", self.prefund_wei)
        need(len(self.mnemonic.split()) in (12, 15, 18, 21, 24), "mnemonic",
             "a BIP-39 phrase of 12-24 words", self.mnemonic)
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            raise ConfigError(f"chain.host must be an IP address, got {self.host!r}") from None
        need(not ip.is_unspecified, "host", "a specific address (never all interfaces)", self.host)
        for name in PORT_FIELDS:
            v = getattr(self, name)
            need(1024 <= v and v + self.n_nodes + 1 <= 65535, name,
                 f"a port such that {name} + n_nodes + 1 <= 65535 (the RPC gateway and an "
                 "outside miner follow the miners)", v)
        bases = sorted((getattr(self, n), n) for n in PORT_FIELDS)
        for (a, na), (b, nb) in zip(bases, bases[1:]):
            need(b - a > self.n_nodes + 1, nb,
                 f"more than n_nodes + 1 ports away from {na}={a} (the miners, the gateway and "
                 "an outside miner)", b)
        need(1 <= self.max_threads <= 256, "max_threads", "in [1, 256]", self.max_threads)
        need(0 <= self.threads <= self.max_threads, "threads",
             f"in [0, max_threads={self.max_threads}]", self.threads)
        need(1000 <= self.cpu_period_us <= 1_000_000, "cpu_period_us", "in [1000, 1000000] us",
             self.cpu_period_us)
        parts = str(self.cgroup_parent).split("/")
        need(isinstance(self.cgroup_parent, str) and all(p and p not in (".", "..") for p in parts),
             "cgroup_parent", "a relative cgroup path of names (e.g. \"mec-chain\")", self.cgroup_parent)
        need(16 <= self.cache_mb <= 65536, "cache_mb", "in [16, 65536] MB", self.cache_mb)
        need(0 <= self.verbosity <= 5, "verbosity", "in [0, 5]", self.verbosity)
        for name in ("start_timeout_s", "sync_timeout_s"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and v > 0, name, "> 0 seconds", v)

    def path(self, value: str) -> Path:
        """Resolve a configured path relative to the repository root."""
        p = Path(value)
        return p if p.is_absolute() else ROOT / p

    @property
    def geth_path(self) -> Path:
        return self.path(self.geth_binary)

    @property
    def dag_path(self) -> Path:
        return self.path(self.dag_dir)
