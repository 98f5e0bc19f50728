"""The live lab: the paper's system as processes on an emulated network (Figs. 1-2).

``with Lab(scn, run_dir) as lab:`` brings up, in order, and always tears down in reverse:

1. the **network** of the scenario's topology (``[topology]``, M = ``model.n_servers`` MEC hosts,
   U = ``model.n_users`` UE containers), with the os-ken controller running the L2 switch and
   the lab app (the HTTP API on lab0, hash budgets);
2. one **cgroup per MEC host** holding its miner and its executor's work kernel: with
   ``lab.coupling = "shared"`` the host's CPU (``lab.host_cores``, which stands for f_m) is
   split between them, the miner's quota following its hash level and the kernel's the rest,
   so mining takes CPU from tasks as κ·p_m does in the model;
3. the **chain**: one geth miner per MEC host (devp2p on the data network, its RPC with
   ``miner``/``admin`` only on the management network) and a non-mining **RPC gateway** on gw1
   that serves wallets (eth, net, web3) on the data network; UEs and executors use only it, so
   their requests never wait on a miner's CPU quota, and no UE can reach a miner's controls;
4. the **trading contract**, deployed by the ESP, with every MEC server registered (paid into
   its own wallet W_m);
5. ``lab.json`` (public facts) for the programs on the hosts, and one key file per program in a
   secrets folder outside the repository (a UE container sees only its own key);
6. one **MEC executor** per MEC host and one **UE client** per UE container.

Keys are fresh for every run (a new mnemonic in the secrets folder): the development phrase is
public, and with it any UE could sign as any other.
"""
from __future__ import annotations

import compileall
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from chain.config import MIN_DIFFICULTY
from contracts.binding import TradingContract
from contracts.txsender import TxSender
from chain.accounts import DEV_MNEMONIC, ChainAccounts
from chain.cgroup import CGROUP_ROOT, CpuQuota, _v1_dir, executor_cores
from chain.network import Chain
from controller.settings import LabSettings
from nodes.api_client import ApiClient
from nodes.server_agent import AgentClient
from scenario import units
from base import machine
from base.errors import ConfigError
from scenario.config import ROOT, Scenario
from topologies import build_topo
from topologies.docker_host import CODE_DIRS
from topologies.network import EmulatedNetwork
from topologies import remote
from topologies.cluster import ClusterError, check_servers, is_local, ssh_argv
from topologies.platform import detect
from topologies.placement import place
from base.processes import (ManagedProcess, ProcessGroup, in_container, in_mininet_host, in_remote_container,
                            in_remote_host, log_ready, remote_pid)
from scenario.runinfo import Endpoint, LabInfo

SECRETS_ROOT = Path("/run/mec-lab")
SERVICE_IP, SERVICE_MAC = "10.0.0.100", "02:00:00:00:0a:64"   # what UEs address (steered)
PROBE_IP, PROBE_MAC = "10.0.0.253", "02:00:00:00:0a:fd"       # the monitor's latency probes
# started in this order: the journal restores the state before the API serves it (the steering
# flows go first among the appliers, the budgets after them, wherever they start)
CONTROLLER_APPS = ["controller.l2_switch", "controller.monitor", "controller.steering", "controller.budgets",
                   "controller.journal", "controller.fallback", "controller.api_app"]
CGROUP_PARENT = "mec-lab"
CONTROL_WEIGHT = 10.0         # the control plane's cgroup (controller, policy loop): CPU weight, cores' worth
LAB_MOUNT = "/lab/public"     # inside a UE container: lab.json and the calibration (read-only)
OUT_MOUNT = "/lab/out"        # inside a UE container: its own output folder (writable)
KEY_MOUNT = "/run/secrets/key"


def check_lab_cpu(scn: Scenario) -> None:
    """In the lab a MEC host's miner mines inside the host's CPU quota ("shared" coupling):
    every host must hold the largest miner quota, and name a server of the scenario."""
    lab, m = scn.lab, scn.model
    servers = {f"mec{i}" for i in range(1, m.n_servers + 1)}
    unknown = sorted(set(lab.host_cores_by_server) - servers)
    if unknown:
        raise ConfigError(f"lab.host_cores_by_server names {', '.join(unknown)}, not a server of "
                          f"model.n_servers = {m.n_servers} (mec1..mec{m.n_servers})")
    if lab.coupling != "shared":
        return
    # κ, the CPU one MHash/s of mining takes from a host's tasks, is the model's cpu_per_mhs and
    # follows from the lab's quotas: the two must be one number
    kappa = lab.mining_cores / m.hash_budget_mhs * m.cpu_ghz / lab.host_cores
    if abs(m.cpu_per_mhs - kappa) > 0.02 * kappa:
        raise ConfigError(
            f"model.cpu_per_mhs = {m.cpu_per_mhs:g} GHz per MHash/s is not the lab's κ = lab.mining_cores / "
            f"model.hash_budget_mhs x model.cpu_ghz / lab.host_cores = {lab.mining_cores:g} / {m.hash_budget_mhs:g} x "
            f"{m.cpu_ghz:g} / {lab.host_cores:g} = {kappa:.4f} (docs/units.md): set one to match the other")
    top = max(m.hash_levels_mhs) / m.hash_budget_mhs * lab.mining_cores
    for name, cores in [("lab.host_cores", lab.host_cores)] + [
            (f"lab.host_cores_by_server.{k}", v) for k, v in sorted(lab.host_cores_by_server.items())]:
        if cores <= top:
            raise ConfigError(
                f"{name} = {cores:g} cores cannot hold its miner at the top hash level: "
                f"{max(m.hash_levels_mhs):g} MHash/s is {top:.3f} cores (model.hash_levels_mhs / "
                f"model.hash_budget_mhs x lab.mining_cores = {lab.mining_cores:g}); give the host more, "
                f"lower lab.mining_cores, or set lab.coupling = \"separate\"")


def plan_chain(scn: Scenario, mapping: units.LiveMapping, cores: int | None = None) -> dict:
    """The chain the scenario asks for on this machine (``chain.outside``), or a
    :class:`ConfigError` naming the field and the limit before anything starts.

    ``virtual`` and ``miner``: the difficulty at which the whole network of H =
    ``model.network_hash_mhs`` finds one block per slot (the paper's one block race per slot),
    so the MEC servers' Σp find Σp/H blocks per slot; ``miner`` adds one real miner hashing
    H − P at that difficulty, where the machine has the cores for it. ``none``: the MEC servers
    are the whole chain, one block per ``lab.block_interval_s`` at the starting budgets."""
    m, lab, outside = scn.model, scn.lab, scn.chain.outside
    plan: dict = {"outside": outside, "hps_per_mhs": mapping.hps_per_mhs}
    if outside == "none":
        start = float(mapping.real_hashrate(m.hash_levels_mhs[m.equal_hash_level])) * m.n_servers
        plan.update(difficulty=int(start * lab.block_interval_s), block_interval_s=lab.block_interval_s,
                    field="lab.block_interval_s")
    else:
        plan.update(difficulty=mapping.difficulty(m.network_hash_mhs, m.slot_s), block_interval_s=m.slot_s,
                    mec_block_interval_s=m.slot_s * m.network_hash_mhs / m.hash_budget_mhs,
                    field="model.network_hash_mhs x model.slot_s")
    if plan["difficulty"] < MIN_DIFFICULTY:
        raise ConfigError(
            f"{plan['field']}: a block every {plan['block_interval_s']:g} s takes difficulty {plan['difficulty']:,}, "
            f"below ethash's minimum {MIN_DIFFICULTY:,}: this machine's miners (calibrated "
            f"{mapping.hps_per_mhs:.1f} H/s per MHash/s) cannot be that slow; raise it at least "
            f"{MIN_DIFFICULTY / plan['difficulty']:.2f}x")
    if outside == "miner":
        rest = m.network_hash_mhs - m.hash_budget_mhs
        if rest <= 0:
            raise ConfigError(f"chain.outside = \"miner\" needs model.network_hash_mhs = {m.network_hash_mhs:g} "
                              f"above model.hash_budget_mhs = {m.hash_budget_mhs:g}: nothing is left to mine")
        need = mapping.outside_cores(rest)
        have = lab.max_mining_share * (cores or psutil.cpu_count() or 1)
        if lab.mining_cores + need > have:
            raise ConfigError(
                f"chain.outside = \"miner\": an outside miner of H - P = {rest:g} MHash/s needs {need:.2f} cores, "
                f"and with the MEC servers' lab.mining_cores = {lab.mining_cores:g} that is "
                f"{lab.mining_cores + need:.2f}, over lab.max_mining_share x {cores or psutil.cpu_count()} cores = "
                f"{have:.2f} on this machine: use chain.outside = \"virtual\" or a bigger machine")
        plan.update(outside_mhs=rest, outside_cores=need)
    return plan


def sweep_dead_runs() -> list[str]:
    """Remove what a lab run killed outright (SIGKILL, a crash) left: its secrets folder in
    /run/mec-lab and its cgroups, both named ``<run>-<pid>``, when that pid is gone. A live run's
    (its pid exists) are not touched. Returns what was removed."""


    def dead(name: str) -> bool:
        pid = name.rsplit("-", 1)[-1]
        return pid.isdigit() and not psutil.pid_exists(int(pid))

    gone = []
    if SECRETS_ROOT.is_dir():
        for d in SECRETS_ROOT.iterdir():
            if d.is_dir() and dead(d.name):
                shutil.rmtree(d, ignore_errors=True)
                gone.append(str(d))
    parent = (_v1_dir() or CGROUP_ROOT) / CGROUP_PARENT
    if parent.is_dir():
        for d in [x for x in parent.iterdir() if x.is_dir() and dead(x.name)]:
            for sub in sorted((x for x in d.rglob("*") if x.is_dir()), key=lambda x: -len(x.parts)):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                d.rmdir()
                gone.append(str(d))
            except OSError:
                pass
    return gone


def compile_code() -> None:
    """Byte-compile the project's code (``docker_host.CODE_DIRS`` but the venv, which pip
    compiled) into its ``__pycache__`` folders, once, before the lab's programs start: none of
    them can write it itself (a UE container sees the code read-only, an executor runs as its
    MEC host's uid, a shell may set PYTHONDONTWRITEBYTECODE), so each of the U + 2M + 3 compiled
    every module it imports at every start, about 1 MB of its memory and CPU time on the busy
    bring-up (issue 21). Up to date, this is a stat per file."""
    for d in CODE_DIRS:
        if d != ".venv" and (ROOT / d).is_dir():
            compileall.compile_dir(str(ROOT / d), quiet=1)


class LabError(RuntimeError):
    """The lab could not come up; the message says which part and why."""


def _step(name: str, timings: dict):
    """Context manager timing one bring-up step into ``timings`` and printing it."""
    class Step:
        def __enter__(self):
            self.t0 = time.monotonic()
            print(f"[lab] {name} ...", file=sys.stderr, flush=True)

        def __exit__(self, exc_type, *_):
            timings[name] = round(time.monotonic() - self.t0, 2)
            if exc_type is None:
                print(f"[lab] ok   {name} ({timings[name]} s)", file=sys.stderr, flush=True)
    return Step()


class Lab:
    """Everything one live run starts (see the module docstring)."""

    def __init__(self, scn: Scenario, run_dir: Path, *, start_ues: bool = True):
        # absolute: the folder is bind-mounted into the UE containers (Docker takes a relative
        # path for a volume name) and handed to programs started elsewhere
        self.scn, self.run_dir = scn, Path(run_dir).resolve()
        self.start_ues = start_ues
        self.run_id = f"{self.run_dir.name}-{os.getpid()}"
        self.M, self.U = scn.model.n_servers, scn.model.n_users
        self.timings: dict[str, float] = {}
        self.procs = ProcessGroup()
        self.executors: dict[str, ManagedProcess] = {}
        self.ue_clients: dict[str, ManagedProcess] = {}
        self.quotas: list[CpuQuota] = []
        self.host_groups: dict[str, str] = {}
        self.exec_quotas: dict[str, CpuQuota] = {}
        self.network: EmulatedNetwork | None = None
        self.net = None
        self.chain: Chain | None = None
        self.trade: TradingContract | None = None
        self.info: LabInfo | None = None
        self.secrets = SECRETS_ROOT / self.run_id
        self.policy_proc: ManagedProcess | None = None
        self.token = secrets.token_hex(24)
        # on a cluster (issue 22, docs/cluster.md): nodes on their servers (the placement)
        self.cluster = scn.cluster if scn.cluster.enabled else None
        self.placement = None
        self.remote_groups: set[str] = set()     # servers where mec-lab/<run> was made
        self.remote_secrets: set[str] = set()    # servers holding some of the run's keys
        self.miners: dict[str, dict] = {}        # the controller's LabSettings.miners (_start)
        self.server_cals: dict[str, units.Calibration] = {}   # other server -> its calibration
        self.mec_mappings: dict[str, units.LiveMapping] = {}  # MEC server -> its mapping (_start)
        self.mec_calibrations: dict[str, str] = {}   # MEC server -> its server's file in lab_dir, when not the lab's
        self.agent_secrets: dict[str, Path] = {}  # server -> its budgets agent's secret file

    # ---- paths ------------------------------------------------------------------------------
    @property
    def lab_dir(self) -> Path:
        return self.run_dir / "lab"

    @property
    def api_url(self) -> str:
        return f"http://{self.topo.plan.data_ip('lab0')}:{self.scn.lab.api_port}"

    # ---- bring-up ---------------------------------------------------------------------------
    def start(self) -> "Lab":
        check_lab_cpu(self.scn)
        cal_path = self.scn.path(self.scn.lab.calibration)
        self.calibration = units.Calibration.load(cal_path)
        why = machine.stale(self.calibration.machine, machine.facts())
        if why:
            raise ConfigError(f"the calibration {cal_path} does not fit this machine: {why}")
        self.mapping = units.LiveMapping(self.scn.model, self.scn.lab.mining_cores, self.scn.lab.host_cores,
                                         self.calibration)
        self.chain_plan = plan_chain(self.scn, self.mapping)
        if self.cluster is not None:
            self.server_cals = self._check_cluster(cal_path)
        sweep_dead_runs()
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            # a run's chain data, keys and results belong to that run: never mixed with another's
            raise ConfigError(f"the run folder {self.run_dir} already holds files (an earlier run?): "
                              "give another --out, or remove it")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        scn = self.scn
        t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lab_dir.mkdir(exist_ok=True)
        # public, whatever the source's mode: the MEC hosts' uids and the UEs read it
        shutil.copyfile(scn.path(scn.lab.calibration), self.lab_dir / "calibration.json")
        (self.lab_dir / "calibration.json").chmod(0o644)
        self.platform = detect()
        self._make_secrets()

        with _step("topology", self.timings):
            self.topo = build_topo(scn.topology, self.M, self.U, scn.seed, self.platform)
            self._mount_ue_files()
        if self.cluster is not None:
            self.placement = place(self.topo.plan, self.cluster)
            with _step("the run's keys on the cluster's servers", self.timings):
                self._put_secrets_on_servers()
        self._map_servers()
        self.miners = self._miner_settings()
        # each other server with MEC hosts: a secret for its budgets agent
        self.agent_secrets = {s: remote.write_secret(self.secrets, s)
                              for s in sorted({m["server"] for m in self.miners.values() if "server" in m})}
        self._write_controller_config()
        with _step("the programs' code byte-compiled", self.timings):
            compile_code()
        with _step("network (OVS, containers, controller)", self.timings):
            self.network = EmulatedNetwork(
                self.topo, scn.network, self.run_dir / "logs", self.platform,
                controller_apps=CONTROLLER_APPS,
                controller_args=["--lab-config", str(self.secrets / "controller.json")], cluster=self.cluster)
            self.net = self.network.start()
            self._tell_controller()
        with _step("MEC host cgroups", self.timings):
            self._make_cgroups()
        # The programs start now and wait for lab.json: their start-up (Python imports) overlaps
        # the chain's and the contract's, which mostly wait for blocks.
        with _step("executors and UE clients launched", self.timings):
            self._start_executors()
            if self.start_ues:
                self._start_ue_clients()
        self.setup = None
        if scn.lab.genesis_setup:
            with _step("trading contract + registrations on a scratch chain, into the genesis", self.timings):
                from testbed.chain_setup import setup_state
                self.setup = setup_state(self.chain_cfg, scn.contract, self.accounts, n_servers=self.M)
                (self.lab_dir / "setup.json").write_text(json.dumps(
                    {k: v for k, v in self.setup.items() if k != "alloc"}, indent=1))
        with _step("chain (miners + RPC gateway)", self.timings):
            self._guard_miner_rpc()
            self._start_chain()
        if self.cluster is not None:
            with _step("the cluster's servers: the lab's cgroups and budgets agents", self.timings):
                self._start_remote_groups()
        with _step("trading contract", self.timings):
            self._deploy()
        self._write_lab_info()
        with _step("executors serving", self.timings):
            for m, p in self.executors.items():
                p.wait_ready(log_ready(r"serving on"), 120, "serving")
                self.attach_kernel(m, p)
        if self.start_ues:
            with _step("UE clients registered (createTrade)", self.timings):
                for p in self.ue_clients.values():
                    p.wait_ready(log_ready(r"registered as"), 120, "registered")
        self.timings["bring_up_s"] = round(time.monotonic() - t0, 2)

    def _make_secrets(self) -> None:
        self.secrets.mkdir(parents=True, mode=0o700, exist_ok=False)
        from eth_account import Account
        Account.enable_unaudited_hdwallet_features()
        _, mnemonic = Account.create_with_mnemonic()
        (self.secrets / "mnemonic").write_text(mnemonic)
        # datadirs in the run folder: their logs stay with the results (no account key is in
        # them: transactions are signed in Python); the chain data is removed at teardown
        self.chain_cfg = dataclasses.replace(self.scn.chain, mnemonic=mnemonic, workdir=str(self.run_dir / "chain"))
        self.accounts = ChainAccounts.derive(mnemonic, self.M, self.U)
        (self.secrets / "token").write_text(self.token)
        keys = self.secrets / "keys"
        keys.mkdir(mode=0o700)
        for i, a in enumerate(self.accounts.mec_servers, 1):
            (keys / f"mec{i}.key").write_text(a.key.hex())
        for j, a in enumerate(self.accounts.ues, 1):
            (keys / f"ue{j}.key").write_text(a.key.hex())
        for p in self.secrets.rglob("*"):
            if p.is_file():
                p.chmod(0o600)               # the mnemonic and the token: the operator's (root) only
        if self.scn.lab.mec_uid_base:
            # a MEC host's programs (its own uid) may pass through the folders to their own key
            # by name, never list them, and read no other file in them
            self.secrets.chmod(0o711)
            keys.chmod(0o711)
            for i in range(1, self.M + 1):
                os.chown(keys / f"mec{i}.key", self.mec_uid(f"mec{i}"), self.mec_uid(f"mec{i}"))
            # the executor's own records: it may append to its files, not touch another's
            out = self.lab_dir / "executors"
            out.mkdir(exist_ok=True)
            for i in range(1, self.M + 1):
                for suffix in ("", "-completions", "-vouchers"):
                    f = out / f"mec{i}{suffix}.jsonl"
                    f.touch()
                    os.chown(f, self.mec_uid(f"mec{i}"), self.mec_uid(f"mec{i}"))
            self._check_mec_uid()

    def mec_uid(self, mec: str) -> int | None:
        """The uid (and gid) MEC host ``mec``'s executor and miner run as; None: root."""
        base = self.scn.lab.mec_uid_base
        return base + int(mec[3:]) if base else None

    def launcher(self, mec: str):
        """Where MEC host ``mec``'s programs run: in its namespace, as its own uid (on its
        server, over ssh, when the cluster placed it on another one)."""
        if self.remote_server(mec) is not None:
            return in_remote_host(self.net.get(mec), self.mec_uid(mec))
        return in_mininet_host(self.net.get(mec), self.mec_uid(mec))

    # ---- on a cluster -----------------------------------------------------------------------
    def remote_server(self, node: str):
        """The ServerSpec of the other server ``node`` is placed on; None: this machine."""
        if self.placement is None:
            return None
        spec = self.cluster.server(self.placement.server[node])
        return None if is_local(spec) else spec

    def _check_cluster(self, cal_path: Path) -> dict[str, units.Calibration]:
        """Before anything starts: the run folder in the folder every server shares, and every
        other server passing the pre-start check with a calibration of its own; returns those
        calibrations (server -> :class:`scenario.units.Calibration`)."""
        shared = self.cluster.shared_dir
        if not shared or not self.run_dir.is_relative_to(Path(shared).resolve()):
            raise ConfigError(f"a lab on a cluster keeps its run folder in cluster.shared_dir, the folder every "
                              f"server shares at the same path (docs/cluster.md): {self.run_dir} is not in "
                              f"{shared or '(cluster.shared_dir unset)'}")
        others = tuple(x for x in self.cluster.servers if not is_local(x))
        if not others:
            return {}
        checks = check_servers(dataclasses.replace(self.cluster, servers=others, hub="", pin={}), containers=True,
                               calibration=str(cal_path))
        return {name: units.Calibration(**c.calibration) for name, c in checks.items()}

    def _map_servers(self) -> None:
        """Each MEC server's mapping (issue 22): the lab's, or on another server of a cluster
        that server's own (its miner's quota per level and its work kernel's iterations per
        Gcycle by its calibration, one exchange rate X for the chain: ``LiveMapping.for_server``).
        A server whose miner cannot fit its host at the top level is refused by name. Each other
        server's calibration is put in the lab folder, public, for its executor and the UEs."""
        lab, m = self.scn.lab, self.scn.model
        for i in range(1, self.M + 1):
            name = f"mec{i}"
            spec = self.remote_server(name)
            mp = self.mapping if spec is None else self.mapping.for_server(self.server_cals[spec.name])
            self.mec_mappings[name] = mp
            if mp is self.mapping:
                continue
            public = self.lab_dir / f"calibration-{spec.name}.json"
            if not public.exists():                     # once per server
                public.write_text(json.dumps(dataclasses.asdict(self.server_cals[spec.name]), indent=1) + "\n")
                public.chmod(0o644)
            self.mec_calibrations[name] = public.name
            top, cores = float(mp.miner_cores(max(m.hash_levels_mhs))), float(lab.host_cores_by_server.get(name, lab.host_cores))
            if lab.coupling == "shared" and cores <= top:
                raise ConfigError(f"{name} on server {spec.name}: by that server's calibration its miner takes "
                                  f"{top:.3f} cores at the top hash level, more than the host's {cores:g} "
                                  "(lab.host_cores): give the host more or lower lab.mining_cores")

    def _put_secrets_on_servers(self) -> None:
        """Each other server gets the keys of its own MEC hosts and UEs, at the same paths as
        here (its own ``/run/mec-lab/<run>``), owned as here; nothing else of the secrets folder."""
        keys = self.secrets / "keys"
        by_server: dict[str, dict] = {}
        for node in [*(f"mec{i}" for i in range(1, self.M + 1)), *(f"ue{j}" for j in range(1, self.U + 1))]:
            spec = self.remote_server(node)
            if spec is not None:
                uid = self.mec_uid(node) if node.startswith("mec") else None
                by_server.setdefault(spec.name, {})[str(keys / f"{node}.key")] = ((keys / f"{node}.key").read_text(), uid)
        mode = 0o711 if self.scn.lab.mec_uid_base else 0o700
        for server, files in by_server.items():
            self.remote_secrets.add(server)
            remote.put_files(self.cluster.server(server), self.cluster, {str(self.secrets): mode, str(keys): mode},
                             files)

    def _start_remote_groups(self) -> None:
        """After the chain started: on each other server, the lab's groups of its MEC hosts
        around each miner (``topologies.remote.make_groups``), the miners' starting budget, and
        the server's budgets agent (the controller's ``LabSettings.agents``)."""
        lab, equal = self.scn.lab, self.scn.model.hash_levels_mhs[self.scn.model.equal_hash_level]
        start = {m: float(mp.miner_cores(equal)) for m, mp in self.mec_mappings.items()}
        by_server: dict[str, dict] = {}
        for nd in self.chain.nodes:
            spec = self.remote_server(nd.name)
            if spec is not None:
                cores = float(lab.host_cores_by_server.get(nd.name, lab.host_cores))
                by_server.setdefault(spec.name, {})[nd.name] = {
                    "host_cores": cores, "executor_cores": executor_cores(cores, start[nd.name], lab.coupling),
                    "miner_pid": remote_pid(nd.proc)}
        for server, hosts in by_server.items():
            spec = self.cluster.server(server)
            self.remote_groups.add(server)
            remote.make_groups(spec, self.cluster, self.run_id, hosts)
            agent = remote.agent(spec, self.cluster, {m: self.miners[m] for m in hosts},
                                 self.agent_secrets[server], self.run_dir / "logs" / f"agent-{server}.log")
            self.procs.start(agent)
            client = AgentClient(remote.agent_address(spec, self.cluster), self.agent_secrets[server].read_text().strip())
            try:
                client.apply({m: start[m] for m in hosts})
            finally:
                client.close()

    def _check_mec_uid(self) -> None:
        """A MEC host's uid must reach the programs (a parent folder of mode 0700, such as a
        home folder on Debian 12, does not let it): found now, not as a dead executor."""
        uid = self.mec_uid("mec1")
        out = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                              self._python(), "-c", "import os, sys, nodes.executor; os.stat(sys.argv[1])",
                              str(self.lab_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise LabError(f"MEC hosts run as their own uid ({uid}, ...) and that uid cannot run the "
                           f"programs in {ROOT} or reach the run folder {self.run_dir}: "
                           f"{out.stderr.strip()[-300:]}. Put both where every user may pass (no parent "
                           "folder of mode 0700, such as a home folder or pytest's temporary folder), "
                           "or set lab.mec_uid_base = 0 to run them as root")

    def _mount_ue_files(self) -> None:
        """Each UE container gets the programs (``docker_host.CODE_DIRS``, read-only), the lab's
        public facts (lab.json, calibration.json), its own output folder and its own key; and
        the scenario's CPU, memory and pids limits."""
        for node in self.topo.plan.ues:
            if not node.container:
                continue
            out = self.run_dir / "ues" / node.name
            out.mkdir(parents=True, exist_ok=True)
            info = self.topo.nodeInfo(node.name)
            info["volumes"] = {str(self.lab_dir): LAB_MOUNT, str(out): (OUT_MOUNT, "rw"),
                               str(self.secrets / "keys" / f"{node.name}.key"): KEY_MOUNT}
            lab = self.scn.lab        # a UE cannot starve the machine: CPU, memory, pids capped
            info.update(cpu_quota=lab.ue_cpu_cores, mem_limit=f"{lab.ue_memory_mb}m", pids_limit=lab.ue_pids)
            self.topo.setNodeInfo(node.name, info)

    def _write_controller_config(self) -> None:
        plan = self.topo.plan
        levels = list(self.scn.model.hash_levels_mhs)
        names = [f"mec{i}" for i in range(1, self.M + 1)]
        LabSettings(
            servers=names, ues=[f"ue{j}" for j in range(1, self.U + 1)],
            accounts={**{f"mec{i}": a.address for i, a in enumerate(self.accounts.mec_servers, 1)},
                      **{f"ue{j}": a.address for j, a in enumerate(self.accounts.ues, 1)}},
            levels_mhs=levels, budget_mhs=self.scn.model.hash_budget_mhs,
            levels_cores=[float(c) for c in self.mapping.miner_cores(levels)],
            window_s=self.scn.model.reputation_window * self.scn.model.slot_s,
            slot_s=self.scn.model.slot_s, equal_level=self.scn.model.equal_hash_level,
            monitor_period_s=self.scn.lab.monitor_period_s, nice=self.scn.lab.control_nice,
            api_host=plan.data_ip("lab0"), api_port=self.scn.lab.api_port,
            api_read_deadline_s=self.scn.lab.api_read_deadline_s,
            api_max_connections=self.scn.lab.api_max_connections,
            api_per_client=self.scn.lab.api_per_client,
            token_file=str(self.secrets / "token"),
            budget_log=str(self.run_dir / "budgets.jsonl"),
            state_file=str(self.secrets / "controller-state.json"),
            task_ranges={"data_mb": list(self.scn.model.data_mb_range),
                         "demand": list(self.scn.model.demand_gcycles_range),
                         "desired_s": list(self.scn.model.desired_time_s_range)},
            work={"iterations_per_gcycle": {m: mp.iterations_per_gcycle for m, mp in self.mec_mappings.items()},
                  "demand_reading": self.scn.model.demand_reading},
            miners=self.miners,
            miner_rpc={m: f"http://{plan.mgmt_ip(m)}:{self.chain_cfg.http_port + i}"
                       for i, m in enumerate(names)},
            agents={server: {"address": remote.agent_address(self.cluster.server(server), self.cluster),
                             "secret_file": str(f)} for server, f in self.agent_secrets.items()},
        ).write(self.secrets / "controller.json")

    def _miner_settings(self) -> dict[str, dict]:
        """The controller's ``LabSettings.miners``: each miner's host group, period, host cores,
        coupling, and the server it is on when that is another one (its agent writes there) with
        each level's quota there when that server's calibration is not the lab's."""
        out = {}
        for i in range(1, self.M + 1):
            m = f"mec{i}"
            spec = self.remote_server(m)
            out[m] = {"host_group": f"{CGROUP_PARENT}/{self.run_id}/{m}", "period_us": self.chain_cfg.cpu_period_us,
                      "host_cores": float(self.scn.lab.host_cores_by_server.get(m, self.scn.lab.host_cores)),
                      "coupling": self.scn.lab.coupling, **({"server": spec.name} if spec is not None else {})}
            if self.mec_mappings[m] is not self.mapping:
                out[m]["levels_cores"] = [float(c) for c in self.mec_mappings[m].miner_cores(self.scn.model.hash_levels_mhs)]
        return out

    def _tell_controller(self) -> None:
        """Static ARP entries for the service and probe addresses, then the hosts' addresses
        and switch ports to the controller (steering and probes need them)."""
        hosts = {}
        for h in self.net.hosts:
            node = self.topo.plan.nodes.get(h.name)
            if node is None or node.role not in ("mec", "ue", "gw", "cloud"):
                continue
            intf = h.defaultIntf()
            link = intf.link
            sw_intf = link.intf1 if link.intf2 is intf else link.intf2
            hosts[h.name] = {"ip": node.data_ip, "mac": h.MAC(), "role": node.role,
                             "dpid": int(sw_intf.node.dpid, 16), "port": sw_intf.node.ports[sw_intf]}
            if node.role == "ue":
                h.cmd(f"arp -s {SERVICE_IP} {SERVICE_MAC}")
            elif node.role == "mec":
                h.cmd(f"arp -s {PROBE_IP} {PROBE_MAC}")
        api = ApiClient(f"http://{self.topo.plan.data_ip('lab0')}:{self.scn.lab.api_port}", self.token)
        body = {"hosts": hosts, "service": {"ip": SERVICE_IP, "mac": SERVICE_MAC},
                "probe": {"ip": PROBE_IP, "mac": PROBE_MAC}, "executor_port": self.scn.lab.executor_port}
        deadline = time.monotonic() + 60
        while True:
            try:
                status, resp = api.call("PUT", "/topology", body)
                if status == 200:
                    return
                raise LabError(f"the controller refused the topology: {resp}")
            except OSError:
                if time.monotonic() > deadline:
                    raise LabError(f"the controller's API did not answer at {api.url} within 60 s; "
                                   f"log {self.network.controller.log_path}:\n{self.network.controller.log_tail()}")
                time.sleep(0.3)

    def _make_cgroups(self) -> None:
        """mec-lab/<run>/<mec>/{executor, <miner>}: see the module docstring. Weights: the run's
        group as heavy as ten cores, so other work on the machine cannot starve the MEC hosts
        below their quotas. Inside a host the miner has its quota (p_m's cores) and, with
        ``lab.coupling = "shared"``, the executor's work kernel the rest of the host's,
        ``host_cores`` − the miner's, rewritten with every budget change (the controller's
        controller.budgets): a task gets what mining leaves, f_m − κ·p_m as in the model. Two
        sibling quotas, not one host quota over both: measured here, a host quota shared by
        weight gave the kernel half of what it left when ten hosts computed at once."""
        lab = self.scn.lab
        run = CpuQuota(self.run_id, parent=CGROUP_PARENT)
        run.set(None, weight=10.0)
        self.quotas.append(run)
        # the executors' own processes (network, payment checks, reports): latency-bound, light,
        # beside the hosts and ahead of them when the machine is busy; no quota
        self.services = CpuQuota("services", parent=f"{CGROUP_PARENT}/{self.run_id}")
        self.services.set(None, weight=2.0)
        self.quotas.append(self.services)
        # the control plane (the os-ken controller, the policy loop): in the system modelled the
        # SDN controller is a machine of its own, so here it goes ahead of the emulated hosts
        # whenever it has work (a few % of a core; the hosts' quotas are not touched). Outside
        # this group it had only its nice, which counts among the processes of its own group:
        # when the ten miners' quota periods began together, the budgets' 3 ms of CPU took
        # 4-40 ms (docs/performance.md, change 8)
        self.control = CpuQuota("control", parent=f"{CGROUP_PARENT}/{self.run_id}")
        self.control.set(None, weight=CONTROL_WEIGHT)
        self.quotas.append(self.control)
        self.control.attach(self.network.controller.pid)
        self.network.controller_group = self.control
        start = float(self.mapping.miner_cores(self.scn.model.hash_levels_mhs[self.scn.model.equal_hash_level]))
        for i in range(1, self.M + 1):
            m = f"mec{i}"
            self.host_groups[m] = f"{CGROUP_PARENT}/{self.run_id}/{m}"
            if self.remote_server(m) is not None:     # made on its server once its miner runs
                continue
            cores = float(lab.host_cores_by_server.get(m, lab.host_cores))
            host = CpuQuota(m, parent=f"{CGROUP_PARENT}/{self.run_id}")
            self.quotas.append(host)
            host.set(None, weight=cores)
            ex = CpuQuota("executor", parent=self.host_groups[m])
            left = executor_cores(cores, start, lab.coupling)
            ex.set(left, weight=left)
            self.quotas.append(ex)
            self.exec_quotas[m] = ex

    def _guard_miner_rpc(self) -> None:
        """Each MEC host's miner answers its HTTP/WS RPC (``miner``, ``admin``) to lab0 only:
        the other MEC hosts share the management network and must not stop or re-point a
        rival's miner. A rule in each MEC host's own namespace (gone with the host)."""
        c, lab0 = self.chain_cfg, self.topo.plan.mgmt_ip("lab0")
        for i in range(self.M):
            h = self.net.get(f"mec{i + 1}")
            ports = f"{c.http_port + i},{c.ws_port + i}"
            for rule in (f"-s {lab0} -j ACCEPT", "-j REJECT --reject-with tcp-reset"):
                out = h.cmd(f"iptables -w -A INPUT -p tcp -m multiport --dports {ports} {rule}; echo rc=$?")
                if "rc=0" not in out:
                    raise LabError(f"cannot guard mec{i + 1}'s miner RPC with iptables: {out.strip()}")

    def _start_chain(self) -> None:
        plan = self.topo.plan
        mecs = [self.net.get(f"mec{i}") for i in range(1, self.M + 1)]
        gw = self.net.get("gw1")
        level = self.scn.model.equal_hash_level
        q = float(self.mapping.miner_cores(self.scn.model.hash_levels_mhs[level]))
        # Difficulty = expected hashes per block, from the calibration (plan_chain)
        self.chain_cfg = dataclasses.replace(self.chain_cfg, genesis_difficulty=self.chain_plan["difficulty"])
        outside = None
        if self.chain_plan["outside"] == "miner":
            # on the gateway's host (not a MEC host, not on the UEs' path), its own quota in the run's group
            outside = {"ip": plan.mgmt_ip("gw1"), "launcher": in_mininet_host(gw),
                       "etherbase": self.accounts.outside_miner.address,
                       "cores": self.chain_plan["outside_cores"], "quota_parent": f"{CGROUP_PARENT}/{self.run_id}"}
        # devp2p and the miners' RPC on the management network (UEs are not on it); the
        # gateway's wallet RPC on the data network, where UEs and executors reach it
        self.chain = Chain(self.chain_cfg, ips=[plan.mgmt_ip(h.name) for h in mecs],
                           rpc_ips=[plan.mgmt_ip(h.name) for h in mecs],
                           launchers=[self.launcher(h.name) for h in mecs],
                           quota_parents=[None if self.remote_server(h.name) else self.host_groups[h.name]
                                          for h in mecs],
                           gateway_ip=plan.mgmt_ip("gw1"), gateway_rpc_ip=plan.data_ip("gw1"),
                           gateway_launcher=in_mininet_host(gw),
                           budgets=[1] * self.M, outside=outside,
                           cpu_quotas=[None if self.remote_server(h.name) else q for h in mecs],
                           alloc=self.setup["alloc"] if self.setup else None)
        self.chain.__enter__()

    def _deploy(self) -> None:
        gw = self.chain.gateway
        w3 = gw.w3
        cfg = self.scn.contract
        self.sender = TxSender(w3, cfg)
        if self.setup is not None:          # in the genesis already (testbed.chain_setup)
            self.trade = TradingContract(w3, self.setup["contract"], cfg, sender=self.sender)
            self.deploy_block = 0
            return
        self.trade, self.deploy_report = TradingContract.deploy(w3, self.accounts.esp, cfg, sender=self.sender)
        self.deploy_block = self.deploy_report.block_number
        # On the MEC servers' own fast chain (chain.outside = "none") the registrations wait 3
        # blocks (they follow the deploy in the ESP's nonce order, so the deploy is deeper still):
        # short forks are common there, and a registration undone by a re-organisation would make
        # the first payments revert. At the paper's block rate uncles are rare: contract.confirmations.
        depth = max(3, cfg.confirmations) if self.scn.chain.outside == "none" else cfg.confirmations
        deep = TradingContract(w3, self.trade.address, dataclasses.replace(cfg, confirmations=depth),
                               sender=self.sender)

        def register(i: int):
            return deep.register_mec(self.accounts.esp, server=self.accounts.mec_servers[i].address,
                                     wallet=self.accounts.mec_wallets[i].address)
        with ThreadPoolExecutor(max_workers=8) as pool:    # one nonce each: a block or two for all
            self.register_reports = list(pool.map(register, range(self.M)))

    def _write_lab_info(self) -> None:
        plan = self.topo.plan
        public = self.scn.to_dict()
        public["chain"]["mnemonic"] = DEV_MNEMONIC      # the run's own phrase stays secret
        public["chain"]["workdir"] = None
        self.info = LabInfo(
            run=self.run_id, chain_id=self.chain_cfg.chain_id, contract=self.trade.address,
            deploy_block=self.deploy_block, gateway_url=self.chain.gateway.http_url,
            api_url=self.api_url, executor_port=self.scn.lab.executor_port, scenario=public,
            service_ip=SERVICE_IP,
            calibration=str(self.lab_dir / "calibration.json"),
            calibrations=self.mec_calibrations,
            servers={f"mec{i}": Endpoint(f"mec{i}", plan.data_ip(f"mec{i}"), a.address,
                                          self.accounts.mec_wallets[i - 1].address)
                     for i, a in enumerate(self.accounts.mec_servers, 1)},
            ues={f"ue{j}": Endpoint(f"ue{j}", plan.data_ip(f"ue{j}"), a.address)
                 for j, a in enumerate(self.accounts.ues, 1)})
        self.info.save(self.lab_dir / "lab.json")

    def _python(self) -> str:
        return str(ROOT / ".venv" / "bin" / "python")

    def _start_executors(self) -> None:
        for i in range(1, self.M + 1):
            m = f"mec{i}"
            argv = [self._python(), "-m", "nodes.executor", "--lab", str(self.lab_dir / "lab.json"),
                    "--name", m, "--key", str(self.secrets / "keys" / f"{m}.key")]
            p = ManagedProcess(f"executor {m}", argv, self.run_dir / "logs" / f"executor-{m}.log",
                               launcher=self.launcher(m), cwd=ROOT, ready_timeout_s=60)
            self.procs.start(p)
            self.executors[m] = p

    def attach_kernel(self, mec: str, executor: ManagedProcess) -> None:
        """Put the executor's work kernel (its child ``python -m nodes.work``) into its host's
        CPU quota (f_m): a task's cycles are the host's, shared with its miner; the executor's
        own network and payment checks go to the run's services group (no quota, ahead of
        the hosts when the machine is busy)."""
        spec = self.remote_server(mec)
        if spec is not None:     # on its server (the executor's own processes: no services group there)
            remote.attach_kernel(spec, self.cluster, self.run_id, mec, remote_pid(executor))
            return
        kernels = [c for c in psutil.Process(executor.pid).children(recursive=True)
                   if "nodes.work" in " ".join(c.cmdline())]
        if len(kernels) != 1:
            raise LabError(f"executor {mec}: expected one work kernel process, found {len(kernels)}")
        self.services.attach(executor.pid)
        self.exec_quotas[mec].attach(kernels[0].pid)

    def _start_ue_clients(self) -> None:
        for j in range(1, self.U + 1):
            self.start_ue(f"ue{j}")

    def start_ue(self, name: str) -> ManagedProcess:
        argv = [self._python(), "-m", "nodes.ue_client", "--lab", f"{LAB_MOUNT}/lab.json", "--name", name,
                "--key", KEY_MOUNT, "--out", OUT_MOUNT]
        spec = self.remote_server(name)
        if spec is None:
            launcher = in_container(f"mn.{name}", log_inside=f"{OUT_MOUNT}/client.log")
        else:     # the container of the server's own engine; its wrapper's lines join the same log
            launcher = in_remote_container(ssh_argv(spec, self.cluster), f"mn.{name}",
                                           log_inside=f"{OUT_MOUNT}/client.log", grace_s=60, python=self._python())
        p = ManagedProcess(f"UE client {name}", argv, self.run_dir / "ues" / name / "client.log",
                           launcher=launcher, cwd=ROOT, grace_s=60)
        self.procs.start(p)
        self.ue_clients[name] = p
        return p

    def start_policy(self, slots: int | None = None) -> ManagedProcess:
        """The decision maker (:mod:`testbed.policy_loop`), started last; it runs ``slots``
        slots (default ``lab.slots``) and exits."""
        argv = [self._python(), "-m", "testbed.policy_loop", "--lab", str(self.lab_dir / "lab.json"),
                "--token-file", str(self.secrets / "token"), "--out", str(self.run_dir),
                "--slots", str(self.scn.lab.slots if slots is None else slots)]
        self.policy_proc = ManagedProcess("policy loop", argv, self.run_dir / "logs" / "policy_loop.log",
                                          cwd=ROOT, ready=log_ready(r"deciding"), ready_timeout_s=120,
                                          grace_s=self.scn.model.slot_s + 15)
        self.procs.start(self.policy_proc)
        self.control.attach(self.policy_proc.pid)
        return self.policy_proc

    # ---- teardown ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Reverse order, always: clients and executors, chain, network, cgroups, secrets."""
        t0 = time.monotonic()
        errors = []
        for what, fn in (("processes", lambda: self.procs.stop(grace=5)),
                         ("chain", lambda: self.chain and self.chain.stop()),
                         ("chain data", self._remove_chain_data),
                         ("network", lambda: self.network and self.network.stop()),
                         ("cgroups", self._remove_cgroups),
                         ("secrets", self._remove_secrets)):
            try:
                fn()
            except Exception as e:        # keep tearing the rest down
                errors.append(f"{what}: {type(e).__name__}: {e}")
        self.timings["teardown_s"] = round(time.monotonic() - t0, 2)
        if errors:
            raise LabError("teardown: " + "; ".join(errors))

    def _remove_chain_data(self) -> None:
        """Keep each node's geth.log; drop its database."""
        for db in (self.run_dir / "chain").glob("*/geth"):
            shutil.rmtree(db, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        for q in reversed(self.quotas):
            q.remove()
        self.quotas.clear()

        def groups(spec):
            left = remote.remove_groups(spec, self.cluster, self.run_id)
            if left:
                raise ClusterError(f"server {spec.name}: groups left {left}")
        self._on_servers(self.remote_groups, groups)

    def _remove_secrets(self) -> None:
        shutil.rmtree(self.secrets, ignore_errors=True)
        self._on_servers(self.remote_secrets, lambda spec: remote.remove_folder(spec, self.cluster, self.secrets))

    def _on_servers(self, servers: set[str], fn) -> None:
        """Teardown on other servers: ``fn(spec)`` on each of ``servers`` (emptied), all of
        them even when one fails; then one LabError naming every failure."""
        errors = []
        for server in sorted(servers):
            try:
                fn(self.cluster.server(server))
            except ClusterError as e:
                errors.append(str(e))
        servers.clear()
        if errors:
            raise LabError("; ".join(errors))

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
