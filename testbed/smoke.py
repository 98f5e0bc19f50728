"""The smoke experiment: bring up the smoke topology and measure it.

Measures, on the emulated network: reachability (pingall), round-trip time between plain
hosts and to the UE container, TCP throughput through the shaped links (iperf3), and the
flows the os-ken controller installed. Writes ``smoke.json`` and ``smoke.png`` to the run's
results folder.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scenario.config import Scenario
from base.errors import ConfigError
from topologies.network import EmulatedNetwork
from topologies.platform import detect
from topologies.smoke import SmokeTopo


def ping_rtt_ms(src, dst, count: int) -> dict:
    """Ping ``dst`` from ``src``; return loss (%) and RTT min/avg/max (ms)."""
    out = src.cmd(f"ping -c {count} -i 0.2 -W 2 {dst.IP()}")
    loss = re.search(r"([\d.]+)% packet loss", out)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out)
    if not loss:
        raise RuntimeError(f"ping {src.name} -> {dst.name} gave no summary:\n{out}")
    res = {"loss_pct": float(loss.group(1))}
    if rtt:
        res.update(min_ms=float(rtt.group(1)), avg_ms=float(rtt.group(2)), max_ms=float(rtt.group(3)))
    return res


def iperf_mbit(client, server, seconds: float) -> float:
    """TCP throughput client -> server with iperf3 (Mbit/s, received side)."""
    server.cmd("iperf3 -s -1 -D --pidfile /tmp/iperf3-%s.pid" % server.name)
    time.sleep(0.3)
    out = client.cmd(f"iperf3 -c {server.IP()} -t {seconds} -J")
    try:
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"iperf3 {client.name} -> {server.name} failed: {out[-500:]}") from e


def run(scn: Scenario, run_dir: Path) -> dict:
    cfg = scn.network
    kind = getattr(scn.topology, "kind", scn.topology)   # a TopologyConfig or (before it) a name
    if kind != "smoke":
        raise ConfigError(f"the smoke experiment runs the smoke topology (h1, h2, ue1), "
                          f"got topology {kind!r}")
    platform = detect()
    topo = SmokeTopo(bw_mbit=cfg.link_bw_mbit,
                     delay=f"{cfg.link_delay_ms}ms" if cfg.link_delay_ms else None)
    t0 = time.monotonic()
    emu = EmulatedNetwork(topo, cfg, run_dir, platform)
    with emu as net:
        up_s = time.monotonic() - t0
        h1, h2, ue1 = net.get("h1", "h2", "ue1")
        result = {
            "scenario": scn.name,
            "datapath": emu.datapath,
            "notes": emu.notes + platform.limitations,
            "startup_s": round(up_s, 2),
            "pingall_loss_pct": net.pingAll(timeout=2),
            "rtt_h1_h2": ping_rtt_ms(h1, h2, cfg.ping_count),
            "rtt_h1_ue1": ping_rtt_ms(h1, ue1, cfg.ping_count),
            "link_bw_mbit": cfg.link_bw_mbit,
            "tcp_h1_h2_mbit": round(iperf_mbit(h1, h2, cfg.iperf_seconds), 2),
            "tcp_h1_ue1_mbit": round(iperf_mbit(h1, ue1, cfg.iperf_seconds), 2),
            "ue1_os": ue1.cmd("sed -n 's/^PRETTY_NAME=//p' /etc/os-release").strip().strip('"'),
            "controller_flows": len([line for line in net.get("s1").dpctl("dump-flows", "-O", "OpenFlow13").splitlines()
                                     if "priority=10," in line]),
        }
    result["total_s"] = round(time.monotonic() - t0, 2)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "smoke.json").write_text(json.dumps(result, indent=2))
    _plot(result, run_dir / "smoke.png")
    return result


def _plot(r: dict, path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.bar(["h1→h2", "h1→ue1"], [r["tcp_h1_h2_mbit"], r["tcp_h1_ue1_mbit"]], color="tab:blue")
    if r["link_bw_mbit"]:
        a.axhline(r["link_bw_mbit"], ls="--", color="k", label="configured bw")
        a.legend()
    a.set_ylabel("TCP throughput (Mbit/s)")
    b.bar(["h1→h2", "h1→ue1"], [r["rtt_h1_h2"].get("avg_ms", 0), r["rtt_h1_ue1"].get("avg_ms", 0)],
          color="tab:orange")
    b.set_ylabel("RTT avg (ms)")
    fig.suptitle(f"smoke: {r['datapath']} datapath, pingall loss {r['pingall_loss_pct']}%")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
