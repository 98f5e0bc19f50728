"""What the programs on the lab's hosts need to know about a running lab: ``lab.json``.

The lab writes it once everything they depend on is up (chain, contract, controller API);
the MEC executors and the UE clients read it (``--lab PATH``). It holds only public facts:
addresses, ports, the contract, the scenario to load. Keys are never in it: each program gets
its own key file (``--key``), and a UE container sees only its own.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scenario import units
from scenario.config import scenario_from_dict


@dataclass
class Endpoint:
    name: str
    ip: str                   # address on the data network
    address: str              # chain account
    wallet: str | None = None  # MEC: payee wallet W_m


@dataclass
class LabInfo:
    run: str
    chain_id: int
    contract: str
    deploy_block: int
    gateway_url: str          # the wallet RPC (eth, net, web3) every UE and executor uses
    api_url: str              # the controller's HTTP API
    executor_port: int
    scenario: dict            # the lab's Scenario (Scenario.to_dict()): one object everywhere
    calibration: str          # path of calibration.json
    servers: dict[str, Endpoint] = field(default_factory=dict)
    ues: dict[str, Endpoint] = field(default_factory=dict)
    service_ip: str | None = None   # the address UEs send tasks to when the controller steers
    # On a cluster (issue 22): MEC server -> the file name, in the lab folder, of the calibration
    # of the server it runs on, when that is not the lab's own (``calibration``)
    calibrations: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write atomically (a program waiting for the file never reads half of it)."""
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, wait_s: float = 0.0) -> "LabInfo":
        """Read ``lab.json``, waiting up to ``wait_s`` for the lab to write it (the programs on
        the hosts start while the chain and the contract are still coming up)."""
        deadline = time.monotonic() + wait_s
        while not Path(path).exists():
            if time.monotonic() > deadline:
                raise FileNotFoundError(f"{path}: the lab did not write it within {wait_s:.0f} s")
            time.sleep(0.2)
        d = json.loads(Path(path).read_text())
        d["servers"] = {k: Endpoint(**v) for k, v in d["servers"].items()}
        d["ues"] = {k: Endpoint(**v) for k, v in d["ues"].items()}
        return cls(**d)

    def scenario_obj(self):
        return scenario_from_dict(self.scenario)

    def mappings(self, lab_dir: Path) -> dict[str, units.LiveMapping]:
        """Each MEC server's :class:`scenario.units.LiveMapping`: the lab's (from
        ``calibration.json`` in ``lab_dir``, the folder of lab.json as the reader sees it: a UE
        container mounts it elsewhere), or, on another server of a cluster, that server's
        (:meth:`LiveMapping.for_server`)."""
        scn = self.scenario_obj()
        lab = units.LiveMapping(scn.model, scn.lab.mining_cores, scn.lab.host_cores,
                                units.Calibration.load(Path(lab_dir) / "calibration.json"))
        by_file = {f: lab.for_server(units.Calibration.load(Path(lab_dir) / f)) for f in set(self.calibrations.values())}
        return {m: by_file[self.calibrations[m]] if m in self.calibrations else lab for m in self.servers}
