"""One geth v1.11.6 miner: its datadir, its process, its JSON-RPC, its hash budget.

A :class:`GethNode` is the miner of one MEC server ``m`` (paper section III.C). Its life
cycle follows Mininet's nodes: ``init()`` writes the datadir, ``start()`` launches geth and
waits for its RPC, ``stop()`` always ends it (``kill()`` is the fault injection). The process
is owned by a :class:`base.processes.ManagedProcess`; where it runs is a launcher:
``base.processes.local(new_session=False)`` on loopback, ``in_mininet_host(host)`` inside
a Mininet host, where the node binds its emulated IP. The node never listens on all
interfaces and never serves the ``personal`` namespace (IPC, which would serve every
namespace, is disabled).

Two quirks of geth 1.11.6 that this class hides (checked in its source):
- ``eth_hashrate`` always answers 0 because the ethash engine sits inside the ``beacon``
  wrapper, which is not a ``consensus.PoW``; ``eth_getHashrate`` (ethash's own API, also in the
  ``eth`` namespace) returns the real figure, so :meth:`hashrate` uses it.
- That figure is a 1-minute EWMA ticked every 5 s (go-metrics ``Rate1``): see
  ``testbed.experiments.metrics.instant_hashrate`` for recovering the 5-s rate from two readings.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
from eth_keys import keys
from web3 import Web3

from chain.cgroup import CpuQuota, QuotaError
from base.processes import Launcher, ManagedProcess, ProcessError, local

#: HTTP JSON-RPC namespaces of a miner's management endpoint. Never ``personal`` (keys are
#: signed in Python, not in geth).
HTTP_APIS = ("eth", "net", "web3", "miner", "admin", "txpool")
WS_APIS = ("eth", "net", "web3")
#: What a wallet needs, and all a UE may reach (the RPC gateway serves only these).
WALLET_APIS = ("eth", "net", "web3")
#: geth's ethash.Mode values in a --config TOML (consensus/ethash/ethash.go, v1.11.6).
POW_MODE_CODES = {"full": 0, "test": 2}


def default_launcher() -> Launcher:
    """On this host, in the caller's session on purpose: a new session would get its own
    scheduler autogroup, and the kernel would then split CPU per node, not per thread."""
    return local(new_session=False)


class GethError(RuntimeError):
    """geth failed to start, answered an RPC with an error, or was asked something invalid."""


class BudgetError(ValueError):
    """A hash budget out of range; the message names the argument."""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> None:
    """Write geth's --config file (flat tables of scalars and lists only)."""
    lines = []
    for table, items in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml(v)}" for k, v in items.items()]
        lines.append("")
    path.write_text("\n".join(lines))


class GethNode:
    """One geth process mining ethash for MEC server ``name``.

    Ports and the bind address are fixed at construction; the hash budget (threads,
    optionally a CPU quota in cores) can change while it runs.
    """

    def __init__(self, *, name: str, datadir: Path, geth: Path, ip: str, p2p_port: int,
                 http_port: int, ws_port: int, authrpc_port: int, network_id: int,
                 nodekey: bytes, etherbase: str, pow_mode: str = "test",
                 dag_dir: Path | None = None, cache_mb: int = 64, verbosity: int = 3,
                 max_threads: int = 8, budget_mode: str = "threads",
                 cpu_period_us: int = 100_000, launcher: Launcher | None = None,
                 rpc_ip: str | None = None, http_apis: tuple[str, ...] = HTTP_APIS,
                 quota_parent: str | None = None):
        """``ip``: the node's address on the network its peers use (devp2p). ``rpc_ip``: where
        its HTTP/WS RPC listens (default ``ip``; in the lab, the management network, so that
        UEs on the data network cannot reach ``miner``/``admin``). ``http_apis``: the HTTP
        namespaces. ``quota_parent``: the cgroup its CPU quota nests under (a MEC host's)."""
        for label, addr in (("ip", ip), ("rpc_ip", rpc_ip)):
            if addr in ("0.0.0.0", "::", ""):
                raise GethError(f"{name}: {label} must be the node's own address, not {addr!r}")
        if "personal" in http_apis:
            raise GethError(f"{name}: the personal namespace is never served (keys stay in Python)")
        if pow_mode not in POW_MODE_CODES:
            raise GethError(f"{name}: pow_mode must be one of {sorted(POW_MODE_CODES)}")
        if pow_mode == "full" and dag_dir is None:
            raise GethError(f"{name}: pow_mode 'full' needs dag_dir")
        self.name, self.datadir, self.geth, self.ip = name, Path(datadir), Path(geth), ip
        self.rpc_ip, self.http_apis, self.quota_parent = rpc_ip or ip, tuple(http_apis), quota_parent
        self.p2p_port, self.http_port, self.ws_port = p2p_port, http_port, ws_port
        self.authrpc_port, self.network_id = authrpc_port, network_id
        self.nodekey, self.etherbase = nodekey, Web3.to_checksum_address(etherbase)
        self.pow_mode, self.dag_dir, self.cache_mb = pow_mode, dag_dir, cache_mb
        self.verbosity, self.max_threads = verbosity, max_threads
        self.budget_mode, self.cpu_period_us = budget_mode, cpu_period_us
        self.launcher = launcher or default_launcher()
        # on another server (base.processes.in_remote_host): its cgroup is made there, its quota
        # written there by the server's agent; none here
        self.remote = bool(getattr(self.launcher, "remote", False))
        self.proc: ManagedProcess | None = None
        self.quota: CpuQuota | None = None
        self.threads = 0                    # current budget: mining threads
        self.cpu_quota: float | None = None  # current budget: cores, or None
        self.started_at: float | None = None
        self.w3 = Web3(Web3.HTTPProvider(self.http_url, request_kwargs={"timeout": 10}))

    # ---- addresses -------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self.rpc_ip}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.rpc_ip}:{self.ws_port}"

    @property
    def node_id(self) -> str:
        """The devp2p node id: the 64-byte public key of ``nodekey``, hex."""
        return keys.PrivateKey(self.nodekey).public_key.to_hex()[2:]

    @property
    def enode(self) -> str:
        return f"enode://{self.node_id}@{self.ip}:{self.p2p_port}"

    @property
    def log_path(self) -> Path:
        return self.datadir / "geth.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    def __repr__(self):
        return f"GethNode({self.name}, {self.ip}:{self.http_port}, threads={self.threads})"

    # ---- life cycle ------------------------------------------------------------------
    def init(self, genesis_path: Path, static_peers: list[str]) -> None:
        """Create the datadir: genesis state, node key and the --config file."""
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        (self.datadir / "geth").mkdir(parents=True)
        (self.datadir / "geth" / "nodekey").write_text(self.nodekey.hex())
        out = subprocess.run([str(self.geth), "--datadir", str(self.datadir), "init",
                              str(genesis_path)], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise GethError(f"{self.name}: geth init failed:\n{out.stderr[-2000:]}")
        self.write_config(static_peers)
        uid = getattr(self.launcher, "uid", None)
        if uid is not None:               # who runs the node owns its datadir, and no one else reads it
            for d, _, files in os.walk(self.datadir):
                for f in [d, *(os.path.join(d, x) for x in files)]:
                    os.chown(f, uid, uid)
            self.datadir.chmod(0o700)

    def write_config(self, static_peers: list[str]) -> None:
        """(Re)write the node's --config TOML: PoW mode, DAG, bind address, static peers."""
        ethash: dict[str, Any] = {"PowMode": POW_MODE_CODES[self.pow_mode]}
        if self.pow_mode == "test":
            # Test mode's dataset is 32 KiB: kept in memory, never shared through a file
            # (its file name would collide with the full DAG's: same epoch, same seed).
            ethash.update(DatasetDir="", DatasetsOnDisk=0, CacheDir="ethash-test")
        else:
            ethash.update(DatasetDir=str(self.dag_dir), CacheDir=str(self.dag_dir / "caches"),
                          DatasetsInMem=1, DatasetsOnDisk=2)
        write_toml(self.datadir / "config.toml", {
            "Eth": {"NetworkId": self.network_id, "SyncMode": "full"},
            "Eth.Ethash": ethash,
            # ListenAddr with the IP: the --port flag would bind every interface. MaxPeers: geth
            # dials at most MaxPeers / 3 peers itself (and takes the rest inbound), so 64 left the
            # first of 30 miners 21 short of a full mesh; 128 dials 42: a mesh of up to 43 nodes.
            "Node.P2P": {"ListenAddr": f"{self.ip}:{self.p2p_port}", "NoDiscovery": True,
                         "DiscoveryV5": False, "MaxPeers": 128, "StaticNodes": static_peers},
        })

    def argv(self) -> list[str]:
        # Go runs at most GOMAXPROCS goroutines at once (default: the core count, 2 here), so
        # without this 4 mining threads would hash no faster than 2.
        args = ["env", f"GOMAXPROCS={self.max_threads + 2}",
                str(self.geth), "--config", str(self.datadir / "config.toml"),
                "--datadir", str(self.datadir), "--networkid", str(self.network_id),
                # archive: every block's state is written at once, so a node killed with
                # SIGKILL restarts at its own head instead of rewinding to genesis.
                "--syncmode", "full", "--gcmode", "archive", "--snapshot=false",
                # no discovery (no UDP socket); no IPC, which would serve every namespace
                "--nodiscover", "--ipcdisable", "--nat", f"extip:{self.ip}",
                "--http", "--http.addr", self.rpc_ip, "--http.port", str(self.http_port),
                "--http.api", ",".join(self.http_apis),
                "--ws", "--ws.addr", self.rpc_ip, "--ws.port", str(self.ws_port),
                "--ws.api", ",".join(WS_APIS),
                "--authrpc.addr", "127.0.0.1", "--authrpc.port", str(self.authrpc_port),
                "--cache", str(self.cache_mb), "--verbosity", str(self.verbosity),
                "--miner.etherbase", self.etherbase,
                # geth rebuilds its sealing work every recommit interval (default 2 s): a fixed
                # cost that eats most of a small CPU quota; 15 s is its maximum. A new block or
                # transaction still restarts the work at once.
                "--miner.recommit", "15s"]
        return args

    def start(self, threads: int = 0, cpu_quota: float | None = None,
              timeout: float = 30.0, wait: bool = True) -> "GethNode":
        """Launch geth, wait until its HTTP RPC answers, then give it its hash budget.

        geth starts without ``--mine`` on purpose: a node mining before it has peers forks
        off at genesis, and geth only reconciles forks through its downloader, which waits
        for 5 peers or 10 s. :class:`chain.network.Chain` sets budgets once nodes are peered.
        """
        self.check_budget(threads, cpu_quota)
        if self.alive:
            raise GethError(f"{self.name}: already running (pid {self.pid})")
        self.proc = ManagedProcess(f"geth {self.name}", self.argv(), self.log_path,
                                   launcher=self.launcher, grace_s=10.0)
        self.threads = 0
        try:
            self.proc.start()
            self.started_at = self.proc.started_at
            if (self.budget_mode == "cpu_quota" or cpu_quota is not None) and not self.remote:
                self._ensure_quota()
            if not wait:    # the caller waits for the RPC (a chain launches all nodes first)
                return self
            self.wait_rpc(timeout)
            if threads > 0 or cpu_quota is not None:
                self.set_hash_budget(threads, cpu_quota)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_rpc(self, timeout: float) -> None:
        try:
            self.proc.wait_ready(lambda _p: self.w3.is_connected(), timeout,
                                 f"answering RPC at {self.http_url}")
        except ProcessError as e:
            raise GethError(str(e)) from None

    def stop(self, grace: float = 10.0) -> None:
        """End geth (SIGTERM lets it flush its database; SIGKILL after ``grace`` s)."""
        if self.proc is not None:
            self.proc.stop(grace)
        self._released()

    def signal_stop(self) -> None:
        """Send SIGTERM without waiting (a chain stops all its nodes at once, then waits)."""
        if self.proc is not None:
            self.proc.signal(signal.SIGTERM)

    def kill(self) -> None:
        """Fault injection: SIGKILL, no shutdown (the node loses what it had not flushed)."""
        if self.proc is not None:
            self.proc.kill()
        self._released()

    def _released(self) -> None:
        """After the process ended: no budget, and its cgroup removed."""
        self.threads = 0
        if self.quota is not None:
            self.quota.remove()
            self.quota = None

    def log_tail(self, lines: int = 20) -> str:
        return self.proc.log_tail(lines) if self.proc is not None else ""

    # ---- JSON-RPC ----------------------------------------------------------------------
    def rpc(self, method: str, *params) -> Any:
        """Call ``method``; raise :class:`GethError` naming the node on an RPC error."""
        resp = self.w3.provider.make_request(method, list(params))
        if "error" in resp:
            raise GethError(f"{self.name}: {method}{list(params)} failed: {resp['error']}")
        return resp.get("result")

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def peers(self) -> list[dict]:
        return self.rpc("admin_peers")

    def peer_count(self) -> int:
        """Peers that completed the eth handshake (same genesis, network id and fork id).
        ``net_peerCount`` would also count a peer still in the handshake, e.g. one about to
        be dropped for a genesis mismatch."""
        return sum(isinstance(p.get("protocols", {}).get("eth"), dict) for p in self.peers())

    def mining(self) -> bool:
        return bool(self.rpc("eth_mining"))

    def hashrate(self) -> float:
        """Hashes per second: geth's 1-minute EWMA of this node's ethash search (H/s)."""
        return float(self.rpc("eth_getHashrate"))

    def genesis_hash(self) -> str:
        return self.rpc("eth_getBlockByNumber", "0x0", False)["hash"]

    def head(self) -> dict:
        return self.rpc("eth_getBlockByNumber", "latest", False)

    def add_peer(self, enode: str) -> None:
        self.rpc("admin_addPeer", enode)

    # ---- hash budget -------------------------------------------------------------------
    def check_budget(self, threads, cpu_quota) -> None:
        """Raise :class:`BudgetError` naming the argument if the budget is not allowed."""
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise BudgetError(f"{self.name}: threads must be an integer, got {threads!r}")
        if not 0 <= threads <= self.max_threads:
            raise BudgetError(f"{self.name}: threads must be in [0, max_threads="
                              f"{self.max_threads}], got {threads}")
        if cpu_quota is not None:
            ncpu = psutil.cpu_count() or 1
            if isinstance(cpu_quota, bool) or not isinstance(cpu_quota, (int, float)) \
                    or not 0.01 <= cpu_quota <= ncpu:
                raise BudgetError(f"{self.name}: cpu_quota must be cores in [0.01, {ncpu}] "
                                  f"or None, got {cpu_quota!r}")
            try:
                CpuQuota.check(cpu_quota, self.cpu_period_us)
            except QuotaError as e:
                raise BudgetError(f"{self.name}: cpu_quota: {e}") from None

    def _ensure_quota(self) -> CpuQuota:
        """The node's cgroup, created on first use. Named after the node and its pid, so two
        chains with a node ``mec1`` each never share (or remove) each other's group."""
        if self.quota is None:
            self.quota = CpuQuota(f"{self.name.replace('/', '_')}-{self.proc.pid}",
                                  self.cpu_period_us, **({"parent": self.quota_parent}
                                                         if self.quota_parent else {}))
            self.quota.attach(self.proc.pid)
        return self.quota

    def set_hash_budget(self, threads: int, cpu_quota: float | None = None,
                        timeout: float = 5.0) -> None:
        """Give the node ``threads`` mining threads (0 stops mining) and, in ``cpu_quota``
        budget mode, a CPU quota of ``cpu_quota`` cores. Takes effect at once in geth:
        ``miner_start(n)`` on a running miner makes ethash restart its search with n threads.
        """
        self.check_budget(threads, cpu_quota)
        if not self.alive:
            raise GethError(f"{self.name}: not running, cannot set its hash budget")
        if self.remote:
            if cpu_quota is not None:
                raise GethError(f"{self.name} runs on another server: its CPU quota is written there by the "
                                "server's agent (topologies.remote), not here")
        elif cpu_quota is not None or self.budget_mode == "cpu_quota" or self.quota is not None:
            self._ensure_quota().set(cpu_quota)
            self.cpu_quota = cpu_quota
        if threads == 0:
            self.rpc("miner_stop")
        else:
            self.rpc("miner_start", threads)
        self.threads = threads
        # geth's miner starts and stops asynchronously (a channel to its update loop): wait
        # until eth_mining agrees, so the budget is in force when this returns.
        deadline = time.monotonic() + timeout
        while self.mining() != (threads > 0):
            if time.monotonic() > deadline:
                if threads > 0 and self.rpc("eth_syncing"):
                    return   # paused while the downloader syncs; geth resumes it after
                raise GethError(f"{self.name}: eth_mining still {not threads > 0} "
                                f"{timeout:.0f} s after setting {threads} threads")
            time.sleep(0.02)

    # ---- resources -----------------------------------------------------------------------
    def memory(self) -> dict:
        """Memory of the geth process, MiB: rss, and uss/pss (pages it alone holds / its
        share of shared ones, e.g. a full DAG mapped by every node)."""
        if not self.alive:
            return {}
        p = psutil.Process(self.proc.pid)
        try:
            m = p.memory_full_info()
            return {"rss_mib": m.rss / 2**20, "uss_mib": m.uss / 2**20, "pss_mib": m.pss / 2**20}
        except psutil.AccessDenied:
            return {"rss_mib": p.memory_info().rss / 2**20}

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used by geth so far, seconds."""
        if not self.alive:
            return float("nan")
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system
