"""The live lab: the paper's system as processes on an emulated network (Figs. 1-2).

``with Lab(scn, run_dir) as lab:`` brings up, in order, and always tears down in reverse:

1. the **network** of the scenario's topology (``[topology]``, M = ``model.n_servers`` MEC hosts,
   U = ``model.n_users`` UE containers), with the os-ken controller running the L2 switch and
   the lab app (the HTTP API on lab0, hash budgets);
2. one **cgroup per MEC host** holding its miner and its executor: with ``lab.coupling =
   "shared"`` the host's CPU quota (``lab.host_cores``, which stands for f_m) is shared, so
   mining takes CPU from tasks as κ·p_m does in the model;
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

import dataclasses
import json
import os
import secrets
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from contracts.binding import TradingContract
from contracts.txsender import TxSender
from nodes.accounts import DEV_MNEMONIC, ChainAccounts
from nodes.cgroup import CpuQuota
from nodes.chain import Chain
from testbed import units
from testbed.errors import ConfigError
from testbed.config import ROOT, Scenario
from testbed.network import EmulatedNetwork
from testbed.platform import detect
from testbed.processes import ManagedProcess, ProcessGroup, in_container, in_mininet_host, log_ready
from testbed.runinfo import Endpoint, LabInfo

SECRETS_ROOT = Path("/run/mec-lab")
SERVICE_IP, SERVICE_MAC = "10.0.0.100", "02:00:00:00:0a:64"   # what UEs address (steered)
PROBE_IP, PROBE_MAC = "10.0.0.253", "02:00:00:00:0a:fd"       # the monitor's latency probes
CONTROLLER_APPS = ["controller.l2_switch", "controller.monitor", "controller.steering", "controller.lab_app"]
CGROUP_PARENT = "mec-lab"
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
    top = max(m.hash_levels_mhs) / m.hash_budget_mhs * lab.mining_cores
    for name, cores in [("lab.host_cores", lab.host_cores)] + [
            (f"lab.host_cores_by_server.{k}", v) for k, v in sorted(lab.host_cores_by_server.items())]:
        if cores <= top:
            raise ConfigError(
                f"{name} = {cores:g} cores cannot hold its miner at the top hash level: "
                f"{max(m.hash_levels_mhs):g} MHash/s is {top:.3f} cores (model.hash_levels_mhs / "
                f"model.hash_budget_mhs x lab.mining_cores = {lab.mining_cores:g}); give the host more, "
                f"lower lab.mining_cores, or set lab.coupling = \"separate\"")


def sweep_dead_runs() -> list[str]:
    """Remove what a lab run killed outright (SIGKILL, a crash) left: its secrets folder in
    /run/mec-lab and its cgroups, both named ``<run>-<pid>``, when that pid is gone. A live run's
    (its pid exists) are not touched. Returns what was removed."""
    import psutil

    from nodes.cgroup import CGROUP_ROOT, _v1_dir

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
        from topologies import build_topo
        scn = self.scn
        t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lab_dir.mkdir(exist_ok=True)
        cal_path = scn.path(scn.lab.calibration)
        self.calibration = units.Calibration.load(cal_path)
        shutil.copy(cal_path, self.lab_dir / "calibration.json")
        self.mapping = units.LiveMapping(scn.model, scn.lab.mining_cores, scn.lab.host_cores, self.calibration)
        self.platform = detect()
        self._make_secrets()

        with _step("topology", self.timings):
            self.topo = build_topo(scn.topology, self.M, self.U, scn.seed, self.platform)
            self._mount_ue_files()
        self._write_controller_config()
        with _step("network (OVS, containers, controller)", self.timings):
            self.network = EmulatedNetwork(
                self.topo, scn.network, self.run_dir / "logs", self.platform,
                controller_apps=CONTROLLER_APPS,
                controller_args=["--lab-config", str(self.secrets / "controller.json")])
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
        with _step("chain (miners + RPC gateway)", self.timings):
            self._start_chain()
        with _step("trading contract", self.timings):
            self._deploy()
        self._write_lab_info()
        with _step("executors serving", self.timings):
            for m, p in self.executors.items():
                p.wait_ready(log_ready(r"serving on"), 120, "serving")
                # into its host's CPU quota (f_m) once it serves: its start-up (Python imports)
                # does not count against the host, and under 0.2 cores it would take ~30 s
                self.exec_quotas[m].attach(p.pid)
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
        for p in keys.iterdir():
            p.chmod(0o600)

    def _mount_ue_files(self) -> None:
        """Each UE container gets lab.json (read-only), its own output folder and its own key."""
        for node in self.topo.plan.ues:
            if not node.container:
                continue
            out = self.run_dir / "ues" / node.name
            out.mkdir(parents=True, exist_ok=True)
            info = self.topo.nodeInfo(node.name)
            info["volumes"] = {str(self.lab_dir): LAB_MOUNT, str(out): (OUT_MOUNT, "rw"),
                               str(self.secrets / "keys" / f"{node.name}.key"): KEY_MOUNT}
            self.topo.setNodeInfo(node.name, info)

    def _write_controller_config(self) -> None:
        plan = self.topo.plan
        levels = list(self.scn.model.hash_levels_mhs)
        names = [f"mec{i}" for i in range(1, self.M + 1)]
        cfg = {
            "servers": names, "ues": [f"ue{j}" for j in range(1, self.U + 1)],
            "accounts": {**{f"mec{i}": a.address for i, a in enumerate(self.accounts.mec_servers, 1)},
                         **{f"ue{j}": a.address for j, a in enumerate(self.accounts.ues, 1)}},
            "levels_mhs": levels, "budget_mhs": self.scn.model.hash_budget_mhs,
            "levels_cores": [float(c) for c in self.mapping.miner_cores(levels)],
            "window_s": self.scn.model.reputation_window * self.scn.model.slot_s,
            "api_host": plan.data_ip("lab0"), "api_port": self.scn.lab.api_port,
            "token_file": str(self.secrets / "token"),
            "budget_log": str(self.run_dir / "budgets.jsonl"),
            "state_file": str(self.secrets / "controller-state.json"),
            "slot_s": self.scn.model.slot_s, "equal_level": self.scn.model.equal_hash_level,
            "monitor_period_s": 0.5,
            "miners": {m: {"host_group": f"{CGROUP_PARENT}/{self.run_id}/{m}",
                           "period_us": self.chain_cfg.cpu_period_us} for m in names},
            "miner_rpc": {m: f"http://{plan.mgmt_ip(m)}:{self.chain_cfg.http_port + i}"
                          for i, m in enumerate(names)},
        }
        path = self.secrets / "controller.json"
        path.write_text(json.dumps(cfg, indent=1))
        path.chmod(0o600)

    def _tell_controller(self) -> None:
        """Static ARP entries for the service and probe addresses, then the hosts' addresses
        and switch ports to the controller (steering and probes need them)."""
        from testbed.live_env import ApiClient
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
        below their quotas; inside a host the miner takes its quota first (the executor's
        weight is minimal), so a task gets what mining leaves: f_m - κ·p_m as in the model."""
        lab = self.scn.lab
        run = CpuQuota(self.run_id, parent=CGROUP_PARENT)
        run.set(None, weight=10.0)
        self.quotas.append(run)
        for i in range(1, self.M + 1):
            m = f"mec{i}"
            cores = float(lab.host_cores_by_server.get(m, lab.host_cores))
            host = CpuQuota(m, parent=f"{CGROUP_PARENT}/{self.run_id}")
            self.quotas.append(host)
            host.set(cores if lab.coupling == "shared" else None, weight=cores)
            self.host_groups[m] = f"{CGROUP_PARENT}/{self.run_id}/{m}"
            ex = CpuQuota("executor", parent=self.host_groups[m])
            ex.set(None if lab.coupling == "shared" else cores, weight=0.002 if lab.coupling == "shared" else cores)
            self.quotas.append(ex)
            self.exec_quotas[m] = ex

    def _start_chain(self) -> None:
        plan = self.topo.plan
        mecs = [self.net.get(f"mec{i}") for i in range(1, self.M + 1)]
        gw = self.net.get("gw1")
        level = self.scn.model.equal_hash_level
        q = float(self.mapping.miner_cores(self.scn.model.hash_levels_mhs[level]))
        # Difficulty = expected hashes per block: the calibrated rate of the starting budgets
        # times the wanted interval (ethash's floor is 131072).
        from nodes.config import MIN_DIFFICULTY
        total_hps = self.M * float(self.calibration.hashrate_at(q))
        self.chain_cfg = dataclasses.replace(
            self.chain_cfg, genesis_difficulty=max(MIN_DIFFICULTY, int(total_hps * self.scn.lab.block_interval_s)))
        self.chain = Chain(self.chain_cfg, ips=[plan.data_ip(h.name) for h in mecs],
                           rpc_ips=[plan.mgmt_ip(h.name) for h in mecs],
                           launchers=[in_mininet_host(h) for h in mecs],
                           quota_parents=[self.host_groups[h.name] for h in mecs],
                           gateway_ip=plan.data_ip("gw1"), gateway_launcher=in_mininet_host(gw),
                           budgets=[1] * self.M, cpu_quotas=[q] * self.M)
        self.chain.__enter__()

    def _deploy(self) -> None:
        gw = self.chain.gateway
        w3 = gw.w3
        cfg = self.scn.contract
        self.sender = TxSender(w3, cfg)
        self.trade, self.deploy_report = TradingContract.deploy(w3, self.accounts.esp, cfg, sender=self.sender)
        # The registrations wait 3 blocks (they follow the deploy in the ESP's nonce order, so
        # the deploy is deeper still): on a young PoW chain short forks are common, and a
        # registration undone by a re-organisation would make the first payments revert.
        deep = TradingContract(w3, self.trade.address, dataclasses.replace(cfg, confirmations=max(3, cfg.confirmations)),
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
            deploy_block=self.deploy_report.block_number, gateway_url=self.chain.gateway.http_url,
            api_url=self.api_url, executor_port=self.scn.lab.executor_port, scenario=public,
            service_ip=SERVICE_IP,
            calibration=str(self.lab_dir / "calibration.json"),
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
            host = self.net.get(m)
            argv = [self._python(), "-m", "nodes.executor", "--lab", str(self.lab_dir / "lab.json"),
                    "--name", m, "--key", str(self.secrets / "keys" / f"{m}.key")]
            p = ManagedProcess(f"executor {m}", argv, self.run_dir / "logs" / f"executor-{m}.log",
                               launcher=in_mininet_host(host), cwd=ROOT, ready_timeout_s=60)
            self.procs.start(p)
            self.executors[m] = p

    def _start_ue_clients(self) -> None:
        for j in range(1, self.U + 1):
            self.start_ue(f"ue{j}")

    def start_ue(self, name: str) -> ManagedProcess:
        argv = [self._python(), "-m", "nodes.ue_client", "--lab", f"{LAB_MOUNT}/lab.json", "--name", name,
                "--key", KEY_MOUNT, "--out", OUT_MOUNT]
        p = ManagedProcess(f"UE client {name}", argv, self.run_dir / "ues" / name / "client.log",
                           launcher=in_container(f"mn.{name}", log_inside=f"{OUT_MOUNT}/client.log"),
                           cwd=ROOT, grace_s=60)
        self.procs.start(p)
        self.ue_clients[name] = p
        return p

    def start_policy(self, slots: int | None = None) -> ManagedProcess:
        """The decision maker (:mod:`controller.agent_loop`), started last; it runs ``slots``
        slots (default ``lab.slots``) and exits."""
        argv = [self._python(), "-m", "controller.agent_loop", "--lab", str(self.lab_dir / "lab.json"),
                "--token-file", str(self.secrets / "token"), "--out", str(self.run_dir),
                "--slots", str(self.scn.lab.slots if slots is None else slots)]
        self.policy_proc = ManagedProcess("policy loop", argv, self.run_dir / "logs" / "agent_loop.log",
                                          cwd=ROOT, ready=log_ready(r"deciding"), ready_timeout_s=120,
                                          grace_s=self.scn.model.slot_s + 15)
        return self.procs.start(self.policy_proc)

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
                         ("secrets", lambda: shutil.rmtree(self.secrets, ignore_errors=True))):
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

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
