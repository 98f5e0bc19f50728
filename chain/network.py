"""The miners' proof-of-work network: N geth nodes, one per MEC server, and their life cycle.

:class:`Chain` writes one ethash genesis (chain id, every fork up to London at block 0, a low
starting difficulty, pre-funded accounts for the ESP, the MEC servers and the UEs), initialises
one datadir per node, gives each node its own ports and the others as static peers, starts
them, waits until they are peered and mining, changes their hash budgets at run time, and
always stops them. The same code runs on loopback (``ips=None``) and inside Mininet hosts
(``ips=[h.IP() ...]``, ``launchers=[in_mininet_host(h) ...]`` from :mod:`base.processes`).

Shanghai stays off: geth 1.11.6's ethash refuses a Shanghai header ("ethash does not support
shanghai fork"), so contracts must target the ``london`` EVM (no PUSH0).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from chain.accounts import ChainAccounts
from chain.config import ChainConfig
from chain.geth import WALLET_APIS, BudgetError, GethError, GethNode, default_launcher
from base.processes import Launcher

LONDON_FORKS = ("homesteadBlock", "eip150Block", "eip155Block", "eip158Block", "byzantiumBlock",
                "constantinopleBlock", "petersburgBlock", "istanbulBlock", "muirGlacierBlock",
                "berlinBlock", "londonBlock", "arrowGlacierBlock", "grayGlacierBlock")


class PeeringError(GethError):
    """Nodes did not peer (or mine) in time; the message says which and why."""


class GenesisMismatch(PeeringError):
    """A node's genesis differs from the chain's: its peers refuse it in the eth handshake."""


def make_genesis(cfg: ChainConfig, accounts: ChainAccounts, timestamp: int | None = None,
                 extra_data: bytes = b"", alloc: dict | None = None) -> dict:
    """An ethash genesis for geth 1.11.6: forks to London at 0, no merge, no Shanghai.
    ``alloc``: the starting state (balance, nonce, code, storage per address) instead of
    ``cfg.prefund_wei`` for every account (e.g. a contract already deployed)."""
    config = {"chainId": cfg.chain_id, **{fork: 0 for fork in LONDON_FORKS}, "ethash": {}}
    return {
        "config": config,
        "nonce": "0x0",
        # Now rather than 0: block 1's difficulty would otherwise drop for a 50-year interval.
        "timestamp": hex(int(time.time()) if timestamp is None else timestamp),
        "extraData": "0x" + extra_data.hex(),
        "gasLimit": hex(cfg.gas_limit),
        "difficulty": hex(cfg.genesis_difficulty),
        "mixHash": "0x" + "00" * 32,
        "coinbase": "0x" + "00" * 20,
        "alloc": alloc if alloc is not None else {a.address: {"balance": hex(cfg.prefund_wei)} for a in accounts.all},
    }


def node_key(chain_id: int, index: int) -> bytes:
    """A deterministic devp2p key, so every node's enode is known before it starts."""
    return hashlib.sha256(f"mec-chain/{chain_id}/node/{index}".encode()).digest()


class Chain:
    """N geth miners, peered as a full mesh of static peers, owned and always torn down.

    ``with Chain(cfg, budgets=[1, 1, 1]) as chain:`` yields a started chain (peered and
    mining); ``chain.set_hash_budget("mec2", 1, cpu_quota=0.3)`` ... Nodes are named ``mec1``
    ... ``mecN`` (MEC server m is ``nodes[m-1]``). ``budgets``/``cpu_quotas`` are the initial
    hash budgets (threads; cores in cpu_quota mode), as for :meth:`start`.
    """

    def __init__(self, cfg: ChainConfig, *, ips: Sequence[str] | None = None,
                 launchers: Sequence[Launcher] | None = None, names: Sequence[str] | None = None,
                 budgets: Sequence[int] | None = None,
                 cpu_quotas: Sequence[float | None] | None = None,
                 rpc_ips: Sequence[str] | None = None, quota_parents: Sequence[str | None] | None = None,
                 gateway_ip: str | None = None, gateway_launcher: Launcher | None = None,
                 gateway_rpc_ip: str | None = None,
                 outside: dict | None = None, alloc: dict | None = None, wait_first_block: bool | None = None):
        """``ips``: each miner's address for its peers; ``rpc_ips``: where each miner's RPC
        (with ``miner``/``admin``) listens, default the same; ``quota_parents``: the cgroup each
        miner's quota nests under (default ``cfg.cgroup_parent``). ``gateway_ip``: also run a
        non-mining full node there that serves only the wallet namespaces (eth, net, web3) on
        that address: the RPC endpoint of UEs and executors, so their requests never wait on a
        miner's CPU quota.
        ``outside``: also run one miner that is no MEC server (the rest of the network,
        ``chain.outside = "miner"``): ``{"ip", "launcher", "etherbase", "cores", "quota_parent"}``;
        it joins the mesh and mines at ``cores`` from the start; it is not in :attr:`nodes`.
        ``alloc``: the genesis state (:func:`make_genesis`)."""
        n = cfg.n_nodes
        self.cfg = cfg
        self.initial_budgets, self.initial_quotas = budgets, cpu_quotas
        self.alloc = alloc
        # start-up waits for the first block unless the set-up is in the genesis (alloc) or the
        # caller only needs the nodes hashing (the calibration measures the hash rate)
        self.wait_first_block = alloc is None if wait_first_block is None else wait_first_block
        self.ips = list(ips) if ips is not None else [cfg.host] * n
        self.rpc_ips = list(rpc_ips) if rpc_ips is not None else list(self.ips)
        self.quota_parents = list(quota_parents) if quota_parents is not None else [cfg.cgroup_parent] * n
        self.launchers = list(launchers) if launchers is not None else [default_launcher()] * n
        self.names = list(names) if names is not None else [f"mec{i + 1}" for i in range(n)]
        for arg, seq in (("ips", self.ips), ("launchers", self.launchers), ("names", self.names),
                         ("rpc_ips", self.rpc_ips), ("quota_parents", self.quota_parents)):
            if len(seq) != n:
                raise ValueError(f"Chain: {arg} has {len(seq)} entries for n_nodes={n}")
        if not cfg.geth_path.exists():
            raise GethError(f"geth binary not found at {cfg.geth_path} (chain.geth_binary); "
                            "build it with scripts/setup.sh")
        if cfg.pow_mode == "full" and not dag_ready(cfg.dag_path):
            raise GethError(
                f"chain.pow_mode = 'full' needs the DAGs of epochs 0 and 1 in {cfg.dag_path} "
                "(geth builds epoch 1's in the background as soon as it mines, in every node): "
                f"run `make dag` (python -m testbed bench-chain dag --generate) once (about 2 x 12 CPU-minutes)")
        self.accounts = ChainAccounts.derive(cfg.mnemonic, n, cfg.n_ues)
        self._tmp = cfg.workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="mec-chain-") if self._tmp
                            else cfg.path(cfg.workdir))
        self.genesis_path = self.workdir / "genesis.json"
        self.nodes = [self._make_node(i) for i in range(n)]
        self.gateway: GethNode | None = None
        if gateway_ip is not None:
            c = self.cfg
            self.gateway = GethNode(
                name="gateway", datadir=self.workdir / "gateway", geth=c.geth_path, ip=gateway_ip,
                p2p_port=c.p2p_port + n, http_port=c.http_port + n, ws_port=c.ws_port + n,
                authrpc_port=c.authrpc_port + n, network_id=c.chain_id, nodekey=node_key(c.chain_id, n),
                etherbase=self.accounts.esp.address, pow_mode=c.pow_mode, dag_dir=c.dag_path,
                cache_mb=c.cache_mb, verbosity=c.verbosity, max_threads=c.max_threads,
                budget_mode="threads", cpu_period_us=c.cpu_period_us,
                launcher=gateway_launcher or default_launcher(), http_apis=WALLET_APIS, rpc_ip=gateway_rpc_ip)
        self.outside: GethNode | None = None
        self.outside_cores: float | None = None
        if outside is not None:
            c = self.cfg
            self.outside_cores = float(outside["cores"])
            self.outside = GethNode(
                name="outside", datadir=self.workdir / "outside", geth=c.geth_path, ip=outside["ip"],
                p2p_port=c.p2p_port + n + 1, http_port=c.http_port + n + 1, ws_port=c.ws_port + n + 1,
                authrpc_port=c.authrpc_port + n + 1, network_id=c.chain_id,
                nodekey=node_key(c.chain_id, n + 1), etherbase=outside["etherbase"], pow_mode=c.pow_mode,
                dag_dir=c.dag_path, cache_mb=c.cache_mb, verbosity=c.verbosity, max_threads=c.max_threads,
                budget_mode="cpu_quota", cpu_period_us=c.cpu_period_us,
                launcher=outside.get("launcher") or default_launcher(),
                quota_parent=outside.get("quota_parent"))
        self.genesis_hash: str | None = None
        self.timings: dict[str, float] = {}

    def _make_node(self, i: int, name: str | None = None, datadir: Path | None = None) -> GethNode:
        c = self.cfg
        return GethNode(
            name=name or self.names[i], datadir=datadir or self.workdir / (name or self.names[i]),
            geth=c.geth_path, ip=self.ips[i], p2p_port=c.p2p_port + i,
            http_port=c.http_port + i, ws_port=c.ws_port + i, authrpc_port=c.authrpc_port + i,
            network_id=c.chain_id, nodekey=node_key(c.chain_id, i),
            etherbase=self.accounts.mec_servers[i].address, pow_mode=c.pow_mode,
            dag_dir=c.dag_path, cache_mb=c.cache_mb, verbosity=c.verbosity,
            max_threads=c.max_threads, budget_mode=c.budget_mode,
            cpu_period_us=c.cpu_period_us, launcher=self.launchers[i], rpc_ip=self.rpc_ips[i],
            quota_parent=self.quota_parents[i])

    @property
    def all_nodes(self) -> list[GethNode]:
        """The miners and, if any, the gateway and the outside miner."""
        return self.nodes + [x for x in (self.gateway, self.outside) if x is not None]

    # ---- look-up -------------------------------------------------------------------------
    def node(self, which: int | str | GethNode) -> GethNode:
        """A node by index (0-based), by name (``"mec2"``) or the node itself."""
        if isinstance(which, GethNode):
            return which
        if isinstance(which, str):
            for nd in self.nodes:
                if nd.name == which:
                    return nd
            raise KeyError(f"no node named {which!r}; nodes: {', '.join(self.names)}")
        n = len(self.nodes)
        if isinstance(which, bool) or not isinstance(which, int) or not 0 <= which < n:
            raise KeyError(f"node index must be in [0, {len(self.nodes) - 1}], got {which!r}")
        return self.nodes[which]

    def miner_of(self, address: str) -> str | None:
        """The node name whose etherbase is ``address`` (a block's ``miner``), or None."""
        for nd in self.nodes:
            if nd.etherbase.lower() == address.lower():
                return nd.name
        return None

    def static_peers(self, i: int) -> list[str]:
        others = [nd.enode for j, nd in enumerate(self.nodes) if j != i]
        return others + ([self.outside.enode] if self.outside is not None else [])

    # ---- life cycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Write the genesis and initialise every datadir (wipes this chain's old datadirs)."""
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        genesis = make_genesis(self.cfg, self.accounts, alloc=self.alloc)
        self.genesis_path.write_text(json.dumps(genesis, indent=1))
        # No static peers at the first launch: nodes launched together would dial each other
        # before the others listen, and geth retries a refused static dial only after 35 s.
        # start() joins them with admin_addPeer once all listen, then writes the static peers
        # into each node's config for a later restart.
        jobs = [(nd, []) for nd in self.nodes]
        if self.outside is not None:
            jobs.append((self.outside, []))
        if self.gateway is not None:     # started last: it may dial every miner at once
            jobs.append((self.gateway, [nd.enode for nd in self.nodes]))
        # geth init is a short CPU-bound process per node: run them side by side
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda job: job[0].init(self.genesis_path, job[1]), jobs))
        self.timings["init_s"] = time.monotonic() - t0

    def start(self, budgets: Sequence[int] | None = None,
              cpu_quotas: Sequence[float | None] | None = None, wait: bool | str = True) -> dict:
        """Start every node, wait until all are peered, give each its budget (threads;
        cores in cpu_quota mode) and, with ``wait``, block until all mine (``"hashing"``: until
        all hash, without waiting for the first block). Returns the timings in seconds from launch."""
        n = len(self.nodes)
        budgets = list(budgets) if budgets is not None else [self.cfg.threads] * n
        cpu_quotas = list(cpu_quotas) if cpu_quotas is not None else [None] * n
        if len(budgets) != n or len(cpu_quotas) != n:
            raise BudgetError(f"budgets/cpu_quotas need {n} entries, got {len(budgets)}/"
                              f"{len(cpu_quotas)}")
        for nd, t, q in zip(self.nodes, budgets, cpu_quotas):
            nd.check_budget(t, q)
        if not self.genesis_path.exists():
            self.setup()
        t0 = time.monotonic()
        try:
            miners = self.nodes + ([self.outside] if self.outside is not None else [])
            for nd in miners:     # launch all, then wait for each RPC
                nd.start(0, timeout=self.cfg.start_timeout_s, wait=False)
            for nd in miners:
                nd.wait_rpc(max(1.0, t0 + self.cfg.start_timeout_s - time.monotonic()))
            if self.gateway is not None:
                # only now: geth retries a refused static dial after 35 s, so the gateway
                # must find the miners already listening
                self.gateway.start(0, timeout=self.cfg.start_timeout_s)
            self.timings["rpc_up_s"] = time.monotonic() - t0
            self.genesis_hash = self.nodes[0].genesis_hash()
            for i, nd in enumerate(self.nodes):        # a full mesh: each pair dialled once
                for other in self.nodes[i + 1:]:
                    nd.add_peer(other.enode)
                nd.write_config(self.static_peers(i))  # for a restart
            if self.outside is not None:
                for nd in self.nodes:
                    self.outside.add_peer(nd.enode)
                self.outside.write_config([nd.enode for nd in self.nodes])
            # Budgets only once peered: nodes mining alone would fork off at genesis.
            self.wait_peered(deadline=t0 + self.cfg.start_timeout_s)
            while self.outside is not None and self.outside.peer_count() < len(self.nodes):
                if time.monotonic() > t0 + self.cfg.start_timeout_s:
                    raise PeeringError(f"outside miner: {self.outside.peer_count()} of {len(self.nodes)} "
                                       f"miners peered after {self.cfg.start_timeout_s:.0f} s")
                time.sleep(0.2)
            if self.gateway is not None:
                # it serves no admin namespace: net_peerCount is what it tells
                gw_peers = lambda: int(self.gateway.rpc("net_peerCount"), 16)  # noqa: E731
                while gw_peers() < len(self.nodes):
                    if time.monotonic() > t0 + self.cfg.start_timeout_s:
                        raise PeeringError(f"gateway: {gw_peers()} of {len(self.nodes)} "
                                           f"miners peered after {self.cfg.start_timeout_s:.0f} s")
                    time.sleep(0.2)
            self.timings["peered_s"] = time.monotonic() - t0
            for nd, t, q in zip(self.nodes, budgets, cpu_quotas):
                if t > 0 or q is not None:
                    nd.set_hash_budget(t, q)
            if self.outside is not None:
                self.outside.set_hash_budget(1, self.outside_cores)
            if wait:
                self.wait_mining(deadline=t0 + self.cfg.start_timeout_s, first_block=wait != "hashing")
                self.timings["mining_s"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return dict(self.timings)

    def stop(self) -> None:
        """Stop every node (always safe to call again); remove a temporary workdir.
        All nodes get SIGTERM first, then each is waited for: a throttled node takes seconds
        to exit, and one at a time that added up to 42 s at 40 nodes."""
        errors = []
        for nd in self.all_nodes:
            nd.signal_stop()
        for nd in self.all_nodes:
            try:
                nd.stop()
            except Exception as e:   # keep stopping the others
                errors.append(f"{nd.name}: {e}")
        if self._tmp and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise GethError("while stopping: " + "; ".join(errors))

    def __enter__(self) -> "Chain":
        self.start(self.initial_budgets, self.initial_quotas, wait=True if self.wait_first_block else "hashing")
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- waiting --------------------------------------------------------------------------
    def check_genesis(self, nodes: Sequence[GethNode] | None = None) -> None:
        """Raise :class:`GenesisMismatch` naming every node whose genesis differs."""
        want = self.genesis_hash or self.nodes[0].genesis_hash()
        bad = [(nd.name, h) for nd in (nodes or self.nodes) if nd.alive
               and (h := nd.genesis_hash()) != want]
        if bad:
            raise GenesisMismatch(
                "genesis mismatch: " + "; ".join(f"{name} has genesis {h}" for name, h in bad)
                + f", the chain's is {want}. Its peers refuse it in the eth handshake "
                "(same network id, different genesis block), so it stays without peers.")

    def wait_peered(self, deadline: float, min_peers: int | None = None) -> None:
        """Wait until every node has ``min_peers`` peers (default: all the others)."""
        want = len(self.nodes) - 1 if min_peers is None else min_peers
        counts = {}
        while True:
            counts = {nd.name: nd.peer_count() for nd in self.nodes}
            if all(c >= want for c in counts.values()):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.check_genesis()
        lonely = ", ".join(f"{k}={v}" for k, v in counts.items() if v < want)
        raise PeeringError(f"not peered within {self.cfg.start_timeout_s:.0f} s: want {want} "
                           f"peers each, have {lonely}")

    def wait_mining(self, deadline: float, first_block: bool = True) -> None:
        """Wait until every node with a budget mines (eth_mining, hashrate > 0) and, with
        ``first_block``, every node has seen a block past genesis (on a chain of the paper's
        block rate that is ~17 s more: a lab whose set-up is in its genesis does not wait)."""
        while True:
            pending = []
            for nd in self.nodes:
                if nd.threads > 0 and not (nd.mining() and nd.hashrate() > 0):
                    pending.append(f"{nd.name} not hashing")
                elif first_block and nd.block_number() < 1:
                    pending.append(f"{nd.name} at block 0")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise PeeringError(f"not mining within {self.cfg.start_timeout_s:.0f} s: "
                                   + ", ".join(pending))
            time.sleep(0.25)

    def verify_node(self, node: GethNode, timeout: float = 10.0) -> None:
        """Check that ``node`` (e.g. one started from another datadir) joins this chain:
        it must reach a peer within ``timeout`` s. Raises :class:`GenesisMismatch` or
        :class:`PeeringError` saying why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.peer_count() > 0:
                return
            time.sleep(0.25)
        self.check_genesis([node])
        raise PeeringError(f"{node.name}: no peer after {timeout:.0f} s (same genesis; "
                           f"check its static peers and address {node.ip})")

    def clock_drift_s(self) -> float:
        """How far the newest head's timestamp is ahead of this clock, seconds. Above 15 s
        peers start refusing blocks as "in the future" and the chain splits: see
        ``ChainConfig.genesis_difficulty``."""
        stamps = [int(nd.head()["timestamp"], 16) for nd in self.nodes if nd.alive]
        return max(stamps) - time.time() if stamps else float("nan")

    def heads(self) -> dict[str, int]:
        return {nd.name: nd.block_number() for nd in self.nodes if nd.alive}

    # ---- hash budgets and faults --------------------------------------------------------
    def set_hash_budget(self, node: int | str | GethNode, threads: int,
                        cpu_quota: float | None = None) -> None:
        """Change the hash budget p_m of one node at run time (threads; cores in cpu_quota)."""
        self.node(node).set_hash_budget(threads, cpu_quota)

    def kill(self, node: int | str | GethNode) -> None:
        """Fault injection: SIGKILL one node."""
        self.node(node).kill()

    def restart(self, node: int | str | GethNode, threads: int | None = None,
                cpu_quota: float | None = None) -> dict:
        """Start a stopped or killed node again (same datadir), wait until it is back at the
        others' head, then give it its budget again (default: ``cfg.threads``). Returns
        seconds from launch: ``{"rpc_s", "peered_s", "synced_s", "mining_s"}`` and the
        ``target_block`` (the others' head at launch)."""
        nd = self.node(node)
        others = [o for o in self.nodes if o is not nd and o.alive]
        threads = self.cfg.threads if threads is None else threads
        nd.check_budget(threads, cpu_quota)
        t0 = time.monotonic()
        nd.start(0, timeout=self.cfg.sync_timeout_s)
        out = {"rpc_s": time.monotonic() - t0}
        deadline = t0 + self.cfg.sync_timeout_s
        if not others:
            nd.set_hash_budget(threads, cpu_quota)
            return out
        target = max(o.block_number() for o in others)
        out["target_block"] = target
        while nd.peer_count() == 0:
            if time.monotonic() > deadline:
                self.check_genesis([nd])
                raise PeeringError(f"{nd.name}: no peer {self.cfg.sync_timeout_s:.0f} s "
                                   "after restart")
            time.sleep(0.1)
        out["peered_s"] = time.monotonic() - t0
        def hash_at(node: GethNode, n: int) -> str | None:
            b = node.rpc("eth_getBlockByNumber", hex(n), False)
            return b["hash"] if b else None
        while True:
            head = nd.block_number()
            # at the head = holds block `target` of a live node's chain (the others keep
            # mining and may briefly disagree with each other at that height)
            if head >= target and hash_at(nd, target) in {hash_at(o, target) for o in others}:
                break
            if time.monotonic() > deadline:
                view = ", ".join(f"{o.name}: head {o.block_number()}, #{target} "
                                 f"{(hash_at(o, target) or '-')[:10]}" for o in [nd, *others])
                raise PeeringError(f"{nd.name}: not on the others' chain at block {target} "
                                   f"{self.cfg.sync_timeout_s:.0f} s after restart ({view})")
            time.sleep(0.1)
        out["synced_s"] = time.monotonic() - t0
        if threads > 0 or cpu_quota is not None:
            nd.set_hash_budget(threads, cpu_quota)
            while not nd.mining():
                if time.monotonic() > deadline:
                    raise PeeringError(f"{nd.name}: synced but not mining after restart")
                time.sleep(0.1)
        out["mining_s"] = time.monotonic() - t0
        return out

    # ---- resources ---------------------------------------------------------------------------
    def memory(self) -> dict[str, dict]:
        return {nd.name: nd.memory() for nd in self.nodes if nd.alive}


def dag_files(dag_dir: Path) -> list[Path]:
    """The finished full DAG files in ``dag_dir`` (``full-R23-<seed>``; temp files have a dot)."""
    if not dag_dir.is_dir():
        return []
    return sorted(p for p in dag_dir.iterdir() if p.name.startswith("full-R23-")
                  and "." not in p.name)


def dag_ready(dag_dir: Path) -> bool:
    """Whether ``dag_dir`` holds the DAGs of epochs 0 and 1 (seeds 0x00.. and keccak(0x00..))."""
    names = {p.name for p in dag_files(dag_dir)}
    return {"full-R23-0000000000000000", "full-R23-290decd9548b62a8"} <= names
