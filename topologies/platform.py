"""What this machine can emulate, found by trying it (``testbed doctor``).

The testbed picks the Open vSwitch datapath from this report and says what it cannot emulate
(for instance link delay without ``netem``) instead of failing deep inside Mininet.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
GETH = TOOLS / "bin" / "geth"
SOLCJS = ROOT / "node_modules" / ".bin" / "solcjs"
ANVIL = TOOLS / "bin" / "anvil"        # installed by the set-up (scripts/setup.sh)
DOCKER = "/usr/bin/docker"   # Debian's client, same version as the engine it talks to
GETH_VERSION = "1.11.6-stable"
ANVIL_VERSION = "1.7.1"


def _run(cmd: list[str], timeout: float = 20) -> tuple[int, str]:
    """Run a probe command; return (exit code, stdout+stderr). Never raises."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)


def _version(cmd: list[str], pattern: str) -> str | None:
    rc, out = _run(cmd)
    m = re.search(pattern, out) if rc == 0 else None
    return m.group(1) if m else None


def _qdisc_works(kind: str, args: list[str]) -> bool:
    """Try one queueing discipline on a veth inside a throwaway network namespace."""
    ns = f"tbprobe{uuid.uuid4().hex[:6]}"
    if _run(["ip", "netns", "add", ns])[0] != 0:
        return False
    try:
        if _run(["ip", "-n", ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb"])[0]:
            return False
        return _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "pa", "root", kind, *args])[0] == 0
    finally:
        _run(["ip", "netns", "del", ns])


def _images() -> tuple[str, ...]:
    from topologies.images import BASE_IMAGE, UE_IMAGE
    return BASE_IMAGE, UE_IMAGE


def _kernel_ovs_datapath() -> bool:
    """The kernel datapath needs the openvswitch module (absent on some cloud kernels)."""
    if Path("/sys/module/openvswitch").exists():
        return True
    return _run(["modprobe", "openvswitch"])[0] == 0


@dataclass
class PlatformReport:
    """Facts about this machine that decide how the testbed emulates the network."""
    kernel: str
    cores: int
    memory_gib: float
    is_root: bool
    ovs_version: str | None
    ovs_running: bool
    ovs_datapath: str                 # "kernel" or "user" (netdev); chosen from what works
    netem: bool                       # link delay/loss/jitter emulation available
    htb: bool                         # bandwidth shaping (TCLink bw=) available
    mnexec: bool
    docker_engine: str | None         # server version, None if no engine answers
    geth: str | None
    solc: str | None
    anvil: str | None
    python: str
    images: bool = False              # the lab's Docker images exist
    limitations: list[str] = field(default_factory=list)

    def missing(self) -> list[str]:
        """The required parts this machine lacks, each with its fix (``testbed doctor`` exits
        1 if any). Kernel datapath and netem are optional: without them the lab says what it
        does not emulate."""
        fix = "run `make setup`"
        need = [("root", self.is_root, "run as root (sudo)"),
                ("Open vSwitch installed", self.ovs_version is not None, fix),
                ("Open vSwitch running", self.ovs_running, fix),
                ("mnexec (Mininet)", self.mnexec, fix),
                ("Docker engine", self.docker_engine is not None, fix),
                ("Docker images", self.images, "run `make images` (or `make setup`)"),
                (f"geth {GETH_VERSION}", self.geth == GETH_VERSION, fix),
                ("solc", self.solc is not None, fix),
                (f"anvil {ANVIL_VERSION}", self.anvil == ANVIL_VERSION, fix),
                ("python venv", self.python != "venv missing", fix),
                ("htb qdisc", self.htb, "a kernel with sch_htb")]
        return [f"{name}: {how}" for name, ok, how in need if not ok]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "missing": self.missing()}, indent=2)

    def to_text(self) -> str:
        rows = [
            ("kernel", self.kernel),
            ("cores / memory", f"{self.cores} / {self.memory_gib:.1f} GiB"),
            ("root", self.is_root),
            ("Open vSwitch", f"{self.ovs_version or 'missing'} ({'running' if self.ovs_running else 'not running'})"),
            ("OVS datapath", self.ovs_datapath + (" (kernel module present)" if self.ovs_datapath == "kernel" else " (netdev, no kernel module)")),
            ("link delay (netem)", "yes" if self.netem else "no"),
            ("bandwidth (htb)", "yes" if self.htb else "no"),
            ("mnexec", "yes" if self.mnexec else "no"),
            ("Docker engine", self.docker_engine or "not running"),
            ("geth", self.geth or "missing"),
            ("solc", self.solc or "missing"),
            ("anvil", self.anvil or "missing"),
            ("python", self.python),
        ]
        w = max(len(k) for k, _ in rows)
        lines = [f"{k:<{w}}  {v}" for k, v in rows]
        lines += [f"NOTE: {x}" for x in self.limitations]
        lines += [f"MISSING: {x}" for x in self.missing()]
        return "\n".join(lines)


def detect() -> PlatformReport:
    """Probe the machine (takes about a second; creates and removes one network namespace)."""
    root = os.geteuid() == 0
    ovs_version = _version(["ovs-vsctl", "--version"], r"\(Open vSwitch\)\s+(\S+)")
    ovs_running = _run(["ovs-vsctl", "--timeout=2", "show"])[0] == 0
    kernel_dp = root and _kernel_ovs_datapath()
    netem = root and _qdisc_works("netem", ["delay", "1ms"])
    htb = root and _qdisc_works("htb", ["default", "1"])
    docker = _version([DOCKER, "version", "--format", "{{.Server.Version}}"], r"^(\S+)$")
    rep = PlatformReport(
        kernel=os.uname().release,
        cores=os.cpu_count() or 1,
        memory_gib=psutil.virtual_memory().total / 2**30,
        is_root=root,
        ovs_version=ovs_version,
        ovs_running=ovs_running,
        ovs_datapath="kernel" if kernel_dp else "user",
        netem=netem,
        htb=htb,
        mnexec=shutil.which("mnexec") is not None,
        docker_engine=docker,
        geth=_version([str(GETH), "version"], r"Version:\s*(\S+)"),
        solc=_version([str(SOLCJS), "--version"], r"^(\S+)"),
        anvil=_version([str(ANVIL), "--version"], r"anvil Version:\s*([0-9.]+)"),
        python=_version([str(ROOT / ".venv" / "bin" / "python"), "-V"], r"Python (\S+)") or "venv missing",
        images=docker is not None and all(_run([DOCKER, "image", "inspect", img])[0] == 0
                                          for img in _images()),
    )
    if not root:
        rep.limitations.append("not root: Mininet, OVS and network probes need root (sudo)")
    if not kernel_dp:
        rep.limitations.append("no openvswitch kernel module: switches use the userspace datapath "
                               "(datapath_type=netdev, about 1.4 Gbit/s; TX checksum offload is turned off on hosts)")
    if not netem:
        rep.limitations.append("no netem qdisc: link delay, loss and jitter are NOT emulated; "
                               "latency comes only from the emulated switches and real processing")
    if not htb:
        rep.limitations.append("no htb qdisc: link bandwidth is NOT shaped")
    if not ovs_running:
        rep.limitations.append("Open vSwitch is not running: run `make setup`")
    if docker is None:
        rep.limitations.append("no Docker engine answers: UE containers cannot run (run `make setup`)")
    return rep
